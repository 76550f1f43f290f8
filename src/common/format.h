// Human-readable figures for terminal lines: "4m13s", "1310d01h".
#pragma once
#include <cmath>
#include <cstdio>
#include <string>

namespace slm {

// A duration in seconds, at two units of precision; "?" when unknown (NaN, negative).
inline std::string human_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[64];
  long t = static_cast<long>(s + 0.5);
  if (t >= 86400) std::snprintf(buf, sizeof buf, "%ldd%02ldh", t / 86400, (t % 86400) / 3600);
  else if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

}  // namespace slm
