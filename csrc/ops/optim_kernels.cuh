// CUDA optimizer kernels: one launch over the flat parameter buffer, one thread per element (grid
// stride), applying the per-element rule of ops/optim.h, the very function the CPU loop inlines.
// The per-step scalars (bias corrections, decayed learning rate) are computed once on the host,
// as torch computes them in Python, and passed by value. The option flags are kernel arguments,
// the same for every thread, so their branches never diverge.
#pragma once
#include <cstdint>

#include "core/cuda_graph.h"
#include "core/cuda_launch.h"
#include "ops/optim.h"

namespace fastnn::cuda::optim_detail {

constexpr unsigned kOptimThreads = 256;

struct SgdFlags {
  bool maximize, weight_decay, momentum, nesterov, first_step;
};
struct AdamFlags {
  bool maximize, weight_decay, decoupled_weight_decay, amsgrad;
};
struct RmspropFlags {
  bool maximize, weight_decay, centered, momentum;
};
struct AdagradFlags {
  bool maximize, weight_decay;
};

using cuda_rt::global_thread_index;
using cuda_rt::grid_stride;

template <class T>
__global__ void __launch_bounds__(kOptimThreads)
    sgd_kernel(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ momentum_buffer, int64_t n,
               StepScalars<SgdScalars<T>> scalars, SgdFlags f) {
  const SgdScalars<T> s = scalars.get();
  for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
    T no_buffer = T(0);
    sgd_update<T>(param[i], grad[i], f.momentum ? momentum_buffer[i] : no_buffer, s, f.maximize,
                  f.weight_decay, f.momentum, f.nesterov, f.first_step);
  }
}

template <class T>
__global__ void __launch_bounds__(kOptimThreads)
    adam_kernel(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ exp_avg,
                T* __restrict__ exp_avg_sq, T* __restrict__ max_exp_avg_sq, int64_t n, StepScalars<AdamScalars<T>> scalars,
                AdamFlags f) {
  const AdamScalars<T> s = scalars.get();
  for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
    T no_max = T(0);
    adam_update<T>(param[i], grad[i], exp_avg[i], exp_avg_sq[i], f.amsgrad ? max_exp_avg_sq[i] : no_max, s,
                   f.maximize, f.weight_decay, f.decoupled_weight_decay, f.amsgrad);
  }
}

template <class T>
__global__ void __launch_bounds__(kOptimThreads)
    rmsprop_kernel(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ square_avg,
                   T* __restrict__ momentum_buffer, T* __restrict__ grad_avg, int64_t n, StepScalars<RmspropScalars<T>> scalars,
                   RmspropFlags f) {
  const RmspropScalars<T> s = scalars.get();
  for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
    T no_buffer = T(0), no_avg = T(0);
    rmsprop_update<T>(param[i], grad[i], square_avg[i], f.momentum ? momentum_buffer[i] : no_buffer,
                      f.centered ? grad_avg[i] : no_avg, s, f.maximize, f.weight_decay, f.centered, f.momentum);
  }
}

template <class T>
__global__ void __launch_bounds__(kOptimThreads)
    adagrad_kernel(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ state_sum, int64_t n,
                   StepScalars<AdagradScalars<T>> scalars, AdagradFlags f) {
  const AdagradScalars<T> s = scalars.get();
  for (int64_t i = global_thread_index(); i < n; i += grid_stride())
    adagrad_update<T>(param[i], grad[i], state_sum[i], s, f.maximize, f.weight_decay);
}

}  // namespace fastnn::cuda::optim_detail
