// The tool's surface: every command slmlab knows and the one option table. The parser, --help and
// "did you mean" that read them are generic (common/options.h); the handlers are in cli/cmd_*.cpp.
#include "common/options.h"

namespace slm::cli {

// Every command slmlab knows.
const std::vector<CommandSpec>& command_table() {
  static const std::vector<CommandSpec> t = {
      {"data build", "", "collect C/C++ sources, train the BPE tokenizer, write fingerprinted token shards"},
      {"data verify", "DATA_DIR", "re-hash every file of a data set and round-trip its documents"},
      {"data stats", "DATA_DIR", "files, bytes, tokens, bytes per token and the most frequent tokens"},
      {"demo", "", "the main job: default data set (built if missing), the demo plan on cpu-tiny in parallel waves, its scorecard and HTML report"},
      {"train", "", "train one model on a data set and substrate"},
      {"export", "RUN_DIR", "write a run's weights as safetensors"},
      {"bench peak", "", "measure this device's peak matmul FLOP/s (fp32 and bf16)"},
      {"catalog", "", "list the module catalog (tier, family, parameters, ranges, cost)"},
      {"plan check", "PLAN", "validate an ablation plan before any step runs; lists every problem"},
      {"ablate", "PLAN", "run an ablation plan in parallel waves (resumable; skips finished runs)"},
      {"report", "", "scorecards from the ledger: verdicts, best val_bpb with step, noise, charts (txt, md, csv, html)"},
      {"invalidate", "RUN", "mark a run INVALID with a reason (or --undo); RUN is a run id or a run folder"},
      {"eval bpb", "RUN_DIR", "val_bpb of a run's checkpoint on the held-out split, optionally at a longer context (YaRN)"},
      {"eval compile", "RUN_DIR", "compile rate of generated function bodies, checked by g++ -fsyntax-only in a sandbox"},
      {"generate", "RUN_DIR", "continue a prompt (or fill a middle, with --suffix) from a trained run"},
  };
  return t;
}

// The one option table. `commands` says which commands take each option.
const std::vector<OptionSpec>& option_table() {
  static const std::vector<OptionSpec> t = {
      {"help", "*", OptType::Flag, "", "", "show this help"},
      {"src", "data build", OptType::List, "", "DIR",
       "source tree to collect (repeatable); default: the C++ trees under /usr/include and /usr/src"},
      {"project", "data build", OptType::List, "", "DIR",
       "a C/C++ project to collect (repeatable), with its compile_commands.json (DIR or DIR/build) when present"},
      {"enrich", "data build", OptType::Flag, "", "", "add per-token structure columns (category, AST depth) from libclang"},
      {"out", "data build", OptType::String, "", "DATA_DIR", "where to write the data set (required)"},
      {"vocab", "data build", OptType::Int, "8192", "N", "vocabulary size, special and byte tokens included"},
      {"val-frac", "data build", OptType::Float, "0.01", "F", "fraction of documents held out for validation"},
      {"val-min-bytes", "data build", OptType::Int, "65536", "N", "floor on validation bytes; below it is an error"},
      {"name", "data build", OptType::String, "cpp-local", "NAME", "data set name recorded in the manifest"},
      {"max-file-bytes", "data build", OptType::Int, "1048576", "N", "skip (and count) source files larger than this"},
      {"threads", "data build|data verify", OptType::Int, "0", "N", "worker threads, 0 = all cores"},
      {"force", "data build", OptType::Flag, "", "", "replace an existing slmlab data set at --out"},
      {"sample", "data verify", OptType::Int, "64", "N", "documents re-encoded to check the tokenizer (0 = all)"},
      {"top", "data stats", OptType::Int, "20", "N", "how many of the most frequent tokens to list"},
      {"json", "data stats|catalog", OptType::Flag, "", "", "print machine-readable JSON instead of text"},
      {"runs", "demo", OptType::String, "runs/demo", "DIR", "where the demo's runs go"},
      {"jobs", "demo", OptType::Int, "2", "N", "runs in parallel per wave"},
      {"jobs", "ablate", OptType::Int, "1", "N", "runs in parallel per wave (threads are divided between them)"},
      {"ledger", "ablate|report|invalidate", OptType::String, "runs/ledger.sqlite", "FILE", "the SQLite ledger"},
      {"runs", "ablate", OptType::String, "runs", "DIR", "run folders go to DIR/<plan>/<experiment>/s<seed>"},
      {"threads", "ablate", OptType::Int, "0", "N", "total threads for all jobs, 0 = all cores"},
      {"backend", "ablate", OptType::String, "local", "NAME", "local (child processes) or slurm (one sbatch job per run, requeued on preemption)"},
      {"poll", "ablate", OptType::Float, "2", "SECONDS", "slurm: how often squeue is asked which jobs are still queued"},
      {"decide", "ablate", OptType::Flag, "", "", "after the plan's runs, give inconclusive experiments whose delta is within reach one more seed per wave (and their base when it has fewer) until decided or --max-seeds"},
      {"max-seeds", "ablate", OptType::Int, "0", "N", "--decide's budget: seeds per experiment at most (0: the plan's [rule] max_seeds, else 6)"},
      {"sbatch", "ablate", OptType::String, "", "ARGS", "slurm: extra sbatch arguments, space separated (e.g. '--partition=cpu --time=2:00:00')"},
      {"data", "demo|train|ablate", OptType::String, "data/cpp-local", "DATA_DIR", "data set (the demo builds it if missing)"},
      {"plan", "report", OptType::String, "", "PLAN", "a plan name in the ledger or a plan .toml (default: every plan)"},
      {"format", "report", OptType::String, "txt", "FMT", "txt, md, csv or html (html: one self-contained page)"},
      {"out", "report", OptType::String, "", "FILE", "write here instead of stdout"},
      {"reason", "invalidate", OptType::String, "", "TEXT", "why the run does not count (required unless --undo)"},
      {"undo", "invalidate", OptType::Flag, "", "", "withdraw a manual invalidation"},
      {"substrate", "train", OptType::String, "cpu-tiny", "NAME|FILE", "substrate: a name in substrates/ or a .toml path"},
      {"substrate", "plan check", OptType::String, "", "NAME|FILE",
       "check the plan on this substrate instead of its own (e.g. seed-v6e4-d16, the article's TP=2 x DP=2)"},
      {"out", "train", OptType::String, "", "RUN_DIR", "run folder (config, metrics, checkpoints, summary)"},
      {"set", "train", OptType::List, "", "KEY=VALUE", "override a substrate key (changes the substrate id)"},
      {"module", "train", OptType::List, "", "NAME[.k=v,...]", "enable a catalog module with parameters"},
      {"resume", "train", OptType::Flag, "", "", "continue RUN_DIR from its latest checkpoint (fresh start if none)"},
      {"dry-run", "train", OptType::Flag, "", "", "validate, build, time one micro-batch and print the ETA; train nothing"},
      {"quiet", "train", OptType::Flag, "", "", "no per-step line (metrics.jsonl is still written)"},
      {"keep-checkpoints", "train", OptType::Flag, "", "", "keep a weights-only snapshot at every checkpoint step (for eval)"},
      {"nproc", "train", OptType::Int, "1", "N",
       "data-parallel ranks on this machine (child processes; gradients all-reduced over Gloo; same total batch)"},
      {"memory-budget", "train", OptType::Float, "0", "GIB",
       "memory a rank may use; 0 = the machine's available memory shared by its ranks; the estimate must fit"},
      {"grad-reduce", "train", OptType::String, "overlap", "WHEN",
       "data parallel: all-reduce gradient buckets during backward (overlap) or after it (after)"},
      {"check-replicas", "train", OptType::Flag, "", "",
       "data parallel, a debug check: after every step fail unless every rank's parameters and buffers are bitwise "
       "equal, naming the first that differs"},
      {"profile", "train", OptType::Flag, "", "",
       "print where a step's time goes: phases (data, forward, backward, clip, Muon, Newton-Schulz, AdamW, host "
       "reads; median from the third step), the last two steps' ops (LibTorch's profiler) and the machine line"},
      {"format", "export", OptType::String, "safetensors", "FMT", "export format (safetensors)"},
      {"n", "eval compile", OptType::Int, "32", "N", "prompts to score"},
      {"mode", "eval compile", OptType::String, "complete", "MODE", "complete (left to right) or fim (infill between prefix and suffix)"},
      {"max-tokens", "eval compile", OptType::Int, "96", "N", "generated tokens per prompt (bodies longer are not used)"},
      {"per-file", "eval compile", OptType::Int, "2", "N", "functions taken per held-out file at most"},
      {"temperature", "eval compile", OptType::Float, "0", "T", "0 = greedy"},
      {"max-seconds", "eval compile", OptType::Float, "900", "S",
       "stop after S seconds (or 8 x --n held-out files checked) and report what was scored"},
      {"seed", "eval compile", OptType::Seed, "0", "S", "sampling seed"},
      {"ledger", "eval compile", OptType::String, "runs/ledger.sqlite", "FILE", "record the result against the run here, when the run is in it"},
      {"prompt", "generate", OptType::String, "", "TEXT", "the text to continue (the prefix, with --suffix)"},
      {"suffix", "generate", OptType::String, "", "TEXT", "fill in the middle: the text after the hole (FIM sentinels)"},
      {"max-tokens", "generate", OptType::Int, "128", "N", "new tokens at most"},
      {"temperature", "generate", OptType::Float, "0", "T", "0 = greedy; > 0 samples"},
      {"top-k", "generate", OptType::Int, "0", "K", "sample from the K most likely tokens (0 = all)"},
      {"seed", "generate", OptType::Seed, "0", "S", "sampling seed"},
      {"no-cache", "generate", OptType::Flag, "", "", "recompute the whole sequence each token (the reference path)"},
      {"decode", "generate", OptType::String, "greedy", "METHOD",
       "greedy (one token per forward, or sampled with --temperature) or jacobi (greedy's output, a block refined in parallel)"},
      {"block", "generate", OptType::String, "", "N",
       "jacobi: draft tokens refined together per forward (default and range: the jacobi_decode catalog row's)"},
      {"checkpoint", "export", OptType::String, "latest", "WHICH", "latest or best"},
      {"checkpoint", "eval bpb|eval compile|generate", OptType::String, "latest", "WHICH",
       "latest, best, or a step kept by train --keep-checkpoints"},
      {"context", "eval bpb", OptType::Int, "0", "N", "evaluation context in tokens (0 = the trained context)"},
      {"tokens", "eval bpb", OptType::Int, "0", "N", "validation tokens to score (0 = the run's eval_tokens)"},
      {"metric", "eval bpb", OptType::String, "bpb", "M",
       "bpb (val_bpb, next token), or the bits per byte of held-out middles: fim, ifim, ifim_noinst (the ifim middles "
       "without their instruction), sri (the replacement of a search/replace edit); these score tokens/4 worth of "
       "held-out samples, the ones the trainer records"},
      {"data", "eval bpb", OptType::String, "", "DATA_DIR", "data set (default: the run's own)"},
      {"nproc", "eval bpb", OptType::Int, "1", "P",
       "evaluate over P processes on this machine, each holding 1/P of every row, attention through a ring (Gloo)"},
      {"module", "eval bpb|generate", OptType::List, "", "NAME[.k=v,...]",
       "an inference-lane module: yarn or yarn.scale=4 (eval bpb), adept or adept.threshold=0.5 (early exit; both)"},
      {"out", "export", OptType::String, "", "FILE", "output file (default RUN_DIR/model.safetensors)"},
      {"threads", "bench peak|train|eval bpb|eval compile|generate", OptType::Int, "0", "N", "threads (0 = all cores; train: overrides the substrate)"},
  };
  return t;
}

}  // namespace slm::cli
