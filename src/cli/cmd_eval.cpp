// slmlab eval bpb: a trained run's val_bpb on the held-out split, at its trained context or a
// longer one (plain RoPE extrapolated, or YaRN with --module yarn), in one process or, with
// --nproc P, over P processes whose attention runs through a ring (model/ring.h). slmlab generate: text from a
// trained run, continuing a prompt or filling a middle.
#include <chrono>
#include <cstdio>
#include <optional>
#include <thread>

#include "catalog/catalog.h"
#include "cli/commands.h"
#include "common/device.h"
#include "common/error.h"
#include "common/fs.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "engine/ledger.h"
#include "eval/bpb.h"
#include "eval/compile_rate.h"
#include "eval/infill.h"
#include "model/adept.h"
#include "model/generate.h"
#include "train/dist.h"
#include "train/run.h"

namespace slm::cli {

namespace {
void set_threads(const Args& a) {
  const int64_t threads = a.i64("threads");
  SLM_CHECK(threads >= 0 && threads <= 1024, "--threads ", threads, " is outside [0, 1024]");
  at::set_num_threads(threads > 0 ? static_cast<int>(threads) : std::max(1u, std::thread::hardware_concurrency()));
}
// `--module adept[.k=v]` (model/adept.h): early exit installed on the loaded model, or null.
std::shared_ptr<AdeptRunner> install_adept(const std::vector<catalog::ModuleArgs>& mods, GPTImpl& model) {
  for (auto& m : mods)
    if (m.name == "adept") {
      AdeptOptions o;
      o.threshold = m.f64("threshold");
      o.min_layers = m.i64("min_layers");
      return use_adept(model, o);
    }
  return nullptr;
}

// The early-exit line: compute beside quality and speed.
std::string adept_text(const AdeptRunner& r, int64_t n_layer) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "adept threshold %g (min_layers %lld): %.3f of %lld layers per token",
                r.opt.threshold, static_cast<long long>(r.opt.min_layers), r.layers_per_token(),
                static_cast<long long>(n_layer));
  return buf;
}
}  // namespace

int cmd_generate(const Args& a) {
  set_threads(a);
  const std::string run_dir = a.positional[0];
  // Inference-lane modules that act while decoding: early exit only.
  std::vector<std::string> errors;
  std::vector<catalog::ModuleArgs> mods;
  for (auto& text : a.list("module")) mods.push_back(catalog::resolve_arg(text, errors));
  for (auto& m : mods)
    if (errors.empty() && m.name != "adept")
      errors.push_back("module " + m.name + " does not act in generate; it takes adept (early exit) only");
  if (!errors.empty()) fail("generate: ", errors[0]);
  LoadedRun run = load_run(run_dir, a.str("checkpoint"));
  const auto adept = install_adept(mods, *run.model);
  data::DataSet ds(run.config.at("data").at("dir").get<std::string>());
  const Tokenizer& tok = ds.tokenizer();
  SLM_CHECK(tok.hash() == run.config.at("data").at("tokenizer_hash").get<std::string>(), "generate: the data set ",
            ds.dir(), " has another tokenizer than the run was trained with");
  std::vector<int32_t> prompt = {TOK_BOS};
  const bool fim = a.has("suffix");
  if (fim) {  // PSM: the model writes the middle after FIM_MIDDLE
    prompt.push_back(TOK_FIM_PREFIX);
    tok.encode(a.str("prompt"), prompt);
    prompt.push_back(TOK_FIM_SUFFIX);
    tok.encode(a.str("suffix"), prompt);
    prompt.push_back(TOK_FIM_MIDDLE);
  } else {
    tok.encode(a.str("prompt"), prompt);
  }
  GenerateOptions g;
  g.max_tokens = a.i64("max-tokens");
  g.temperature = a.f64("temperature");
  SLM_CHECK(g.temperature >= 0, "generate: --temperature must be >= 0");
  g.top_k = a.i64("top-k");
  g.seed = static_cast<uint64_t>(a.i64("seed"));
  g.use_cache = !a.flag("no-cache");
  g.stop = {TOK_EOS, TOK_BOS};
  const std::string decode = a.str("decode");
  SLM_CHECK(decode == "greedy" || decode == "jacobi", "generate: --decode ", decode, " is not a method; use greedy or jacobi");
  g.jacobi = decode == "jacobi";
  SLM_CHECK(g.jacobi || !a.has("block"), "generate: --block is Jacobi decoding's; add --decode jacobi or drop --block");
  if (g.jacobi) {
    // The row holds the default and the range (catalog/modules/jacobi_decode.cpp).
    std::map<std::string, std::string> given;
    if (a.has("block")) given["block"] = a.str("block");  // parsed and range-checked by the row
    const catalog::ModuleArgs j = catalog::resolve("jacobi_decode", given, errors);
    if (!errors.empty()) fail("generate: --decode jacobi: ", errors[0]);
    g.block = j.i64("block");
    SLM_CHECK(g.temperature <= 0, "generate: --decode jacobi is greedy (its fixed point is greedy's output); drop --temperature ",
              g.temperature, " or use --decode greedy to sample");
  }
  for (const char* o : {"draft", "draft-depth", "draft-top-k", "draft-tokens"})
    SLM_CHECK(a.has("speculative") || !a.has(o), "generate: --", o, " is EAGLE-2's; add --speculative eagle2 or drop it");
  if (a.has("speculative")) return generate_speculative(a, run, prompt, g, tok);
  GenerateStats st;
  const auto t0 = std::chrono::steady_clock::now();
  auto out = generate(*run.model, prompt, g, &st);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fputs(tok.decode(out).c_str(), stdout);
  std::fputs("\n", stdout);
  // The cost, on stderr (stdout is the text): tokens per decoding forward (an iteration: one token
  // plainly, a block in Jacobi), and the forwards in all (the prompt's prefill and re-runs included).
  std::fprintf(stderr,
               "generate: %s%s, %lld tokens, %.3f tokens per forward (%lld decoding forwards; %lld forwards in all with "
               "the prefill and %lld re-runs), %.1f tokens/s at %d threads\n",
               g.temperature > 0 ? "sampling" : decode.c_str(), g.jacobi ? (" block " + std::to_string(g.block)).c_str() : "",
               static_cast<long long>(st.tokens),
               st.iterations > 0 ? static_cast<double>(st.tokens) / static_cast<double>(st.iterations) : 0.0,
               static_cast<long long>(st.iterations), static_cast<long long>(st.forwards),
               static_cast<long long>(st.replays), sec > 0 ? static_cast<double>(st.tokens) / sec : 0.0,
               at::get_num_threads());
  if (adept) std::fprintf(stderr, "generate: %s\n", adept_text(*adept, run.model_cfg.n_layer).c_str());
  return 0;
}

int cmd_eval_bpb(const Args& a) {
  const std::string run_dir = a.positional[0];
  const int64_t nproc = a.i64("nproc");
  SLM_CHECK(nproc >= 1 && nproc <= 64, "eval bpb: --nproc ", nproc, " is outside [1, 64]");
  const bool launched = std::getenv("WORLD_SIZE") != nullptr;
  for (auto& text : a.list("module"))
    SLM_CHECK(nproc == 1 || text.rfind("adept", 0) != 0, "eval bpb: --module adept runs in one process; drop --nproc");
  if (nproc > 1 && !launched) {
    SLM_CHECK(a.str("metric") == "bpb", "eval bpb: --metric ", a.str("metric"), " runs in one process; drop --nproc");
    // Refuse a context the zigzag layout cannot split before any rank starts.
    if (a.i64("context") > 0)
      SLM_CHECK(a.i64("context") % (2 * nproc) == 0, "eval bpb: --context ", a.i64("context"), " does not split over ",
                nproc, " ring ranks (2 x ", nproc, " equal chunks each); use a multiple of ", 2 * nproc);
    return dist::launch_local(static_cast<int>(nproc), "eval bpb");
  }
  set_threads(a);
  std::unique_ptr<dist::Comm> comm;
  if (launched) {  // a rank of --nproc's ring: this rank's share of the cores
    const dist::World w = dist::world_from_env();
    const int threads = a.i64("threads") > 0 ? static_cast<int>(a.i64("threads"))
                                             : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(std::max(1, threads / w.local_size));
    comm = std::make_unique<dist::Comm>(w, torch::kCPU);
  }
  const std::string metric = a.str("metric");
  std::optional<InfillMetric> infill;
  if (metric != "bpb") {
    try {
      infill = parse_infill_metric(metric);
    } catch (const Error&) {
      fail("eval bpb: --metric '", metric, "' is unknown; use bpb, fim, ifim, ifim_noinst or sri");
    }
  }

  // Modules here are the inference lane's only: anything that would change training is refused.
  std::vector<std::string> errors;
  std::vector<catalog::ModuleArgs> mods;
  for (auto& text : a.list("module")) mods.push_back(catalog::resolve_arg(text, errors));
  for (auto& m : mods)
    if (const catalog::ModuleSpec* s = catalog::find(m.name); s && s->tier != catalog::Tier::Inference)
      errors.push_back("module " + m.name + " changes the trained model; eval takes inference-lane modules only (yarn)");
    else if (m.name == "ring_attention")
      errors.push_back("module ring_attention is eval bpb's --nproc P (the context split over P processes), not a --module");
    else if (s && m.name != "yarn" && m.name != "adept")
      errors.push_back("module " + m.name + " is a decoding method (slmlab generate --decode), not an eval bpb module");
  if (errors.empty()) errors = catalog::check(mods, catalog::ModelView{}, /*training=*/false);
  if (!errors.empty()) fail("eval bpb: ", errors[0]);

  LoadedRun run = load_run(run_dir, a.str("checkpoint"));
  const torch::Device dev = run.device;
  const std::string data_dir = a.str("data").empty() ? run.config.at("data").at("dir").get<std::string>() : a.str("data");
  data::DataSet ds(data_dir);
  SLM_CHECK(ds.fingerprint() == run.config.at("data").at("fingerprint").get<std::string>(), "eval bpb: ", data_dir,
            " is not the data set ", run_dir, " was trained on (fingerprint ", ds.fingerprint(), " vs ",
            run.config.at("data").at("fingerprint").get<std::string>(), "); pass --data with the run's data set");

  const int64_t trained = run.model_cfg.context;
  const int64_t context = a.i64("context") > 0 ? a.i64("context") : trained;
  std::string how = "rope";
  for (auto& m : mods)
    if (m.name == "yarn") {
      YarnConfig y;
      y.scale = m.f64("scale") > 0 ? m.f64("scale") : static_cast<double>(context) / trained;
      y.original_context = trained;
      y.beta_fast = m.f64("beta_fast");
      y.beta_slow = m.f64("beta_slow");
      y.mscale = m.flag("mscale");
      SLM_CHECK(y.scale >= 1.0, "eval bpb: yarn scale ", y.scale, " < 1; YaRN stretches to a longer context only");
      run.model->set_context(context, &y);
      char buf[96];
      std::snprintf(buf, sizeof buf, "yarn s=%.3g (logit x%.4f)", y.scale, yarn_logit_scale(y));
      how = buf;
    }
  if (how == "rope" && context != trained) run.model->set_context(context, nullptr);
  const auto adept = install_adept(mods, *run.model);  // refused with --nproc above

  const int64_t tokens = a.i64("tokens") > 0 ? a.i64("tokens") : run.config.value("eval_tokens", int64_t(32768));
  const bool bf16 = run.config.value("precision", std::string("fp32")) == "bf16";
  const int64_t batch_rows = run.config.value("device_batch", int64_t(16));
  if (infill) {
    const int64_t rows = infill_rows(tokens / 4, context);  // the trainer's budget: the same samples it recorded
    auto samples = infill_samples(ds, *infill, context, rows, kInfillSeed);
    const double v = val_bpb_total(infill_parts(*run.model, ds, samples, context,
                                                batch_rows, bf16, dev));
    int64_t bytes = 0;
    for (auto& s : samples) bytes += static_cast<int64_t>(s.scored.size());
    std::printf("%s_bpb %.4f | %s checkpoint step %lld%s | context %lld | %zu held-out validation samples (seed %llu), "
                "%lld scored bytes | %s\n",
                metric.c_str(), v, a.str("checkpoint").c_str(), (long long)run.step,
                run.in_spike ? " (saved inside a loss spike)" : "", (long long)context, samples.size(),
                (unsigned long long)kInfillSeed, (long long)bytes, run.config.value("precision", std::string("fp32")).c_str());
    return 0;
  }
  std::map<std::string, double> stats;
  double bpb = 0;
  if (comm) {
    SLM_CHECK(dev.is_cpu(), "eval bpb: --nproc runs ranks on the CPU (Gloo); this run loads on ", dev.str());
    SLM_CHECK(context % (2 * comm->world().size) == 0, "eval bpb: context ", context, " does not split over ",
              comm->world().size, " ring ranks; use a multiple of ", 2 * comm->world().size);
    run.model->use_ring(comm->as_ring_group());
    auto parts = val_bpb_parts(*run.model, ds, context, tokens, batch_rows, bf16, dev);
    auto t = torch::tensor(parts, torch::kFloat64);
    comm->all_reduce_sum(t);  // every rank's targets: each row's nats and bytes, summed over the ring
    bpb = val_bpb_total(std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel()));
    how += ", ring attention over " + std::to_string(comm->world().size) + " processes (zigzag)";
    if (!comm->world().is_main()) return 0;
  } else {
    bpb = val_bpb(*run.model, ds, context, tokens, batch_rows, bf16, dev, &stats);
  }
  std::printf("val_bpb %.4f | %s checkpoint step %lld%s | context %lld (trained %lld, %s) | %lld tokens | %s\n", bpb,
              a.str("checkpoint").c_str(), (long long)run.step, run.in_spike ? " (saved inside a loss spike)" : "",
              (long long)context, (long long)trained, how.c_str(), (long long)tokens, run.config.value("precision", std::string("fp32")).c_str());
  std::printf("  %s\n", data::coverage_text(data::eval_rows(ds, context, static_cast<uint64_t>(tokens))).c_str());
  std::printf("  val_bpb %.9f\n", bpb);  // the full figure, to compare evaluations (one process vs the ring)
  for (auto& [k, v] : stats) std::printf("  %s %.4g\n", k.c_str(), v);  // what modules did in evaluation
  if (adept) std::printf("  %s\n", adept_text(*adept, run.model_cfg.n_layer).c_str());
  return 0;
}

int cmd_eval_compile(const Args& a) {
  set_threads(a);
  const std::string run_dir = a.positional[0];
  LoadedRun run = load_run(run_dir, a.str("checkpoint"));
  data::DataSet ds(run.config.at("data").at("dir").get<std::string>());
  SLM_CHECK(ds.fingerprint() == run.config.at("data").at("fingerprint").get<std::string>(), "eval compile: the data set ",
            ds.dir(), " changed since ", run_dir, " was trained on it");
  eval::CompileEvalOptions o;
  o.n = a.i64("n");
  o.mode = a.str("mode");
  o.max_tokens = a.i64("max-tokens");
  o.per_file = a.i64("per-file");
  o.temperature = a.f64("temperature");
  o.seed = static_cast<uint64_t>(a.i64("seed"));
  o.max_seconds = a.f64("max-seconds");
  SLM_CHECK(o.max_seconds > 0, "eval compile: --max-seconds must be > 0");
  SLM_CHECK(o.per_file >= 1, "eval compile: --per-file must be at least 1");
  SLM_CHECK(o.mode == "complete" || o.mode == "fim", "eval compile: --mode '", o.mode, "' is not complete or fim");
  std::printf("eval compile | %s | %s checkpoint step %lld%s | mode %s | %lld prompts, %lld tokens each\n", run_dir.c_str(),
              a.str("checkpoint").c_str(), (long long)run.step, run.in_spike ? " (saved inside a loss spike)" : "",
              o.mode.c_str(), (long long)o.n, (long long)o.max_tokens);
  std::fflush(stdout);
  auto res = eval::compile_rate(*run.model, ds, o, [](const eval::PromptRecord& r, int64_t done) {
    std::printf("  %3lld %-13s %s :: %s%s%s\n", (long long)done, r.status.c_str(), r.file.c_str(), r.function.c_str(),
                r.first_error.empty() ? "" : " | ", r.first_error.substr(0, 100).c_str());
    std::fflush(stdout);
  });
  // Per-prompt records beside the checkpoint, then the ledger when the run is in it.
  nlohmann::json lines = nlohmann::json::array();
  std::string body;
  for (auto& r : res.prompts)
    body += nlohmann::json{{"file", r.file}, {"function", r.function}, {"ok", r.ok}, {"trivial", r.trivial}, {"status", r.status},
                           {"closed", r.closed}, {"first_error", r.first_error}, {"prompt_tokens", r.prompt_tokens},
                           {"generated_tokens", r.generated_tokens}, {"completion", r.completion}}
                .dump() + "\n";
  const std::string records = fs::join(run_dir, "compile_" + o.mode + "_step" + std::to_string(run.step) + ".jsonl");
  fs::write_atomic(records, body);
  std::printf("compile rate %lld/%lld = %.1f%% (95%% Wilson %.1f-%.1f%%) | %lld trivial bodies (not counted) | %s @ step "
              "%lld | %lld held-out files with functions, %lld rejected (their reference does not compile) | records %s\n",
              (long long)res.k, (long long)res.n, 100.0 * res.k / res.n, 100 * res.ci.lo, 100 * res.ci.hi,
              (long long)res.trivial, o.mode.c_str(), (long long)run.step, (long long)res.files_seen,
              (long long)res.files_rejected, records.c_str());
  if (!res.stopped.empty())
    std::printf("stopped after %lld of %lld prompts at %s\n", (long long)res.n, (long long)o.n, res.stopped.c_str());
  const std::string ledger_path = a.str("ledger");
  if (fs::exists(ledger_path)) {
    engine::Ledger ledger(ledger_path);
    if (auto id = ledger.run_in_dir(run_dir)) {
      ledger.add_compile_eval({*id, a.str("checkpoint"), o.mode, run.step, run.in_spike, res.n, res.k, res.ci.lo, res.ci.hi,
                               records, res.trivial, res.stopped});
      std::printf("recorded against %s in %s\n", id->c_str(), ledger_path.c_str());
    } else {
      std::printf("not in %s: the result stays in the run folder only\n", ledger_path.c_str());
    }
  }
  return 0;
}

}  // namespace slm::cli
