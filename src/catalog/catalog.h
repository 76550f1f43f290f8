// The module catalog: every module slmlab can put into a model or a data stream, off by default,
// declared once in the table in catalog.cpp with its tier, family, parameters (defaults, ranges)
// and constraints over the resolved model configuration. Plans, `slmlab train --module` and
// `slmlab catalog` all read this one table. Adding a module: see README.md, "Add a module".
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace slm::catalog {

// 1 = wired into training, 2 = integrated, 3 = inference-only (never in a training plan).
enum class Tier : int { Training = 1, Integrated = 2, Inference = 3 };

enum class ParamType { Int, Float, Bool, String, IntList };
const char* param_type_name(ParamType t);

struct ParamSpec {
  const char* name;
  ParamType type;
  const char* def;  // default as text ("0.001", "true", "0,1,3", "" for an empty list)
  double lo, hi;    // inclusive range for numbers and for every element of an int list
  const char* help;
};

using Value = std::variant<int64_t, double, bool, std::string, std::vector<int64_t>>;
std::string value_text(const Value& v);

// What constraints see: the geometry a plan's substrate resolves to.
struct ModelView {
  int64_t depth = 0, d_model = 0, n_head = 0, head_dim = 0, context = 0, tp = 1, dp = 1;
  std::string layer_pattern = "A";
  char kind(int64_t layer) const { return layer_pattern[layer % layer_pattern.size()]; }
  std::vector<int64_t> layers_of(char k) const;
};

// A module as used: its name and every parameter resolved (given values, else defaults).
struct ModuleArgs {
  std::string name;
  std::map<std::string, Value> values;
  int64_t i64(const std::string& k) const { return std::get<int64_t>(values.at(k)); }
  double f64(const std::string& k) const { return std::get<double>(values.at(k)); }
  bool flag(const std::string& k) const { return std::get<bool>(values.at(k)); }
  const std::string& str(const std::string& k) const { return std::get<std::string>(values.at(k)); }
  const std::vector<int64_t>& list(const std::string& k) const { return std::get<std::vector<int64_t>>(values.at(k)); }
};

// A constraint returns one message per violation, each naming the rule and the fix.
using Check = std::vector<std::string> (*)(const ModuleArgs& args, const ModelView& model);
// A module that changes the geometry other modules see (Mamba-3's layer pattern) edits the view;
// adjusts run in order before any constraint is checked.
using Adjust = void (*)(const ModuleArgs& args, ModelView& model);

struct ModuleSpec {
  const char* name;
  Tier tier;
  const char* family;   // "mixer", "memory", "residual", "objective", "routing", "depth", "data", "inference"
  const char* summary;
  const char* cost;     // what it costs, in words
  std::vector<ParamSpec> params;
  Check check;          // may be nullptr
  Adjust adjust = nullptr;
  // Arguments for the registry-wide tests at their tiny geometry (depth 3, d_model 32, 2 heads of
  // 16, context 32), e.g. "window=4,topk=8"; "" = the defaults fit.
  const char* tiny = "";
  // A block wrapper (mHC, MoD, GateSkip, FlexiDepth) says which layers it wraps: a layer takes one
  // wrapper, and check() refuses two on the same layer before any model is built. nullptr = none.
  std::vector<int64_t> (*wraps)(const ModuleArgs& args, const ModelView& model) = nullptr;
  // Tensor parallelism (model/tp.h splits attention and the relu2 MLP): the largest tp the module
  // runs at; 0 = no limit here (its check decides). Data transforms and the inference lane touch no
  // weights and are never limited. Every other module stays at 1 until it splits its own weights and
  // a test shows it matching one process, so check() refuses it at tp > 1 with the reason.
  int max_tp = 1;
  // The model reads the data set's structure columns (data build --enrich; the structure module): a
  // run on a data set without them is refused before any step.
  bool reads_structure = false;
};

// For `wraps`: every layer of the model, or the module's `layers` list when it is not empty.
std::vector<int64_t> every_layer(const ModuleArgs& args, const ModelView& model);
std::vector<int64_t> listed_or_every_layer(const ModuleArgs& args, const ModelView& model);

const std::vector<ModuleSpec>& modules();
const ModuleSpec* find(const std::string& name);

// Resolves given parameter texts against the spec; appends one message per problem (unknown
// module or parameter with the nearest name, wrong type, out of range) to `errors`.
ModuleArgs resolve(const std::string& name, const std::map<std::string, std::string>& given,
                   std::vector<std::string>& errors);
// Parses "name" or "name.k=v,k=v"; a piece without '=' continues the previous value as a list:
// "engram.layers=0,1,3,heads=4" gives layers = 0,1,3 and heads = 4.
ModuleArgs resolve_arg(const std::string& text, std::vector<std::string>& errors);
// The inverse of resolve_arg: "name.k=v,k=v" with every resolved value (what `train --module` takes).
std::string arg_text(const ModuleArgs& m);
// The view after every module's adjust (e.g. the layer pattern a Mamba-3 module sets).
ModelView adjusted(const std::vector<ModuleArgs>& mods, ModelView model);
// Constraints of every module against the adjusted model, plus the rules across modules
// (duplicates). `training`: Tier-3 modules are refused.
std::vector<std::string> check(const std::vector<ModuleArgs>& mods, const ModelView& model, bool training);

// `slmlab catalog`: a table, or JSON.
std::string table(bool json);

}  // namespace slm::catalog
