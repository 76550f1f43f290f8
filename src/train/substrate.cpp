#include "train/substrate.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <toml++/toml.h>
#include <variant>

#include "common/error.h"
#include "common/fs.h"
#include "common/hash.h"
#include "common/options.h"
#include "common/toml_read.h"

namespace slm {

namespace {

using Member = std::variant<int64_t Substrate::*, double Substrate::*, bool Substrate::*, std::string Substrate::*>;

struct Field {
  const char* key;
  Member member;
  bool in_id;  // part of the canonical form
  double lo, hi;  // numeric range (inclusive)
};

// The one table of substrate fields: TOML keys, --set keys, validation ranges and the id all come from it.
const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      {"name", &Substrate::name, false, 0, 0},
      {"description", &Substrate::description, false, 0, 0},
      {"data_fingerprint", &Substrate::data_fingerprint, true, 0, 0},
      {"vocab", &Substrate::vocab, true, 0, 1 << 24},
      {"depth", &Substrate::depth, true, 1, 256},
      {"aspect", &Substrate::aspect, true, 1, 4096},
      {"head_dim", &Substrate::head_dim, true, 8, 1024},
      {"context", &Substrate::context, true, 8, 1 << 20},
      {"layer_pattern", &Substrate::layer_pattern, true, 0, 0},
      {"softcap", &Substrate::softcap, true, 0, 1000},
      {"doc_mask", &Substrate::doc_mask, true, 0, 0},
      {"rope_base", &Substrate::rope_base, true, 1, 1e9},
      {"total_batch", &Substrate::total_batch, true, 1, 1e9},
      {"device_batch", &Substrate::device_batch, true, 1, 1e6},
      {"steps", &Substrate::steps, true, 1, 1e9},
      {"optimizer", &Substrate::optimizer, true, 0, 0},
      {"lr_matrix", &Substrate::lr_matrix, true, 0, 10},
      {"lr_embed", &Substrate::lr_embed, true, 0, 10},
      {"lr_head", &Substrate::lr_head, true, 0, 10},
      {"lr_scalar", &Substrate::lr_scalar, true, 0, 10},
      {"lr_adamw", &Substrate::lr_adamw, true, 0, 10},
      {"weight_decay", &Substrate::weight_decay, true, 0, 10},
      {"adam_beta1", &Substrate::adam_beta1, true, 0, 0.99999},
      {"adam_beta2", &Substrate::adam_beta2, true, 0, 0.99999},
      {"muon_momentum", &Substrate::muon_momentum, true, 0, 0.99999},
      {"warmup_steps", &Substrate::warmup_steps, true, 0, 1e9},
      {"warmdown_frac", &Substrate::warmdown_frac, true, 0, 1},
      {"final_lr_frac", &Substrate::final_lr_frac, true, 0, 1},
      {"grad_clip", &Substrate::grad_clip, true, 0, 1e6},
      {"precision", &Substrate::precision, true, 0, 0},
      {"seed", &Substrate::seed, false, 0, 9.2e18},  // a replica label: seeds of one substrate compare
      {"data_seed", &Substrate::data_seed, true, 0, 9.2e18},
      {"eval_every", &Substrate::eval_every, true, 0, 1e9},
      {"eval_tokens", &Substrate::eval_tokens, true, 1, 1e12},
      {"ckpt_every", &Substrate::ckpt_every, false, 0, 1e9},
      {"tp", &Substrate::tp, true, 1, 1024},
      {"dp", &Substrate::dp, true, 1, 1 << 20},
      {"device", &Substrate::device, false, 0, 0},
      {"threads", &Substrate::threads, false, 0, 1024},
  };
  return f;
}

const Field* find_field(const std::string& key) {
  for (auto& f : fields())
    if (key == f.key) return &f;
  return nullptr;
}

[[noreturn]] void unknown_key(const std::string& key, const std::string& origin) {
  std::string n = cli::nearest(key, substrate_keys());
  fail(origin, ": unknown substrate key '", key, "'", n.empty() ? "" : "; did you mean '" + n + "'?");
}

std::string format_double(double v) {
  std::ostringstream os;
  os << std::setprecision(17) << v;
  return os.str();
}

std::string value_string(const Substrate& s, const Field& f) {
  return std::visit(
      [&](auto m) -> std::string {
        using T = std::decay_t<decltype(s.*m)>;
        if constexpr (std::is_same_v<T, int64_t>) return std::to_string(s.*m);
        else if constexpr (std::is_same_v<T, double>) return format_double(s.*m);
        else if constexpr (std::is_same_v<T, bool>) return s.*m ? "true" : "false";
        else return s.*m;
      },
      f.member);
}

// Parses a --set value into the field's type.
void assign_text(Substrate& s, const Field& f, const std::string& text, const std::string& origin) {
  std::visit(
      [&](auto m) {
        using T = std::decay_t<decltype(s.*m)>;
        if constexpr (std::is_same_v<T, int64_t>) {
          char* end = nullptr;
          errno = 0;
          long long v = std::strtoll(text.c_str(), &end, 10);
          SLM_CHECK(!text.empty() && *end == '\0' && errno == 0, origin, ": ", f.key, " expects an integer, got '", text, "'");
          s.*m = v;
        } else if constexpr (std::is_same_v<T, double>) {
          char* end = nullptr;
          double v = std::strtod(text.c_str(), &end);
          SLM_CHECK(!text.empty() && *end == '\0', origin, ": ", f.key, " expects a number, got '", text, "'");
          s.*m = v;
        } else if constexpr (std::is_same_v<T, bool>) {
          SLM_CHECK(text == "true" || text == "false", origin, ": ", f.key, " expects true or false, got '", text, "'");
          s.*m = text == "true";
        } else {
          s.*m = text;
        }
      },
      f.member);
}

}  // namespace

std::vector<std::string> substrate_keys() {
  std::vector<std::string> k;
  for (auto& f : fields()) k.push_back(f.key);
  return k;
}

int64_t Substrate::model_dim() const {
  int64_t d = depth * aspect;
  return (d + head_dim - 1) / head_dim * head_dim;
}

int64_t Substrate::grad_accum() const {
  const int64_t per_micro = device_batch * context * dp;
  return per_micro > 0 ? total_batch / per_micro : 0;
}

catalog::ModelView Substrate::model_view() const {
  catalog::ModelView v;
  v.depth = depth;
  v.d_model = model_dim();
  v.n_head = n_head();
  v.head_dim = head_dim;
  v.context = context;
  v.tp = tp;
  v.dp = dp;
  v.layer_pattern = layer_pattern;
  return v;
}

void Substrate::validate() const {
  std::vector<std::string> errs;
  auto err = [&](const std::string& e) { errs.push_back(e); };
  // The name labels reports and terminal lines (and --set can change it): short, no control bytes.
  bool safe_name = !name.empty() && name.size() <= 64;
  for (unsigned char c : name) safe_name = safe_name && (std::isalnum(c) || c == '.' || c == '_' || c == '-');
  if (!safe_name) err("name must be 1 to 64 characters of [A-Za-z0-9._-]");
  for (auto& f : fields()) {
    if (f.lo == 0 && f.hi == 0) continue;
    double v = std::visit(
        [&](auto m) -> double {
          using T = std::decay_t<decltype(this->*m)>;
          if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, double>) return static_cast<double>(this->*m);
          else return 0;
        },
        f.member);
    if (!(v >= f.lo && v <= f.hi) || std::isnan(v))
      err(std::string(f.key) + " = " + value_string(*this, f) + " is outside [" + format_double(f.lo) + ", " +
          format_double(f.hi) + "]");
  }
  if (layer_pattern.empty() || layer_pattern.find_first_not_of("A") != std::string::npos)
    err("layer_pattern '" + layer_pattern + "' may only use A (attention) in this build");
  if (optimizer != "muon" && optimizer != "adamw") err("optimizer '" + optimizer + "' is not muon or adamw");
  if (precision != "fp32" && precision != "bf16" && precision != "auto")
    err("precision '" + precision + "' is not fp32, bf16 or auto");
  if (device != "cpu" && device != "cuda") err("device '" + device + "' is not cpu or cuda");
  const int64_t per_micro = device_batch * context * dp;
  if (per_micro > 0 && total_batch % per_micro != 0)
    err("total_batch " + std::to_string(total_batch) + " is not a multiple of device_batch x context x dp = " +
        std::to_string(per_micro) + "; pick total_batch = " + std::to_string(std::max<int64_t>(1, total_batch / per_micro) * per_micro));
  if (head_dim % 2 != 0) err("head_dim " + std::to_string(head_dim) + " must be even (RoPE rotates pairs)");
  if (tp > 1 && n_head() % tp != 0)
    err("tp " + std::to_string(tp) + " does not divide the " + std::to_string(n_head()) + " attention heads");
  if (warmup_steps >= steps && warmup_steps > 0) err("warmup_steps must be smaller than steps");
  if (!errs.empty()) {
    std::string all = "substrate " + toml_read::printable(name) + ": ";
    for (size_t i = 0; i < errs.size(); ++i) all += (i ? "; " : "") + errs[i];
    throw Error(all);
  }
}

std::string Substrate::canonical() const {
  std::vector<std::string> lines;
  for (auto& f : fields())
    if (f.in_id) lines.push_back(std::string(f.key) + "=" + value_string(*this, f));
  lines.push_back("metric=val_bpb(sum nats over targets with bytes > 0 / (ln2 * their bytes))");
  std::sort(lines.begin(), lines.end());
  std::string out;
  for (auto& l : lines) out += l + "\n";
  return out;
}

std::string Substrate::id() const { return hash128_hex(canonical()).substr(0, 16); }

std::string Substrate::to_toml() const {
  std::ostringstream os;
  for (auto& f : fields()) {
    std::string v = value_string(*this, f);
    bool quoted = std::holds_alternative<std::string Substrate::*>(f.member);
    os << f.key << " = ";
    if (quoted) {
      os << '"';
      for (char c : v) {
        if (c == '"' || c == '\\') os << '\\';
        os << c;
      }
      os << '"';
    } else {
      os << v;
    }
    os << "\n";
  }
  return os.str();
}

Substrate parse_substrate(const std::string& text, const std::string& origin) {
  toml::table t;
  try {
    t = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    auto& src = e.source();
    fail(origin, ":", src.begin.line, ":", src.begin.column, ": invalid TOML: ", e.description());
  }
  Substrate s;
  for (auto& [k, node] : t) {
    std::string key(k.str());
    const Field* f = find_field(key);
    if (!f) unknown_key(key, origin);
    std::string err;
    std::visit(
        [&](auto m) {
          using T = std::decay_t<decltype(s.*m)>;
          auto v = toml_read::as<T>(node, key, err);  // integers are accepted for floats; floats are finite
          if (!v) fail(origin, ": ", err);
          s.*m = *v;
        },
        f->member);
  }
  // A substrate file says what it is: an empty one would run on hidden defaults under "unnamed".
  SLM_CHECK(t.get("name"), origin, ": 'name' is required (an empty substrate file would train on hidden defaults)");
  return s;
}

void set_field(Substrate& s, const std::string& assignment) {
  auto eq = assignment.find('=');
  SLM_CHECK(eq != std::string::npos && eq > 0, "--set expects key=value, got '", assignment, "'");
  std::string key = assignment.substr(0, eq);
  const Field* f = find_field(key);
  if (!f) unknown_key(key, "--set");
  assign_text(s, *f, assignment.substr(eq + 1), "--set");
}

std::string substrates_dir() {
  if (const char* home = std::getenv("SLMLAB_HOME")) return fs::join(home, "substrates");
  // Next to the binary's source tree: <repo>/build/slmlab -> <repo>/substrates.
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) {
    buf[n] = '\0';
    std::string dir = fs::parent(buf);
    for (int up = 0; up < 4; ++up) {
      if (fs::is_dir(fs::join(dir, "substrates"))) return fs::join(dir, "substrates");
      dir = fs::parent(dir);
    }
  }
  return "substrates";
}

Substrate load_substrate(const std::string& name_or_path) {
  std::string path = name_or_path;
  if (path.find('/') == std::string::npos && path.find(".toml") == std::string::npos)
    path = fs::join(substrates_dir(), path + ".toml");
  SLM_CHECK(fs::exists(path), "substrate '", name_or_path, "' not found (looked for ", path,
            "); pass a shipped name such as cpu-tiny or a path to a .toml file");
  Substrate s = parse_substrate(fs::read_file(path), path);
  return s;
}

}  // namespace slm
