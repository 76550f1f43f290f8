#include "eval/compile_rate.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs.h"
#include "model/generate.h"

namespace slm::eval {

namespace {

// The last `n` tokens of `ids` (the context nearest the hole), or all of them.
std::vector<int32_t> tail(const std::vector<int32_t>& ids, int64_t n) {
  if (static_cast<int64_t>(ids.size()) <= n) return ids;
  return std::vector<int32_t>(ids.end() - n, ids.end());
}
std::vector<int32_t> head(const std::vector<int32_t>& ids, int64_t n) {
  if (static_cast<int64_t>(ids.size()) <= n) return ids;
  return std::vector<int32_t>(ids.begin(), ids.begin() + n);
}

}  // namespace

std::vector<int32_t> completion_prompt(const Tokenizer& tok, const std::string& text, const FunctionPrompt& f,
                                       int64_t budget) {
  std::vector<int32_t> prompt = {TOK_BOS};
  auto pre = tail(tok.encode(text.substr(0, f.body_begin)), budget);
  prompt.insert(prompt.end(), pre.begin(), pre.end());
  return prompt;
}

CompileEvalResult compile_rate(GPTImpl& model, const data::DataSet& ds, const CompileEvalOptions& o,
                               const std::function<void(const PromptRecord&, int64_t)>& progress) {
  SLM_CHECK(o.mode == "complete" || o.mode == "fim", "eval compile: --mode '", o.mode, "' is not complete or fim");
  SLM_CHECK(o.n >= 1, "eval compile: --n must be at least 1");
  const int64_t context = model.cfg.context;
  SLM_CHECK(o.max_tokens >= 8 && o.max_tokens <= context - 16, "eval compile: --max-tokens ", o.max_tokens,
            " must lie in [8, context - 16 = ", context - 16, "]");
  require_sandbox(o.sandbox);
  const Tokenizer& tok = ds.tokenizer();
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(ds.manifest_text());
  } catch (const nlohmann::json::exception& x) {
    fail("eval compile: the data set's manifest.json is not JSON (", x.what(), "); rebuild it with slmlab data build");
  }
  SLM_CHECK(manifest.is_object() && manifest.contains("sources") && manifest["sources"].is_array(),
            "eval compile: the data set's manifest.json has no \"sources\" list; rebuild it with slmlab data build");
  const auto& sources = manifest["sources"];
  SLM_CHECK(std::isfinite(o.max_seconds) && o.max_seconds > 0 && o.max_files >= 0,
            "eval compile: --max-seconds must be > 0");
  EvalBudget budget;
  budget.max_seconds = o.max_seconds;
  budget.max_files = o.max_files > 0 ? o.max_files : 8 * o.n;
  CompileEvalResult res;
  const auto& docs = ds.docs(data::Split::Val);
  for (size_t di = 0; di < docs.size() && res.n < o.n && res.stopped.empty(); ++di) {
    const std::string path = docs[di].source < sources.size() ? sources[docs[di].source].value("path", "") : "";
    const std::string text = tok.decode(ds.doc_tokens(data::Split::Val, di));
    // The file's own directory joins the include path, so its relative includes resolve (read-only,
    // and only where the sandbox already shows it).
    SandboxOptions sb = o.sandbox;
    if (!path.empty() && path[0] == '/' && fs::is_dir(fs::parent(path))) sb.flags.push_back("-I" + fs::parent(path));
    std::vector<FunctionPrompt> fns;
    for (auto& f : find_function_prompts(text)) {
      const auto body_ids = tok.encode(f.body + "}");
      if (static_cast<int64_t>(body_ids.size()) + 1 <= o.max_tokens && f.body.find_first_not_of(" \t\r\n") != std::string::npos)
        fns.push_back(f);
      if (static_cast<int64_t>(fns.size()) == o.per_file) break;
    }
    if (fns.empty()) continue;
    if (res.stopped = budget.exhausted(res.files_seen); !res.stopped.empty()) break;
    ++res.files_seen;
    if (!check_compiles(text, sb).ok) {  // the reference itself does not compile here: no verdict possible
      ++res.files_rejected;
      continue;
    }
    for (auto& f : fns) {
      if (res.n >= o.n) break;
      if (res.stopped = budget.exhausted(0); !res.stopped.empty()) break;  // the clock only: this file counts
      PromptRecord r;
      r.file = path.empty() ? "val doc " + std::to_string(di) : path;
      r.function = f.name;
      std::vector<int32_t> prompt = {TOK_BOS};
      const int64_t budget = context - o.max_tokens - 4;
      if (o.mode == "complete") {
        prompt = completion_prompt(tok, text, f, budget);
      } else {
        auto pre = tail(tok.encode(text.substr(0, f.body_begin)), budget - budget / 3);
        auto suf = head(tok.encode(text.substr(f.body_end)), budget / 3);
        prompt.push_back(TOK_FIM_PREFIX);
        prompt.insert(prompt.end(), pre.begin(), pre.end());
        prompt.push_back(TOK_FIM_SUFFIX);
        prompt.insert(prompt.end(), suf.begin(), suf.end());
        prompt.push_back(TOK_FIM_MIDDLE);
      }
      GenerateOptions g;
      g.max_tokens = o.max_tokens;
      g.temperature = o.temperature;
      g.seed = o.seed + static_cast<uint64_t>(res.n);
      g.stop = {TOK_EOS, TOK_BOS};
      if (o.mode == "fim") g.stop.push_back(TOK_FIM_PREFIX);
      auto out = generate(model, prompt, g);
      r.prompt_tokens = static_cast<int64_t>(prompt.size());
      r.generated_tokens = static_cast<int64_t>(out.size());
      const std::string gen = tok.decode(out);
      auto cut = cut_at_matching_brace(gen, 1);
      if (!cut && o.mode == "fim") cut = gen + "}";  // an infill ends where the suffix's '}' begins
      if (!cut) {
        r.status = "unterminated";
        r.first_error = "the generation never closed the function's brace";
      } else {
        r.closed = true;
        r.completion = *cut;
        CompileResult cr = check_compiles(splice_completion(text, f, *cut), sb);
        r.trivial = cr.ok && trivial_body(*cut);
        r.ok = cr.ok && !r.trivial;
        r.status = r.trivial ? "trivial" : compile_status_name(cr.status);
        r.first_error = cr.first_error;
      }
      ++res.n;
      res.k += r.ok;
      res.trivial += r.trivial;
      res.prompts.push_back(r);
      if (progress) progress(res.prompts.back(), res.n);
    }
  }
  SLM_CHECK(res.n > 0, "eval compile: no usable prompt in the held-out split (", res.files_seen, " files had functions, ",
            res.files_rejected, " of them did not compile with their reference body",
            res.stopped.empty() ? "" : "; stopped at " + res.stopped, "); raise --max-tokens or use a data "
            "set whose held-out files compile");
  res.ci = wilson_interval(res.k, res.n);
  return res;
}

}  // namespace slm::eval
