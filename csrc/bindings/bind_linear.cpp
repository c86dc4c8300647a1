#include "bindings/bindings.h"
#include "bindings/convert.h"

namespace fastnn::bind {

void bind_linear(py::module_& m) {}

}  // namespace fastnn::bind
