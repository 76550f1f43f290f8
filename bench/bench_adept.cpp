// ADEPT-style early exit (model/adept.h) on a trained run, on the CPU: the curve over the exit
// threshold. Per threshold: val_bpb of the exiting model and its mean full layers per token on the
// validation budget (quality beside compute), then plain cached greedy decoding of fixed validation
// prompts with exits: layers per token (prefill included), tokens/s, speedup over the plain model
// and the share of generated tokens equal to the plain model's (position by position). Thresholds
// interleave per prompt, so load from other processes falls on all of them alike.
//   build/bench/bench_adept RUN_DIR [--threads N] [--thresholds 0,0.05,0.1] [--min-layers K]
//                                   [--tokens N] [--prompts K] [--prompt-tokens P] [--max-tokens M]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "eval/bpb.h"
#include "model/adept.h"
#include "model/generate.h"
#include "train/run.h"

using namespace slm;
using clk = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "usage: bench_adept RUN_DIR [--threads N] [--thresholds 0,0.05,0.1] [--min-layers K] "
                         "[--tokens N] [--prompts K] [--prompt-tokens P] [--max-tokens M]\n");
    return 2;
  }
  const std::string run_dir = argv[1];
  int threads = 1;
  int64_t prompts = 8, prompt_tokens = 32, max_tokens = 64, tokens = 16384, min_layers = 1;
  std::vector<double> thresholds = {0.02, 0.05, 0.1, 0.2};
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--prompts")) prompts = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--prompt-tokens")) prompt_tokens = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--max-tokens")) max_tokens = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens")) tokens = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--min-layers")) min_layers = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--thresholds")) {
      thresholds.clear();
      std::stringstream ss(argv[i + 1]);
      for (std::string t; std::getline(ss, t, ',');) thresholds.push_back(std::atof(t.c_str()));
    } else {
      std::fprintf(stderr, "bench_adept: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  at::set_num_threads(threads);
  LoadedRun run = load_run(run_dir, "latest");
  GPTImpl& model = *run.model;
  data::DataSet ds(run.config.at("data").at("dir").get<std::string>());
  const int64_t context = run.model_cfg.context;
  if (prompt_tokens + max_tokens > context) {
    std::fprintf(stderr, "bench_adept: --prompt-tokens + --max-tokens exceeds the run's context %lld\n", (long long)context);
    return 2;
  }
  const bool bf16 = run.config.value("precision", std::string("fp32")) == "bf16";
  const int64_t batch_rows = run.config.value("device_batch", int64_t(16));
  // Prompts: BOS, then the first prompt_tokens - 1 tokens of evenly spread validation rows.
  const data::EvalRows rows = data::eval_rows(ds, prompt_tokens, static_cast<uint64_t>(prompts * prompt_tokens));
  std::vector<std::vector<int32_t>> ps;
  for (int64_t r = 0; r < rows.n_rows && static_cast<int64_t>(ps.size()) < prompts; ++r) {
    const int32_t* t = rows.tokens.data() + r * (prompt_tokens + 1);
    std::vector<int32_t> p = {TOK_BOS};
    p.insert(p.end(), t, t + prompt_tokens - 1);
    ps.push_back(p);
  }
  std::printf("%s (step %lld): %lld x %lld, context %lld, %s, %d threads; val_bpb over %lld tokens; %zu validation "
              "prompts of %lld tokens, %lld new tokens each (cached greedy, no stop token); min_layers %lld\n",
              run_dir.c_str(), (long long)run.step, (long long)run.model_cfg.n_layer, (long long)run.model_cfg.d_model,
              (long long)context, bf16 ? "bf16" : "fp32", threads, (long long)tokens, ps.size(), (long long)prompt_tokens,
              (long long)max_tokens, (long long)min_layers);

  struct Point {
    double threshold;  // < 0: the plain model (no runner)
    std::shared_ptr<AdeptRunner> runner;
    double bpb = 0, eval_layers = 0, seconds = 0, decode_layers = 0;
    int64_t tokens = 0, same = 0;
  };
  std::vector<Point> pts = {{-1, nullptr}};
  for (double t : thresholds) pts.push_back({t, std::make_shared<AdeptRunner>(AdeptOptions{t, min_layers})});
  auto install = [&](Point& p) {
    model.layer_runner = nullptr;
    if (p.runner) {
      use_adept(model, p.runner->opt);  // checks the model once per point
      model.layer_runner = p.runner;
    }
  };
  for (auto& p : pts) {
    install(p);
    p.bpb = val_bpb(model, ds, context, tokens, batch_rows, bf16, run.device);
    if (p.runner) {
      p.eval_layers = p.runner->layers_per_token();
      p.runner->tokens = p.runner->layers = 0;
    }
  }
  for (const auto& prompt : ps) {
    std::vector<int32_t> ref;
    for (auto& p : pts) {
      install(p);
      GenerateOptions g;
      g.max_tokens = max_tokens;
      GenerateStats st;
      const auto t0 = clk::now();
      auto out = generate(model, prompt, g, &st);
      p.seconds += std::chrono::duration<double>(clk::now() - t0).count();
      p.tokens += st.tokens;
      if (!p.runner) ref = out;
      for (size_t i = 0; i < out.size() && i < ref.size(); ++i) p.same += out[i] == ref[i];
    }
  }
  model.layer_runner = nullptr;
  const double L = static_cast<double>(run.model_cfg.n_layer);
  std::printf("%-10s %12s %9s %9s %14s %10s %8s %10s\n", "threshold", "layers/tok", "val_bpb", "delta", "decode lay/tok",
              "tokens/s", "speedup", "= plain");
  const double base_tps = pts[0].tokens / pts[0].seconds;
  for (const auto& p : pts) {
    const double tps = p.tokens / p.seconds;
    const double dl = p.runner ? p.runner->layers_per_token() : L;
    std::printf("%-10s %12.3f %9.4f %+9.4f %14.3f %10.1f %7.2fx %9.1f%%\n",
                p.runner ? std::to_string(p.threshold).substr(0, 6).c_str() : "off", p.runner ? p.eval_layers : L, p.bpb,
                p.bpb - pts[0].bpb, dl, tps, tps / base_tps, 100.0 * p.same / std::max<int64_t>(p.tokens, 1));
  }
  return 0;
}
