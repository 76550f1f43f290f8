// The catalog row of the structure module (issue 23 §3; model side in model/structure.cpp): embeddings
// of the compiler-structure columns of an enriched data set (data build --enrich) added to the token
// embedding, so that a plan can ask whether compiler structure helps on the same substrate.
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "catalog/modules.h"

namespace slm::catalog {

namespace {

std::vector<std::string> check_structure(const ModuleArgs& a, const ModelView&) {
  std::vector<std::string> e;
  std::set<std::string> seen;
  std::stringstream ss(a.str("columns"));
  for (std::string c; std::getline(ss, c, ':');) {
    if (c != "category" && c != "role" && c != "depth")
      e.push_back("columns lists '" + c + "'; the columns are category, role and depth, joined by ':' (e.g. columns=category:role:depth)");
    else if (!seen.insert(c).second)
      e.push_back("columns lists " + c + " twice; list each column once");
  }
  if (seen.empty()) e.push_back("columns is empty; use e.g. columns=category:role:depth");
  return e;
}

}  // namespace

const ModuleSpec& spec_structure() {
  static const ModuleSpec s{
      "structure",
      Tier::Training,
      "data",
      "compiler structure as input: zero-initialized embeddings of the enrichment columns (libclang structure "
      "category, name role, AST depth) added to the token embedding; needs a data set built with --enrich (refused "
      "otherwise); evaluation reads the columns from the data, generation runs without a parse (every position reads "
      "as unparsed); val_bpb stays next-token bits per byte on the same tokens",
      "(9 + 4 + depth_max + 1) x C embedding params, gathered and added (2 C flops/token per column, no matmul); the "
      "loader reads three u8 columns per token",
      {
          {"columns", ParamType::String, "category:role:depth", 0, 0,
           "which columns to embed, joined by ':' (category, role, depth)"},
          {"depth_max", ParamType::Int, "32", 1, 255, "AST depths above it share its embedding"},
      },
      check_structure,
      nullptr,
      "depth_max=8",
      nullptr,
      // Tensor parallel: refused at tp > 1 (untested). Like the token embedding it would stay replicated
      // (a gather of rows, no matmul to split); data parallel needs nothing (each rank's loader feeds its
      // rows' columns, gradients are averaged like every parameter's; tested at dp 2 against one process).
      1,
      true,  // reads the structure columns
  };
  return s;
}

}  // namespace slm::catalog
