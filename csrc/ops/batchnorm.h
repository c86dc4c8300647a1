// BatchNorm1d over an (N, C) row-major input: statistics per column, over the N rows.
//   training: y = (x - mean) * invstd * weight + bias with the batch mean and *biased* variance,
//             invstd = 1 / sqrt(var + eps); running_mean/var (when given) move towards the batch
//             mean and the *unbiased* variance by `momentum`, as in torch.
//   eval:     the same with running_mean / running_var in place of the batch statistics.
// Statistics accumulate in double for both dtypes, as sums shifted by the column's first value
// (shifted_moments), so a float32 column of values near 1e6 with unit spread keeps full
// precision. The mean a float32 kernel subtracts is split into hi + lo floats: x - hi is exact
// near the mean, so y keeps it too.
//
// save_mean and save_invstd are float64 for both dtypes (C numbers: free to keep exact). Rounded
// to float32 they would cost the backward its accuracy: a mean near 1e6 is off by up to 1/32, and
// at N = 2 dx depends on 1 - xhat^2 = eps * invstd^2, so on invstd to a factor var / eps. The
// training backward still sums u = x - save_mean and corrects by mean(u), so a rounded save_mean
// (e.g. torch's float32 one) gives exact-mean gradients too.
#pragma once
#include <cmath>

#include "core/dispatch.h"
#include "core/macros.h"
#include "core/tensor.h"
#include "ops/dropout.h"

namespace fastnn {

FASTNN_HD double batchnorm_invstd(double var, double eps) { return 1.0 / std::sqrt(var + eps); }

// running = (1 - momentum) * running + momentum * value
FASTNN_HD double running_update(double running, double value, double momentum) {
  return (1.0 - momentum) * running + momentum * value;
}

// v = hi + lo with hi = v rounded to T: (x - hi) - lo subtracts v from x with one rounding when x
// is near v. For T = double, lo = 0.
template <class T>
FASTNN_HD void split_hi_lo(double v, T& hi, T& lo) {
  hi = static_cast<T>(v);
  lo = static_cast<T>(v - static_cast<double>(hi));
}

// The mean and m2 (the sum of squared deviations) of n values from the sums of u = x - k and u^2,
// k one of the values (the column's first): m2 = sum(u^2) - sum(u)^2 / n loses a factor
// (var + (mean - k)^2) / var <= n + 1 of precision (k's own deviation is part of the variance),
// in practice ~2, and costs one add and one multiply-add per value where Welford's update takes a
// dependent pair and a division. Rounding can leave m2 a hair below zero: clamped (NaN stays NaN).
FASTNN_HD void shifted_moments(double n, double k, double sum_u, double sum_u2, double& mean, double& m2) {
  const double u_mean = sum_u / n;
  mean = k + u_mean;
  const double d = sum_u2 - u_mean * sum_u;
  m2 = d < 0.0 ? 0.0 : d;
}

// The column's saved statistics from the batch mean and m2, the sum of squared deviations over n
// rows; the running statistics (when tracked: pointers to the column's entries) move towards the
// batch mean and the *unbiased* variance, as torch does.
template <class T>
FASTNN_HD void finish_batch_stats(double n, double mean, double m2, double eps, double momentum,
                                  double& save_mean, double& save_invstd, T* running_mean, T* running_var) {
  save_mean = mean;
  save_invstd = batchnorm_invstd(m2 / n, eps);
  if (running_mean) {
    *running_mean = static_cast<T>(running_update(static_cast<double>(*running_mean), mean, momentum));
    *running_var = static_cast<T>(running_update(static_cast<double>(*running_var), m2 / (n - 1.0), momentum));
  }
}

// weight * invstd, the factor from x - mean to y and from dy to dx's leading term; weight == nullptr
// means weight = 1.
template <class T>
FASTNN_HD double batchnorm_gain(double invstd, const T* weight, int64_t col) {
  return weight ? invstd * static_cast<double>(weight[col]) : invstd;
}

template <class T>
FASTNN_HD T batchnorm_shift(const T* bias, int64_t col) { return bias ? bias[col] : T(0); }

// A parameter gradient written, or added to what the buffer holds.
template <class T>
FASTNN_HD void store_grad(T* out, int64_t col, double value, bool accumulate) {
  out[col] = static_cast<T>(accumulate ? static_cast<double>(out[col]) + value : value);
}

// Training backward of one column. With xhat = (x - mean) * invstd and k = weight * invstd:
//   dx = k * (dy - mean(dy) - xhat * mean(dy * xhat)),  dweight = sum(dy * xhat),  dbias = sum(dy),
// written as dx = k_dy * dy + k_x * (x - mean) + k_0. The column sums use u = x - save_mean: the
// batch mean is save_mean + mean(u) (save_mean may have been rounded), and
// sum(dy * (x - mean)) = sum(dy * u) - mean(u) * sum(dy).
//
// dx cancels when it is small next to k * dy: projecting dy off 1 and xhat removes most of it
// when N is tiny (at N = 2, all but a fraction eps / var). `exact` says so; the kernels then form
// dx in double. With check_cancellation (float32, whose kernels otherwise form dx in float, with
// an error of a few float ulps of k * |dy|) it is set unless |dx| is at least half of k * |dy|,
// from sum_u2 = sum(u^2) and sum_dy2 = sum(dy^2); without, it is always set.
struct BatchnormBackwardCoefs {
  double mean, k_dy, k_x, k_0;
  double dweight, dbias;
  bool exact;
};

FASTNN_HD BatchnormBackwardCoefs batchnorm_backward_coefs(int64_t rows, double save_mean, double invstd,
                                                          double gain, double sum_u, double sum_dy,
                                                          double sum_dy_u, double sum_u2, double sum_dy2,
                                                          bool check_cancellation) {
  BatchnormBackwardCoefs r;
  const double inv_n = rows ? 1.0 / static_cast<double>(rows) : 0.0;
  const double u_mean = sum_u * inv_n;
  const double sum_dy_xhat = invstd * (sum_dy_u - u_mean * sum_dy);
  r.dweight = sum_dy_xhat;
  r.dbias = sum_dy;
  r.mean = save_mean + u_mean;
  r.k_dy = gain;
  r.k_x = -gain * invstd * sum_dy_xhat * inv_n;
  r.k_0 = -gain * sum_dy * inv_n;
  r.exact = true;
  if (check_cancellation) {
    // |dx / k|^2 = |dy|^2 - sum(dy)^2 / N - sum(dy xhat)^2 / N * (2 - |xhat|^2 / N)
    const double xhat2 = invstd * invstd * (sum_u2 - u_mean * sum_u);
    const double residual = sum_dy2 - sum_dy * sum_dy * inv_n -
                            sum_dy_xhat * sum_dy_xhat * inv_n * (2.0 - xhat2 * inv_n);
    r.exact = !(residual >= 0.25 * sum_dy2);
  }
  return r;
}

// What the forward applies to each normalised value before storing it, so that BatchNorm -> ReLU
// -> Dropout (the lecture's block) costs one op: act (none or relu), then dropout as
// dropout_forward would (its mask a function of the element index of y). The default does nothing.
// Both backends apply it in the pass that writes y (the CPU to rows still in L1), so y is written
// once and the step launches no dropout kernel.
struct BatchnormEpilogue {
  Activation act = Activation::none;
  DropoutParams dropout;  // default: keeps everything (p = 0)
  bool any() const { return act != Activation::none || !dropout.keeps_all(); }
};

// weight, bias, running_mean, running_var may be undefined Tensors (absent). Writes y (N, C) and
// the float64 save_mean, save_invstd (C): the batch statistics in training, the running ones in
// eval (then running_mean and running_var must be given), and applies `epilogue` to y. x and y
// may alias.
void batchnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, bool training,
                       double momentum, double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd,
                       const BatchnormEpilogue& epilogue = {});

// training: the full batch-statistics backward; eval: dx = dy * weight * invstd. dweight =
// sum(dy * xhat) and dbias = sum(dy) are written (or added to, with accumulate) when defined.
// weight undefined means weight = 1; save_mean and save_invstd are float64. dx may alias dy or x.
// With `relu_output` (the output of a forward whose epilogue was relu, then dropout or not), dy is
// the gradient of that output and passes back to the normalised values as relu + dropout's
// backward does: y > 0 ? dy * relu_scale : 0, relu_scale = 1 / (1 - p) (1 without dropout). The
// CUDA kernels do so wherever they read dy; the CPU forms that gradient in a pass of its own first
// (at batch 128 the pass is in L2, and the CPU's backward passes have several ISA variants each).
void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& weight,
                        const Tensor& save_mean, const Tensor& save_invstd, bool training,
                        Tensor& dx, Tensor& dweight, Tensor& dbias, bool accumulate,
                        const Tensor& relu_output = Tensor(), double relu_scale = 1.0);

namespace cpu {
void batchnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, bool training,
                       double momentum, double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd,
                       const BatchnormEpilogue& epilogue);
void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& weight,
                        const Tensor& save_mean, const Tensor& save_invstd, bool training,
                        Tensor& dx, Tensor& dweight, Tensor& dbias, bool accumulate,
                        const Tensor& relu_output, double relu_scale);
}  // namespace cpu

// The CUDA backend (ops/batchnorm_cuda.cu); same contracts as the cpu:: functions.
namespace cuda {
void batchnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, bool training,
                       double momentum, double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd,
                       const BatchnormEpilogue& epilogue);
void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& weight,
                        const Tensor& save_mean, const Tensor& save_invstd, bool training,
                        Tensor& dx, Tensor& dweight, Tensor& dbias, bool accumulate,
                        const Tensor& relu_output, double relu_scale);
}  // namespace cuda

}  // namespace fastnn
