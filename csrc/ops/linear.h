// Fully connected layer in torch's layout: x (N, in), weight (out, in), bias (out,).
//   forward:  y = act(x @ weight^T + bias)                       one GEMM with a fused epilogue
//   backward: dz = act'(y) * dy;  dweight = dz^T @ x;  dbias = sum_rows(dz);  dx = dz @ weight
// The activation's derivative is taken through its output y (see ops/activation.h), so the layer
// keeps y, never the pre-activation. Results are deterministic: every output element is summed in
// a fixed order by one thread.
#pragma once
#include "core/dispatch.h"
#include "core/tensor.h"
#include "ops/activation.h"
#include "ops/optim.h"

namespace fastnn {

// y (N, out) = act(x @ weight^T + bias); bias may be null. N == 0 gives an empty y.
void linear_forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Activation act,
                    Tensor& y);

// Gradients of linear_forward. y (the forward output) is needed unless act is none.
// dx (N, in) is skipped when null and always overwritten. dweight (out, in) and dbias (out,; null
// when the layer has no bias) are overwritten, or added to when `accumulate` (gradient buffers
// shared across steps or micro-batches, as in torch). N == 0: dweight and dbias get zero
// (or stay as they are when accumulating).
// update (optional, its param is `weight`): then one optimizer step of the weight, with dweight as
// its gradient, follows, as its *_step would take it; dx is computed first, from the old weight.
// On the CPU the update runs on each block of dweight as the GEMM finishes it (optim.h,
// ParamUpdate), elsewhere as a separate *_step.
void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, const Tensor* y,
                     Activation act, Tensor* dx, Tensor& dweight, Tensor* dbias, bool accumulate,
                     const ParamUpdate* update = nullptr);

namespace cpu {
void linear_forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Activation act,
                    Tensor& y);
void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, const Tensor* y,
                     Activation act, Tensor* dx, Tensor& dweight, Tensor* dbias, bool accumulate,
                     const ParamUpdate* update);
}  // namespace cpu

// The CUDA backend (ops/linear_cuda.cu); same contracts as the cpu:: functions.
// On a GPU the step is bound by launches, not by the optimizer's memory traffic, so the update
// runs as its *_step after the gradients' kernels.
namespace cuda {
void linear_forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Activation act,
                    Tensor& y);
void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, const Tensor* y,
                     Activation act, Tensor* dx, Tensor& dweight, Tensor* dbias, bool accumulate,
                     const ParamUpdate* update);
}  // namespace cuda

}  // namespace fastnn
