// Optimizer updates: one elementwise pass over a parameter buffer, its gradient and the optimizer
// state, all updated in place. A whole model's parameters live in one flat buffer, so one call
// steps the whole model.
//
// The arithmetic mirrors torch 2.13's single-tensor optimizers (torch/optim/{sgd,adam,rmsprop,
// adagrad}.py) operation by operation: each torch op rounds to the element type, scalars reach it
// as the element type (a Python float meeting a float32 tensor becomes a float), and the per-step
// scalars (bias corrections, decayed learning rates) are computed once, in double, on the host, as
// torch computes them in Python. float64 results then agree with torch to the last few bits and
// float32 results to an ulp or two (FMA contraction is the only difference).
//
// The per-element rule of each optimizer is written once below, as a FASTNN_HD function shared by
// the CPU loop and the CUDA kernel. Its bool flags are compile-time constants at the CPU call site,
// so each combination of options compiles to its own branch-free vector loop.
#pragma once
#include <cmath>
#include <cstdint>
#include <variant>

#include "core/dispatch.h"
#include "core/cuda_graph.h"
#include "core/macros.h"
#include "core/tensor.h"

namespace fastnn {

struct SgdOptions {
  double lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false;
  bool first_step = false;  // the momentum buffer is set to the gradient instead of decayed into
  GraphSlot slot;  // in a graph capture: the per-step scalars are read from here
};

struct AdamOptions {
  int64_t step = 1;  // this step's number, counting from 1 (torch increments before it updates)
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool decoupled_weight_decay = false;  // AdamW: decay the parameter, not the gradient
  bool amsgrad = false, maximize = false;
  GraphSlot slot;  // in a graph capture: the per-step scalars are read from here
};

struct RmspropOptions {
  double lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0;
  bool centered = false, maximize = false;
  GraphSlot slot;  // in a graph capture: the per-step scalars are read from here
};

struct AdagradOptions {
  int64_t step = 1;  // counting from 1
  double lr = 1e-2, lr_decay = 0, weight_decay = 0, eps = 1e-10;
  bool maximize = false;
  GraphSlot slot;  // in a graph capture: the per-step scalars are read from here
};

// ---- per-step scalars, rounded to the element type once --------------------------------------

template <class T>
struct SgdScalars {
  T neg_lr, momentum, one_minus_dampening, weight_decay;
  static SgdScalars from(const SgdOptions& o) {
    return {T(-o.lr), T(o.momentum), T(1 - o.dampening), T(o.weight_decay)};
  }
};

template <class T>
struct AdamScalars {
  T lerp_weight, beta2, one_minus_beta2, weight_decay, decay_factor, neg_step_size,
      bias_correction2_sqrt, eps;
  static AdamScalars from(const AdamOptions& o) {
    const double step = static_cast<double>(o.step);
    const double bias_correction1 = 1 - std::pow(o.beta1, step);
    const double bias_correction2 = 1 - std::pow(o.beta2, step);
    const double step_size = o.lr / bias_correction1;
    return {T(1 - o.beta1),           T(o.beta2),
            T(1 - o.beta2),           T(o.weight_decay),
            T(1 - o.lr * o.weight_decay), T(-step_size),
            T(std::pow(bias_correction2, 0.5)), T(o.eps)};
  }
};

template <class T>
struct RmspropScalars {
  T alpha, one_minus_alpha, eps, weight_decay, momentum, neg_lr;
  static RmspropScalars from(const RmspropOptions& o) {
    return {T(o.alpha), T(1 - o.alpha), T(o.eps), T(o.weight_decay), T(o.momentum), T(-o.lr)};
  }
};

template <class T>
struct AdagradScalars {
  T weight_decay, eps, neg_clr;
  static AdagradScalars from(const AdagradOptions& o) {
    const double clr = o.lr / (1 + static_cast<double>(o.step - 1) * o.lr_decay);
    return {T(o.weight_decay), T(o.eps), T(-clr)};
  }
};

// ---- per-element rules ----------------------------------------------------------------------

// torch.lerp: start + w (end - start) for |w| < 0.5, else end - (end - start)(1 - w), which is
// exact at w = 1.
template <class T>
FASTNN_HD T torch_lerp(T start, T end, T weight) {
  return (weight < T(0.5) && weight > T(-0.5)) ? start + weight * (end - start)
                                               : end - (end - start) * (T(1) - weight);
}

// torch.maximum: NaN in either argument gives NaN (std::max would drop a NaN in b).
template <class T>
FASTNN_HD T nan_maximum(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// torch: grad = -grad if maximize; grad += wd * param; buf = grad (first step) or
// momentum * buf + (1 - dampening) * grad; grad = grad + momentum * buf (nesterov) or buf;
// param -= lr * grad.
template <class T>
FASTNN_HD void sgd_update(T& param, T grad, T& buf, const SgdScalars<T>& s, bool maximize,
                          bool weight_decay, bool momentum, bool nesterov, bool first_step) {
  if (maximize) grad = -grad;
  if (weight_decay) grad = grad + s.weight_decay * param;
  if (momentum) {
    buf = first_step ? grad : buf * s.momentum + s.one_minus_dampening * grad;
    grad = nesterov ? grad + s.momentum * buf : buf;
  }
  param = param + s.neg_lr * grad;
}

// torch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
// denom = sqrt(exp_avg_sq or its running max) / sqrt(bias_correction2) + eps;
// param.addcdiv_(exp_avg, denom, -lr / bias_correction1). Weight decay is added to the gradient
// (Adam) or multiplies the parameter by 1 - lr * wd first (AdamW).
template <class T>
FASTNN_HD void adam_update(T& param, T grad, T& exp_avg, T& exp_avg_sq, T& max_exp_avg_sq,
                           const AdamScalars<T>& s, bool maximize, bool weight_decay,
                           bool decoupled_weight_decay, bool amsgrad) {
  if (maximize) grad = -grad;
  if (weight_decay && !decoupled_weight_decay) grad = grad + s.weight_decay * param;
  exp_avg = torch_lerp(exp_avg, grad, s.lerp_weight);
  exp_avg_sq = exp_avg_sq * s.beta2 + s.one_minus_beta2 * grad * grad;
  T second_moment = exp_avg_sq;
  if (amsgrad) {
    max_exp_avg_sq = nan_maximum(max_exp_avg_sq, exp_avg_sq);
    second_moment = max_exp_avg_sq;
  }
  const T denom = std::sqrt(second_moment) / s.bias_correction2_sqrt + s.eps;
  // AdamW's decay, next to the update it may be contracted into (an FMA): the compiler contracts
  // only within one basic block, and AMSGrad's max above is a branch in scalar code, so decaying
  // first contracted in the vector loop but not in its scalar remainder, and an element's bits
  // depended on where its span began.
  if (weight_decay && decoupled_weight_decay) param = param * s.decay_factor;
  param = param + s.neg_step_size * exp_avg / denom;
}

// torch: square_avg.mul_(alpha).addcmul_(grad, grad, 1 - alpha); centered: grad_avg.lerp_(grad,
// 1 - alpha), avg = sqrt(square_avg - grad_avg^2), else avg = sqrt(square_avg); avg += eps;
// momentum: buf = momentum * buf + grad / avg, param -= lr * buf; else param -= lr * grad / avg.
template <class T>
FASTNN_HD void rmsprop_update(T& param, T grad, T& square_avg, T& momentum_buffer, T& grad_avg,
                              const RmspropScalars<T>& s, bool maximize, bool weight_decay,
                              bool centered, bool momentum) {
  if (maximize) grad = -grad;
  if (weight_decay) grad = grad + s.weight_decay * param;
  square_avg = square_avg * s.alpha + s.one_minus_alpha * grad * grad;
  T avg;
  if (centered) {
    grad_avg = torch_lerp(grad_avg, grad, s.one_minus_alpha);
    avg = std::sqrt(square_avg - grad_avg * grad_avg);
  } else {
    avg = std::sqrt(square_avg);
  }
  avg = avg + s.eps;
  if (momentum) {
    momentum_buffer = momentum_buffer * s.momentum + grad / avg;
    param = param + s.neg_lr * momentum_buffer;
  } else {
    param = param + s.neg_lr * grad / avg;
  }
}

// torch: state_sum.addcmul_(grad, grad, 1); param.addcdiv_(grad, sqrt(state_sum) + eps, -clr)
// with clr = lr / (1 + (step - 1) * lr_decay).
template <class T>
FASTNN_HD void adagrad_update(T& param, T grad, T& state_sum, const AdagradScalars<T>& s,
                              bool maximize, bool weight_decay) {
  if (maximize) grad = -grad;
  if (weight_decay) grad = grad + s.weight_decay * param;
  state_sum = state_sum + grad * grad;
  const T std_dev = std::sqrt(state_sum) + s.eps;
  param = param + s.neg_clr * grad / std_dev;
}

// ---- entry points -----------------------------------------------------------------------------
// All tensors share param's shape, dtype and device and do not overlap (the bindings check);
// state tensors an option does not use may be undefined (Tensor()).

void sgd_step(const Tensor& param, const Tensor& grad, const Tensor& momentum_buffer,
              const SgdOptions& options);
void adam_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
               const Tensor& exp_avg_sq, const Tensor& max_exp_avg_sq, const AdamOptions& options);
void rmsprop_step(const Tensor& param, const Tensor& grad, const Tensor& square_avg,
                  const Tensor& momentum_buffer, const Tensor& grad_avg,
                  const RmspropOptions& options);
void adagrad_step(const Tensor& param, const Tensor& grad, const Tensor& state_sum,
                  const AdagradOptions& options);

// One optimizer step of a parameter whose gradient a kernel is about to compute: linear_backward
// takes one for its weight and, on the CPU, runs it on each block of the weight gradient as the
// GEMM finishes it (gemm.h, FinishedBlocks), while the block is still in cache. The tensors and
// options are those of the rule's *_step, the gradient is the kernel's output; the result equals
// the *_step's bit for bit.
struct ParamUpdate {
  Tensor param;
  Tensor state[3];  // the rule's state tensors in its *_step's order; undefined where unused
  std::variant<SgdOptions, AdamOptions, RmspropOptions, AdagradOptions> options;
};

// The *_step that `update` stands for, with `grad` as the gradient.
void param_update_step(const ParamUpdate& update, const Tensor& grad);

namespace cpu {
void sgd_step(const Tensor& param, const Tensor& grad, const Tensor& momentum_buffer,
              const SgdOptions& options);
void adam_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
               const Tensor& exp_avg_sq, const Tensor& max_exp_avg_sq, const AdamOptions& options);
void rmsprop_step(const Tensor& param, const Tensor& grad, const Tensor& square_avg,
                  const Tensor& momentum_buffer, const Tensor& grad_avg,
                  const RmspropOptions& options);
void adagrad_step(const Tensor& param, const Tensor& grad, const Tensor& state_sum,
                  const AdagradOptions& options);

template <class T>
struct UpdateArrays {
  T* param;
  const T* grad;
  T* state[3];  // ParamUpdate::state's data, null where undefined
};

// One ParamUpdate's loop over elements [begin, end) on the calling thread, with its per-step
// scalars computed once: the loop each *_step runs on every thread's share, so an update run
// block by block inside another kernel gives the same bits.
template <class T>
class UpdateLoop {
 public:
  UpdateLoop(const ParamUpdate& update, const T* grad);
  void run(int64_t begin, int64_t end) const;

 private:
  const ParamUpdate* update_;
  UpdateArrays<T> arrays_;
  std::variant<SgdScalars<T>, AdamScalars<T>, RmspropScalars<T>, AdagradScalars<T>> scalars_;
};
}  // namespace cpu

// The CUDA backend (ops/optim_cuda.cu); same contracts as the cpu:: functions.
namespace cuda {
void sgd_step(const Tensor& param, const Tensor& grad, const Tensor& momentum_buffer,
              const SgdOptions& options);
void adam_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
               const Tensor& exp_avg_sq, const Tensor& max_exp_avg_sq, const AdamOptions& options);
void rmsprop_step(const Tensor& param, const Tensor& grad, const Tensor& square_avg,
                  const Tensor& momentum_buffer, const Tensor& grad_avg,
                  const RmspropOptions& options);
void adagrad_step(const Tensor& param, const Tensor& grad, const Tensor& state_sum,
                  const AdagradOptions& options);
}  // namespace cuda

}  // namespace fastnn
