// Deterministic reductions shared by the CUDA kernels of the op families (linear's bias gradient,
// batch norm's statistics, the losses). Every sum is taken in an order fixed by the launch shape,
// and every launch shape here is a function of the problem size alone (never of the GPU's SM count,
// never of timing), so a result has the same bits run to run and GPU to GPU. No float atomics.
//
// Built on core/cuda_reduce.cuh's warp reductions. Two shapes:
// - 1-d blocks of kReduceThreads threads: block_reduce_n() over all threads (warp butterflies, then
//   the warps' results through shared memory), and final_reduce() over an array of per-block
//   partials, on one block.
// - "column blocks" over a row-major (rows, cols) matrix: blockDim = (cx, kReduceThreads / cx),
//   cx a power of two <= 32 (fewer columns than 32 keep every lane busy). Thread (x, y) owns column
//   blockIdx.x * cx + x and the rows y, y + blockDim.y, ... of its row range: a warp reads whole
//   row segments (coalesced), and column_reduce() combines the threads of one column, first across
//   the lanes of a warp with shuffles, then across warps in shared memory, in warp order.
#pragma once
#include <cstdint>

#include "core/cuda_launch.h"
#include "core/cuda_reduce.cuh"

namespace fastnn::cuda::reduce {

constexpr int kReduceThreads = 256;
constexpr int kReduceWarps = kReduceThreads / 32;

// a[r * cols + col] for the rows r0, r0 + step, ... (N of them, those below r_end) into v, every
// load issued before any is used (a loop that loads and adds one row at a time keeps one load per
// thread in flight: latency-bound); rows past r_end read as zero. Returns how many rows there were.
template <int N, class T>
__device__ __forceinline__ int load_column_rows(const T* a, int64_t r0, int64_t r_end, int step, int64_t cols,
                                                int64_t col, T (&v)[N]) {
  const T* at = a + r0 * cols + col;
  const int64_t stride = static_cast<int64_t>(step) * cols;
  int count = 0;
#pragma unroll
  for (int u = 0; u < N; ++u) {
    if (r0 + static_cast<int64_t>(u) * step < r_end) {
      v[u] = at[u * stride];
      count = u + 1;
    } else {
      v[u] = T(0);
    }
  }
  return count;
}

// Minimum, for finding the first index with some property.
struct MinOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const { return b < a ? b : a; }
};

// Op (a commutative functor: cuda_rt::SumOp, MinOp) over NV values of all threads of a 1-d block
// of kReduceThreads; every thread gets the results. cuda_rt::warp_reduce's xor butterfly combines
// the same two operands on both lanes of each pair, so every lane holds the same bits, and the
// warps' results are combined in warp order. Two __syncthreads: every thread must call it.
template <int NV, class T, class Op>
__device__ __forceinline__ void block_reduce_n(T (&v)[NV], Op op, T identity) {
  __shared__ T warp_results[kReduceWarps][NV];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < NV; ++k) v[k] = cuda_rt::warp_reduce(v[k], op);
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < NV; ++k) warp_results[warp][k] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < NV; ++k) v[k] = cuda_rt::warp_reduce(lane < kReduceWarps ? warp_results[lane][k] : identity, op);
  __syncthreads();  // warp_results may be reused by the next call
}

template <int NV, class T>
__device__ __forceinline__ void block_sum(T (&v)[NV]) {
  block_reduce_n(v, cuda_rt::SumOp{}, T(0));
}

// Op over items[i * NV + k], i < count, for each k, on one block of kReduceThreads: thread t
// combines items t, t + kReduceThreads, ... in order, then block_reduce_n. Every thread gets the
// results; `identity` for none. Items are loaded kFinalBatch at a time before any is combined: the
// partials of a large launch (4,195 blocks of the fused loss at 33,554 rows) made a chain of
// dependent loads 17 deep per thread otherwise, on a single block.
constexpr int kFinalBatch = 8;

template <int NV, class T, class Op>
__device__ __forceinline__ void final_reduce(const T* items, int64_t count, T (&total)[NV], Op op, T identity) {
#pragma unroll
  for (int k = 0; k < NV; ++k) total[k] = identity;
  int64_t i = threadIdx.x;
  for (; i + (kFinalBatch - 1) * kReduceThreads < count; i += kFinalBatch * kReduceThreads) {
    T batch[kFinalBatch][NV];
#pragma unroll
    for (int b = 0; b < kFinalBatch; ++b)
#pragma unroll
      for (int k = 0; k < NV; ++k) batch[b][k] = items[(i + b * kReduceThreads) * NV + k];
#pragma unroll
    for (int b = 0; b < kFinalBatch; ++b)
#pragma unroll
      for (int k = 0; k < NV; ++k) total[k] = op(total[k], batch[b][k]);
  }
  for (; i < count; i += kReduceThreads) {
#pragma unroll
    for (int k = 0; k < NV; ++k) total[k] = op(total[k], items[i * NV + k]);
  }
  block_reduce_n(total, op, identity);
}

// Plain addition, for column_reduce.
struct Add {
  template <int NV>
  __device__ __forceinline__ static void combine(double (&a)[NV], const double (&b)[NV]) {
#pragma unroll
    for (int k = 0; k < NV; ++k) a[k] += b[k];
  }
};

// Combines the NV-value states of the threads that share a column of a column block (see above)
// with Op::combine(a, b) (b from the later rows). The column's result lands in the threads with
// threadIdx.y == 0; the others keep partial states. Two __syncthreads: all threads must call it.
template <int NV, class Op>
__device__ __forceinline__ void column_reduce(double (&v)[NV]) {
  __shared__ double warp_states[kReduceWarps][32][NV];
  const int cx = blockDim.x;
  // Lanes l and l ^ offset (offset >= cx) hold the same column in different rows.
  for (int offset = cx; offset < 32; offset <<= 1) {
    double other[NV];
#pragma unroll
    for (int k = 0; k < NV; ++k) other[k] = __shfl_xor_sync(0xffffffffu, v[k], offset);
    Op::combine(v, other);
  }
  const int linear = threadIdx.y * cx + threadIdx.x, lane = linear & 31, warp = linear >> 5;
  if (lane < cx) {  // the warp's first row: lane == threadIdx.x
#pragma unroll
    for (int k = 0; k < NV; ++k) warp_states[warp][lane][k] = v[k];
  }
  __syncthreads();
  if (threadIdx.y == 0) {  // warp 0, lanes < cx
#pragma unroll
    for (int k = 0; k < NV; ++k) v[k] = warp_states[0][threadIdx.x][k];
    for (int w = 1; w < kReduceWarps; ++w) {
      double other[NV];
#pragma unroll
      for (int k = 0; k < NV; ++k) other[k] = warp_states[w][threadIdx.x][k];
      Op::combine(v, other);
    }
  }
  __syncthreads();  // warp_states may be reused by the next call
}

// Host side: the shape of a column-block launch over (rows, cols), a function of the sizes alone.
struct ColumnGrid {
  int cx = 32;                 // columns per block
  int64_t col_blocks = 0;      // blocks across the columns
  int64_t chunks = 1;          // row ranges reduced by separate blocks (then combined in order)
  int64_t rows_per_chunk = 0;  // rows of each chunk (the last may have fewer)

  dim3 block() const { return dim3(static_cast<unsigned>(cx), static_cast<unsigned>(kReduceThreads / cx)); }
  dim3 grid() const { return dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks)); }
};

// Below kMinChunkRows rows a column block reduces all rows itself (and the op can finish in the
// same launch: at a small batch, launches cost more than the reduction); from there on, rows are
// split into chunks of at least kSplitChunkRows until there are about kTargetBlocks blocks:
// enough to keep eight 256-thread blocks on each of an H100/H200's 132 SMs (256 left the
// BatchNorm of an 8192 x 4096 batch at two blocks per SM, latency-bound). Chunks of 512 rows left
// a 1024 x 1024 layer's bias gradient and BatchNorm statistics at 64 blocks of 64 rows per thread,
// 9-12 us a launch on an H200 for 4 MB (benchmarks/results/2026-11-26-h200-0b18ac6, batch 1024).
constexpr int64_t kMinChunkRows = 512;
constexpr int64_t kSplitChunkRows = 128;
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMaxGridY = 65535;

// cols: the columns a block row covers, one per thread (BatchNorm's vector passes give it the
// count of 16-byte column vectors and their own row and block targets). Fewer rows than
// one_chunk_below: one chunk.
inline ColumnGrid column_grid(int64_t rows, int64_t cols, int64_t min_chunk_rows = kSplitChunkRows,
                              int64_t target_blocks = kTargetBlocks, int64_t one_chunk_below = kMinChunkRows) {
  ColumnGrid g;
  g.cx = 1;
  while (g.cx < 32 && g.cx < cols) g.cx *= 2;
  g.col_blocks = (cols + g.cx - 1) / g.cx;
  const int64_t by_rows = rows < one_chunk_below ? 1 : (rows + min_chunk_rows - 1) / min_chunk_rows;
  const int64_t by_blocks = (target_blocks + g.col_blocks - 1) / g.col_blocks;
  g.chunks = by_rows < by_blocks ? by_rows : by_blocks;
  if (g.chunks > kMaxGridY) g.chunks = kMaxGridY;
  if (g.chunks < 1) g.chunks = 1;
  g.rows_per_chunk = (rows + g.chunks - 1) / g.chunks;
  if (g.rows_per_chunk > 0) g.chunks = (rows + g.rows_per_chunk - 1) / g.rows_per_chunk;
  if (g.chunks < 1) g.chunks = 1;
  return g;
}

}  // namespace fastnn::cuda::reduce
