// Optimizer tests: AdamW and Muon against formulas computed here in double precision,
// Newton-Schulz's singular-value band, bitwise checkpoint resume, and convergence on a toy fit.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "train/optim.h"

namespace {

using slm::Optimizer;
using slm::OptimOptions;
using slm::ParamGroup;

// A leaf parameter holding a copy of init.
torch::Tensor param(const torch::Tensor& init) {
  torch::Tensor p = init.detach().clone();
  p.set_requires_grad(true);
  return p;
}

// Gives p a gradient (a copy, so the optimizer never aliases the caller's tensor).
void set_grad(const torch::Tensor& p, const torch::Tensor& g) { p.mutable_grad() = g.detach().clone(); }

// Asserts that fn throws slm::Error whose message contains every one of parts.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no slm::Error thrown";
  } catch (const slm::Error& e) {
    for (const std::string& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// Reference quintic Newton-Schulz in double, written from the formulas independently of optim.cpp.
torch::Tensor ns_reference(torch::Tensor g, int steps) {
  torch::Tensor x = g.to(torch::kDouble);
  const bool tall = x.size(0) > x.size(1);
  if (tall) x = x.t();
  x = x / (x.norm() + 1e-7);
  for (int i = 0; i < steps; ++i) {
    torch::Tensor a = x.matmul(x.t());
    torch::Tensor b = -4.7750 * a + 2.0315 * a.matmul(a);
    x = 3.4445 * x + b.matmul(x);
  }
  return tall ? x.t() : x;
}

TEST(AdamW, MatchesHandComputedReferenceForThreeSteps) {
  const std::vector<double> p0 = {0.5, -1.0, 2.0, 0.0};
  const std::vector<std::vector<double>> grads = {{0.1, -0.2, 0.3, 1.0}, {-0.4, 0.5, 0.05, 0.7}, {0.2, 0.2, -0.6, -1.5}};
  const std::vector<double> factors = {1.0, 0.5, 0.25};
  const double lr = 0.1, wd = 0.2, b1 = 0.9, b2 = 0.99, eps = 1e-8;
  OptimOptions opt;
  opt.beta1 = b1, opt.beta2 = b2, opt.eps = eps;
  torch::Tensor p = param(torch::tensor(std::vector<float>(p0.begin(), p0.end())));
  Optimizer o({ParamGroup{"scalar", "adamw", lr, wd, {"p"}, {p}}}, opt);

  std::vector<double> ref = p0, m(4, 0.0), v(4, 0.0);
  for (int t = 1; t <= 3; ++t) {
    const std::vector<double>& g = grads[t - 1];
    set_grad(p, torch::tensor(std::vector<float>(g.begin(), g.end())));
    o.step(factors[t - 1]);
    const double step_lr = lr * factors[t - 1];
    for (int i = 0; i < 4; ++i) {
      const double gi = static_cast<float>(g[i]);  // the optimizer sees the float grad
      m[i] = b1 * m[i] + (1 - b1) * gi;
      v[i] = b2 * v[i] + (1 - b2) * gi * gi;
      const double m_hat = m[i] / (1 - std::pow(b1, t)), v_hat = v[i] / (1 - std::pow(b2, t));
      ref[i] = ref[i] * (1 - step_lr * wd) - step_lr * m_hat / (std::sqrt(v_hat) + eps);
    }
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(p[i].item<double>(), ref[i], 2e-6) << "step " << t << " elem " << i;
  }
}

// The per-parameter AdamW loop the optimizer ran before its multi-tensor form, kept verbatim in
// its arithmetic: on CPU the _foreach_ path must reproduce it bit for bit (checkpoints of runs made
// before the change resume onto the same curve).
struct LoopAdamW {
  LoopAdamW(double b1, double b2, double e) : beta1(b1), beta2(b2), eps(e) {}
  double beta1, beta2, eps;
  int64_t step = 0;
  std::vector<torch::Tensor> m, v;  // one pair per parameter, fp32
  // One step over params (each with lr and weight decay); a param without grad is skipped.
  void update(std::vector<torch::Tensor>& params, const std::vector<double>& lrs, const std::vector<double>& wds) {
    torch::NoGradGuard no_grad;
    if (m.empty())
      for (auto& p : params) {
        m.push_back(torch::zeros(p.sizes(), p.options().dtype(torch::kFloat)));
        v.push_back(torch::zeros(p.sizes(), p.options().dtype(torch::kFloat)));
      }
    ++step;
    const double bc1 = 1 - std::pow(beta1, static_cast<double>(step));
    const double bc2 = 1 - std::pow(beta2, static_cast<double>(step));
    for (size_t i = 0; i < params.size(); ++i) {
      torch::Tensor& p = params[i];
      if (!p.grad().defined()) continue;
      const torch::Tensor grad = p.grad().to(torch::kFloat);
      m[i].lerp_(grad, 1 - beta1);
      v[i].mul_(beta2).addcmul_(grad, grad, 1 - beta2);
      torch::Tensor update = v[i].sqrt().div_(std::sqrt(bc2)).add_(eps);
      torch::div_out(update, m[i], update);
      if (wds[i] > 0) p.mul_(1 - lrs[i] * wds[i]);
      p.add_(update, -lrs[i] / bc1);
    }
  }
};

TEST(AdamW, MultiTensorStepEqualsPerParameterLoopBitwise) {
  torch::manual_seed(11);
  // Varied shapes (a scalar, a vector, matrices, a 3-D tensor, a size-1 dim), two groups with and
  // without decay, a bf16 parameter among fp32 ones, and gradients missing on some steps.
  const std::vector<std::vector<int64_t>> shapes = {{}, {7}, {3, 5}, {2, 3, 4}, {4, 1, 3}, {64, 33}, {5}};
  const std::vector<int> group = {0, 0, 1, 1, 0, 1, 1};
  const std::vector<double> base_lr = {0.03, 0.007}, wd = {0.0, 0.15};
  std::vector<torch::Tensor> a, b;  // a: Optimizer, b: the loop
  for (size_t i = 0; i < shapes.size(); ++i) {
    torch::Tensor init = torch::randn(shapes[i]);
    if (i == 6) init = init.to(torch::kBFloat16);
    a.push_back(param(init)), b.push_back(param(init));
  }
  std::vector<ParamGroup> groups = {{"g0", "adamw", base_lr[0], wd[0], {}, {}}, {"g1", "adamw", base_lr[1], wd[1], {}, {}}};
  for (size_t i = 0; i < a.size(); ++i) {
    groups[group[i]].names.push_back("p" + std::to_string(i));
    groups[group[i]].params.push_back(a[i]);
  }
  OptimOptions opt;
  opt.beta1 = 0.85, opt.beta2 = 0.97, opt.eps = 1e-8;
  Optimizer o(groups, opt);
  LoopAdamW loop(opt.beta1, opt.beta2, opt.eps);
  for (int t = 0; t < 8; ++t) {
    const double f = 1.0 - t / 10.0;
    std::vector<double> lrs, wds;
    for (size_t i = 0; i < a.size(); ++i) {
      lrs.push_back(base_lr[group[i]] * f), wds.push_back(wd[group[i]]);
      if ((t + static_cast<int>(i)) % 5 == 3) {  // no gradient this step: skipped by both
        a[i].mutable_grad() = torch::Tensor(), b[i].mutable_grad() = torch::Tensor();
        continue;
      }
      const torch::Tensor g = torch::randn(shapes[i]).to(a[i].scalar_type()) * (1 + t);
      set_grad(a[i], g), set_grad(b[i], g);
    }
    o.step(f);
    loop.update(b, lrs, wds);
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_TRUE(torch::equal(a[i], b[i])) << "param " << i << " step " << t;
      const auto st = o.state_of(a[i]);
      ASSERT_TRUE(torch::equal(st.at("exp_avg"), loop.m[i])) << "exp_avg " << i << " step " << t;
      ASSERT_TRUE(torch::equal(st.at("exp_avg_sq"), loop.v[i])) << "exp_avg_sq " << i << " step " << t;
    }
  }
}

TEST(AdamW, WeightDecayIsDecoupled) {
  torch::manual_seed(1);
  const torch::Tensor init = torch::randn({3, 5}), g1 = torch::randn({3, 5}), g2 = torch::randn({3, 5});
  const double lr = 0.05, wd = 0.3;
  torch::Tensor a = param(init), b = param(init);
  Optimizer plain({ParamGroup{"x", "adamw", lr, 0.0, {"w"}, {a}}}, OptimOptions{});
  Optimizer decayed({ParamGroup{"x", "adamw", lr, wd, {"w"}, {b}}}, OptimOptions{});
  for (const torch::Tensor& g : {g1, g2}) {
    torch::Tensor a_before = a.detach().clone(), b_before = b.detach().clone();
    set_grad(a, g), set_grad(b, g);
    plain.step(1.0), decayed.step(1.0);
    // Same Adam step for both; decay only scales b's previous value by (1 - lr*wd).
    torch::Tensor adam_a = a.detach() - a_before, adam_b = b.detach() - b_before * (1 - lr * wd);
    EXPECT_TRUE(torch::allclose(adam_a, adam_b, 1e-5, 1e-6));
  }
  EXPECT_GT((a - b).abs().max().item<double>(), 1e-3);
  // Decay never reaches the moments (it would under L2-coupled decay).
  auto sa = plain.state(), sb = decayed.state();
  EXPECT_TRUE(torch::equal(sa.at("w.exp_avg"), sb.at("w.exp_avg")));
  EXPECT_TRUE(torch::equal(sa.at("w.exp_avg_sq"), sb.at("w.exp_avg_sq")));
}

TEST(NewtonSchulz, SingularValuesLandInBandAndShapeDtypeKept) {
  torch::manual_seed(2);
  for (auto shape : {std::vector<int64_t>{32, 64}, std::vector<int64_t>{64, 32}}) {
    const torch::Tensor g = torch::randn(shape);
    const torch::Tensor x = slm::zeropower_newton_schulz(g, 5, false);
    EXPECT_EQ(x.sizes(), g.sizes());
    EXPECT_EQ(x.scalar_type(), g.scalar_type());
    const torch::Tensor s = torch::linalg::svdvals(x.to(torch::kDouble), c10::nullopt);
    EXPECT_GE(s.min().item<double>(), 0.6) << shape[0] << "x" << shape[1];
    EXPECT_LE(s.max().item<double>(), 1.3) << shape[0] << "x" << shape[1];
    // It orthogonalizes g itself: close to U V^T of g's SVD, not just any semi-orthogonal matrix.
    auto [u, sg, vh] = torch::linalg::svd(g.to(torch::kDouble), false, c10::nullopt);
    const torch::Tensor uv = u.matmul(vh);
    const double cosine = ((x.to(torch::kDouble) * uv).sum() / (x.norm() * uv.norm())).item<double>();
    EXPECT_GT(cosine, 0.95);
  }
}

TEST(NewtonSchulz, Bf16PathStaysInBandAndReturnsInputDtype) {
  torch::manual_seed(3);
  const torch::Tensor g = torch::randn({32, 64});
  const torch::Tensor x = slm::zeropower_newton_schulz(g, 5, true);
  EXPECT_EQ(x.scalar_type(), torch::kFloat);
  const torch::Tensor s = torch::linalg::svdvals(x.to(torch::kDouble), c10::nullopt);
  EXPECT_GE(s.min().item<double>(), 0.6);
  EXPECT_LE(s.max().item<double>(), 1.3);
  EXPECT_EQ(slm::zeropower_newton_schulz(g.to(torch::kDouble), 5, false).scalar_type(), torch::kDouble);
}

TEST(NewtonSchulz, RankDeficientAndZeroInputsStayFinite) {
  torch::manual_seed(4);
  const torch::Tensor rank1 = torch::outer(torch::randn({32}), torch::randn({64}));
  const torch::Tensor x = slm::zeropower_newton_schulz(rank1, 5, false);
  EXPECT_TRUE(torch::isfinite(x).all().item<bool>());
  // The one nonzero direction is orthogonalized; the null space stays null.
  const torch::Tensor s = torch::linalg::svdvals(x.to(torch::kDouble), c10::nullopt);
  EXPECT_GE(s[0].item<double>(), 0.6);
  EXPECT_LE(s[0].item<double>(), 1.3);
  EXPECT_LT(s[1].item<double>(), 1e-3);
  const torch::Tensor zero = slm::zeropower_newton_schulz(torch::zeros({64, 32}), 5, false);
  EXPECT_TRUE(torch::equal(zero, torch::zeros({64, 32})));
  expect_error([] { slm::zeropower_newton_schulz(torch::ones({4}), 5, false); }, {"2-D"});
}

TEST(Muon, TwoStepsMatchReferenceFormula) {
  torch::manual_seed(5);
  // A tall matrix exercises the transpose and the sqrt(rows/cols) scale.
  const torch::Tensor init = torch::randn({6, 4});
  const std::vector<torch::Tensor> grads = {torch::randn({6, 4}), torch::randn({6, 4})};
  const double lr = 0.02, wd = 0.1, mom = 0.9;
  OptimOptions opt;
  opt.momentum = mom;
  torch::Tensor w = param(init);
  Optimizer o({ParamGroup{"matrix", "muon", lr, wd, {"w"}, {w}}}, opt);

  torch::Tensor ref = init.to(torch::kDouble), buf = torch::zeros({6, 4}, torch::kDouble);
  const std::vector<double> factors = {1.0, 0.5};
  for (int t = 0; t < 2; ++t) {
    set_grad(w, grads[t]);
    o.step(factors[t]);
    const torch::Tensor g = grads[t].to(torch::kDouble);
    buf = mom * buf + (1 - mom) * g;
    const torch::Tensor nesterov = (1 - mom) * g + mom * buf;
    const double step_lr = lr * factors[t];
    ref = ref * (1 - step_lr * wd) - step_lr * std::sqrt(6.0 / 4.0) * ns_reference(nesterov, 5);
    EXPECT_TRUE(torch::allclose(w.detach().to(torch::kDouble), ref, 0, 2e-6)) << "step " << t;
    EXPECT_TRUE(torch::allclose(o.state().at("w.momentum").to(torch::kDouble), buf, 0, 1e-7));
  }
}

TEST(Muon, RejectsNon2DParamNamingIt) {
  torch::Tensor b = param(torch::zeros({8}));
  expect_error([&] { Optimizer({ParamGroup{"matrix", "muon", 0.02, 0, {"blocks.0.bias"}, {b}}}, OptimOptions{}); },
               {"blocks.0.bias", "2-D", "adamw"});
  expect_error([&] { Optimizer({ParamGroup{"matrix", "sgd", 0.02, 0, {"b"}, {b}}}, OptimOptions{}); }, {"sgd"});
  expect_error([&] {
    Optimizer({ParamGroup{"a", "adamw", 0.1, 0, {"b"}, {b}}, ParamGroup{"c", "adamw", 0.1, 0, {"b"}, {b}}},
              OptimOptions{});
  }, {"'b'", "twice"});
}

TEST(Optimizer, ZeroGradDropsGradsAndStepSkipsParamsWithoutGrad) {
  torch::Tensor w = param(torch::ones({4, 4})), e = param(torch::ones({3}));
  Optimizer o({ParamGroup{"m", "muon", 0.1, 0.5, {"w"}, {w}}, ParamGroup{"s", "adamw", 0.1, 0.5, {"e"}, {e}}},
              OptimOptions{});
  set_grad(w, torch::ones({4, 4})), set_grad(e, torch::ones({3}));
  o.zero_grad();
  EXPECT_FALSE(w.grad().defined());
  EXPECT_FALSE(e.grad().defined());
  o.step(1.0);
  // Even weight decay is skipped without a gradient.
  EXPECT_TRUE(torch::equal(w.detach(), torch::ones({4, 4})));
  EXPECT_TRUE(torch::equal(e.detach(), torch::ones({3})));
  EXPECT_EQ(o.state().at("step").item<int64_t>(), 1);
}

TEST(Optimizer, Bf16ParamsGetTheFp32UpdateRoundedOnce) {
  torch::manual_seed(9);
  // bf16-representable values, so both runs start from and see exactly the same numbers.
  auto bf16_exact = [](std::vector<int64_t> shape) { return torch::randn(shape).to(torch::kBFloat16).to(torch::kFloat); };
  const torch::Tensor w0 = bf16_exact({6, 4}), b0 = bf16_exact({4}), gw = bf16_exact({6, 4}), gb = bf16_exact({4});
  std::vector<torch::Tensor> results;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    torch::Tensor w = param(w0.to(dtype)), b = param(b0.to(dtype));
    Optimizer o({ParamGroup{"m", "muon", 0.02, 0, {"w"}, {w}}, ParamGroup{"s", "adamw", 0.01, 0, {"b"}, {b}}},
                OptimOptions{});
    set_grad(w, gw.to(dtype)), set_grad(b, gb.to(dtype));
    o.step(1.0);
    EXPECT_EQ(w.scalar_type(), dtype);
    EXPECT_EQ(o.state().at("b.exp_avg").scalar_type(), torch::kFloat);
    results.push_back(torch::cat({w.detach().flatten(), b.detach()}));
  }
  EXPECT_TRUE(torch::equal(results[0].to(torch::kBFloat16), results[1]));
  EXPECT_FALSE(torch::equal(results[1].to(torch::kFloat), torch::cat({w0.flatten(), b0})));
}

// A mixed model for the checkpoint tests: one muon matrix, two adamw tensors, one with decay.
struct Model {
  torch::Tensor w, e, b;
  // Leaf copies of the given values.
  Model(const torch::Tensor& w0, const torch::Tensor& e0, const torch::Tensor& b0)
      : w(param(w0)), e(param(e0)), b(param(b0)) {}
  // An optimizer over this model's parameters.
  Optimizer optimizer() const {
    return Optimizer({ParamGroup{"matrix", "muon", 0.02, 0.01, {"w"}, {w}},
                      ParamGroup{"embed", "adamw", 0.05, 0.1, {"e"}, {e}},
                      ParamGroup{"scalar", "adamw", 0.01, 0.0, {"b"}, {b}}},
                     OptimOptions{});
  }
  // Sets the gradients of step t from a fixed table.
  void grads(const std::vector<std::vector<torch::Tensor>>& table, int t) const {
    set_grad(w, table[t][0]), set_grad(e, table[t][1]), set_grad(b, table[t][2]);
  }
};

// Per-step gradients for 10 steps, fixed by seed.
std::vector<std::vector<torch::Tensor>> grad_table() {
  torch::manual_seed(6);
  std::vector<std::vector<torch::Tensor>> t;
  for (int i = 0; i < 10; ++i) t.push_back({torch::randn({6, 4}), torch::randn({5, 3}), torch::randn({4})});
  return t;
}

TEST(Checkpoint, RestoreResumesBitwiseIdentically) {
  const auto table = grad_table();
  torch::manual_seed(7);
  Model a(torch::randn({6, 4}), torch::randn({5, 3}), torch::randn({4}));
  Optimizer oa = a.optimizer();
  auto factor = [](int t) { return 1.0 - t / 10.0; };
  for (int t = 0; t < 5; ++t) a.grads(table, t), oa.step(factor(t));
  const auto snapshot = oa.state();
  Model b(a.w, a.e, a.b);
  EXPECT_EQ(snapshot.size(), 6u);  // w.momentum, e/b exp_avg and exp_avg_sq, step
  EXPECT_EQ(snapshot.at("step").scalar_type(), torch::kInt64);
  EXPECT_EQ(snapshot.at("step").dim(), 0);
  EXPECT_EQ(snapshot.at("step").item<int64_t>(), 5);

  // a runs on before b restores: the snapshot must not follow a's later steps.
  for (int t = 5; t < 10; ++t) a.grads(table, t), oa.step(factor(t));
  Optimizer ob = b.optimizer();
  ob.restore(snapshot);
  for (int t = 5; t < 10; ++t) b.grads(table, t), ob.step(factor(t));

  EXPECT_TRUE(torch::equal(a.w, b.w));
  EXPECT_TRUE(torch::equal(a.e, b.e));
  EXPECT_TRUE(torch::equal(a.b, b.b));
  for (const auto& [key, t] : oa.state()) EXPECT_TRUE(torch::equal(t, ob.state().at(key))) << key;
}

TEST(Checkpoint, RestoreRejectsMissingExtraAndMisshapenKeys) {
  Model m(torch::zeros({6, 4}), torch::zeros({5, 3}), torch::zeros({4}));
  Optimizer o = m.optimizer();
  const auto good = o.state();

  auto missing = good;
  missing.erase("w.momentum");
  expect_error([&] { o.restore(missing); }, {"'w.momentum'", "missing"});
  auto no_step = good;
  no_step.erase("step");
  expect_error([&] { o.restore(no_step); }, {"'step'", "missing"});

  auto extra = good;
  extra["x.exp_avg"] = torch::zeros({2});
  expect_error([&] { o.restore(extra); }, {"'x.exp_avg'", "unknown"});

  auto misshapen = good;
  misshapen["b.exp_avg_sq"] = torch::ones({5});
  misshapen["step"] = torch::scalar_tensor(3, torch::kInt64);
  expect_error([&] { o.restore(misshapen); }, {"'b.exp_avg_sq'", "[5]", "[4]"});
  // Nothing was copied before the shape check failed.
  EXPECT_EQ(o.state().at("step").item<int64_t>(), 0);

  auto wrong_dtype = good;
  wrong_dtype["e.exp_avg"] = torch::zeros({5, 3}, torch::kDouble);
  expect_error([&] { o.restore(wrong_dtype); }, {"'e.exp_avg'", "Double"});
}

// Fits W (8x8, from zero) to y = W* x by MSE; returns {first loss, last loss}.
std::pair<double, double> fit(const std::string& kind, double lr) {
  torch::manual_seed(8);
  const torch::Tensor target = torch::randn({8, 8}), x = torch::randn({8, 64});
  const torch::Tensor y = target.matmul(x);
  torch::Tensor w = param(torch::zeros({8, 8}));
  Optimizer o({ParamGroup{"matrix", kind, lr, 0.0, {"w"}, {w}}}, OptimOptions{});
  double first = 0, last = 0;
  const int steps = 200;
  for (int t = 0; t < steps; ++t) {
    torch::Tensor loss = torch::mse_loss(w.matmul(x), y);
    loss.backward();
    if (t == 0) first = loss.item<double>();
    last = loss.item<double>();
    o.step(1.0 - static_cast<double>(t) / steps);  // linear decay, so the fixed-size Muon steps settle
    o.zero_grad();
  }
  return {first, last};
}

TEST(Convergence, TinyRegressionFitsWithMuonAndAdamW) {
  for (auto [kind, lr] : {std::pair<std::string, double>{"muon", 0.1}, {"adamw", 0.1}}) {
    auto [first, last] = fit(kind, lr);
    EXPECT_LT(last, first / 10) << kind << ": loss " << first << " -> " << last;
  }
}

}  // namespace
