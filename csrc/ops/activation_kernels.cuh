// Activation and softmax kernels. The per-element math is activation.h's, shared with the CPU.
#pragma once
#include "core/cuda_elementwise.cuh"
#include "core/cuda_reduce.cuh"
#include "ops/activation.h"

namespace fastnn::cuda {

template <Activation A>
struct ActivationForwardOp {
  template <class T>
  __device__ __forceinline__ T operator()(T x) const { return activation_apply(A, x); }
};

template <Activation A>
struct ActivationBackwardOp {  // (y, dy) -> dx
  template <class T>
  __device__ __forceinline__ T operator()(T y, T dy) const { return activation_grad(A, y, dy); }
};

// Softmax rows. Rows of up to kWarpRowCols columns take one warp each (8 rows per 256-thread
// block: the common classifier head is 10 wide); longer rows one block each. Both read the row
// twice (max, then sum of exp) and write it once. -inf rows follow the CPU kernel: the max is
// taken as 0, so an all -inf row gives 0/0 = NaN in softmax and -inf - log(0) in log-softmax.
constexpr int kWarpRowCols = 1024;
constexpr unsigned kSoftmaxThreads = 256;

template <class T>
__device__ __forceinline__ T finite_or_zero(T m) {
  return (m == T(INFINITY) || m == T(-INFINITY)) ? T(0) : m;
}

// Row reductions over a warp (kPerWarp) or over the block.
template <bool kPerWarp, class T, class Op>
__device__ __forceinline__ T row_reduce(T v, Op op, T identity) {
  if constexpr (kPerWarp) return cuda_rt::warp_reduce(v, op);
  else return cuda_rt::block_reduce(v, op, identity);
}

template <bool kPerWarp, bool kLog, class T>
__global__ void softmax_forward_kernel(const T* x, T* y, int64_t rows, int64_t cols) {
  const unsigned lane = kPerWarp ? threadIdx.x % 32 : threadIdx.x;
  const unsigned step = kPerWarp ? 32 : blockDim.x;
  const int64_t row = kPerWarp ? static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32
                               : static_cast<int64_t>(blockIdx.x);
  if (kPerWarp && row >= rows) return;  // a whole warp: no barrier in the per-warp kernel
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  T m = T(-INFINITY);
  for (int64_t c = lane; c < cols; c += step) m = cuda_rt::MaxOp{}(m, xr[c]);
  m = finite_or_zero(row_reduce<kPerWarp>(m, cuda_rt::MaxOp{}, T(-INFINITY)));
  T s = 0;
  for (int64_t c = lane; c < cols; c += step) s += std::exp(xr[c] - m);
  s = row_reduce<kPerWarp>(s, cuda_rt::SumOp{}, T(0));
  if (kLog) {
    const T lse = m + std::log(s);
    for (int64_t c = lane; c < cols; c += step) yr[c] = xr[c] - lse;
  } else {
    const T inv = T(1) / s;
    for (int64_t c = lane; c < cols; c += step) yr[c] = std::exp(xr[c] - m) * inv;
  }
}

// softmax: dx = y (dy - sum(dy y)); log-softmax: dx = dy - exp(y) sum(dy).
template <bool kPerWarp, bool kLog, class T>
__global__ void softmax_backward_kernel(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
  const unsigned lane = kPerWarp ? threadIdx.x % 32 : threadIdx.x;
  const unsigned step = kPerWarp ? 32 : blockDim.x;
  const int64_t row = kPerWarp ? static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32
                               : static_cast<int64_t>(blockIdx.x);
  if (kPerWarp && row >= rows) return;
  const T* yr = y + row * cols;
  const T* gr = dy + row * cols;
  T* xr = dx + row * cols;
  T s = 0;
  for (int64_t c = lane; c < cols; c += step) s += kLog ? gr[c] : gr[c] * yr[c];
  s = row_reduce<kPerWarp>(s, cuda_rt::SumOp{}, T(0));
  for (int64_t c = lane; c < cols; c += step) xr[c] = kLog ? gr[c] - std::exp(yr[c]) * s : yr[c] * (gr[c] - s);
}

}  // namespace fastnn::cuda
