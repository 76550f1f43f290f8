#include "eval/decode.h"

#include <chrono>
#include <cstdio>

#include "common/error.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "eval/compile_rate.h"
#include "eval/extract.h"
#include "model/generate.h"

namespace slm::eval {

std::vector<std::vector<int32_t>> function_prompts(const data::DataSet& ds, int64_t n, int64_t budget, uint64_t seed) {
  const Tokenizer& tok = ds.tokenizer();
  const auto& docs = ds.docs(data::Split::Val);
  std::vector<std::vector<int32_t>> out;
  for (uint32_t di : data::permutation(static_cast<uint32_t>(docs.size()), seed)) {
    if (static_cast<int64_t>(out.size()) >= n) break;
    const std::string text = tok.decode(ds.doc_tokens(data::Split::Val, di));
    for (const auto& f : find_function_prompts(text))
      if (f.body.find_first_not_of(" \t\r\n") != std::string::npos) {
        out.push_back(completion_prompt(tok, text, f, budget));
        break;
      }
  }
  return out;
}

std::string DecodeMethod::name() const {
  if (kind == "jacobi") return "jacobi block " + std::to_string(block);
  if (kind == "eagle2")
    return "eagle2 " + std::to_string(eagle.depth) + "x" + std::to_string(eagle.top_k) + "x" + std::to_string(eagle.total_tokens);
  return "greedy (cached)";
}

std::vector<DecodeRow> compare_decoding(GPTImpl& model, DraftHeadImpl* draft, const std::vector<std::vector<int32_t>>& prompts,
                                        const std::vector<DecodeMethod>& methods, int64_t max_tokens, bool stop) {
  std::vector<DecodeRow> rows(1);
  rows[0].method.kind = "greedy";
  for (const auto& m : methods) {
    SLM_CHECK(m.kind == "jacobi" || m.kind == "eagle2", "[decode] ", m.kind, " is not a decoding method; use jacobi or eagle2");
    SLM_CHECK(m.kind != "eagle2" || draft, "[decode] eagle2 needs a draft head (slmlab draft train)");
    rows.push_back({m});
  }
  using clk = std::chrono::steady_clock;
  for (size_t pi = 0; pi < prompts.size(); ++pi) {
    std::vector<int32_t> ref;
    for (auto& r : rows) {
      GenerateOptions g;
      g.max_tokens = max_tokens;
      if (stop) g.stop = {TOK_EOS, TOK_BOS};
      std::vector<int32_t> out;
      const auto t0 = clk::now();
      if (r.method.kind == "eagle2") {
        EagleStats st;
        out = generate_eagle2(model, *draft, prompts[pi], g, r.method.eagle, &st);
        r.forwards += st.gen.forwards;
        r.iterations += st.gen.iterations;
        r.draft_forwards += st.draft_forwards;
        r.accepted += st.accepted;
      } else {
        g.jacobi = r.method.kind == "jacobi";
        g.block = r.method.block;
        GenerateStats st;
        out = generate(model, prompts[pi], g, &st);
        r.forwards += st.forwards;
        r.iterations += st.iterations;
      }
      r.seconds += std::chrono::duration<double>(clk::now() - t0).count();
      r.tokens += static_cast<int64_t>(out.size());
      ++r.prompts;
      if (&r == &rows[0]) ref = out;
      if (out == ref) ++r.exact;
      else if (r.first_diverging < 0) r.first_diverging = static_cast<int64_t>(pi);
    }
  }
  return rows;
}

std::string decode_table(const std::vector<DecodeRow>& rows) {
  std::string s = "| method | exact | tokens / target forward | tokens/s | speedup | target forwards | draft forwards |\n"
                  "|---|---|---|---|---|---|---|\n";
  const double base = rows.empty() ? 0.0 : rows[0].tokens_per_second();
  char buf[512];
  for (const auto& r : rows) {
    std::string exact = std::to_string(r.exact) + "/" + std::to_string(r.prompts);
    if (!r.valid()) exact += " INVALID (first diverging prompt " + std::to_string(r.first_diverging) + ")";
    std::snprintf(buf, sizeof buf, "| %s | %s | %.3f | %.1f | %.2fx | %lld | %lld |\n", r.method.name().c_str(), exact.c_str(),
                  r.tokens_per_forward(), r.tokens_per_second(), base > 0 ? r.tokens_per_second() / base : 0.0,
                  static_cast<long long>(r.forwards), static_cast<long long>(r.draft_forwards));
    s += buf;
  }
  return s;
}

}  // namespace slm::eval
