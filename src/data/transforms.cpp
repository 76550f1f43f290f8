#include "data/transforms.h"

#include <algorithm>
#include <cctype>

#include "common/error.h"
#include "common/rng.h"
#include "data/lexer.h"

namespace slm::data {
namespace {

using Rng = SplitMix64;  // common/rng.h: portable draws

bool is_utf8_cont(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Moves p back to the start of its UTF-8 sequence, not below `floor`.
size_t char_boundary(std::string_view doc, size_t p, size_t floor) {
  while (p > floor && p < doc.size() && is_utf8_cont(doc[p])) --p;
  return p;
}

// Byte offsets where lines start, plus doc.size() as the last entry (so line i is [b[i], b[i+1])).
// A final line break does not open an empty last line.
std::vector<size_t> line_bounds(std::string_view doc) {
  std::vector<size_t> b{0};
  for (size_t i = 0; i < doc.size(); ++i) {
    if (doc[i] == '\n' && i + 1 < doc.size()) b.push_back(i + 1);
  }
  b.push_back(doc.size());
  return b;
}

// End of line content: before "\n" or "\r\n" (or the end of the document).
size_t content_end(std::string_view doc, size_t line_begin, size_t next_begin) {
  size_t e = next_begin;
  if (e > line_begin && doc[e - 1] == '\n') --e;
  if (e > line_begin && doc[e - 1] == '\r') --e;
  return e;
}

Segments split_layout(std::string_view doc, size_t a, size_t b, bool spm, const std::string* instruction) {
  return fim_layout(doc.substr(0, a), doc.substr(a, b - a), doc.substr(b), spm, instruction);
}

void check_rate(double r, const char* name) {
  SLM_CHECK(r >= 0.0 && r <= 1.0, "[transforms] ", name, " must be in [0, 1], got ", r);
}

bool has_alnum(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)); });
}

std::string collapse_spaces(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!out.empty() && out.back() != ' ') out += ' ';
    } else {
      out += c;
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

// A Doxygen command at the start of a (marker-stripped) line: "@param", "\return", ...
bool is_command_line(std::string_view line) { return !line.empty() && (line[0] == '@' || line[0] == '\\'); }

std::string_view trim(std::string_view s) {
  size_t b = s.find_first_not_of(" \t\r\n\v\f");
  if (b == std::string_view::npos) return {};
  size_t e = s.find_last_not_of(" \t\r\n\v\f");
  return s.substr(b, e - b + 1);
}

bool is_newline_piece(const lex::Piece& p) { return p.kind == lex::Kind::Newline; }
int count_breaks(std::string_view doc, const lex::Piece& p) {
  return static_cast<int>(std::count(doc.begin() + p.begin, doc.begin() + p.begin + p.len, '\n'));
}

}  // namespace

const char* fim_split_name(FimSplit s) { return s == FimSplit::Chars ? "chars" : "lines"; }

FimSplit parse_fim_split(std::string_view name) {
  if (name == "chars") return FimSplit::Chars;
  if (name == "lines") return FimSplit::Lines;
  fail("[transforms] unknown FIM split '", name, "'; use chars or lines");
}

FimOptions FimOptions::from(const catalog::ModuleArgs& a) {
  FimOptions o;
  o.rate = a.f64("rate");
  o.spm_rate = a.f64("spm_rate");
  o.split = parse_fim_split(a.str("split"));
  return o;
}

IfimOptions IfimOptions::from(const catalog::ModuleArgs& a) {
  IfimOptions o;
  o.rate = a.f64("rate");
  o.spm_rate = a.f64("spm_rate");
  o.split = parse_fim_split(a.str("split"));
  o.max_instruction_bytes = static_cast<int>(a.i64("max_instruction_bytes"));
  return o;
}

SriOptions SriOptions::from(const catalog::ModuleArgs& a) {
  SriOptions o;
  o.rate = a.f64("rate");
  o.context_lines = static_cast<int>(a.i64("context_lines"));
  o.max_middle_lines = static_cast<int>(a.i64("max_middle_lines"));
  return o;
}

void add_fim(const catalog::ModuleArgs& a, TransformSet& set) { set.fim = FimOptions::from(a); }
void add_ifim(const catalog::ModuleArgs& a, TransformSet& set) { set.ifim = IfimOptions::from(a); }
void add_sri(const catalog::ModuleArgs& a, TransformSet& set) { set.sri = SriOptions::from(a); }

const std::vector<DataModule>& data_modules() {
#define SLM_MODULE_ENTRY(name, side) SLM_MODULE_IF(side, DATA, DataModule{#name, add_##name},)
  static const std::vector<DataModule> t = {SLM_MODULES(SLM_MODULE_ENTRY)};
#undef SLM_MODULE_ENTRY
  return t;
}

const DataModule* find_data_module(const std::string& name) {
  for (auto& m : data_modules())
    if (name == m.name) return &m;
  return nullptr;
}

TransformSet transform_set(const std::vector<catalog::ModuleArgs>& mods) {
  TransformSet t;
  for (auto& m : mods)
    if (const DataModule* d = find_data_module(m.name)) d->add(m, t);
  return t;  // Loader::set_transforms validates it
}

const char* transform_name(TransformKind k) {
  switch (k) {
    case TransformKind::None: return "none";
    case TransformKind::Fim: return "fim";
    case TransformKind::Ifim: return "ifim";
    case TransformKind::Sri: return "sri";
  }
  return "?";
}

void validate(const TransformSet& set) {
  double total = 0;
  if (set.fim) {
    check_rate(set.fim->rate, "fim rate");
    check_rate(set.fim->spm_rate, "fim spm_rate");
    total += set.fim->rate;
  }
  if (set.ifim) {
    check_rate(set.ifim->rate, "ifim rate");
    check_rate(set.ifim->spm_rate, "ifim spm_rate");
    SLM_CHECK(set.ifim->max_instruction_bytes > 0, "[transforms] ifim max_instruction_bytes must be positive, got ",
              set.ifim->max_instruction_bytes);
    SLM_CHECK(set.ifim->max_middle_lines >= 0, "[transforms] ifim max_middle_lines must be >= 0 (0 = no cap), got ",
              set.ifim->max_middle_lines);
    total += set.ifim->rate;
  }
  if (set.sri) {
    check_rate(set.sri->rate, "sri rate");
    SLM_CHECK(set.sri->context_lines >= 0, "[transforms] sri context_lines must be >= 0, got ", set.sri->context_lines);
    SLM_CHECK(set.sri->max_middle_lines >= 1, "[transforms] sri max_middle_lines must be >= 1, got ",
              set.sri->max_middle_lines);
    total += set.sri->rate;
  }
  // At most one transform per document, so the rates share one draw.
  SLM_CHECK(total <= 1.0 + 1e-12, "[transforms] fim + ifim + sri rates sum to ", total,
            "; at most one transform applies per document, so the sum must be at most 1");
}

void TransformStats::add(const Transformed& t) {
  ++docs;
  ++applied[static_cast<int>(t.applied)];
  if (t.drawn == TransformKind::Ifim && t.applied == TransformKind::Fim) ++ifim_no_comment;
}

Segments fim_layout(std::string_view prefix, std::string_view middle, std::string_view suffix, bool spm,
                    const std::string* instruction) {
  Segments out;
  auto text = [&](std::string_view t) {
    if (!t.empty()) out.push_back(Segment::str(std::string(t)));
  };
  out.push_back(Segment::token(TOK_FIM_PREFIX));
  if (!spm) text(prefix);
  out.push_back(Segment::token(TOK_FIM_SUFFIX));
  text(suffix);
  if (instruction) {
    out.push_back(Segment::token(TOK_FIM_INSTRUCTION));
    text(*instruction);
  }
  out.push_back(Segment::token(TOK_FIM_MIDDLE));
  if (spm) text(prefix);
  text(middle);
  return out;
}

Segments fim(std::string_view doc, const FimOptions& o, uint64_t seed) {
  Rng r{seed};
  bool spm = r.unit() < o.spm_rate;
  size_t a, b;
  if (o.split == FimSplit::Chars) {
    a = char_boundary(doc, r.below(doc.size() + 1), 0);
    b = char_boundary(doc, r.below(doc.size() + 1), 0);
  } else {
    std::vector<size_t> lb = line_bounds(doc);
    a = lb[r.below(lb.size())];
    b = lb[r.below(lb.size())];
  }
  if (a > b) std::swap(a, b);
  return split_layout(doc, a, b, spm, nullptr);
}

std::optional<Segments> ifim(std::string_view doc, const IfimOptions& o, uint64_t seed) {
  std::vector<DocComment> docs = doc_comments(doc, static_cast<size_t>(o.max_instruction_bytes));
  if (docs.empty()) return std::nullopt;
  Rng r{seed};
  bool spm = r.unit() < o.spm_rate;
  const DocComment& c = docs[r.below(docs.size())];
  size_t a, b;
  if (o.split == FimSplit::Lines) {
    // M runs from the documented line to a later line start (or the end), at most max_middle_lines.
    std::vector<size_t> lb = line_bounds(doc);
    size_t first = std::upper_bound(lb.begin(), lb.end(), c.line_begin) - lb.begin();  // first bound after a
    size_t n = lb.size() - first;
    if (o.max_middle_lines > 0) n = std::min(n, static_cast<size_t>(o.max_middle_lines));
    a = c.line_begin;
    b = lb[first + r.below(n)];
  } else {
    // M starts inside the documented line and ends anywhere after.
    a = char_boundary(doc, c.line_begin + r.below(c.line_end - c.line_begin), c.line_begin);
    b = char_boundary(doc, a + r.below(doc.size() - a + 1), a);
  }
  return split_layout(doc, a, b, spm, &c.instruction);
}

Segments sri(std::string_view doc, const SriOptions& o, uint64_t seed) {
  Rng r{seed};
  std::vector<size_t> lb = line_bounds(doc);
  size_t n_lines = lb.size() - 1;  // >= 1: an empty document is one empty line
  size_t first = r.below(n_lines);
  size_t n_mid = 1 + r.below(std::min(static_cast<size_t>(o.max_middle_lines), n_lines - first));
  // The middle keeps the first line's indentation and the last line's break in the prompt.
  size_t ms = lb[first];
  while (ms < lb[first + 1] && (doc[ms] == ' ' || doc[ms] == '\t')) ++ms;
  size_t last = first + n_mid - 1;
  size_t me = std::max(ms, content_end(doc, lb[last], lb[last + 1]));
  std::string middle(doc.substr(ms, me - ms));
  std::string prompt = std::string(doc.substr(0, ms)).append(kSriMarker).append(doc.substr(me));

  // Region: the marker's line (index `first` in the prompt too) plus context split above and below.
  std::vector<size_t> pb = line_bounds(prompt);
  size_t p_lines = pb.size() - 1;
  size_t ctx = static_cast<size_t>(o.context_lines);
  size_t below = std::min(p_lines - first - 1, ctx - ctx / 2);
  size_t above = std::min(first, ctx - below);
  below = std::min(p_lines - first - 1, ctx - above);
  size_t ra = first - above, rb = first + 1 + below;
  auto occurs_once = [&](std::string_view s) {
    size_t p = prompt.find(s);
    return p != std::string::npos && prompt.find(s, p + 1) == std::string::npos;
  };
  // The whole prompt occurs exactly once in itself, so widening always ends.
  while (!occurs_once(std::string_view(prompt).substr(pb[ra], pb[rb] - pb[ra]))) {
    if (ra > 0) --ra;
    if (rb < p_lines) ++rb;
  }
  std::string search = prompt.substr(pb[ra], pb[rb] - pb[ra]);
  std::string replace = search;
  replace.replace(ms - pb[ra], kSriMarker.size(), middle);

  Segments out;
  out.push_back(Segment::str(std::move(prompt)));
  out.push_back(Segment::token(TOK_SRI_SEARCH));
  out.push_back(Segment::str(std::move(search)));
  out.push_back(Segment::token(TOK_SRI_DIVIDER));
  if (!replace.empty()) out.push_back(Segment::str(std::move(replace)));
  out.push_back(Segment::token(TOK_SRI_REPLACE));
  return out;
}

TransformKind draw_transform(const TransformSet& set, uint64_t seed) {
  Rng r{seed};
  double u = r.unit(), edge = 0;
  if (set.fim && u < (edge += set.fim->rate)) return TransformKind::Fim;
  if (set.ifim && u < (edge += set.ifim->rate)) return TransformKind::Ifim;
  if (set.sri && u < (edge += set.sri->rate)) return TransformKind::Sri;
  return TransformKind::None;
}

Transformed transform(std::string_view doc, const TransformSet& set, uint64_t seed) {
  Transformed t;
  t.drawn = draw_transform(set, seed);
  Rng r{seed};
  r.next();  // the draw above
  uint64_t sub = r.next();
  switch (t.drawn) {
    case TransformKind::None:
      if (!doc.empty()) t.segments.push_back(Segment::str(std::string(doc)));
      break;
    case TransformKind::Fim: t.segments = fim(doc, *set.fim, sub); break;
    case TransformKind::Ifim: {
      std::optional<Segments> s = ifim(doc, *set.ifim, sub);
      if (s) {
        t.segments = std::move(*s);
      } else {
        const IfimOptions& io = *set.ifim;
        t.segments = fim(doc, FimOptions{io.rate, io.spm_rate, io.split}, sub);
      }
      t.applied = s ? TransformKind::Ifim : TransformKind::Fim;
      return t;
    }
    case TransformKind::Sri: t.segments = sri(doc, *set.sri, sub); break;
  }
  t.applied = t.drawn;
  return t;
}

std::string invert(const Segments& segs) {
  // Text between consecutive specials, and the specials in order.
  std::vector<int32_t> specials;
  std::vector<std::string> texts(1);
  for (const Segment& s : segs) {
    if (s.is_special()) {
      specials.push_back(s.special);
      texts.emplace_back();
    } else {
      texts.back() += s.text;
    }
  }
  auto layout = [&]() {
    std::string l;
    for (int32_t id : specials) l += std::string(special_name(id) ? special_name(id) : "?") + " ";
    return l;
  };
  if (specials.empty()) return texts[0];
  using V = std::vector<int32_t>;
  if (specials == V{TOK_FIM_PREFIX, TOK_FIM_SUFFIX, TOK_FIM_MIDDLE} ||
      specials == V{TOK_FIM_PREFIX, TOK_FIM_SUFFIX, TOK_FIM_INSTRUCTION, TOK_FIM_MIDDLE}) {
    SLM_CHECK(texts[0].empty(), "[transforms] cannot invert: text before FIM_PREFIX");
    // PSM: P between PREFIX and SUFFIX, M after MIDDLE. SPM: P is empty there and P M follow MIDDLE.
    return texts[1] + texts.back() + texts[2];
  }
  if (specials == V{TOK_SRI_SEARCH, TOK_SRI_DIVIDER, TOK_SRI_REPLACE}) {
    const std::string &prompt = texts[0], &search = texts[1], &replace = texts[2];
    SLM_CHECK(texts[3].empty(), "[transforms] cannot invert: text after SRI_REPLACE");
    size_t p = prompt.find(search);
    SLM_CHECK(!search.empty() && p != std::string::npos && prompt.find(search, p + 1) == std::string::npos,
              "[transforms] cannot invert SRI: the SEARCH block must occur exactly once in the prompt");
    return prompt.substr(0, p) + replace + prompt.substr(p + search.size());
  }
  fail("[transforms] cannot invert: unknown layout of special tokens: ", layout());
}

std::string comment_instruction(std::string_view c) {
  bool line = c.substr(0, 2) == "//";
  bool block = c.substr(0, 2) == "/*";
  if (!line && !block) return {};
  bool doc_block = block && c.size() >= 3 && (c[2] == '*' || c[2] == '!');
  std::string_view body = c;
  if (block) {  // drop "/*", "/**" or "/*!", and "*/" (or "**/")
    body.remove_prefix(doc_block ? 3 : 2);
    if (body.size() >= 2 && body.substr(body.size() - 2) == "*/") body.remove_suffix(2);
    while (!body.empty() && body.back() == '*') body.remove_suffix(1);
  }
  // Lines without their markers: "//", "///", "//!" for line comments; decorative leading '*' in blocks.
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos <= body.size();) {
    size_t nl = std::min(body.find('\n', pos), body.size());
    std::string_view l = trim(body.substr(pos, nl - pos));
    if (line && l.substr(0, 2) == "//") {
      l.remove_prefix(2);
      if (!l.empty() && (l[0] == '/' || l[0] == '!')) l.remove_prefix(1);
    } else if (block) {
      while (!l.empty() && l[0] == '*') l.remove_prefix(1);
    }
    lines.push_back(trim(l));
    pos = nl + 1;
  }
  // The @brief / \brief paragraph wins; otherwise the first paragraph, up to a command line.
  std::string out;
  size_t i = 0;
  while (i < lines.size() && lines[i].substr(0, 6) != "@brief" && lines[i].substr(0, 6) != "\\brief") ++i;
  if (i < lines.size()) {
    out = std::string(lines[i].substr(6));
    ++i;
  } else {
    if (block && !doc_block) return {};  // a plain /* */ block documents only with @brief
    i = 0;
    while (i < lines.size() && lines[i].empty()) ++i;
  }
  for (; i < lines.size() && !lines[i].empty() && !is_command_line(lines[i]); ++i) out.append(" ").append(lines[i]);
  out = collapse_spaces(out);
  if (!out.empty() && out[0] == ' ') out.erase(0, 1);
  return has_alnum(out) ? out : std::string();
}

std::vector<DocComment> doc_comments(std::string_view doc, size_t max_instruction_bytes) {
  std::vector<lex::Piece> ps = lex::lex(doc);
  std::vector<DocComment> out;
  // Walks runs of whole-line comments separated by single line breaks; the line right after a run
  // (no blank line between) is documented by the run's last comment, or by its trailing // lines.
  size_t i = 0;
  auto at_line_start = [&](size_t k) {
    size_t j = k;
    if (j > 0 && ps[j - 1].kind == lex::Kind::Space) --j;
    return j == 0 || is_newline_piece(ps[j - 1]);
  };
  // Index of the next piece after a comment, skipping one trailing blank run.
  auto after = [&](size_t k) { return (k + 1 < ps.size() && ps[k + 1].kind == lex::Kind::Space) ? k + 2 : k + 1; };
  while (i < ps.size()) {
    if (ps[i].kind != lex::Kind::Comment || !at_line_start(i)) {
      ++i;
      continue;
    }
    // Collect the run: comment, (space), newline with one break, comment, ...
    std::vector<size_t> run;
    size_t k = i;
    size_t next = ps.size();
    for (;;) {
      size_t a = after(k);
      if (a >= ps.size() || !is_newline_piece(ps[a])) {  // code after the comment on its line, or EOF
        next = a;
        run.clear();
        break;
      }
      run.push_back(k);
      next = a + 1;
      if (count_breaks(doc, ps[a]) != 1 || next >= ps.size()) {
        run.clear();  // blank line or end of file: documents nothing
        break;
      }
      if (ps[next].kind == lex::Kind::Comment) {
        k = next;
        continue;
      }
      break;
    }
    if (!run.empty()) {
      // The run's last comment, or its trailing // lines joined.
      size_t last = run.back();
      std::string text;
      auto piece_text = [&](size_t idx) { return doc.substr(ps[idx].begin, ps[idx].len); };
      if (piece_text(last).substr(0, 2) == "//") {
        size_t j = run.size();
        while (j > 0 && piece_text(run[j - 1]).substr(0, 2) == "//") --j;
        for (size_t m = j; m < run.size(); ++m) text.append(piece_text(run[m])).append("\n");
      } else {
        text = std::string(piece_text(last));
      }
      std::string instr = comment_instruction(text);
      if (!instr.empty() && instr.size() <= max_instruction_bytes) {
        size_t begin = doc.rfind('\n', ps[next].begin);
        begin = begin == std::string_view::npos ? 0 : begin + 1;
        size_t end = doc.find('\n', ps[next].begin);
        if (end == std::string_view::npos) end = doc.size();
        if (end > begin && doc[end - 1] == '\r') --end;
        out.push_back({begin, end, std::move(instr)});
      }
    }
    i = std::max(next, i + 1);
  }
  return out;
}

void encode_segments(const Tokenizer& tok, const Segments& segs, std::vector<int32_t>& out) {
  for (const Segment& s : segs) {
    if (s.is_special()) {
      out.push_back(s.special);
    } else {
      tok.encode(s.text, out);
    }
  }
}

std::vector<int32_t> transform_tokens(const Tokenizer& tok, std::string_view doc, const TransformSet& set,
                                      uint64_t seed) {
  std::vector<int32_t> out;
  encode_segments(tok, transform(doc, set, seed).segments, out);
  return out;
}

std::vector<int32_t> transform_tokens(const Tokenizer& tok, const std::vector<int32_t>& doc_ids,
                                      const TransformSet& set, uint64_t seed) {
  if (draw_transform(set, seed) == TransformKind::None) return doc_ids;
  for (int32_t id : doc_ids) {
    SLM_CHECK(id >= N_SPECIAL, "[transforms] document ids must be text tokens; found special token ",
              special_name(id) ? special_name(id) : "?", " (id ", id, ")");
  }
  return transform_tokens(tok, tok.decode(doc_ids), set, seed);
}

}  // namespace slm::data
