// slmlab data build|verify|stats.
#include <algorithm>
#include <cstdio>

#include "cli/commands.h"
#include "common/error.h"
#include "data/dataset.h"

namespace slm::cli {

namespace {
int threads_of(const Args& a) {
  int64_t t = a.i64("threads");
  SLM_CHECK(t >= 0 && t <= 1024, "--threads ", t, " is outside [0, 1024]");
  return static_cast<int>(t);
}
}  // namespace

int cmd_data_build(const Args& a) {
  data::BuildOptions o;
  o.src = a.list("src");
  SLM_CHECK(a.has("out"), "data build: --out DATA_DIR is required (where to write the data set)");
  o.out = a.str("out");
  o.vocab = static_cast<int32_t>(a.i64("vocab"));
  o.val_frac = a.f64("val-frac");
  int64_t vmb = a.i64("val-min-bytes"), mfb = a.i64("max-file-bytes");
  SLM_CHECK(vmb >= 1, "data build: --val-min-bytes must be at least 1");
  SLM_CHECK(mfb >= 1, "data build: --max-file-bytes must be at least 1");
  o.val_min_bytes = static_cast<uint64_t>(vmb);
  o.max_file_bytes = static_cast<uint64_t>(mfb);
  o.name = a.str("name");
  o.threads = threads_of(a);
  o.force = a.flag("force");
  o.projects = a.list("project");
  o.enrich = a.flag("enrich");
  const int64_t dt = a.i64("doc-tokens");
  SLM_CHECK(dt >= 0, "data build: --doc-tokens must be >= 0 (0 = a document per file), got ", dt);
  o.doc_tokens = static_cast<uint64_t>(dt);
  data::BuildResult r = data::build(o);
  std::printf("built %s: %llu files, train %llu docs / %llu tokens, val %llu docs / %llu tokens\n", o.out.c_str(),
              (unsigned long long)r.files, (unsigned long long)r.train_docs, (unsigned long long)r.train_tokens,
              (unsigned long long)r.val_docs, (unsigned long long)r.val_tokens);
  std::printf("time: collect %.1fs, tokenizer %.1fs, encode %.1fs\nfingerprint %s\n", r.seconds_collect,
              r.seconds_tokenizer, r.seconds_encode, r.fingerprint.c_str());
  if (r.enriched)
    std::printf("enrichment: %llu of %llu files parsed fully (%.1f%%), %llu kept raw; %.1fs (%.1f files/s)\n",
                (unsigned long long)r.parsed, (unsigned long long)r.files, 100.0 * r.parsed / std::max<uint64_t>(1, r.files),
                (unsigned long long)r.unparsed, r.seconds_enrich, r.files / std::max(1e-9, r.seconds_enrich));
  if (r.enriched) std::printf("dependency edges: %llu\n", (unsigned long long)r.edges);
  if (o.doc_tokens > 0)
    std::printf("chunking: documents of at most %llu tokens; %llu cuts at a top-level declaration, %llu inside one\n",
                (unsigned long long)o.doc_tokens, (unsigned long long)r.cuts_at_boundary, (unsigned long long)r.cuts_mid);
  return 0;
}

int cmd_data_verify(const Args& a) {
  int64_t sample = a.i64("sample");
  SLM_CHECK(sample >= 0, "data verify: --sample must be >= 0");
  data::VerifyResult r = data::verify(a.positional[0], static_cast<uint64_t>(sample), threads_of(a));
  std::printf("ok: %s verified (%llu files re-hashed, %llu documents decoded to their source hash, %llu re-encoded)\n",
              a.positional[0].c_str(), (unsigned long long)r.files_checked, (unsigned long long)r.docs_decoded,
              (unsigned long long)r.docs_reencoded);
  return 0;
}

int cmd_data_stats(const Args& a) {
  int64_t top = a.i64("top");
  SLM_CHECK(top >= 0 && top <= 100000, "data stats: --top ", top, " is outside [0, 100000]");
  std::fputs(data::stats(a.positional[0], static_cast<int>(top), a.flag("json")).c_str(), stdout);
  return 0;
}

}  // namespace slm::cli
