#include "train/memory.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "common/device.h"
#include "common/error.h"

namespace slm {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string gib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, bytes >= 0.1 * kGiB ? "%.2f" : "%.3g", bytes / kGiB);
  return b;
}

}  // namespace

std::string MemoryEstimate::describe() const {
  return gib(total()) + " GiB (weights " + gib(weights) + ", gradients " + gib(grads) + ", optimizer " + gib(optimizer) +
         ", bf16 casts " + gib(casts) + ", activations " + gib(activations) + ")";
}

ParamCounts baseline_params(const ModelConfig& c, int64_t tp, bool muon) {
  const double C = double(c.d_model), V = double(c.vocab), L = double(c.n_layer);
  ParamCounts p;
  p.matrices = L * (4 * C * C + 8 * C * C) / double(tp);  // q k v o, then the MLP's C x 4C twice
  p.adamw = 2 * V * C;                                      // embedding and head, whole on every rank
  (muon ? p.muon : p.adamw) += p.matrices;
  return p;
}

ParamCounts param_counts(const std::vector<ParamGroup>& groups) {
  ParamCounts p;
  for (auto& g : groups)
    for (auto& t : g.params) {
      (g.kind == "muon" ? p.muon : p.adamw) += double(t.numel());
      if (g.name == "matrix") p.matrices += double(t.numel());
    }
  return p;
}

double activation_bytes(const ModelConfig& c, int64_t rows, int64_t tp) {
  const double C = double(c.d_model), T = double(c.context), tokens = double(rows) * T;
  const double per_layer = 4 * (6 * C + 24 * C / double(tp)) +
                           device::attention_score_bytes() * double(c.n_head) / double(tp) * T;
  return tokens * (double(c.n_layer) * per_layer + 8 * C);
}

MemoryEstimate estimate_memory(const ModelConfig& c, const ParamCounts& p, int64_t rows, int64_t tp, bool bf16) {
  MemoryEstimate e;
  e.weights = 4 * p.total();
  e.grads = 4 * p.total();
  e.optimizer = 8 * p.adamw + 4 * p.muon;
  e.casts = bf16 ? 2 * p.matrices : 0;
  e.activations = activation_bytes(c, rows, tp);
  return e;
}

double memory_budget_bytes(const torch::Device& dev, double budget_gib, int local_ranks, std::string* source) {
  if (budget_gib > 0) {
    *source = "--memory-budget";
    return budget_gib * kGiB;
  }
  const double avail = device::memory_available_bytes(dev);
  if (avail <= 0) {
    *source = "unknown on " + dev.str();
    return 0;
  }
  const int n = std::max(1, local_ranks);
  *source = "available memory " + gib(avail) + " GiB" + (n > 1 ? " shared by " + std::to_string(n) + " ranks" : "");
  return avail / n;
}

std::string budget_text(double budget, const std::string& source) {
  return budget > 0 ? "may use " + gib(budget) + " GiB (" + source + ")" : "not checked (" + source + ")";
}

void require_memory_fits(const MemoryEstimate& e, double budget, const std::string& source, const std::string& what) {
  if (budget <= 0 || e.total() <= budget) return;
  throw Error("train: " + what + " needs an estimated " + e.describe() + " per rank, more than the " + gib(budget) +
              " GiB it may use (" + source + "); lower device_batch, context, d_model, n_layer or vocab, split it with tp, " +
              "or pass --memory-budget GiB if the estimate is wrong for this machine");
}

}  // namespace slm
