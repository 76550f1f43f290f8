// Jacobi decoding against plain cached greedy decoding on a trained run, on the CPU: the same model,
// the same prompts (windows of the validation split, fixed), the same thread count. Per method:
// tokens/s, tokens per iteration (block forward), forwards in all (prefill and state re-runs
// included), speedup over plain, and exactness (every prompt's output must equal greedy's; a
// mismatch is reported and the exit status is 1). Methods interleave per prompt, so load from other
// processes falls on all of them alike.
//   build/bench/bench_jacobi RUN_DIR [--threads N] [--prompts K] [--prompt-tokens P] [--max-tokens M]
//                                    [--blocks 2,4,8,16]
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
#include "model/generate.h"
#include "train/run.h"

using namespace slm;
using clk = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "usage: bench_jacobi RUN_DIR [--threads N] [--prompts K] [--prompt-tokens P] [--max-tokens M] [--blocks 2,4,8]\n");
    return 2;
  }
  const std::string run_dir = argv[1];
  int threads = 2;
  int64_t prompts = 8, prompt_tokens = 32, max_tokens = 64;
  std::vector<int64_t> blocks = {2, 4, 8, 16};
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--prompts")) prompts = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--prompt-tokens")) prompt_tokens = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--max-tokens")) max_tokens = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--blocks")) {
      blocks.clear();
      std::stringstream ss(argv[i + 1]);
      for (std::string b; std::getline(ss, b, ',');) blocks.push_back(std::atoll(b.c_str()));
    } else {
      std::fprintf(stderr, "bench_jacobi: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  at::set_num_threads(threads);
  LoadedRun run = load_run(run_dir, "latest");
  data::DataSet ds(run.config.at("data").at("dir").get<std::string>());
  if (prompt_tokens + max_tokens > run.model_cfg.context) {
    std::fprintf(stderr, "bench_jacobi: --prompt-tokens + --max-tokens exceeds the run's context %lld\n",
                 (long long)run.model_cfg.context);
    return 2;
  }
  // Prompts: BOS, then the first prompt_tokens - 1 tokens of evenly spread validation rows.
  const data::EvalRows rows = data::eval_rows(ds, prompt_tokens, static_cast<uint64_t>(prompts * prompt_tokens));
  std::vector<std::vector<int32_t>> ps;
  for (int64_t r = 0; r < rows.n_rows && static_cast<int64_t>(ps.size()) < prompts; ++r) {
    const int32_t* t = rows.tokens.data() + r * (prompt_tokens + 1);
    std::vector<int32_t> p = {TOK_BOS};
    p.insert(p.end(), t, t + prompt_tokens - 1);
    ps.push_back(p);
  }
  std::printf("%s (step %lld): %lld x %lld, context %lld, %d threads; %zu validation prompts of %lld tokens, %lld new "
              "tokens each (greedy, no stop token)\n",
              run_dir.c_str(), (long long)run.step, (long long)run.model_cfg.n_layer, (long long)run.model_cfg.d_model,
              (long long)run.model_cfg.context, threads, ps.size(), (long long)prompt_tokens, (long long)max_tokens);

  struct Method {
    std::string name;
    int64_t block = 0;  // 0: plain cached greedy
    double seconds = 0;
    int64_t tokens = 0, iterations = 0, forwards = 0, mismatches = 0;
  };
  std::vector<Method> ms = {{"greedy (cached)", 0}};
  for (int64_t b : blocks) ms.push_back({"jacobi block " + std::to_string(b), b});
  for (const auto& p : ps) {
    std::vector<int32_t> ref;
    for (auto& m : ms) {
      GenerateOptions g;
      g.max_tokens = max_tokens;
      g.jacobi = m.block > 0;
      g.block = m.block;
      GenerateStats st;
      const auto t0 = clk::now();
      auto out = generate(*run.model, p, g, &st);
      m.seconds += std::chrono::duration<double>(clk::now() - t0).count();
      m.tokens += st.tokens;
      m.iterations += st.iterations;
      m.forwards += st.forwards;
      if (m.block == 0) ref = out;
      else if (out != ref) ++m.mismatches;
    }
  }
  int status = 0;
  std::printf("%-18s %10s %9s %14s %10s %8s %s\n", "method", "tokens/s", "speedup", "tokens/iter", "forwards", "exact", "");
  for (const auto& m : ms) {
    const double tps = m.tokens / m.seconds;
    std::printf("%-18s %10.1f %8.2fx %14.3f %10lld %7.0f%%\n", m.name.c_str(), tps, tps / (ms[0].tokens / ms[0].seconds),
                static_cast<double>(m.tokens) / static_cast<double>(m.iterations), (long long)m.forwards,
                100.0 * (ps.size() - m.mismatches) / ps.size());
    if (m.mismatches) status = 1;
  }
  return status;
}
