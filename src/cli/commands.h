// Command handlers: one function per subcommand, dispatched from main() by name.
#pragma once
#include <cstdint>
#include <vector>

#include "common/options.h"

namespace slm::cli {

int cmd_data_build(const Args& a);
int cmd_data_verify(const Args& a);
int cmd_data_stats(const Args& a);
int cmd_demo(const Args& a);
int cmd_train(const Args& a);
int cmd_export(const Args& a);
int cmd_bench_peak(const Args& a);
int cmd_catalog(const Args& a);
int cmd_plan_check(const Args& a);
int cmd_ablate(const Args& a);
int cmd_report(const Args& a);
int cmd_eval_bpb(const Args& a);
int cmd_generate(const Args& a);
int cmd_draft_train(const Args& a);
int cmd_eval_decode(const Args& a);
int cmd_eval_compile(const Args& a);
int cmd_invalidate(const Args& a);

}  // namespace slm::cli

namespace slm {
struct LoadedRun;
struct GenerateOptions;
class Tokenizer;
namespace cli {
// generate --speculative eagle2 (cmd_infer.cpp): the rest of `generate` once the prompt is built.
int generate_speculative(const Args& a, LoadedRun& run, const std::vector<int32_t>& prompt, const GenerateOptions& g,
                         const Tokenizer& tok);
}  // namespace cli
}  // namespace slm
