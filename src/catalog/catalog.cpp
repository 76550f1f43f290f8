#include "catalog/catalog.h"
#include "catalog/modules.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <map>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/options.h"

namespace slm::catalog {

// The catalog table: one row per module of catalog/module_list.h, in its order, each defined beside
// its checks in catalog/modules/<name>.cpp. A name not in this table is refused everywhere with the
// nearest valid name.
const std::vector<ModuleSpec>& modules() {
#define SLM_MODULE_ROW(name, side) spec_##name(),
  static const std::vector<ModuleSpec> t = {SLM_MODULES(SLM_MODULE_ROW)};
#undef SLM_MODULE_ROW
  static const bool named = [] {  // a row's own name is the one the list gives it
    for (int i = 0; i < kModuleCount; ++i)
      SLM_CHECK(std::string(t[i].name) == kModuleNames[i], "[catalog] spec_", kModuleNames[i], "() names its row '",
                t[i].name, "'; the row's name must be its entry in catalog/module_list.h");
    return true;
  }();
  (void)named;
  return t;
}

const char* param_type_name(ParamType t) {
  switch (t) {
    case ParamType::Int: return "int";
    case ParamType::Float: return "float";
    case ParamType::Bool: return "bool";
    case ParamType::String: return "string";
    case ParamType::IntList: return "int list";
  }
  return "?";
}

std::vector<int64_t> ModelView::layers_of(char k) const {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < depth; ++i)
    if (kind(i) == k) out.push_back(i);
  return out;
}

std::string value_text(const Value& v) {
  return std::visit(
      [](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, int64_t>) return std::to_string(x);
        else if constexpr (std::is_same_v<T, double>) {
          // The shortest text that reads back as the same double: 0.3, not 0.29999999999999999.
          char buf[32];
          for (int prec = 6; prec <= 17; ++prec) {
            std::snprintf(buf, sizeof buf, "%.*g", prec, x);
            if (std::strtod(buf, nullptr) == x) break;
          }
          return std::string(buf);
        } else if constexpr (std::is_same_v<T, bool>) return x ? "true" : "false";
        else if constexpr (std::is_same_v<T, std::string>) return x;
        else {
          std::string s;
          for (size_t i = 0; i < x.size(); ++i) s += (i ? "," : "") + std::to_string(x[i]);
          return s;
        }
      },
      v);
}

std::string arg_text(const ModuleArgs& m) {
  std::string s = m.name;
  char sep = '.';
  for (auto& [k, v] : m.values) {
    s += sep + k + "=" + value_text(v);
    sep = ',';
  }
  return s;
}

void check_layers(const ModuleArgs& a, const ModelView& m, const char* empty_means, std::vector<std::string>& e) {
  const auto& layers = a.list("layers");
  // "layer 5 is" / "layers 5,8 are"
  auto are = [](const std::vector<int64_t>& v) {
    return (v.size() == 1 ? "layer " : "layers ") + value_text(v) + (v.size() == 1 ? " is" : " are");
  };
  if (layers.empty() && !empty_means)
    e.push_back("layers is empty; list at least one layer, e.g. " + a.name + ".layers=0");
  std::set<int64_t> seen, twice;
  std::vector<int64_t> repeated, beyond;  // repeated: in order of second appearance
  for (int64_t l : layers) {
    if (!seen.insert(l).second && twice.insert(l).second) repeated.push_back(l);
    if (m.depth > 0 && l >= m.depth) beyond.push_back(l);
  }
  if (!repeated.empty()) e.push_back("layers lists " + value_text(repeated) + " more than once; list each layer once");
  if (!beyond.empty())
    e.push_back(are(beyond) + " beyond depth " + std::to_string(m.depth) + " (layers run 0.." +
                std::to_string(m.depth - 1) + "); drop them from " + a.name + ".layers" +
                (empty_means ? std::string(", or leave it empty for ") + empty_means : std::string()));
}

const ModuleSpec* find(const std::string& name) {
  for (auto& m : modules())
    if (name == m.name) return &m;
  return nullptr;
}

namespace {

// Whether the module has weights (a model side in module_list.h): what tensor parallelism must split.
// A data transform and the inference lane have none; structure is family "data" with weights.
bool has_weights(const ModuleSpec& m) {
#define SLM_MODULE_WEIGHTS(n, side) SLM_MODULE_IF(side, MODEL, if (std::string(m.name) == #n) return true;)
  SLM_MODULES(SLM_MODULE_WEIGHTS)
#undef SLM_MODULE_WEIGHTS
  return false;
}

std::vector<std::string> module_names() {
  std::vector<std::string> n;
  for (auto& m : modules()) n.push_back(m.name);
  return n;
}

bool parse_int(const std::string& s, int64_t& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (*end != '\0' || errno != 0) return false;
  out = v;
  return true;
}

// Parses `text` as the parameter's type and checks its range; "" on success, else the problem.
std::string parse_value(const ParamSpec& p, const std::string& text, Value& out) {
  auto range = [&](double v) -> std::string {
    if (v < p.lo || v > p.hi) {
      std::ostringstream os;
      os << "is outside [" << p.lo << ", " << p.hi << "]";
      return os.str();
    }
    return "";
  };
  switch (p.type) {
    case ParamType::Int: {
      int64_t v;
      if (!parse_int(text, v)) return "expects an integer, got '" + text + "'";
      out = v;
      return range(static_cast<double>(v));
    }
    case ParamType::Float: {
      char* end = nullptr;
      double v = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0') return "expects a number, got '" + text + "'";
      out = v;
      return range(v);
    }
    case ParamType::Bool:
      if (text != "true" && text != "false") return "expects true or false, got '" + text + "'";
      out = text == "true";
      return "";
    case ParamType::String:
      out = text;
      return "";
    case ParamType::IntList: {
      std::vector<int64_t> v;
      std::stringstream ss(text);
      std::string item;
      while (std::getline(ss, item, ',')) {
        int64_t x;
        if (!parse_int(item, x)) return "expects a list of integers like 0,1,3, got '" + text + "'";
        std::string r = range(static_cast<double>(x));
        if (!r.empty()) return "element " + item + " " + r;
        v.push_back(x);
      }
      out = v;
      return "";
    }
  }
  return "has an unknown type";
}

}  // namespace

ModuleArgs resolve(const std::string& name, const std::map<std::string, std::string>& given,
                   std::vector<std::string>& errors) {
  ModuleArgs a;
  a.name = name;
  const ModuleSpec* m = find(name);
  if (!m) {
    std::string n = cli::nearest(name, module_names());
    errors.push_back("unknown module '" + name + "'" + (n.empty() ? "" : "; did you mean '" + n + "'?") +
                     " (slmlab catalog lists them)");
    return a;
  }
  std::vector<std::string> pnames;
  for (auto& p : m->params) pnames.push_back(p.name);
  for (auto& [k, v] : given) {
    bool known = false;
    for (auto& p : m->params) known |= k == p.name;
    if (!known) {
      std::string n = cli::nearest(k, pnames);
      errors.push_back("module " + name + ": unknown parameter '" + k + "'" +
                       (n.empty() ? "" : "; did you mean '" + n + "'?"));
    }
  }
  for (auto& p : m->params) {
    auto it = given.find(p.name);
    const std::string text = it != given.end() ? it->second : p.def;
    Value v;
    std::string problem = parse_value(p, text, v);
    if (!problem.empty()) errors.push_back("module " + name + ": " + p.name + " " + problem);
    a.values[p.name] = v;
  }
  return a;
}

ModuleArgs resolve_arg(const std::string& text, std::vector<std::string>& errors) {
  auto dot = text.find('.');
  std::string name = text.substr(0, dot);
  std::map<std::string, std::string> given;
  if (dot != std::string::npos) {
    std::stringstream ss(text.substr(dot + 1));
    std::string piece, last;
    while (std::getline(ss, piece, ',')) {
      auto eq = piece.find('=');
      if (eq == std::string::npos) {
        if (last.empty()) {
          errors.push_back("--module " + text + ": '" + piece + "' is not key=value");
          continue;
        }
        given[last] += "," + piece;  // continues a list: layers=0,1,3
        continue;
      }
      last = piece.substr(0, eq);
      if (given.count(last)) errors.push_back("--module " + text + ": " + last + " given twice");
      given[last] = piece.substr(eq + 1);
    }
  }
  return resolve(name, given, errors);
}

ModelView adjusted(const std::vector<ModuleArgs>& mods, ModelView model) {
  for (auto& a : mods)
    if (const ModuleSpec* m = find(a.name); m && m->adjust && a.values.size() == m->params.size()) m->adjust(a, model);
  return model;
}

std::vector<int64_t> every_layer(const ModuleArgs&, const ModelView& model) {
  std::vector<int64_t> out(static_cast<size_t>(std::max<int64_t>(model.depth, 0)));
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int64_t>(i);
  return out;
}

std::vector<int64_t> listed_or_every_layer(const ModuleArgs& args, const ModelView& model) {
  const auto& listed = args.list("layers");
  return listed.empty() ? every_layer(args, model) : listed;
}

std::vector<std::string> check(const std::vector<ModuleArgs>& mods, const ModelView& base, bool training) {
  const ModelView model = adjusted(mods, base);
  // The structure columns follow the documents as parsed; a transform reorders a document's tokens.
  bool structure = false;
  std::string transforms;
  for (auto& a : mods) {
    const ModuleSpec* m = find(a.name);
    if (m && m->reads_structure) structure = true;
    if (m && std::string(m->family) == "data" && !has_weights(*m)) transforms += (transforms.empty() ? "" : ", ") + a.name;
  }
  std::vector<std::string> errors;
  if (structure && !transforms.empty())
    errors.push_back("module structure reads the structure columns of each document as parsed and " + transforms +
                     " reorders documents' tokens; drop one of them");
  // Data transforms draw at most one per document: their rates share one probability.
  double rates = 0;
  std::string names;
  for (auto& a : mods)
    if (const ModuleSpec* m = find(a.name); m && std::string(m->family) == "data" && a.values.count("rate")) {
      rates += a.f64("rate");
      names += (names.empty() ? "" : " + ") + a.name;
    }
  if (rates > 1.0 + 1e-12)
    errors.push_back("data transforms " + names + " have rates summing to " + value_text(rates) +
                     " > 1; each document gets at most one transform, so lower their rates");
  std::set<std::string> seen;
  for (auto& a : mods) {
    if (!seen.insert(a.name).second) errors.push_back("module " + a.name + " is listed twice; list it once");
    const ModuleSpec* m = find(a.name);
    if (!m) continue;  // already reported by resolve()
    if (training && m->tier == Tier::Inference)
      errors.push_back("module " + a.name +
                       " is Tier 3 (inference-only) and never part of a training ablation; evaluate it in its own lane");
    const bool touches_weights = has_weights(*m);
    if (touches_weights && m->max_tp > 0 && model.tp > m->max_tp)
      errors.push_back("module " + a.name + " runs at tp <= " + std::to_string(m->max_tp) + " and the substrate has tp " +
                       std::to_string(model.tp) +
                       (m->max_tp == 1 ? ": its weights are not split across tensor-parallel ranks in this build; use tp=1"
                                       : ": it is tested against one process up to tp " + std::to_string(m->max_tp) +
                                             " only; use tp <= " + std::to_string(m->max_tp)) +
                       " (scale with data parallelism, --nproc N)");
    if (m->check && a.values.size() == m->params.size())
      for (auto& e : m->check(a, model)) errors.push_back("module " + a.name + ": " + e);
  }
  // One block wrapper per layer: each decides how its block meets the residual.
  std::map<int64_t, std::string> wrapped_by;
  for (auto& a : mods) {
    const ModuleSpec* m = find(a.name);
    if (!m || !m->wraps || a.values.size() != m->params.size()) continue;
    std::map<std::string, std::vector<int64_t>> clashes;  // earlier module -> shared layers
    for (int64_t l : m->wraps(a, model)) {
      auto [it, fresh] = wrapped_by.emplace(l, a.name);
      if (!fresh && it->second != a.name) clashes[it->second].push_back(l);
    }
    for (auto& [other, layers] : clashes)
      errors.push_back("modules " + other + " and " + a.name + " both wrap layer" + (layers.size() > 1 ? "s " : " ") +
                       value_text(layers) + "; a layer takes one block wrapper, so give them disjoint layers");
  }
  return errors;
}

namespace {
// What `max_tp` means for a row, in words.
std::string tp_text(const ModuleSpec& m) {
  if (!has_weights(m)) return "any tp (touches no weights)";
  if (m.max_tp == 0) return "any tp its check allows";
  if (m.max_tp == 1) return "tp 1 only (its weights are not split across ranks yet)";
  return "up to tp " + std::to_string(m.max_tp);
}
}  // namespace

std::string table(bool as_json) {
  if (as_json) {
    nlohmann::ordered_json j = nlohmann::ordered_json::array();
    for (auto& m : modules()) {
      nlohmann::ordered_json params = nlohmann::ordered_json::array();
      for (auto& p : m.params)
        params.push_back({{"name", p.name}, {"type", param_type_name(p.type)}, {"default", p.def},
                          {"min", p.lo}, {"max", p.hi}, {"help", p.help}});
      j.push_back({{"name", m.name}, {"tier", static_cast<int>(m.tier)}, {"family", m.family}, {"default", "off"},
                   {"summary", m.summary}, {"cost", m.cost}, {"tensor_parallel", tp_text(m)}, {"params", params}});
    }
    return j.dump(1) + "\n";
  }
  std::ostringstream os;
  int name_w = 14;  // the longest name and a space
  for (auto& m : modules()) name_w = std::max(name_w, static_cast<int>(std::string(m.name).size()) + 1);
  os << std::left << std::setw(name_w) << "module" << std::setw(6) << "tier" << std::setw(11) << "family" << "default  summary\n";
  for (auto& m : modules()) {
    os << std::setw(name_w) << m.name << std::setw(6) << static_cast<int>(m.tier) << std::setw(11) << m.family << "off      "
       << m.summary << "\n";
    for (auto& p : m.params)
      os << "    " << std::setw(16) << p.name << std::setw(10) << param_type_name(p.type) << "default " << std::setw(8)
         << (*p.def ? p.def : "\"\"") << "range [" << p.lo << ", " << p.hi << "]  " << p.help << "\n";
    os << "    cost: " << m.cost << "\n";
    os << "    tensor parallel: " << tp_text(m) << "\n";
  }
  return os.str();
}

}  // namespace slm::catalog
