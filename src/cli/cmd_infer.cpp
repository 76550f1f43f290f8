// The inference lane's commands: slmlab draft train (EAGLE-2's draft head on a finished run,
// train/draft.h); generate --speculative eagle2 (greedy text through the draft head and tree
// verification, model/eagle.h); slmlab eval decode (decoding methods against plain cached greedy
// on held-out function prompts, eval/decode.h).
#include <algorithm>
#include <cstdio>
#include <optional>
#include <thread>

#include "catalog/catalog.h"
#include "cli/commands.h"
#include "common/error.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "eval/decode.h"
#include "model/eagle.h"
#include "train/draft.h"
#include "train/run.h"
#include "train/step_profile.h"

namespace slm::cli {

namespace {
int set_threads(const Args& a) {
  const int64_t threads = a.i64("threads");
  SLM_CHECK(threads >= 0 && threads <= 1024, "--threads ", threads, " is outside [0, 1024]");
  at::set_num_threads(threads > 0 ? static_cast<int>(threads) : std::max(1u, std::thread::hardware_concurrency()));
  return at::get_num_threads();
}
}  // namespace

int cmd_draft_train(const Args& a) {
  set_threads(a);
  DraftTrainOptions o;
  o.run_dir = a.positional[0];
  o.checkpoint = a.str("checkpoint");
  o.out_dir = a.str("out");
  o.steps = a.i64("steps");
  o.batch_rows = a.i64("batch-rows");
  o.lr = a.f64("lr");
  o.w_token = a.f64("w-token");
  o.eval_every = a.i64("eval-every");
  o.eval_rows = a.i64("eval-rows");
  o.seed = static_cast<uint64_t>(a.i64("seed"));
  o.resume = a.flag("resume");
  o.quiet = a.flag("quiet");
  return draft_train(o);
}

int generate_speculative(const Args& a, LoadedRun& run, const std::vector<int32_t>& prompt, const GenerateOptions& g,
                         const Tokenizer& tok) {
  SLM_CHECK(a.str("speculative") == "eagle2", "generate: --speculative ", a.str("speculative"), " is not a method; use eagle2");
  SLM_CHECK(a.str("decode") == "greedy", "generate: --speculative eagle2 decodes greedily itself; drop --decode ", a.str("decode"));
  SLM_CHECK(g.temperature <= 0, "generate: --speculative eagle2 is greedy (its output is greedy's); drop --temperature ",
            g.temperature);
  SLM_CHECK(g.use_cache, "generate: --speculative eagle2 verifies against the cache; drop --no-cache");
  // The row holds the defaults and the ranges (catalog/modules/eagle2.cpp).
  std::vector<std::string> errors;
  std::map<std::string, std::string> given;
  if (a.has("draft-depth")) given["depth"] = a.str("draft-depth");
  if (a.has("draft-top-k")) given["top_k"] = a.str("draft-top-k");
  if (a.has("draft-tokens")) given["total_tokens"] = a.str("draft-tokens");
  const catalog::ModuleArgs row = catalog::resolve("eagle2", given, errors);
  if (!errors.empty()) fail("generate: --speculative eagle2: ", errors[0]);
  EagleOptions eo;
  eo.depth = row.i64("depth");
  eo.top_k = row.i64("top_k");
  eo.total_tokens = row.i64("total_tokens");
  const std::string draft_dir = a.has("draft") ? a.str("draft") : run.dir + "/draft_eagle2";
  LoadedDraft d = load_draft(draft_dir, *run.model, run.checkpoint);
  EagleStats st;
  auto out = generate_eagle2(*run.model, *d.head, prompt, g, eo, &st);
  std::fputs(tok.decode(out).c_str(), stdout);
  std::fputs("\n", stdout);
  // The cost, on stderr (stdout is the text).
  std::fprintf(stderr,
               "generate: eagle2 %s depth %lld top_k %lld tokens %lld, %lld tokens, %lld forwards (%lld iterations, %lld "
               "re-runs), %lld draft forwards, %lld of %lld draft tokens accepted, %.3f tokens per iteration\n",
               st.tree ? "tree" : "chain", static_cast<long long>(eo.depth), static_cast<long long>(eo.top_k),
               static_cast<long long>(eo.total_tokens), static_cast<long long>(st.gen.tokens),
               static_cast<long long>(st.gen.forwards), static_cast<long long>(st.gen.iterations),
               static_cast<long long>(st.gen.replays), static_cast<long long>(st.draft_forwards),
               static_cast<long long>(st.accepted), static_cast<long long>(st.drafted),
               st.gen.iterations > 0 ? static_cast<double>(st.gen.tokens) / static_cast<double>(st.gen.iterations) : 0.0);
  return 0;
}

int cmd_eval_decode(const Args& a) {
  const int threads = set_threads(a);
  const std::string run_dir = a.positional[0];
  // Methods: "jacobi[.block=N]" and "eagle2[.depth=N,...]", resolved by their catalog rows.
  std::vector<eval::DecodeMethod> methods;
  for (const std::string& text : a.list("method")) {
    const std::string kind = text.substr(0, text.find('.'));
    SLM_CHECK(kind == "jacobi" || kind == "eagle2", "eval decode: --method ", text, " is not a method; use jacobi or eagle2");
    std::vector<std::string> errors;
    const catalog::ModuleArgs row =
        catalog::resolve_arg((kind == "jacobi" ? "jacobi_decode" : "eagle2") + text.substr(kind.size()), errors);
    if (!errors.empty()) fail("eval decode: --method ", text, ": ", errors[0]);
    eval::DecodeMethod m;
    m.kind = kind;
    if (kind == "jacobi") m.block = row.i64("block");
    else m.eagle = {row.i64("depth"), row.i64("top_k"), row.i64("total_tokens")};
    methods.push_back(m);
  }
  SLM_CHECK(!methods.empty(), "eval decode: give at least one --method (jacobi or eagle2)");
  const int64_t n = a.i64("prompts"), max_tokens = a.i64("max-tokens");
  SLM_CHECK(n >= 1, "eval decode: --prompts must be >= 1");
  LoadedRun run = load_run(run_dir, a.str("checkpoint"));
  const int64_t context = run.model_cfg.context;
  SLM_CHECK(max_tokens >= 1 && max_tokens <= context / 2, "eval decode: --max-tokens ", max_tokens, " must lie in [1, context / 2 = ",
            context / 2, "]");
  std::optional<LoadedDraft> draft;
  for (const auto& m : methods)
    if (m.kind == "eagle2" && !draft) draft = load_draft(a.has("draft") ? a.str("draft") : run.dir + "/draft_eagle2", *run.model, run.checkpoint);
  data::DataSet ds(run.config.at("data").at("dir").get<std::string>());
  const auto prompts = eval::function_prompts(ds, n, context - max_tokens - 1, static_cast<uint64_t>(a.i64("seed")));
  SLM_CHECK(!prompts.empty(), "eval decode: the validation split of ", ds.dir(), " holds no C++ function to prompt with");
  const auto rows = eval::compare_decoding(*run.model, draft ? draft->head.get() : nullptr, prompts, methods, max_tokens);
  std::printf("%s (step %lld): %lld x %lld, context %lld; %zu held-out function prompts (seed %lld), up to %lld new tokens each, "
              "greedy; %d threads\n%s\n%s",
              run_dir.c_str(), static_cast<long long>(run.step), static_cast<long long>(run.model_cfg.n_layer),
              static_cast<long long>(run.model_cfg.d_model), static_cast<long long>(context), prompts.size(),
              static_cast<long long>(a.i64("seed")), static_cast<long long>(max_tokens), threads, prof::machine_line().c_str(),
              eval::decode_table(rows).c_str());
  for (const auto& r : rows)
    if (!r.valid()) return 3;  // a lossless method that was not exact: INVALID
  return 0;
}

}  // namespace slm::cli
