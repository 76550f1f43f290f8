// Typed reads of TOML files (plans, substrates). A key of the wrong type is an error that names the
// key, the type it needs and the type it has, never a silent default: `k_noise = "5"` is refused,
// not read as the default 2.0. Floats must be finite; integers are accepted where a float is
// needed. Strings may not hold control bytes (other than tab and newline), so nothing read from a
// file can move the cursor or ring the bell of the terminal that prints it.
#pragma once
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <toml++/toml.h>
#include <type_traits>
#include <vector>

namespace slm::toml_read {

template <typename T>
const char* expected_name() {
  if constexpr (std::is_same_v<T, std::string>) return "a string";
  else if constexpr (std::is_same_v<T, int64_t>) return "an integer";
  else if constexpr (std::is_same_v<T, double>) return "a number";
  else if constexpr (std::is_same_v<T, bool>) return "true or false";
  else if constexpr (std::is_same_v<T, toml::array>) return "an array";
  else return "a table";
}

// "a string", "an integer", "a float", ... for the node's actual type.
inline std::string found_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    default: return "a date or time";
  }
}

// Bytes below 0x20 (but tab and newline) and DEL: terminal control.
inline bool has_control(const std::string& s) {
  for (unsigned char c : s)
    if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f) return true;
  return false;
}

// `s` with every byte outside printable ASCII written as \xNN: safe to put in an error message.
inline std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// The node as T, or nullopt with `err` set to "'key' must be <T>, got <found>".
template <typename T>
std::optional<T> as(const toml::node& n, const std::string& key, std::string& err) {
  auto wrong = [&](const std::string& found) {
    err = "'" + key + "' must be " + expected_name<T>() + ", got " + found;
    return std::nullopt;
  };
  if constexpr (std::is_same_v<T, double>) {
    std::optional<double> v;
    if (auto d = n.value_exact<double>()) v = *d;
    else if (auto i = n.value_exact<int64_t>()) v = static_cast<double>(*i);
    else return wrong(found_name(n));
    if (!std::isfinite(*v)) return wrong(std::isnan(*v) ? "nan" : "inf");
    return v;
  } else if constexpr (std::is_same_v<T, std::string>) {
    auto v = n.value_exact<std::string>();
    if (!v) return wrong(found_name(n));
    if (has_control(*v)) {
      err = "'" + key + "' holds control characters (\"" + printable(*v) + "\"); use printable text";
      return std::nullopt;
    }
    return v;
  } else {
    auto v = n.value_exact<T>();
    if (!v) return wrong(found_name(n));
    return v;
  }
}

// t[key] as T: nullopt when absent, or when of another type (then "where: 'key' must be ..." is
// appended to `errors`).
template <typename T>
std::optional<T> get(const toml::table& t, const std::string& key, const std::string& where,
                     std::vector<std::string>& errors) {
  const toml::node* n = t.get(key);
  if (!n) return std::nullopt;
  std::string err;
  auto v = as<T>(*n, key, err);
  if (!v) errors.push_back(where + ": " + err);
  return v;
}

// t[key] as an array or a table: nullptr when absent or of another type (then an error as above).
inline const toml::array* get_array(const toml::table& t, const std::string& key, const std::string& where,
                                    std::vector<std::string>& errors) {
  const toml::node* n = t.get(key);
  if (!n) return nullptr;
  if (!n->is_array()) errors.push_back(where + ": '" + key + "' must be an array, got " + found_name(*n));
  return n->as_array();
}
inline const toml::table* get_table(const toml::table& t, const std::string& key, const std::string& where,
                                    std::vector<std::string>& errors) {
  const toml::node* n = t.get(key);
  if (!n) return nullptr;
  if (!n->is_table()) errors.push_back(where + ": '" + key + "' must be a table, got " + found_name(*n));
  return n->as_table();
}

}  // namespace slm::toml_read
