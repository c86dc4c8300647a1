// Elementwise activations and softmax over the last dimension. The math of each activation is
// written once here, as FASTNN_HD functions shared by the CPU loops, the fused GEMM epilogues and
// the CUDA kernels. Backward is expressed through the forward *output* y, so no op needs to keep
// its input: relu' = [y > 0], tanh' = 1 - y^2, sigmoid' = y (1 - y).
#pragma once
#include <cmath>
#include <string>

#include "core/dispatch.h"
#include "core/macros.h"
#include "core/tensor.h"
#include "ops/fast_math.h"

namespace fastnn {

enum class Activation : int { none = 0, relu = 1, tanh = 2, sigmoid = 3 };

Activation parse_activation(const std::string& name);  // "relu", "tanh", "sigmoid", "none"/"linear"
const char* activation_name(Activation a);

template <class T>
FASTNN_HD T sigmoid_stable(T x) {
#if !defined(__CUDA_ARCH__)
  return fastmath::sigmoid(x);  // vectorisable on the CPU
#else
  // exp of a negative argument only: never overflows, and keeps full relative precision near 0
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
#endif
}

template <class T>
FASTNN_HD T tanh_of(T x) {
#if !defined(__CUDA_ARCH__)
  return fastmath::tanh(x);  // vectorisable on the CPU
#else
  return std::tanh(x);
#endif
}

template <class T>
FASTNN_HD T activation_apply(Activation a, T x) {
  switch (a) {
    case Activation::relu: return x < T(0) ? T(0) : x;  // NaN stays NaN, as in torch
    case Activation::tanh: return tanh_of(x);
    case Activation::sigmoid: return sigmoid_stable(x);
    default: return x;
  }
}

// dL/dx given the activation's output y and dL/dy.
template <class T>
FASTNN_HD T activation_grad(Activation a, T y, T dy) {
  switch (a) {
    case Activation::relu: return y <= T(0) ? T(0) : dy;  // torch's threshold_backward rule
    case Activation::tanh: return dy * (T(1) - y * y);
    case Activation::sigmoid: return dy * y * (T(1) - y);
    default: return dy;
  }
}

// y = f(x); x and y may alias.
void activation_forward(Activation a, const Tensor& x, Tensor& y);
// dx = dy * f'(x), written through y = f(x); dy and dx may alias.
void activation_backward(Activation a, const Tensor& y, const Tensor& dy, Tensor& dx);
// Softmax (or log-softmax) over the last dimension of x; rows = numel / last dim.
void softmax_forward(const Tensor& x, Tensor& y, bool log);
// Backward of softmax / log-softmax through its output y.
void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log);

namespace cpu {
void activation_forward(Activation a, const Tensor& x, Tensor& y);
void activation_backward(Activation a, const Tensor& y, const Tensor& dy, Tensor& dx);
void softmax_forward(const Tensor& x, Tensor& y, bool log);
void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log);
}  // namespace cpu

// The CUDA backend (ops/activation_cuda.cu); same contracts as the cpu:: functions.
namespace cuda {
void activation_forward(Activation a, const Tensor& x, Tensor& y);
void activation_backward(Activation a, const Tensor& y, const Tensor& dy, Tensor& dx);
void softmax_forward(const Tensor& x, Tensor& y, bool log);
void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log);
}  // namespace cuda

}  // namespace fastnn
