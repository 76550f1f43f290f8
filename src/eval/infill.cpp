#include "eval/infill.h"

#include <algorithm>
#include <optional>

#include "catalog/catalog.h"
#include "common/device.h"
#include "common/error.h"
#include "common/rng.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "eval/bpb.h"

namespace slm {

namespace {

// The catalog row's resolved defaults: the only defaults (catalog/modules/fim.cpp).
catalog::ModuleArgs row_defaults(const char* name) {
  std::vector<std::string> errors;
  catalog::ModuleArgs a = catalog::resolve_arg(name, errors);
  SLM_CHECK(errors.empty(), "infill: catalog row ", name, ": ", errors.empty() ? "" : errors[0]);
  return a;
}

// The segments of one sample and the index of the scored segment, or nullopt (nothing to score).
struct Cut {
  data::Segments segs;
  size_t scored = 0;
};

std::optional<Cut> cut(std::string_view doc, InfillMetric m, uint64_t seed) {
  Cut c;
  switch (m) {
    case InfillMetric::Fim: {
      static const data::FimOptions base = data::FimOptions::from(row_defaults("fim"));
      data::FimOptions o = base;
      o.spm_rate = 0;  // PSM: one fixed task for every arm
      c.segs = data::fim(doc, o, seed);
      break;
    }
    case InfillMetric::Ifim:
    case InfillMetric::IfimNoInst: {
      static const data::IfimOptions base = data::IfimOptions::from(row_defaults("ifim"));
      data::IfimOptions o = base;
      o.spm_rate = 0;
      std::optional<data::Segments> s = data::ifim(doc, o, seed);
      if (!s) return std::nullopt;  // no doc comment: no instruction to lift
      c.segs = std::move(*s);
      break;
    }
    case InfillMetric::Sri: {
      static const data::SriOptions o = data::SriOptions::from(row_defaults("sri"));
      c.segs = data::sri(doc, o, seed);
      break;
    }
  }
  // FIM forms: M is the text right after FIM_MIDDLE (PSM: the last segment). SRI: the text after SRI_DIVIDER.
  const int32_t before = m == InfillMetric::Sri ? TOK_SRI_DIVIDER : TOK_FIM_MIDDLE;
  for (size_t i = 1; i < c.segs.size(); ++i)
    if (c.segs[i - 1].special == before && !c.segs[i].is_special() && !c.segs[i].text.empty()) {
      c.scored = i;
      return c;
    }
  return std::nullopt;  // an empty middle or replacement
}

// The IFIM cut without FIM_INSTRUCTION I (and the scored index moved with it): the same middle.
void strip_instruction(Cut& c) {
  data::Segments plain;
  size_t scored = c.scored;
  for (size_t i = 0; i < c.segs.size(); ++i) {
    if (c.segs[i].special == TOK_FIM_INSTRUCTION) {
      size_t n = (i + 1 < c.segs.size() && !c.segs[i + 1].is_special()) ? 2 : 1;  // and its text
      if (i < c.scored) scored -= n;
      i += n - 1;
      continue;
    }
    plain.push_back(c.segs[i]);
  }
  c.segs = std::move(plain);
  c.scored = scored;
}

}  // namespace

const char* infill_metric_name(InfillMetric m) {
  switch (m) {
    case InfillMetric::Fim: return "fim";
    case InfillMetric::Ifim: return "ifim";
    case InfillMetric::IfimNoInst: return "ifim_noinst";
    case InfillMetric::Sri: return "sri";
  }
  return "?";
}

InfillMetric parse_infill_metric(const std::string& name) {
  for (InfillMetric m : {InfillMetric::Fim, InfillMetric::Ifim, InfillMetric::IfimNoInst, InfillMetric::Sri})
    if (name == infill_metric_name(m)) return m;
  fail("infill metric '", name, "' is unknown; use fim, ifim, ifim_noinst or sri");
}

std::vector<InfillSample> infill_samples(const data::DataSet& ds, InfillMetric m, int64_t context, int64_t rows,
                                         uint64_t seed) {
  SLM_CHECK(context >= 2 && rows >= 1, "infill: context (", context, ") must be >= 2 and rows (", rows, ") >= 1");
  const Tokenizer& tok = ds.tokenizer();
  const auto& docs = ds.docs(data::Split::Val);
  std::vector<uint32_t> order = data::permutation(static_cast<uint32_t>(docs.size()), seed);
  std::vector<InfillSample> out;
  const size_t limit = static_cast<size_t>(context) + 1;
  for (uint32_t d : order) {
    if (static_cast<int64_t>(out.size()) >= rows) break;
    const std::string text = tok.decode(ds.doc_tokens(data::Split::Val, d));
    uint64_t state = seed ^ (0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(d) + 1));
    SplitMix64 r{splitmix64(state)};
    const uint64_t tseed = r.next();  // the same cut for every window size: only the window shrinks
    std::string_view win = text;
    auto encode = [&](const Cut& c) {
      InfillSample s;
      s.doc = d;
      for (size_t i = 0; i < c.segs.size(); ++i) {
        if (i == c.scored) s.begin = static_cast<int64_t>(s.tokens.size());
        data::encode_segments(tok, {c.segs[i]}, s.tokens);
        if (i == c.scored) s.end = static_cast<int64_t>(s.tokens.size());
      }
      s.scored = c.segs[c.scored].text;
      return s;
    };
    while (!win.empty()) {
      // ifim_noinst is cut and fitted as ifim, then loses its instruction: the same middles as ifim.
      std::optional<Cut> c = cut(win, m == InfillMetric::IfimNoInst ? InfillMetric::Ifim : m, tseed);
      if (!c) break;
      InfillSample s = encode(*c);
      if (s.tokens.size() <= limit) {
        if (m == InfillMetric::IfimNoInst) {
          strip_instruction(*c);
          s = encode(*c);
        }
        out.push_back(std::move(s));
        break;
      }
      // Too long for one row: a seeded window of half the bytes, on whole lines where one fits.
      const size_t len = win.size() / 2;
      if (len == 0) break;
      size_t a = r.below(win.size() - len + 1);
      while (a > 0 && win[a - 1] != '\n') --a;
      size_t b = a + len;
      size_t nl = win.rfind('\n', b - 1);
      if (nl != std::string_view::npos && nl >= a) b = nl + 1;  // else a window inside one long line
      win = win.substr(a, b - a);
    }
  }
  return out;
}

std::vector<double> infill_parts(GPTImpl& model, const data::DataSet& ds, const std::vector<InfillSample>& samples,
                                 int64_t context, int64_t batch_rows, bool bf16, torch::Device dev, int rank,
                                 int world) {
  torch::NoGradGuard ng;
  const bool was_training = model.is_training();
  model.eval();
  device::set_autocast(dev, bf16);
  auto token_bytes = torch::tensor(ds.tokenizer().token_bytes(), torch::kInt64).to(dev);
  const int64_t row = context + 1;
  std::vector<double> parts;
  const int64_t n = static_cast<int64_t>(samples.size());
  for (int64_t done = 0, b = 0; done < n; done += batch_rows, ++b) {
    parts.push_back(0);
    parts.push_back(0);
    if (b % world != rank) continue;  // another rank's batch
    const int64_t n_rows = std::min(batch_rows, n - done);
    std::vector<int64_t> tok(n_rows * row, 0), doc(n_rows * row, 1), keep(n_rows * context, 0);
    for (int64_t i = 0; i < n_rows; ++i) {
      const InfillSample& s = samples[done + i];
      for (size_t k = 0; k < s.tokens.size(); ++k) {
        tok[i * row + k] = s.tokens[k];
        doc[i * row + k] = 0;  // the sample is one document; the padding after it another
      }
      for (int64_t t = s.begin; t < s.end; ++t) keep[i * context + t - 1] = 1;  // target t is predicted at t - 1
    }
    auto t = torch::tensor(tok, torch::kInt64).view({n_rows, row}).to(dev);
    auto d = torch::tensor(doc, torch::kInt64).view({n_rows, row}).to(dev);
    auto k = torch::tensor(keep, torch::kInt64).view({n_rows, context}).to(dev);
    auto x = t.slice(1, 0, context), y = t.slice(1, 1, row), dd = d.slice(1, 0, context);
    auto nats = model.token_nats(x, y, dd);
    auto nb = token_bytes.index({y}) * k;
    parts[2 * b] = nats.masked_select(nb > 0).to(torch::kFloat64).sum().item<double>();
    parts[2 * b + 1] = nb.sum().item<double>();
  }
  device::set_autocast(dev, false);
  device::clear_autocast_cache();
  if (was_training) model.train();
  return parts;
}

double infill_bpb(GPTImpl& model, const data::DataSet& ds, InfillMetric m, int64_t context, int64_t rows,
                  uint64_t seed, int64_t batch_rows, bool bf16, torch::Device dev) {
  auto samples = infill_samples(ds, m, context, rows, seed);
  return val_bpb_total(infill_parts(model, ds, samples, context, batch_rows, bf16, dev));
}

}  // namespace slm
