// Code-infilling data transforms: FIM, IFIM and SRI (docs/modules.md §11, §12).
// A transform turns one document into segments, each a special token or a text span, and is a
// pure function of (document, options, seed): the generator is splitmix64 with integer/double
// draws of our own, never std::*_distribution (implementation-defined).
//
// Layouts (P = prefix, M = middle, S = suffix, I = instruction; empty text segments are left out):
//   FIM  PSM  FIM_PREFIX P FIM_SUFFIX S FIM_MIDDLE M
//   FIM  SPM  FIM_PREFIX FIM_SUFFIX S FIM_MIDDLE P M          (Bavarian et al.: P and M stay separate)
//   IFIM PSM  FIM_PREFIX P FIM_SUFFIX S FIM_INSTRUCTION I FIM_MIDDLE M
//   IFIM SPM  FIM_PREFIX FIM_SUFFIX S FIM_INSTRUCTION I FIM_MIDDLE P M
//   SRI       prompt SRI_SEARCH region SRI_DIVIDER region' SRI_REPLACE
//             prompt  = the document with the middle lines replaced by kSriMarker
//             region  = the prompt lines around the marker (about context_lines of context), verbatim
//             region' = region with the marker replaced by the original middle
// No BOS/EOS is emitted: document boundaries stay the loader's job. P + M + S is the document, and
// invert() rebuilds it byte for byte from any layout above (SRI: REPLACE applied to the prompt).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "catalog/catalog.h"
#include "catalog/module_list.h"
#include "data/tokenizer.h"

namespace slm::data {

// One element of a transformed document: a special token (special >= 0) or a text span.
struct Segment {
  int32_t special = -1;  // SpecialToken id, or -1 for text
  std::string text;      // the bytes of a text segment; empty for a special
  static Segment token(int32_t id) { return {id, {}}; }
  static Segment str(std::string s) { return {-1, std::move(s)}; }
  bool is_special() const { return special >= 0; }
  bool operator==(const Segment& o) const { return special == o.special && text == o.text; }
};
using Segments = std::vector<Segment>;

// Where FIM cuts: at two uniform character positions (UTF-8 aware: never inside a multi-byte
// sequence) or at two uniform line starts.
enum class FimSplit { Chars, Lines };
const char* fim_split_name(FimSplit s);   // "chars" | "lines"
FimSplit parse_fim_split(std::string_view name);  // throws slm::Error naming the valid values

// The marker that stands for the SRI middle in the prompt (C/C++ form from the SRI paper).
constexpr std::string_view kSriMarker = "/* MIDDLE CODE TO COMPLETE */";

// The options of the three transforms. A field that is a catalog parameter has no default here: the
// catalog row (catalog/modules/fim.cpp) holds the only one, and from() reads the resolved row.
struct FimOptions {
  double rate = 0;                  // probability a document is transformed (used by transform())
  double spm_rate = 0;              // fraction of SPM among transformed documents; the rest are PSM
  FimSplit split = FimSplit::Chars;
  static FimOptions from(const catalog::ModuleArgs& a);
};

struct IfimOptions {
  double rate = 0;                  // as FimOptions::rate
  double spm_rate = 0;              // as FimOptions::spm_rate
  FimSplit split = FimSplit::Chars; // lines: M starts at a documented line; chars: M starts inside one
  int max_instruction_bytes = 0;    // longer comments (license blocks) are not used as instructions
  int max_middle_lines = 0;         // cap on the lines of M with split=lines; 0 = up to the end, as FIM
                                    // (not a catalog parameter: tests set it)
  static IfimOptions from(const catalog::ModuleArgs& a);
};

struct SriOptions {
  double rate = 0;            // probability a document is transformed (used by transform())
  int context_lines = 0;      // lines of context around the marker in the SEARCH region (paper: 10)
  int max_middle_lines = 0;   // the middle is 1..max_middle_lines whole lines (indentation kept)
  static SriOptions from(const catalog::ModuleArgs& a);
};

// The transforms a loader applies; at most one per document, drawn with the rates, which must
// sum to at most 1 (the remainder is the untransformed share).
struct TransformSet {
  std::optional<FimOptions> fim;
  std::optional<IfimOptions> ifim;
  std::optional<SriOptions> sri;
  bool empty() const { return !fim && !ifim && !sri; }
};
// Throws slm::Error ("[transforms] ...") for a rate outside [0,1], rates summing above 1, or a
// non-positive line count.
void validate(const TransformSet& set);

// The data side of the catalog: one entry per DATA module of catalog/module_list.h, whose
// add_<name> (transforms.cpp) turns its transform on in a set.
struct DataModule {
  const char* name;  // the catalog name
  void (*add)(const catalog::ModuleArgs& args, TransformSet& set);
};
#define SLM_MODULE_ADD(name, side) SLM_MODULE_IF(side, DATA, void add_##name(const catalog::ModuleArgs&, TransformSet&);)
SLM_MODULES(SLM_MODULE_ADD)
#undef SLM_MODULE_ADD
const std::vector<DataModule>& data_modules();
const DataModule* find_data_module(const std::string& name);  // nullptr for a module without a data side
// The loader's transforms for a run's resolved modules (those with a data side; the rest are skipped).
TransformSet transform_set(const std::vector<catalog::ModuleArgs>& mods);

enum class TransformKind { None, Fim, Ifim, Sri };
const char* transform_name(TransformKind k);  // "none" | "fim" | "ifim" | "sri"

struct Transformed {
  TransformKind drawn = TransformKind::None;    // what the seed chose
  TransformKind applied = TransformKind::None;  // what was emitted: Fim when IFIM found no doc comment
  Segments segments;
};

// Counts for a log line: how often each transform was drawn and applied, and the fallbacks.
struct TransformStats {
  uint64_t docs = 0;
  uint64_t applied[4] = {0, 0, 0, 0};  // indexed by TransformKind
  uint64_t ifim_no_comment = 0;        // IFIM drawn, no usable doc comment: plain FIM emitted
  void add(const Transformed& t);
};

// The layouts above from their parts; `instruction` non-null adds FIM_INSTRUCTION I (IFIM), so
// an empty instruction gives the FIM sequence plus FIM_INSTRUCTION before FIM_MIDDLE.
Segments fim_layout(std::string_view prefix, std::string_view middle, std::string_view suffix, bool spm,
                    const std::string* instruction = nullptr);

// Always transform (the rates are applied by transform()).
Segments fim(std::string_view doc, const FimOptions& o, uint64_t seed);
// nullopt when the document has no usable doc comment; the caller then falls back to FIM.
std::optional<Segments> ifim(std::string_view doc, const IfimOptions& o, uint64_t seed);
// Always applies: the SEARCH region is widened line by line until it occurs exactly once in the
// prompt, which at worst is the whole prompt (only when the document already contains kSriMarker).
Segments sri(std::string_view doc, const SriOptions& o, uint64_t seed);

// Draws the transform for this seed and applies it (IFIM without a doc comment -> FIM, same options).
// `set` should have passed validate() once; the seed is typically a hash of (run seed, epoch, document).
Transformed transform(std::string_view doc, const TransformSet& set, uint64_t seed);
// The transform that transform() would draw for this seed, without touching the document.
TransformKind draw_transform(const TransformSet& set, uint64_t seed);

// The original document from any layout above; throws slm::Error for a malformed sequence or an
// SRI SEARCH that does not occur exactly once in the prompt.
std::string invert(const Segments& segs);

// A line that a documentation comment sits directly above (no blank line between), and the
// instruction taken from it: the Doxygen @brief/\brief paragraph if present, else the first
// paragraph of a /** */ or /*! */ block or of the // lines directly above, markers stripped and
// whitespace collapsed to single spaces. Plain /* */ blocks count only with @brief.
struct DocComment {
  size_t line_begin;   // byte offset of the documented line
  size_t line_end;     // byte offset of its line break (or the document's end)
  std::string instruction;
};
std::vector<DocComment> doc_comments(std::string_view doc, size_t max_instruction_bytes = 400);
// The instruction text of one comment's bytes (// ..., /* ... */); "" when it holds none.
std::string comment_instruction(std::string_view comment);

// Specials as their ids, text through Tokenizer::encode (specials never come out of text).
void encode_segments(const Tokenizer& tok, const Segments& segs, std::vector<int32_t>& out);
// transform() then encode_segments().
std::vector<int32_t> transform_tokens(const Tokenizer& tok, std::string_view doc, const TransformSet& set,
                                      uint64_t seed);
// For a loader that holds token ids: the ids unchanged when the seed draws no transform, else
// decode, transform, re-encode. The ids must be text tokens (no specials).
std::vector<int32_t> transform_tokens(const Tokenizer& tok, const std::vector<int32_t>& doc_ids,
                                      const TransformSet& set, uint64_t seed);

}  // namespace slm::data
