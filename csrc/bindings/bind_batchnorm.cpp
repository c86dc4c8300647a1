#include "bindings/bindings.h"
#include "bindings/convert.h"

namespace fastnn::bind {

void bind_batchnorm(py::module_& m) {}

}  // namespace fastnn::bind
