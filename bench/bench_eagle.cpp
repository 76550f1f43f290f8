// EAGLE-2 against plain cached greedy decoding on a trained run and its draft head (slmlab draft
// train), on the CPU: the same model, the same prompts (windows of the validation split, fixed, as
// bench_jacobi takes them, so the figures sit beside Jacobi's), the same thread count; the table of
// eval/decode.h (`slmlab eval decode` is the same on held-out function prompts). Exit status 1 when
// an output differs from greedy's.
//   build/bench/bench_eagle RUN_DIR [--draft DRAFT_DIR] [--threads N] [--prompts K] [--prompt-tokens P]
//                                   [--max-tokens M] [--shapes 6x10x60,4x4x16,6x1x6]   (depth x top_k x tokens)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "eval/decode.h"
#include "model/eagle.h"
#include "train/draft.h"
#include "train/run.h"

using namespace slm;

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "usage: bench_eagle RUN_DIR [--draft DRAFT_DIR] [--threads N] [--prompts K] [--prompt-tokens P] "
                         "[--max-tokens M] [--shapes 6x10x60,4x4x16]\n");
    return 2;
  }
  const std::string run_dir = argv[1];
  std::string draft_dir = run_dir + "/draft_eagle2";
  int threads = 2;
  int64_t prompts = 8, prompt_tokens = 32, max_tokens = 64;
  std::vector<EagleOptions> shapes = {EagleOptions{}, {4, 4, 16}, {6, 1, 6}};
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--draft")) draft_dir = argv[i + 1];
    else if (!std::strcmp(argv[i], "--prompts")) prompts = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--prompt-tokens")) prompt_tokens = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--max-tokens")) max_tokens = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--shapes")) {
      shapes.clear();
      std::stringstream ss(argv[i + 1]);
      for (std::string s; std::getline(ss, s, ',');) {
        EagleOptions eo;
        long long d = 0, k = 0, n = 0;
        if (std::sscanf(s.c_str(), "%lldx%lldx%lld", &d, &k, &n) != 3) {
          std::fprintf(stderr, "bench_eagle: --shapes %s: write depth x top_k x tokens, e.g. 6x10x60\n", s.c_str());
          return 2;
        }
        eo.depth = d;
        eo.top_k = k;
        eo.total_tokens = n;
        shapes.push_back(eo);
      }
    } else {
      std::fprintf(stderr, "bench_eagle: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  at::set_num_threads(threads);
  LoadedRun run = load_run(run_dir, "latest");
  LoadedDraft draft = load_draft(draft_dir, *run.model, run.checkpoint);
  data::DataSet ds(run.config.at("data").at("dir").get<std::string>());
  if (prompt_tokens + max_tokens > run.model_cfg.context) {
    std::fprintf(stderr, "bench_eagle: --prompt-tokens + --max-tokens exceeds the run's context %lld\n",
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
  std::printf("%s (step %lld): %lld x %lld, context %lld, %d threads; draft %s (step %lld); %zu validation prompts of "
              "%lld tokens, %lld new tokens each (greedy, no stop token); %s verification\n",
              run_dir.c_str(), (long long)run.step, (long long)run.model_cfg.n_layer, (long long)run.model_cfg.d_model,
              (long long)run.model_cfg.context, threads, draft_dir.c_str(), (long long)draft.step, ps.size(),
              (long long)prompt_tokens, (long long)max_tokens, verifies_trees(*run.model) ? "tree" : "chain");

  std::vector<eval::DecodeMethod> methods;
  for (const auto& eo : shapes) {
    eval::DecodeMethod m;
    m.kind = "eagle2";
    m.eagle = eo;
    methods.push_back(m);
  }
  // No stop token here (as bench_jacobi): every prompt decodes max_tokens.
  const auto table = eval::compare_decoding(*run.model, draft.head.get(), ps, methods, max_tokens, /*stop=*/false);
  std::fputs(eval::decode_table(table).c_str(), stdout);
  for (const auto& r : table)
    if (!r.valid()) return 1;
  return 0;
}
