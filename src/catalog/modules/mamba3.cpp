// The catalog row of Mamba-3 (docs/modules.md section 4; model side in model/mamba3.{h,cpp}): its
// parameters, the constraints over the resolved model, and the layer pattern it sets.
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "catalog/modules.h"

namespace slm::catalog {

namespace {

std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::vector<std::string> check_mamba3(const ModuleArgs& a, const ModelView& m) {
  std::vector<std::string> e;
  const std::string& pat = a.str("pattern");
  if (pat.empty() || pat.find_first_not_of("AM") != std::string::npos)
    e.push_back("pattern '" + pat + "' may hold only A (attention) and M (Mamba-3) letters, e.g. pattern=AAM");
  else if (pat.find('M') == std::string::npos)
    e.push_back("pattern '" + pat + "' has no M; Mamba-3 needs at least one Mamba layer, e.g. pattern=AAM");
  else if (m.depth > 0 && m.layers_of('M').empty())
    e.push_back("pattern '" + pat + "' repeated over depth " + std::to_string(m.depth) +
                " gives no M layer; use a shorter pattern such as AM");
  const int64_t inner = a.i64("expand") * m.d_model, hd = a.i64("headdim");
  if (m.d_model > 0 && inner % hd != 0)
    e.push_back("headdim " + std::to_string(hd) + " does not divide expand x d_model = " + std::to_string(inner) +
                "; pick a divisor such as 32 or 64");
  const double rf = a.f64("rope_fraction");
  if (rf != 0.0 && rf != 0.5 && rf != 1.0)
    e.push_back("rope_fraction " + num(rf) + " must be 0 (real state), 0.5 or 1.0 (complex state)");
  else if (rf > 0 && static_cast<int64_t>(std::floor(a.i64("d_state") * rf)) / 2 < 1)
    e.push_back("rope_fraction " + num(rf) + " with d_state " + std::to_string(a.i64("d_state")) +
                " rotates no pair; raise d_state to at least " + std::to_string(static_cast<int64_t>(std::ceil(2 / rf))));
  if (a.f64("dt_min") >= a.f64("dt_max"))
    e.push_back("dt_min " + num(a.f64("dt_min")) + " must be below dt_max " + num(a.f64("dt_max")));
  // Tensor parallelism splits the SSM heads (model/mamba3.h): they must divide by tp.
  if (m.tp > 1 && m.d_model > 0 && inner % hd == 0 && (inner / hd) % m.tp != 0)
    e.push_back(std::to_string(inner / hd) + " SSM heads (expand x d_model / headdim) do not divide by tp " +
                std::to_string(m.tp) + "; use a tp that divides them or a headdim that gives a multiple of tp");
  // chunk needs no rule against the context: the scan zero-pads the last chunk (no effect on outputs).
  return e;
}

void adjust_mamba3(const ModuleArgs& a, ModelView& m) { m.layer_pattern = a.str("pattern"); }

}  // namespace

const ModuleSpec& spec_mamba3() {
  static const ModuleSpec s{
      "mamba3",
      Tier::Training,
      "mixer",
      "Mamba-3 layers in a hybrid pattern: chunked SSD scan, trapezoidal discretization, data-dependent decay, "
      "B/C norm + bias; complex (RoPE) state and MIMO opt-in",
      "projections ~ (3 expand + 2 N/C) C^2 params per layer vs attention's 4 C^2; scan 6 H (Q (N + P) + 2 N P) "
      "flops/token, constant in T, vs attention's 12 C T",
      {
          {"pattern", ParamType::String, "AAM", 0, 0,
           "layer pattern repeated over depth: A attention, M Mamba-3 (AAM at depth 16: M at 2, 5, 8, 11, 14)"},
          {"d_state", ParamType::Int, "64", 2, 256, "state size N per head (the paper uses 128)"},
          {"expand", ParamType::Int, "2", 1, 8, "inner width = expand x d_model"},
          {"headdim", ParamType::Int, "64", 4, 256, "head dim P; heads = expand x d_model / headdim"},
          {"chunk", ParamType::Int, "64", 1, 1024,
           "scan chunk length Q; need not divide the context (the last chunk is zero-padded); 64/R for MIMO"},
          {"trapezoidal", ParamType::Bool, "true", 0, 1, "trapezoidal discretization; false = Euler (Mamba-2)"},
          {"bc_norm", ParamType::Bool, "true", 0, 1, "RMSNorm + per-head bias (init 1) on B and C"},
          {"rope_fraction", ParamType::Float, "0", 0, 1,
           "complex state via data-dependent RoPE on this fraction of N: 0 off, 0.5 or 1.0"},
          {"mimo_rank", ParamType::Int, "1", 1, 8, "MIMO rank R; 1 = SISO"},
          {"dt_min", ParamType::Float, "0.001", 1e-5, 1, "smallest Delta at init (log-uniform)"},
          {"dt_max", ParamType::Float, "0.1", 1e-5, 1, "largest Delta at init (log-uniform)"},
          {"a_floor", ParamType::Float, "0.0001", 0, 1, "decay rate A_t = -softplus(a_t) is clamped to <= -a_floor"},
      },
      check_mamba3,
      adjust_mamba3,
      "pattern=AAM,d_state=16,headdim=16,chunk=8",
      nullptr,
      4,  // tensor parallel by SSM heads (in_proj column-, out_proj row-parallel; B, C, angles replicated)
  };
  return s;
}

}  // namespace slm::catalog
