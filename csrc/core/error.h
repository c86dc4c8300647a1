// Errors raised by fastnn's C++ core. The bindings translate each type to the Python exception of
// the same name, so a message written here reaches the user unchanged.
#pragma once
#include <charconv>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace fastnn {

struct TypeError : std::runtime_error { using std::runtime_error::runtime_error; };
struct ValueError : std::runtime_error { using std::runtime_error::runtime_error; };
struct BufferError : std::runtime_error { using std::runtime_error::runtime_error; };
struct IndexError : std::runtime_error { using std::runtime_error::runtime_error; };

namespace detail {
// Message pieces are appended without iostreams: formatting a number through std::ostream goes
// through the process's global locale and the libstdc++ that happens to be loaded first, and on
// the first real-GPU machine (fastnn built by GCC 13 in /opt/gcc, imported next to torch, sklearn
// and pyarrow) every error message with an integer in it crashed the interpreter there, while
// messages of strings alone came through. to_chars and snprintf("%g") need no locale object.
inline void append_piece(std::string& out, std::string_view s) { out.append(s.data(), s.size()); }
inline void append_piece(std::string& out, const char* s) { out.append(s ? s : "(null)"); }
inline void append_piece(std::string& out, char c) { out.push_back(c); }
inline void append_piece(std::string& out, bool b) { out.append(b ? "1" : "0"); }
template <class T>
std::enable_if_t<std::is_integral_v<T>> append_piece(std::string& out, T v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, r.ptr);
}
template <class T>
std::enable_if_t<std::is_floating_point_v<T>> append_piece(std::string& out, T v) {
  char buf[32];  // "%g": what std::ostream prints by default (6 significant digits)
  const int n = std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
  if (n > 0) out.append(buf, static_cast<size_t>(n) < sizeof(buf) ? static_cast<size_t>(n) : sizeof(buf) - 1);
}

template <class... Args>
std::string concat(const Args&... args) {
  std::string out;
  (append_piece(out, args), ...);
  return out;
}
}  // namespace detail

}  // namespace fastnn

// FASTNN_CHECK(cond, ValueError, "x: expected ", a, " got ", b): throws the named error type.
#define FASTNN_CHECK(cond, ErrorType, ...)                                  \
  do {                                                                      \
    if (!(cond)) throw ::fastnn::ErrorType(::fastnn::detail::concat(__VA_ARGS__)); \
  } while (0)
