// CUDA optimizer kernels: one launch over the flat parameter buffer, one thread per element (grid
// stride), applying the per-element rule of ops/optim.h, the very function the CPU loop inlines.
// The per-step scalars (bias corrections, decayed learning rate) are computed once on the host,
// as torch computes them in Python, and passed by value (or read from a CUDA graph's slot). The option flags are kernel arguments,
// the same for every thread, so their branches never diverge.
#pragma once
#include <cstdint>
#include <type_traits>

#include "core/cuda_graph.h"
#include "core/cuda_elementwise.cuh"
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

// Elements per thread and iteration: a 16-byte group (4 floats, 2 doubles) when every buffer the
// launch touches is 16-byte aligned, so each array moves as one vector load and store per group
// (the bandwidth a memory-bound kernel needs); 1 otherwise.
template <class T, bool kVector>
constexpr int kGroup = kVector ? 16 / static_cast<int>(sizeof(T)) : 1;

template <int W, class T>
__device__ __forceinline__ void load_group(const T* __restrict__ p, T (&r)[W]) {
  if constexpr (W * sizeof(T) == 16) {
    using V = typename cuda_rt::Vec16<T>::type;
    const V v = *reinterpret_cast<const V*>(p);
    if constexpr (W == 4) r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
    else r[0] = v.x, r[1] = v.y;
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) r[k] = p[k];
  }
}

template <int W, class T>
__device__ __forceinline__ void store_group(T* __restrict__ p, const T (&r)[W]) {
  if constexpr (W == 4 && sizeof(T) == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(r[0], r[1], r[2], r[3]);
  } else if constexpr (W == 2 && sizeof(T) == 8) {
    *reinterpret_cast<double2*>(p) = make_double2(r[0], r[1]);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) p[k] = r[k];
  }
}

// body(i, W-group) over the whole groups, then body(i, 1) over the tail of fewer than W elements.
template <int W, class Body>
__device__ __forceinline__ void for_each_group(int64_t n, Body body) {
  const int64_t groups = n / W;
  for (int64_t g = global_thread_index(); g < groups; g += grid_stride()) body.template run<W>(g * W);
  if constexpr (W > 1)
    for (int64_t i = groups * W + global_thread_index(); i < n; i += grid_stride()) body.template run<1>(i);
}

template <class T>
struct SgdBody {
  T *param, *momentum_buffer;
  const T* grad;
  SgdScalars<T> s;
  SgdFlags f;
  template <int W>
  __device__ __forceinline__ void run(int64_t i) const {
    T p[W], g[W], b[W] = {};
    load_group<W>(param + i, p);
    load_group<W>(grad + i, g);
    if (f.momentum) load_group<W>(momentum_buffer + i, b);
#pragma unroll
    for (int k = 0; k < W; ++k)
      sgd_update<T>(p[k], g[k], b[k], s, f.maximize, f.weight_decay, f.momentum, f.nesterov, f.first_step);
    store_group<W>(param + i, p);
    if (f.momentum) store_group<W>(momentum_buffer + i, b);
  }
};

template <class T>
struct AdamBody {
  T *param, *exp_avg, *exp_avg_sq, *max_exp_avg_sq;
  const T* grad;
  AdamScalars<T> s;
  AdamFlags f;
  template <int W>
  __device__ __forceinline__ void run(int64_t i) const {
    T p[W], g[W], m[W], v[W], vmax[W] = {};
    load_group<W>(param + i, p);
    load_group<W>(grad + i, g);
    load_group<W>(exp_avg + i, m);
    load_group<W>(exp_avg_sq + i, v);
    if (f.amsgrad) load_group<W>(max_exp_avg_sq + i, vmax);
#pragma unroll
    for (int k = 0; k < W; ++k)
      adam_update<T>(p[k], g[k], m[k], v[k], vmax[k], s, f.maximize, f.weight_decay, f.decoupled_weight_decay,
                     f.amsgrad);
    store_group<W>(param + i, p);
    store_group<W>(exp_avg + i, m);
    store_group<W>(exp_avg_sq + i, v);
    if (f.amsgrad) store_group<W>(max_exp_avg_sq + i, vmax);
  }
};

template <class T>
struct RmspropBody {
  T *param, *square_avg, *momentum_buffer, *grad_avg;
  const T* grad;
  RmspropScalars<T> s;
  RmspropFlags f;
  template <int W>
  __device__ __forceinline__ void run(int64_t i) const {
    T p[W], g[W], sq[W], b[W] = {}, ga[W] = {};
    load_group<W>(param + i, p);
    load_group<W>(grad + i, g);
    load_group<W>(square_avg + i, sq);
    if (f.momentum) load_group<W>(momentum_buffer + i, b);
    if (f.centered) load_group<W>(grad_avg + i, ga);
#pragma unroll
    for (int k = 0; k < W; ++k)
      rmsprop_update<T>(p[k], g[k], sq[k], b[k], ga[k], s, f.maximize, f.weight_decay, f.centered, f.momentum);
    store_group<W>(param + i, p);
    store_group<W>(square_avg + i, sq);
    if (f.momentum) store_group<W>(momentum_buffer + i, b);
    if (f.centered) store_group<W>(grad_avg + i, ga);
  }
};

template <class T>
struct AdagradBody {
  T *param, *state_sum;
  const T* grad;
  AdagradScalars<T> s;
  AdagradFlags f;
  template <int W>
  __device__ __forceinline__ void run(int64_t i) const {
    T p[W], g[W], sum[W];
    load_group<W>(param + i, p);
    load_group<W>(grad + i, g);
    load_group<W>(state_sum + i, sum);
#pragma unroll
    for (int k = 0; k < W; ++k) adagrad_update<T>(p[k], g[k], sum[k], s, f.maximize, f.weight_decay);
    store_group<W>(param + i, p);
    store_group<W>(state_sum + i, sum);
  }
};

// One kernel for the four optimizers: the body carries the buffers and flags, the scalars come by
// value or from a graph slot (read once per thread).
template <class Body, class Scalars, bool kVector>
__global__ void __launch_bounds__(kOptimThreads) optim_kernel(Body body, int64_t n, StepScalars<Scalars> scalars) {
  using T = std::remove_pointer_t<decltype(body.param)>;
  body.s = scalars.get();
  for_each_group<kGroup<T, kVector>>(n, body);
}

}  // namespace fastnn::cuda::optim_detail
