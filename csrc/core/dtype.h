// Element types and the one place that turns a runtime dtype into a C++ type.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"

namespace fastnn {

enum class DType : uint8_t { float32, float64, int32, int64, uint8, bool_ };

inline size_t itemsize(DType t) {
  switch (t) {
    case DType::float32: return 4;
    case DType::float64: return 8;
    case DType::int32: return 4;
    case DType::int64: return 8;
    case DType::uint8: return 1;
    case DType::bool_: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::int32: return "int32";
    case DType::int64: return "int64";
    case DType::uint8: return "uint8";
    case DType::bool_: return "bool";
  }
  return "?";
}

// Every dtype, in the order messages list them ("float32, float64, ..., uint8 and bool").
constexpr DType kAllDTypes[] = {DType::float32, DType::float64, DType::int32, DType::int64, DType::uint8, DType::bool_};

inline std::string dtype_list() {
  std::string list;
  constexpr size_t n = sizeof(kAllDTypes) / sizeof(kAllDTypes[0]);
  for (size_t i = 0; i < n; ++i) list += std::string(i == 0 ? "" : i + 1 == n ? " and " : ", ") + dtype_name(kAllDTypes[i]);
  return list;
}

inline bool is_floating(DType t) { return t == DType::float32 || t == DType::float64; }

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::float32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::float64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::int32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::int64; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::uint8; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::bool_; };

// Calls f(T{}) with T = float or double. Usage:
//   dispatch_floating(x.dtype(), "x", [&](auto tag) { using T = decltype(tag); ... });
template <class F>
decltype(auto) dispatch_floating(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::float32: return f(float{});
    case DType::float64: return f(double{});
    default: break;
  }
  throw TypeError(detail::concat(what, ": expected float32 or float64, got ", dtype_name(t)));
}

// Calls f(T{}) with T = int32_t or int64_t (class labels).
template <class F>
decltype(auto) dispatch_index(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::int32: return f(int32_t{});
    case DType::int64: return f(int64_t{});
    default: break;
  }
  throw TypeError(detail::concat(what, ": expected int64 or int32 labels, got ", dtype_name(t)));
}

}  // namespace fastnn
