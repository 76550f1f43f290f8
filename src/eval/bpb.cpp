#include "eval/bpb.h"

#include <cmath>
#include <limits>

#include "common/device.h"
#include "common/error.h"
#include "data/loader.h"

namespace slm {

std::vector<double> val_bpb_parts(GPTImpl& model, const data::DataSet& ds, int64_t context, int64_t tokens,
                                  int64_t batch_rows, bool bf16, torch::Device dev, int rank, int world,
                                  std::map<std::string, double>* stats) {
  torch::NoGradGuard ng;
  if (stats) stats->clear();
  const bool was_training = model.is_training();
  model.eval();
  device::set_autocast(dev, bf16);
  auto token_bytes = torch::tensor(ds.tokenizer().token_bytes(), torch::kInt64).to(dev);
  // A model that reads structure gets the validation documents' own columns (model/structure.cpp).
  const bool sc = model.reads_structure();
  const data::EvalRows rows = data::eval_rows(ds, context, static_cast<uint64_t>(tokens), sc);
  const int64_t row = context + 1;
  const bool ring = model.ring && model.ring->size > 1;
  SLM_CHECK(!ring || world == 1, "[eval] ring attention splits rows, not batches: pass world 1");
  std::vector<double> parts;
  for (int64_t done = 0, b = 0; done < rows.n_rows; done += batch_rows, ++b) {
    parts.push_back(0);
    parts.push_back(0);
    if (b % world != rank) continue;  // another rank's batch
    const int64_t n_rows = std::min(batch_rows, rows.n_rows - done);
    const int32_t* tok = rows.tokens.data() + done * row;
    const int32_t* doc = rows.doc_ids.data() + done * row;
    auto t = torch::from_blob(const_cast<int32_t*>(tok), {n_rows, row}, torch::kInt32).to(torch::kInt64).to(dev);
    auto d = torch::from_blob(const_cast<int32_t*>(doc), {n_rows, row}, torch::kInt32).to(torch::kInt64).to(dev);
    auto x = t.slice(1, 0, context), y = t.slice(1, 1, row), dd = d.slice(1, 0, context);
    torch::Tensor s;
    if (sc)
      s = torch::from_blob(const_cast<int32_t*>(rows.structure.data() + done * row), {n_rows, row}, torch::kInt32)
              .to(torch::kInt64).to(dev).slice(1, 0, context);
    torch::Tensor at;  // ring attention: the positions of this rank's share of each row
    if (ring) {
      at = zigzag_positions(context, model.ring->rank, model.ring->size).to(dev);
      x = x.index_select(1, at);
      y = y.index_select(1, at);
      dd = dd.index_select(1, at);
    }
    std::map<std::string, double> batch_stats;
    auto n = model.token_nats(x, y, dd, stats ? &batch_stats : nullptr, s);
    if (stats) {
      for (auto& [k, v] : batch_stats) (*stats)[k] += v;
      (*stats)["eval.batches"] += 1;
    }
    auto nb = token_bytes.index({y});
    if (done + n_rows == rows.n_rows && rows.last_row_targets < context) {  // the budget ends inside the last row
      if (ring)
        nb.select(0, n_rows - 1).masked_fill_(at >= rows.last_row_targets, 0);
      else
        nb.select(0, n_rows - 1).slice(0, rows.last_row_targets).zero_();
    }
    parts[2 * b] = n.masked_select(nb > 0).to(torch::kFloat64).sum().item<double>();
    parts[2 * b + 1] = nb.sum().item<double>();
  }
  device::set_autocast(dev, false);
  device::clear_autocast_cache();
  if (was_training) model.train();
  return parts;
}

double val_bpb_total(const std::vector<double>& parts) {
  double nats = 0, bytes = 0;
  for (size_t i = 0; i + 1 < parts.size(); i += 2) {
    nats += parts[i];
    bytes += parts[i + 1];
  }
  return bytes > 0 ? nats / (std::log(2.0) * bytes) : std::numeric_limits<double>::infinity();
}

double val_bpb(GPTImpl& model, const data::DataSet& ds, int64_t context, int64_t tokens, int64_t batch_rows, bool bf16,
               torch::Device dev, std::map<std::string, double>* stats) {
  auto parts = val_bpb_parts(model, ds, context, tokens, batch_rows, bf16, dev, 0, 1, stats);
  if (stats) *stats = eval_stat_means(*stats);
  return val_bpb_total(parts);
}

std::map<std::string, double> eval_stat_means(const std::map<std::string, double>& sums) {
  std::map<std::string, double> out;
  auto it = sums.find("eval.batches");
  const double n = it == sums.end() ? 0.0 : it->second;
  if (n <= 0) return out;
  for (auto& [k, v] : sums)
    if (k != "eval.batches") out[k] = v / n;
  return out;
}

}  // namespace slm
