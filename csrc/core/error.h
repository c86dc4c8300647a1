// Errors raised by fastnn's C++ core. The bindings translate each type to the Python exception of
// the same name, so a message written here reaches the user unchanged.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace fastnn {

struct TypeError : std::runtime_error { using std::runtime_error::runtime_error; };
struct ValueError : std::runtime_error { using std::runtime_error::runtime_error; };
struct BufferError : std::runtime_error { using std::runtime_error::runtime_error; };
struct IndexError : std::runtime_error { using std::runtime_error::runtime_error; };

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace fastnn

// FASTNN_CHECK(cond, ValueError, "x: expected ", a, " got ", b): throws the named error type.
#define FASTNN_CHECK(cond, ErrorType, ...)                                  \
  do {                                                                      \
    if (!(cond)) throw ::fastnn::ErrorType(::fastnn::detail::concat(__VA_ARGS__)); \
  } while (0)
