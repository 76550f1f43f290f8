#include "model/jacobi_forcing.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <sstream>

#include "common/error.h"

namespace slm {

JacobiTrajectories collect_jacobi_trajectories(GPTImpl& model, const torch::Tensor& prompt, int64_t N, int64_t T) {
  torch::NoGradGuard ng;
  const int64_t R = prompt.size(0), P = prompt.size(1);
  SLM_CHECK(P >= 1 && N >= 1 && T >= 1, "[jacobi_forcing] needs a prompt, a block and a block count >= 1");
  JacobiTrajectories out;
  out.states.assign(R, std::vector<std::vector<std::vector<int64_t>>>(T));
  out.row_forwards.assign(R, 0);
  Caches caches;
  // Greedy's picks for the R rows of `ids` (R, n) at positions [pos, pos + n): (R, n) on the host.
  auto predict = [&](const torch::Tensor& ids, int64_t pos) {
    Ctx c;
    c.idx = ids;
    c.caches = &caches;
    c.pos = pos;
    c.step = model.step;
    return model.logits(model.hidden(c)).argmax(-1).to(torch::kCPU).contiguous();
  };
  auto host = prompt.to(torch::kCPU, torch::kInt64).contiguous();
  std::vector<int64_t> last(R);
  for (int64_t r = 0; r < R; ++r) last[r] = host[r][P - 1].item<int64_t>();
  if (P > 1) predict(prompt.slice(1, 0, P - 1), 0);  // the cache holds every committed token but the last
  int64_t cached = P - 1;
  for (int64_t j = 0; j < T; ++j) {
    std::vector<std::vector<int64_t>> state(R);
    std::vector<bool> done(R, false);
    for (int64_t r = 0; r < R; ++r) {
      state[r].assign(N, last[r]);  // as the generator starts a block: the last token repeated
      out.states[r][j].push_back(state[r]);
    }
    // Input [last, y_0 .. y_{N-2}] predicts y_0 .. y_{N-1}; once a row's inputs equal its predictions
    // the prediction is the fixed point. After k forwards the first k tokens are greedy's, so a block
    // converges in at most N forwards; a converged row keeps its state (its inputs stay y*).
    for (int64_t it = 0; it < N && std::count(done.begin(), done.end(), false) > 0; ++it) {
      for (auto& layer : caches)
        for (auto& kv : layer) kv.second->truncate(cached);
      std::vector<int64_t> in(R * N);
      for (int64_t r = 0; r < R; ++r) {
        in[r * N] = last[r];
        std::copy(state[r].begin(), state[r].end() - 1, in.begin() + r * N + 1);
      }
      auto pred = predict(torch::tensor(in, torch::kInt64).view({R, N}).to(prompt.device()), cached);
      ++out.forwards;
      const int64_t* p = pred.data_ptr<int64_t>();
      for (int64_t r = 0; r < R; ++r) {
        if (done[r]) continue;
        ++out.row_forwards[r];
        std::vector<int64_t> next(p + r * N, p + (r + 1) * N);
        done[r] = std::equal(next.begin(), next.end() - 1, state[r].begin());
        if (next != state[r]) out.states[r][j].push_back(next);
        state[r] = next;
      }
    }
    SLM_CHECK(std::count(done.begin(), done.end(), false) == 0, "[jacobi_forcing] block ", j,
              " did not reach its fixed point in ", N, " forwards; greedy picks changed between identical inputs");
    // The last forward's inputs were [last, y*_0 .. y*_{N-2}] on every row: the cache keeps them.
    cached += N;
    for (int64_t r = 0; r < R; ++r) last[r] = state[r][N - 1];
  }
  return out;
}

namespace {

// Each packed index's stream (0 prompt, 1 noisy, 2 clean) and block (-1 in the prompt).
std::pair<torch::Tensor, torch::Tensor> streams_and_blocks(int64_t P, int64_t T, int64_t N) {
  const int64_t L = P + 2 * T * N;
  auto i = torch::arange(L, torch::kInt64);
  auto rel = (i - P).clamp_min(0);
  auto in_prompt = i.lt(P);
  auto stream = torch::where(in_prompt, torch::zeros_like(i), 1 + rel.div(N, "floor").remainder(2));
  auto block = torch::where(in_prompt, torch::full_like(i, -1), rel.div(2 * N, "floor"));
  return {stream, block};
}

}  // namespace

torch::Tensor noise_aware_mask(int64_t P, int64_t T, int64_t N) {
  auto [s, b] = streams_and_blocks(P, T, N);
  const int64_t L = P + 2 * T * N;
  auto i = torch::arange(L, torch::kInt64);
  auto q_s = s.view({L, 1}), k_s = s.view({1, L}), q_b = b.view({L, 1}), k_b = b.view({1, L});
  auto causal = i.view({1, L}).le(i.view({L, 1}));
  // The prompt is every stream's context; otherwise a stream sees only itself: earlier blocks whole,
  // its own block causally.
  auto prompt_key = k_s.eq(0).logical_and(causal);
  auto same_stream = k_s.eq(q_s).logical_and(k_b.lt(q_b).logical_or(k_b.eq(q_b).logical_and(causal)));
  return prompt_key.logical_or(same_stream);
}

torch::Tensor packed_positions(int64_t P, int64_t T, int64_t N) {
  const int64_t L = P + 2 * T * N;
  auto i = torch::arange(L, torch::kInt64);
  auto rel = (i - P).clamp_min(0);
  // noisy_j and clean_j both at P + j N + r
  return torch::where(i.lt(P), i, P + rel.div(2 * N, "floor") * N + rel.remainder(N));
}

int64_t state_at_noise(const std::vector<std::vector<int64_t>>& trajectory, double noise) {
  const auto& fixed = trajectory.back();
  int64_t best = static_cast<int64_t>(trajectory.size()) - 1;
  double best_gap = 2;
  for (size_t k = 0; k < trajectory.size(); ++k) {
    int64_t differ = 0;
    for (size_t t = 0; t < fixed.size(); ++t) differ += trajectory[k][t] != fixed[t];
    const double gap = std::abs(static_cast<double>(differ) / static_cast<double>(fixed.size()) - noise);
    if (gap < best_gap) {  // strict: the earliest (noisiest) state wins a tie
      best_gap = gap;
      best = static_cast<int64_t>(k);
    }
  }
  return best;
}

JacobiForcingImpl::JacobiForcingImpl(const JacobiForcingOptions& o, const ModelConfig& c) : opt(o), cfg(c) {
  SLM_CHECK(o.block >= 2 && o.blocks >= 1 && o.prompt >= 1 && o.row_every >= 1 && o.weight >= 0,
            "[jacobi_forcing] block ", o.block, " (>= 2), blocks ", o.blocks, ", prompt ", o.prompt, ", row_every ",
            o.row_every, " (>= 1) and weight ", o.weight, " (>= 0) out of range");
  SLM_CHECK(o.prompt + 2 * o.blocks * o.block <= c.context, "[jacobi_forcing] the packed row of prompt ", o.prompt,
            " + 2 x blocks ", o.blocks, " x block ", o.block, " tokens exceeds the context ", c.context,
            "; lower prompt or blocks");
}

void JacobiForcingImpl::add_loss(const torch::Tensor& h, GPTImpl& model, Ctx& ctx) {
  SLM_CHECK(ctx.idx.defined(), "[jacobi_forcing] needs the input ids of the batch");
  const int64_t P = opt.prompt, T = opt.blocks, N = opt.block, L = P + 2 * T * N;
  SLM_CHECK(ctx.idx.size(1) >= P, "[jacobi_forcing] rows of ", ctx.idx.size(1), " tokens are shorter than the prompt (",
            P, "); lower jacobi_forcing.prompt");
  const auto dev = ctx.idx.device();
  auto prompt = ctx.idx.slice(0, 0, ctx.idx.size(0), opt.row_every).slice(1, 0, P);  // (R, P)
  const int64_t R = prompt.size(0);
  const JacobiTrajectories tr = collect_jacobi_trajectories(model, prompt, N, T);

  // The packed rows, and per noisy position whether it is scored: from the block's first noisy token on.
  std::vector<int64_t> ids(R * L);
  std::vector<int64_t> student, teacher;  // flat indices into (R * L)
  for (int64_t r = 0; r < R; ++r) {
    auto pr = prompt[r].to(torch::kCPU).contiguous();
    std::copy(pr.data_ptr<int64_t>(), pr.data_ptr<int64_t>() + P, ids.begin() + r * L);
    for (int64_t j = 0; j < T; ++j) {
      const auto& traj = tr.states[r][j];
      const auto& noisy = traj[state_at_noise(traj, static_cast<double>(j + 1) / static_cast<double>(T))];
      const auto& clean = traj.back();
      const int64_t ks = r * L + P + 2 * j * N, ls = ks + N;
      std::copy(noisy.begin(), noisy.end(), ids.begin() + ks);
      std::copy(clean.begin(), clean.end(), ids.begin() + ls);
      const int64_t first = std::mismatch(noisy.begin(), noisy.end(), clean.begin()).first - noisy.begin();
      for (int64_t o = first; o < N; ++o) {
        student.push_back(ks + o);
        teacher.push_back(ls + o);
      }
    }
  }
  const int64_t row_forwards = std::accumulate(tr.row_forwards.begin(), tr.row_forwards.end(), int64_t{0});
  ctx.stats["jacobi_forcing.tokens_per_forward"] = static_cast<double>(R * T * N) / static_cast<double>(row_forwards);
  ctx.stats["jacobi_forcing.scored"] = static_cast<double>(student.size()) / static_cast<double>(R * T * N);
  torch::Tensor loss;
  if (student.empty()) {  // every block was its own fixed point from the start: nothing to pull
    loss = torch::zeros({}, h.options().dtype(torch::kFloat32));
  } else {
    Ctx c;
    c.idx = torch::tensor(ids, torch::kInt64).view({R, L}).to(dev);
    c.allowed = noise_aware_mask(P, T, N).to(dev).view({1, 1, L, L}).expand({R, 1, L, L});
    c.positions = packed_positions(P, T, N).to(dev);
    c.step = ctx.step;
    c.training = ctx.training;
    auto hp = model.hidden(c).reshape({R * L, -1});  // (R L, C)
    auto si = torch::tensor(student, torch::kInt64).to(dev), ti = torch::tensor(teacher, torch::kInt64).to(dev);
    auto log_p = torch::log_softmax(model.logits(hp.index_select(0, si)), -1);           // student (S, V)
    auto log_q = torch::log_softmax(model.logits(hp.index_select(0, ti)), -1).detach();  // teacher (S, V)
    // KL(teacher || student), 0 at the fixed point, over every noisy position (an unscored one has the
    // clean context and counts 0): a batch's loss is the mean of its rows', so data-parallel ranks
    // average it like the main loss.
    loss = (log_q.exp() * (log_q - log_p)).sum() / static_cast<double>(R * T * N);
  }
  ctx.aux.push_back({"jacobi_forcing", loss, opt.weight});
}

double JacobiForcingImpl::flops_per_token(int64_t T_ctx) const {
  const double C = static_cast<double>(cfg.d_model), V = static_cast<double>(cfg.vocab);
  const double layers = static_cast<double>(cfg.n_layer);
  // The baseline's forward per token at context t: matmuls (attention 4 C^2, MLP 8 C^2, head V C)
  // and attention's scores and values over t keys.
  auto fwd = [&](double t) { return 2.0 * (layers * 12.0 * C * C + V * C) + layers * 4.0 * C * t; };
  const double P = static_cast<double>(opt.prompt), T = static_cast<double>(opt.blocks),
               N = static_cast<double>(opt.block), L = P + 2 * T * N;
  const double collect = (P - 1) * fwd(P) + T * N * N * fwd(P + T * N);  // at most N forwards per block
  const double packed = 3.0 * L * fwd(L);                                 // forward + backward
  return (collect + packed) / (static_cast<double>(T_ctx) * static_cast<double>(opt.row_every));
}

std::string JacobiForcingImpl::describe() const {
  std::ostringstream os;
  os << "jacobi_forcing (consistency on the model's own Jacobi trajectories: " << opt.blocks << " blocks of "
     << opt.block << " after a " << opt.prompt << "-token prompt, one row in " << opt.row_every
     << "; progressive noise, noise-aware causal mask; weight " << opt.weight << ")";
  return os.str();
}

JacobiForcingOptions JacobiForcingOptions::from(const catalog::ModuleArgs& args) {
  JacobiForcingOptions o;
  o.block = args.i64("block");
  o.blocks = args.i64("blocks");
  o.prompt = args.i64("prompt");
  o.row_every = args.i64("row_every");
  o.weight = args.f64("weight");
  return o;
}

void apply_jacobi_forcing(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  // Modules that look across positions other than through attention's mask would read the packed
  // row as one text (n-grams across blocks, a recurrence over them, routing or top-k over them).
  static const std::set<std::string> across = {"mamba3", "engram", "mod", "dsa"};
  for (const auto& m : cfg.modules)
    SLM_CHECK(!across.count(m.name), "[jacobi_forcing] ", m.name,
              " looks across positions outside attention's mask, which the noise-aware mask cannot steer; "
              "drop one of the two");
  for (size_t l = 0; l < plan.layers.size(); ++l)
    SLM_CHECK(plan.layers[l].kind == 'A', "[jacobi_forcing] layer ", l, " is not attention (kind '",
              plan.layers[l].kind, "'); the noise-aware mask needs attention on every layer");
  const JacobiForcingOptions o = JacobiForcingOptions::from(args);
  plan.objectives.push_back([o, cfg] { return Objective(std::make_shared<JacobiForcingImpl>(o, cfg)); });
}

}  // namespace slm
