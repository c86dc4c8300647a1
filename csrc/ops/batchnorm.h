// BatchNorm1d over an (N, C) row-major input: statistics per column, over the N rows.
//   training: y = (x - mean) * invstd * weight + bias with the batch mean and *biased* variance,
//             invstd = 1 / sqrt(var + eps); running_mean/var (when given) move towards the batch
//             mean and the *unbiased* variance by `momentum`, as in torch.
//   eval:     the same with running_mean / running_var in place of the batch statistics.
// Statistics accumulate in double for both dtypes, by Welford's update, so a float32 column of
// values near 1e6 with unit spread keeps full precision. The mean a float32 kernel subtracts is
// split into hi + lo floats: x - hi is exact near the mean, so y keeps it too.
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

namespace fastnn {

// One row of Welford's running mean / sum of squared deviations, r = 1 / (rows seen + 1).
FASTNN_HD void welford_update(double& mean, double& m2, double v, double r) {
  const double d = v - mean;
  mean += d * r;
  m2 += d * (v - mean);
}

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

// weight, bias, running_mean, running_var may be undefined Tensors (absent). Writes y (N, C) and
// the float64 save_mean, save_invstd (C): the batch statistics in training, the running ones in
// eval (then running_mean and running_var must be given). x and y may alias.
void batchnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, bool training,
                       double momentum, double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd);

// training: the full batch-statistics backward; eval: dx = dy * weight * invstd. dweight =
// sum(dy * xhat) and dbias = sum(dy) are written (or added to, with accumulate) when defined.
// weight undefined means weight = 1; save_mean and save_invstd are float64. dx may alias dy or x.
void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& weight,
                        const Tensor& save_mean, const Tensor& save_invstd, bool training,
                        Tensor& dx, Tensor& dweight, Tensor& dbias, bool accumulate);

namespace cpu {
void batchnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, bool training,
                       double momentum, double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd);
void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& weight,
                        const Tensor& save_mean, const Tensor& save_invstd, bool training,
                        Tensor& dx, Tensor& dweight, Tensor& dbias, bool accumulate);
}  // namespace cpu

// The CUDA backend (ops/batchnorm_cuda.cu); same contracts as the cpu:: functions.
namespace cuda {
void batchnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, bool training,
                       double momentum, double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd);
void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& weight,
                        const Tensor& save_mean, const Tensor& save_invstd, bool training,
                        Tensor& dx, Tensor& dweight, Tensor& dbias, bool accumulate);
}  // namespace cuda

}  // namespace fastnn
