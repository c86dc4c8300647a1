// Environment variables that switch fastnn's candidate paths (FASTNN_GEMM_STREAMK,
// FASTNN_BN_PIPELINE_*, FASTNN_BN_ONE_READ): read at each call, so a test or an A/B run can flip
// them between calls, and parsed strictly: a value that is not one the variable takes raises a
// ValueError naming it, where a lenient parse (atoll("off") == 0) would have turned a path on that
// the user meant off.
#pragma once
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include "core/error.h"

namespace fastnn {

// The variable's value, or nullopt when it is unset or empty.
inline std::optional<std::string> env_value(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

// The variable as a whole number >= min_value, or nullopt when it is unset or empty.
inline std::optional<int64_t> env_int(const char* name, int64_t min_value) {
  const std::optional<std::string> v = env_value(name);
  if (!v) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const long long n = std::strtoll(v->c_str(), &end, 10);
  FASTNN_CHECK(errno == 0 && end && *end == '\0' && n >= min_value, ValueError, name,
               ": expected a whole number of at least ", min_value, " (or unset), got '", *v, "'");
  return static_cast<int64_t>(n);
}

// The variable as a switch: "1" true, "0" false, nullopt when it is unset or empty.
inline std::optional<bool> env_flag(const char* name) {
  const std::optional<std::string> v = env_value(name);
  if (!v) return std::nullopt;
  FASTNN_CHECK(*v == "0" || *v == "1", ValueError, name, ": expected 0 or 1 (or unset), got '", *v, "'");
  return *v == "1";
}

}  // namespace fastnn
