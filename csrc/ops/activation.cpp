#include "ops/activation.h"

namespace fastnn {

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::relu;
  if (name == "tanh") return Activation::tanh;
  if (name == "sigmoid" || name == "logistic") return Activation::sigmoid;
  if (name == "none" || name == "linear" || name == "identity" || name.empty()) return Activation::none;
  throw ValueError("activation: expected 'relu', 'tanh', 'sigmoid' or 'none', got '" + name + "'");
}

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::relu: return "relu";
    case Activation::tanh: return "tanh";
    case Activation::sigmoid: return "sigmoid";
    default: return "none";
  }
}

void activation_forward(Activation a, const Tensor& x, Tensor& y) {
  FASTNN_ON_DEVICE(x.device(), activation_forward, a, x, y);
}
void activation_backward(Activation a, const Tensor& y, const Tensor& dy, Tensor& dx) {
  FASTNN_ON_DEVICE(y.device(), activation_backward, a, y, dy, dx);
}
void softmax_forward(const Tensor& x, Tensor& y, bool log) {
  FASTNN_ON_DEVICE(x.device(), softmax_forward, x, y, log);
}
void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) {
  FASTNN_ON_DEVICE(y.device(), softmax_backward, y, dy, dx, log);
}

}  // namespace fastnn
