#include "train/run.h"

#include <cmath>
#include <cstdio>
#include <limits>

#include "catalog/catalog.h"
#include "common/device.h"
#include "common/error.h"
#include "common/fs.h"
#include "data/loader.h"
#include "train/checkpoint.h"
#include "train/substrate.h"

namespace slm {

using json = nlohmann::json;

json model_config_json(const ModelConfig& c) {
  return {{"vocab", c.vocab},         {"n_layer", c.n_layer},   {"d_model", c.d_model},
          {"n_head", c.n_head},       {"head_dim", c.head_dim}, {"context", c.context},
          {"layer_pattern", c.layer_pattern}, {"softcap", c.softcap}, {"doc_mask", c.doc_mask},
          {"rope_base", c.rope_base}, {"seed", c.seed}};
}

ModelConfig model_config_from(const json& config) {
  try {
    const json& m = config.at("model");
    ModelConfig c;
    c.vocab = m.at("vocab");
    c.n_layer = m.at("n_layer");
    c.d_model = m.at("d_model");
    c.n_head = m.at("n_head");
    c.head_dim = m.at("head_dim");
    c.context = m.at("context");
    c.layer_pattern = m.at("layer_pattern");
    c.softcap = m.at("softcap");
    c.doc_mask = m.at("doc_mask");
    c.rope_base = m.at("rope_base");
    c.seed = m.at("seed");
    std::vector<std::string> errors;
    for (auto& text : config.value("modules", std::vector<std::string>{}))
      c.modules.push_back(catalog::resolve_arg(text, errors));
    SLM_CHECK(errors.empty(), "[run] the run's modules no longer resolve in this build: ", errors[0]);
    return c;
  } catch (const json::exception& e) {
    fail("[run] the run configuration lacks the model configuration (", e.what(), "); is this a slmlab run folder?");
  }
}

ModelConfig Substrate::model_config(const std::vector<catalog::ModuleArgs>& mods) const {
  SLM_CHECK(vocab > 0, "[substrate] ", name, ": model_config needs the vocabulary (bind the data set first)");
  ModelConfig c;
  c.vocab = vocab;
  c.n_layer = depth;
  c.d_model = model_dim();
  c.head_dim = head_dim;
  c.n_head = n_head();
  c.context = context;
  c.layer_pattern = catalog::adjusted(mods, model_view()).layer_pattern;
  c.modules = mods;
  c.softcap = softcap;
  c.doc_mask = doc_mask;
  c.rope_base = rope_base;
  c.seed = static_cast<uint64_t>(seed);
  return c;
}

LoadedRun load_run(const std::string& run_dir, const std::string& which) {
  const bool numeric = !which.empty() && which.find_first_not_of("0123456789") == std::string::npos;
  const std::string file = ckpt::file_name(which);  // checks `which`
  LoadedRun r;
  r.dir = run_dir;
  r.checkpoint = fs::join(run_dir, file);
  SLM_CHECK(fs::exists(r.checkpoint), "[run] ", run_dir, " has no ", which, " checkpoint",
            numeric ? " (step snapshots exist only for runs trained with --keep-checkpoints, at checkpoint steps)"
                    : "; train it first");
  const ckpt::Checkpoint ck = ckpt::read(r.checkpoint);
  // The checkpoint's configuration is checksummed with its weights: it is the run's. config.json is a
  // copy for people and tools (rewritten at each start); one that disagrees on what makes the model,
  // its data or its id is refused.
  try {
    r.config = json::parse(ck.metadata.at("config"));
  } catch (const json::exception& e) {
    fail("[run] ", r.checkpoint, " holds a configuration that is not JSON (", e.what(), ")");
  }
  const std::string cfg = fs::join(run_dir, "config.json");
  if (fs::exists(cfg)) {
    json copy;
    try {
      copy = json::parse(fs::read_file(cfg));
    } catch (const json::exception& e) {
      fail("[run] ", cfg, " is not valid JSON (", e.what(), "); restore it or delete it (the checkpoint holds the configuration)");
    }
    for (const char* key : {"model", "modules", "data", "substrate_id"}) {
      const json value = r.config.value(key, json()), there = copy.value(key, json());
      if (there == value) continue;
      std::string where = key, a = there.dump(), b = value.dump();
      if (value.is_object() && there.is_object())
        for (const auto& [k, v] : value.items())
          if (there.value(k, json()) != v) {
            where = std::string(key) + "." + k, a = there.value(k, json()).dump(), b = v.dump();
            break;
          }
      fail("[run] ", cfg, " disagrees with ", r.checkpoint, " on ", where, " (", a, " vs the checkpoint's ", b,
           "); the checkpoint's is the run's: restore config.json or delete it");
    }
  }
  r.model_cfg = model_config_from(r.config);
  r.device = device::resolve(r.config.value("device", "cpu"));
  r.model = GPT(r.model_cfg);
  ckpt::load_model(ck, *r.model);
  r.step = ck.step;
  r.model->step = r.step;  // schedules that depend on it (DSA's warm-up) evaluate as trained
  r.in_spike = ck.in_spike;
  r.model->to(r.device);
  r.model->eval();
  return r;
}

}  // namespace slm
