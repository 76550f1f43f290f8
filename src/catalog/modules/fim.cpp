// FIM's catalog row (Bavarian et al., arXiv 2207.14255): a data transform the training loader applies
// (data/transforms.h); validation data is never transformed.
#include "catalog/modules.h"

namespace slm::catalog {

namespace {
std::vector<std::string> check_split(const ModuleArgs& a, const ModelView&) {
  if (a.str("split") != "chars" && a.str("split") != "lines")
    return {"split '" + a.str("split") + "' is not chars or lines"};
  return {};
}
}  // namespace

const ModuleSpec& spec_fim() {
  static const ModuleSpec s{
      "fim",
      Tier::Integrated,
      "data",
      "fill-in-the-middle: documents split into prefix, middle, suffix and reordered (PSM and SPM)",
      "a decode, split and re-encode per transformed document in the loader; no model cost",
      {
          {"rate", ParamType::Float, "0.5", 0, 1, "probability a training document is transformed"},
          {"spm_rate", ParamType::Float, "0.5", 0, 1, "share of SPM among transformed documents (the rest PSM)"},
          {"split", ParamType::String, "chars", 0, 0, "split points at characters (chars) or line starts (lines)"},
      },
      check_split,
  };
  return s;
}

const ModuleSpec& spec_ifim() {
  static const ModuleSpec s{
      "ifim",
      Tier::Integrated,
      "data",
      "instruction-aware FIM: the doc comment above the middle becomes an instruction after FIM_INSTRUCTION",
      "as fim; documents without a doc comment above a line fall back to plain FIM (counted)",
      {
          {"rate", ParamType::Float, "0.5", 0, 1, "probability a training document is transformed"},
          {"spm_rate", ParamType::Float, "0.5", 0, 1, "share of SPM among transformed documents (the rest PSM)"},
          {"split", ParamType::String, "lines", 0, 0, "lines: the middle starts at a documented line; chars: inside one"},
          {"max_instruction_bytes", ParamType::Int, "400", 16, 1 << 20, "longer comments (licenses) are not instructions"},
      },
      check_split,
  };
  return s;
}

const ModuleSpec& spec_sri() {
  static const ModuleSpec s{
      "sri",
      Tier::Integrated,
      "data",
      "search-and-replace infilling: a marked hole plus a SEARCH / REPLACE block that fills it",
      "a decode and re-encode per transformed document; the sample is about twice the region longer",
      {
          {"rate", ParamType::Float, "0.5", 0, 1, "probability a training document is transformed"},
          {"context_lines", ParamType::Int, "10", 0, 1000, "lines of context around the marker in the SEARCH region"},
          {"max_middle_lines", ParamType::Int, "10", 1, 1000, "the middle is 1..N whole lines"},
      },
      nullptr,
  };
  return s;
}

}  // namespace slm::catalog
