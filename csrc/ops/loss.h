// Loss functions, forward and backward, matching torch.nn.functional: softmax cross-entropy from
// logits with integer labels, mean squared error, and binary cross-entropy with logits.
//
// The per-element math is written once here, as FASTNN_HD functions shared by the CPU loops and
// the CUDA kernels. Reduced losses are accumulated in double whatever the input dtype, over blocks
// of fixed size combined in a fixed order, so a loss has the same bits for any thread count.
//
// Conventions, as in torch:
// - reduction "mean" of cross-entropy is the weighted mean sum_i w[y_i] l_i / sum_i w[y_i] over
//   the rows that are not ignore_index; with every row ignored (or N = 0) that is 0/0 = NaN, and
//   the gradient is all zeros (ignored rows have zero gradient).
// - reduction "mean" of MSE and BCE divides by the number of elements: NaN for an empty input.
// - reduction "sum" of an empty input is 0; "none" gives an empty result.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "core/dispatch.h"
#include "core/macros.h"
#include "core/tensor.h"

namespace fastnn {

enum class Reduction : int { none = 0, mean = 1, sum = 2 };

Reduction parse_reduction(const std::string& name);  // "none", "mean", "sum"
const char* reduction_name(Reduction r);

// ---- Softmax cross-entropy, per row of logits x with label y: l = -log softmax(x)[y]. ----------
// Inputs: m = max(x), the target's logit x[y] and exponential e_y = exp(x[y] - m), and the sum of
// the other classes' exponentials, others = sum_{c != y} exp(x[c] - m); the row's sum is
// e_y + others. Keeping `others` apart is what keeps a confident row accurate: as p[y] -> 1, both
// log(sum) and p[y] - 1 lose everything to cancellation, while others / sum does not.
template <class T>
FASTNN_HD T cross_entropy_row_loss(T row_max, T target_logit, T target_exp, T others_exp) {
  // e_y >= 1/2: the target is the max or close to it, the loss is log1p(others / e_y) <= log1p(2C)
  if (target_exp >= T(0.5)) return std::log1p(others_exp / target_exp);
  // else the loss exceeds log(1 + 1/2) and (m - x[y]) + log(sum) has no cancellation to fear
  return (row_max - target_logit) + std::log(target_exp + others_exp);
}

// d l / d x[c] scaled by `coef` (the upstream gradient times the class weight), with
// inv_sum = 1 / (e_y + others): coef * (p[c] - [c == y]), where the target's p - 1 is -others / sum.
template <class T>
FASTNN_HD T cross_entropy_grad(T exp_c, T others_exp, bool is_target, T inv_sum, T coef) {
  return is_target ? -coef * (others_exp * inv_sum) : coef * (exp_c * inv_sum);
}

// ---- Mean squared error: l = (x - t)^2. ----------------------------------------------------------
template <class T>
FASTNN_HD T mse_loss(T x, T t) {
  const T d = x - t;
  return d * d;
}

// dl/dx times the upstream gradient, with `scale` = upstream (times 1/numel for "mean").
template <class T>
FASTNN_HD T mse_grad(T x, T t, T scale) {
  return T(2) * scale * (x - t);
}

// ---- Binary cross-entropy with logits, pos_weight p (1 when absent): ----------------------------
//   l = (1 - t) x + (1 + (p - 1) t) softplus(-x),   softplus(-x) = max(-x, 0) + log1p(exp(-|x|))
// which for p = 1 is max(x, 0) - x t + log1p(exp(-|x|)). Both directions need only e = exp(-|x|),
// the exponential of a non-positive number, which never overflows; the loss takes log1p(e).
// Callers compute e (and log1p(e)) with whatever exp they have: std::exp here, a vectorised one on
// the CPU, __expf on a GPU.
template <class T>
FASTNN_HD T bce_with_logits_loss(T x, T t, T pos_weight, T log1p_e) {
  // The linear part of the loss, (1 - t) x + (1 + (p - 1) t) max(-x, 0), simplified per sign of x
  // to a non-negative term: no cancellation against log1p(e) (torch's form loses a small loss at
  // large negative x and t = 0 to it).
  const T pt = pos_weight * t;
  const T linear = x < T(0) ? -pt * x : (T(1) - t) * x;
  return linear + (T(1) + pt - t) * log1p_e;
}

// dl/dx = (1 + (p - 1) t) sigmoid(x) - p t = (1 - t) sigmoid(x) - p t (1 - sigmoid(x)), with
// sigmoid(x) and 1 - sigmoid(x) each taken from e directly: accurate at both tails.
template <class T>
FASTNN_HD T bce_with_logits_grad(T x, T t, T pos_weight, T e) {
  const T inv = T(1) / (T(1) + e);
  const bool positive = x >= T(0);
  const T sig = (positive ? T(1) : e) * inv;
  const T one_minus_sig = (positive ? e : T(1)) * inv;
  return (T(1) - t) * sig - pos_weight * t * one_minus_sig;
}

// A BCE weight or pos_weight broadcast to the input as torch broadcasts it: element i of the flat,
// row-major input takes data[(i / inner) % period]. That covers every operand whose dimensions
// other than 1 are adjacent once aligned with the input's trailing ones: the input's own shape,
// one value per class (C,) or per row (N, 1) of (N, C), per channel (C, 1) of (N, C, L), a scalar.
struct BroadcastLayout {
  int64_t inner = 1, period = 1;
};
// ValueError naming `arg` when torch would not broadcast `operand` to exactly `input` (the loss
// keeps the input's shape), or when its non-1 dimensions are not adjacent (expanded, it is taken).
BroadcastLayout broadcast_layout(const Shape& operand, const Shape& input, const char* arg);

template <class T>
struct Broadcast {
  const T* data = nullptr;  // nullptr: the argument is absent, every element weighs 1
  BroadcastLayout layout;
  FASTNN_HD T operator[](int64_t i) const { return data ? data[i / layout.inner % layout.period] : T(1); }
};

// The kernels' view of an optional operand the bindings checked.
template <class T>
Broadcast<T> broadcast_of(const Tensor& operand, const Tensor& input) {
  if (!operand.defined()) return {};
  return {operand.data<T>(), broadcast_layout(operand.shape(), input.shape(), "operand")};
}

template <class T>
FASTNN_HD T bce_with_logits_loss(T x, T t, T pos_weight) {
  return bce_with_logits_loss(x, t, pos_weight, std::log1p(std::exp(-std::fabs(x))));
}
template <class T>
FASTNN_HD T bce_with_logits_grad(T x, T t, T pos_weight) {
  return bce_with_logits_grad(x, t, pos_weight, std::exp(-std::fabs(x)));
}

// ---- Public entry points. ------------------------------------------------------------------------
// An undefined Tensor stands for an absent optional argument (weight, pos_weight). Outputs: a
// reduced loss is a 0-d tensor of the input's dtype; "none" gives one loss per row (cross-entropy)
// or per element (MSE, BCE). `dloss` is 0-d for mean/sum and the shape of the unreduced loss for
// "none". Kernels trust their arguments: the bindings check shapes and dtypes; label range: above.

struct BadLabel {
  int64_t index = -1;  // row of the first label outside [0, classes) that is not ignore_index; -1: none
  int64_t value = 0;
};
// The ValueError, naming target, of such a label. Each backend's cross-entropy checks its labels
// (the CPU's before any output is written; CUDA's as its kernels run, see loss_cuda.cu).
[[noreturn]] void throw_bad_label(const BadLabel& bad, int64_t classes, int64_t ignore_index);

// logits (N, C), target (N,) int32/int64, weight (C,) or undefined.
void cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                           Reduction reduction, int64_t ignore_index, Tensor& loss);
void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& dloss,
                            const Tensor& weight, Reduction reduction, int64_t ignore_index,
                            Tensor& dlogits);
// Loss and dlogits for an upstream gradient of 1 in one pass over the logits (mean or sum only).
void cross_entropy_fused(const Tensor& logits, const Tensor& target, const Tensor& weight,
                         Reduction reduction, int64_t ignore_index, Tensor& loss, Tensor& dlogits);

void mse_forward(const Tensor& input, const Tensor& target, Reduction reduction, Tensor& loss);
void mse_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                  Reduction reduction, Tensor& dinput);

// weight, pos_weight: undefined, or shapes that broadcast_layout takes for input's shape.
void bce_with_logits_forward(const Tensor& input, const Tensor& target, const Tensor& weight,
                             const Tensor& pos_weight, Reduction reduction, Tensor& loss);
void bce_with_logits_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                              const Tensor& weight, const Tensor& pos_weight, Reduction reduction,
                              Tensor& dinput);

namespace cpu {
void cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                           Reduction reduction, int64_t ignore_index, Tensor& loss);
void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& dloss,
                            const Tensor& weight, Reduction reduction, int64_t ignore_index,
                            Tensor& dlogits);
void cross_entropy_fused(const Tensor& logits, const Tensor& target, const Tensor& weight,
                         Reduction reduction, int64_t ignore_index, Tensor& loss, Tensor& dlogits);
void mse_forward(const Tensor& input, const Tensor& target, Reduction reduction, Tensor& loss);
void mse_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                  Reduction reduction, Tensor& dinput);
void bce_with_logits_forward(const Tensor& input, const Tensor& target, const Tensor& weight,
                             const Tensor& pos_weight, Reduction reduction, Tensor& loss);
void bce_with_logits_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                              const Tensor& weight, const Tensor& pos_weight, Reduction reduction,
                              Tensor& dinput);
}  // namespace cpu

// The CUDA backend (ops/loss_cuda.cu); same contracts as the cpu:: functions.
namespace cuda {
void cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                           Reduction reduction, int64_t ignore_index, Tensor& loss);
void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& dloss,
                            const Tensor& weight, Reduction reduction, int64_t ignore_index,
                            Tensor& dlogits);
void cross_entropy_fused(const Tensor& logits, const Tensor& target, const Tensor& weight,
                         Reduction reduction, int64_t ignore_index, Tensor& loss, Tensor& dlogits);
void mse_forward(const Tensor& input, const Tensor& target, Reduction reduction, Tensor& loss);
void mse_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                  Reduction reduction, Tensor& dinput);
void bce_with_logits_forward(const Tensor& input, const Tensor& target, const Tensor& weight,
                             const Tensor& pos_weight, Reduction reduction, Tensor& loss);
void bce_with_logits_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                              const Tensor& weight, const Tensor& pos_weight, Reduction reduction,
                              Tensor& dinput);
}  // namespace cuda

}  // namespace fastnn
