// CUDA kernels of the Linear layer's backward pass that are not GEMMs: dz = act'(y) * dy and the
// bias gradient db = column sums of dz, in one pass over dy (and y).
//
// Column blocks (ops/reduce_kernels.cuh): each thread walks one column over a strided set of rows,
// accumulating in double, and column_reduce() combines a column's threads in a fixed order. When
// the rows are split into chunks (tall matrices), each chunk's sums go to a partials buffer and a
// second launch adds them chunk by chunk: deterministic, no atomics.
#pragma once
#include <cstdint>

#include "core/cuda_runtime.h"
#include "ops/activation.h"
#include "ops/reduce_kernels.cuh"

namespace fastnn::cuda::linear_detail {

// db[c] = db[c] (accumulate) + total, rounded once to T.
template <class T>
__device__ __forceinline__ void store_bias_grad(T* db, int64_t col, double total, bool accumulate) {
  db[col] = static_cast<T>(accumulate ? static_cast<double>(db[col]) + total : total);
}

// Rows a thread loads before it uses any (reduce::load_column_rows): one at a time left the bias
// gradient of a 1024 x 1024 layer latency-bound on an H200 (about 12 us for 4 MB).
constexpr int kRowUnroll = 8;

// rows x cols of dy (and y). dz == null: dz is dy itself (no activation); only db is wanted.
// db == null: only dz. With gridDim.y > 1, chunk blockIdx.y writes its column sums to
// partials[blockIdx.y * cols + col] instead of db. Each column's rows are added in increasing order.
template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads)
    grad_columns_kernel(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dz,
                        T* __restrict__ db, double* __restrict__ partials, int64_t rows, int64_t cols,
                        int64_t rows_per_chunk, Activation act, bool accumulate) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  const int step = static_cast<int>(blockDim.y);
  double sum[1] = {0.0};
  if (col < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowUnroll * step) {
      T g[kRowUnroll];
      const int count = reduce::load_column_rows(dy, r, r1, step, cols, col, g);
      if (dz) {
        T yv[kRowUnroll];
        reduce::load_column_rows(y, r, r1, step, cols, col, yv);
#pragma unroll
        for (int u = 0; u < kRowUnroll; ++u) {
          if (u < count) {
            g[u] = activation_grad(act, yv[u], g[u]);
            dz[(r + static_cast<int64_t>(u) * step) * cols + col] = g[u];
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u)
        if (u < count) sum[0] += static_cast<double>(g[u]);
    }
  }
  if (db) {  // a kernel argument: the same branch for the whole block
    reduce::column_reduce<1, reduce::Add>(sum);
    if (threadIdx.y == 0 && col < cols) {
      if (gridDim.y == 1) store_bias_grad(db, col, sum[0], accumulate);
      else partials[static_cast<int64_t>(blockIdx.y) * cols + col] = sum[0];
    }
  }
}

// db[col] from the chunks' partial sums, added in chunk order.
template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads)
    bias_grad_finish_kernel(const double* __restrict__ partials, int64_t chunks, int64_t cols,
                            T* __restrict__ db, bool accumulate) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  double total = 0.0;
#pragma unroll 8  // the chunks' loads in flight together, not one latency after another
  for (int64_t k = 0; k < chunks; ++k) total += partials[k * cols + col];
  store_bias_grad(db, col, total, accumulate);
}

}  // namespace fastnn::cuda::linear_detail
