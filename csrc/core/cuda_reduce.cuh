// Warp and block reductions for kernels (softmax rows, batch-norm statistics, losses). Each call is
// a sync point of the whole warp / block, so every thread must make it (no early return before).
#pragma once
#include "core/cuda_launch.h"

namespace fastnn::cuda_rt {

struct SumOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
// NaN-propagating, so a NaN in a row reaches its result as it does on the CPU's std::max loop
// (which keeps NaN only where it is the first element: either is allowed, dropping it is not).
struct MaxOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const { return (a != a || a > b) ? a : b; }
};

// Every lane of the (full, 32-lane) warp gets op over the warp's 32 values.
template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Every thread of the block gets op over the block's values. blockDim.x must be a multiple of 32
// (one-dimensional blocks); `identity` is op's neutral element. Three barriers: the last one lets
// a following block_reduce reuse the shared slots safely.
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity) {
  __shared__ T partials[32];
  __shared__ T result;
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_reduce(v, op);
  if (lane == 0) partials[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? partials[lane] : identity;
    w = warp_reduce(w, op);
    if (lane == 0) result = w;
  }
  __syncthreads();
  const T r = result;
  __syncthreads();
  return r;
}

}  // namespace fastnn::cuda_rt
