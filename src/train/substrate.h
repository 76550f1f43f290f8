// A substrate: everything that makes two runs comparable (docs/decisions.md, rule 1). Loaded from a flat
// TOML file, overridden with --set key=value, validated as a whole, and identified by a hash of its
// canonical form. The data fingerprint is part of the id: when the file leaves it empty, the run binds
// it to the data set it trains on.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "catalog/catalog.h"

namespace slm {

struct ModelConfig;

struct Substrate {
  std::string name = "unnamed";       // label only, not part of the id
  std::string description;            // label only
  // data
  std::string data_fingerprint;       // expected data set; "" = bind to the data set used
  int64_t vocab = 0;                  // expected vocabulary, 0 = take the data set's
  // geometry: one size dial (depth); model dim = depth x aspect rounded up to head_dim
  int64_t depth = 4;
  int64_t aspect = 64;
  int64_t head_dim = 64;
  int64_t context = 256;              // tokens per row
  std::string layer_pattern = "A";    // repeats over depth: A attention
  double softcap = 15.0;              // logit softcap, 0 = off
  bool doc_mask = true;               // attention never crosses documents inside a packed row
  double rope_base = 10000.0;
  // batch and schedule
  int64_t total_batch = 8192;         // tokens per optimizer step (all ranks, all micro-batches)
  int64_t device_batch = 8;           // rows per micro-batch
  int64_t steps = 200;
  std::string optimizer = "muon";     // muon (2-D matrices) + adamw (the rest), or adamw for all
  double lr_matrix = 0.02;            // muon lr of 2-D hidden matrices
  double lr_embed = 0.2;              // adamw lr of the token embedding
  double lr_head = 0.004;             // adamw lr of the output head
  double lr_scalar = 0.04;            // adamw lr of norms and other vectors
  double lr_adamw = 0.003;            // adamw lr of hidden matrices when optimizer = adamw
  double weight_decay = 0.0;
  double adam_beta1 = 0.8, adam_beta2 = 0.95;
  double muon_momentum = 0.95;
  int64_t warmup_steps = 0;
  double warmdown_frac = 0.4;         // last fraction of steps decays linearly to final_lr_frac
  double final_lr_frac = 0.0;
  double grad_clip = 1.0;             // global norm, 0 = off
  std::string precision = "auto";     // fp32 | bf16 | auto (bf16 where supported)
  int64_t seed = 1337;                // replica label: initialization (not part of the id)
  int64_t data_seed = 0;              // order of the training data; 0 = follow seed. Pinning it pairs
                                      // every run of a substrate on the same data (part of the id)
  uint64_t data_order_seed() const { return static_cast<uint64_t>(data_seed > 0 ? data_seed : seed); }
  // evaluation
  int64_t eval_every = 50;            // steps, 0 = only at the end
  int64_t eval_tokens = 32768;        // validation tokens per eval (fixed rows, fixed order)
  int64_t ckpt_every = 50;            // steps between checkpoints, 0 = only at the end
  // topology and execution
  int64_t tp = 1, dp = 1;
  std::string device = "cpu";         // cpu | cuda
  int64_t threads = 0;                // intra-op threads, 0 = all cores; not part of the id

  int64_t model_dim() const;          // depth * aspect rounded up to a multiple of head_dim
  int64_t n_head() const { return model_dim() / head_dim; }
  int64_t grad_accum() const;         // micro-batches per step
  // The model geometry as module constraints see it (catalog::check, catalog::adjusted).
  catalog::ModelView model_view() const;
  // The model this substrate builds with `mods` (resolved and checked against model_view()): its
  // geometry, the layer pattern after the modules' adjusts (Mamba-3 sets it) and the seed. Needs
  // vocab set (the data set's). Defined beside the model (train/run.cpp): it needs LibTorch.
  ModelConfig model_config(const std::vector<catalog::ModuleArgs>& mods) const;

  // Throws slm::Error listing every problem at once.
  void validate() const;
  // "key=value" lines, sorted, every field that decides comparability.
  std::string canonical() const;
  // 16 hex chars of XXH3-128 over canonical().
  std::string id() const;
  // The resolved substrate as TOML (every field), for the run folder and printing.
  std::string to_toml() const;
};

// A name from substrates/ ("cpu-tiny") or a path to a .toml file.
Substrate load_substrate(const std::string& name_or_path);
Substrate parse_substrate(const std::string& toml_text, const std::string& origin);
// Applies "key=value"; unknown keys and wrong types are one-line errors with the nearest key.
void set_field(Substrate& s, const std::string& assignment);
std::vector<std::string> substrate_keys();
// Directory that holds the shipped substrates (SLMLAB_HOME/substrates or the source tree's).
std::string substrates_dir();

}  // namespace slm
