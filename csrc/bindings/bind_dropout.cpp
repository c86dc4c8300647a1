#include "bindings/bindings.h"
#include "bindings/convert.h"

namespace fastnn::bind {

void bind_dropout(py::module_& m) {}

}  // namespace fastnn::bind
