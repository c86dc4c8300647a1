#include "bindings/bindings.h"
#include "bindings/convert.h"
#include "ops/activation.h"

namespace fastnn::bind {

void bind_activation(py::module_& m) {
  m.def("activation_forward", [](py::handle x_, const std::string& kind, py::handle out_) {
          Activation a = parse_activation(kind);
          Tensor x = to_tensor(x_, "x");
          check_floating(x, "x");
          Tensor y = output(out_, x.shape(), x.dtype(), x.device());
          activation_forward(a, x, y);
          return y;
        }, py::arg("x"), py::arg("activation"), py::arg("out") = py::none(),
        "y = f(x) for f in relu, tanh, sigmoid, none.");
  m.def("activation_backward", [](py::handle y_, py::handle dy_, const std::string& kind, py::handle out_) {
          Activation a = parse_activation(kind);
          Tensor y = to_tensor(y_, "y");
          check_floating(y, "y");
          Tensor dy = to_tensor(dy_, "dy");
          check_like(dy, y, "dy", "y");
          check_shape(dy, y.shape(), "dy");
          Tensor dx = output(out_, y.shape(), y.dtype(), y.device());
          activation_backward(a, y, dy, dx);
          return dx;
        }, py::arg("y"), py::arg("dy"), py::arg("activation"), py::arg("out") = py::none(),
        "dx = dy * f'(x), computed from the forward output y = f(x).");
  m.def("softmax_forward", [](py::handle x_, bool log, py::handle out_) {
          Tensor x = to_tensor(x_, "x");
          check_floating(x, "x");
          FASTNN_CHECK(x.dim() >= 1, ValueError, "x: softmax needs at least 1 dimension, got a 0-d tensor");
          Tensor y = output(out_, x.shape(), x.dtype(), x.device());
          softmax_forward(x, y, log);
          return y;
        }, py::arg("x"), py::arg("log") = false, py::arg("out") = py::none(),
        "Softmax (log=True: log-softmax) over the last dimension.");
  m.def("softmax_backward", [](py::handle y_, py::handle dy_, bool log, py::handle out_) {
          Tensor y = to_tensor(y_, "y");
          check_floating(y, "y");
          FASTNN_CHECK(y.dim() >= 1, ValueError, "y: softmax needs at least 1 dimension, got a 0-d tensor");
          Tensor dy = to_tensor(dy_, "dy");
          check_like(dy, y, "dy", "y");
          check_shape(dy, y.shape(), "dy");
          Tensor dx = output(out_, y.shape(), y.dtype(), y.device());
          softmax_backward(y, dy, dx, log);
          return dx;
        }, py::arg("y"), py::arg("dy"), py::arg("log") = false, py::arg("out") = py::none(),
        "Backward of softmax / log-softmax through its output y.");
}

}  // namespace fastnn::bind
