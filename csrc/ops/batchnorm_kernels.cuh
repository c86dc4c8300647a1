// CUDA kernels of BatchNorm1d over a row-major (N, C) input, the twins of batchnorm_cpu.cpp.
//
// Statistics are per column, over the rows. The launches use column blocks (reduce_kernels.cuh):
// thread (x, y) of a block walks column blockIdx.x * cx + x over every blockDim.y-th row of its row
// chunk, so each warp reads whole row segments, and column_reduce() combines a column's threads,
// with warp shuffles and then across warps in shared memory, in a fixed order.
//   - One chunk (N below reduce::kMinChunkRows, or enough columns to fill the GPU): one launch. The
//     block reduces, finishes the statistics of its columns, and, after a barrier, normalises
//     (forward) or forms dx (backward) over the rows it has just read, mostly from L1/L2.
//   - Several chunks: a stats launch writes each chunk's per-column states to a partials buffer, a
//     finish launch combines them in chunk order (one thread per column), an apply launch writes y
//     or dx. Deterministic either way; no atomics.
//   - Training inputs larger than L2, in whole 16-byte vectors: the one-read pipeline (at the end of
//     this file), one persistent launch whose slabs of columns are read from memory once.
// As on the CPU: statistics accumulate in double for both dtypes (sums of x - k and its square, k
// the column's first value: shifted_moments in ops/batchnorm.h), save_mean / save_invstd are
// float64, running stats follow torch, and the per-column math shared with the CPU
// (finish_batch_stats, batchnorm_gain / batchnorm_shift, split_hi_lo, batchnorm_backward_coefs,
// store_grad) comes from ops/batchnorm.h.
#pragma once
#include <cstdint>

#include "core/cuda_elementwise.cuh"
#include "core/cuda_runtime.h"
#include "core/cuda_sync.cuh"
#include "ops/batchnorm.h"
#include "ops/dropout.h"
#include "ops/reduce_kernels.cuh"

namespace fastnn::cuda::batchnorm_detail {

// BatchnormEpilogue on the device: relu, then dropout, each value as the dropout kernels form it
// (dropout_kernels.cuh), so a fused y is bitwise BatchNorm's y put through dropout_forward.
template <class T>
struct DeviceEpilogue {
  enum Dropout : int { kNone, kUniform, kMask };  // kUniform: every value times `scale` (p = 1: 0)
  bool relu = false;
  int dropout = kNone;
  uint32_t threshold = 0;
  T scale = T(1);
  StepScalars<DropoutKey> key{};  // its value or, in a graph, the slot each replay refills

  FASTNN_HD bool any() const { return relu || dropout != kNone; }

  // Value v of element i (its index in y).
  __device__ __forceinline__ T operator()(T v, int64_t i) const {
    if (relu) v = activation_apply(Activation::relu, v);
    if (dropout == kUniform) return v * scale;
    if (dropout == kMask) {
      const DropoutKey k = key.get();
      v = v * dropout_factor(dropout_keep_element(k.seed, k.offset, threshold, static_cast<uint64_t>(i)), scale);
    }
    return v;
  }

  // VW values from element i, i a multiple of VW and VW <= kDropoutMinPerQuad (a power of two, so
  // the VW elements share one Philox quad at any bit count): one Philox call for all of them.
  template <int VW>
  __device__ __forceinline__ void vector(T* v, int64_t i) const {
#pragma unroll
    for (int e = 0; e < VW; ++e)
      if (relu) v[e] = activation_apply(Activation::relu, v[e]);
    if (dropout == kUniform) {
#pragma unroll
      for (int e = 0; e < VW; ++e) v[e] = v[e] * scale;
    } else if (dropout == kMask) {
      const DropoutKey k = key.get();
      static_assert(VW <= kDropoutMinPerQuad, "a quad serves only kDropoutMinPerQuad elements at 16 bits each");
      const int log2_bits = dropout_log2_bits(threshold);
      uint32_t w[4];
      dropout_words(k.seed, k.offset, dropout_quad(static_cast<uint64_t>(i), log2_bits), w);
      const int first = dropout_field(static_cast<uint64_t>(i), log2_bits);
#pragma unroll
      for (int e = 0; e < VW; ++e)
        v[e] = dropout_apply(v[e], dropout_draw(w, first + e, log2_bits), threshold, scale);
    }
  }
};

template <class T>
struct ForwardParams {
  const T* x;
  T* y;
  int64_t rows, cols, rows_per_chunk;
  const T* weight;  // nullptr: 1
  const T* bias;    // nullptr: 0
  T* running_mean;  // nullptr: not tracked
  T* running_var;
  double momentum, eps;
  double* save_mean;
  double* save_invstd;
  double* partials;  // chunks x cols x 3 states {count, sum u, sum u^2} (several chunks only)
  DeviceEpilogue<T> epilogue;  // applied to y by the normalising passes
};

template <class T>
struct BackwardParams {
  const T* x;
  const T* dy;
  T* dx;
  int64_t rows, cols, rows_per_chunk;
  const T* weight;  // nullptr: 1
  const double* save_mean;
  const double* save_invstd;
  T* dweight;  // nullptr: not wanted
  T* dbias;
  bool accumulate;
  double* partials;  // chunks x cols x kSums (several chunks only)
  double* coefs;     // cols x kCoefs (training, several chunks only)
  // A fused forward's relu (+ dropout) output, or null: every dy read passes back through it first,
  // dy -> y > 0 ? dy * relu_scale : 0, as dropout_backward's relu path forms it.
  const T* relu_output;
  T relu_scale;
};

// dy rows of a thread as the BatchNorm backward takes them: through the fused relu (+ dropout)
// when there is one (its output's rows r0, r0 + step, ... loaded beside them). The kernels that read
// dy take kGated as a template argument: the extra rows cost registers (72 -> 80 in the single
// launch, spills in some), which the plain backward should not pay.
template <bool kGated, int N, class T>
__device__ __forceinline__ void gate_rows(const BackwardParams<T>& p, int64_t r0, int64_t r_end, int step,
                                          int64_t col, T (&g)[N]) {
  if constexpr (!kGated) return;
  T y[N];
  reduce::load_column_rows(p.relu_output, r0, r_end, step, p.cols, col, y);
#pragma unroll
  for (int u = 0; u < N; ++u) g[u] = dropout_relu_grad(y[u], g[u], p.relu_scale);
}

// ---- per-thread geometry -------------------------------------------------------------------------

struct Slice {
  int64_t col, r_begin, r_end;  // this thread's column; rows r_begin, r_begin + step, ... < r_end
  int step;
  __device__ bool has_column(int64_t cols) const { return col < cols; }
};

// Rows a thread loads before it uses any of them. A loop that loads, uses and stores one row at a
// time keeps one load per thread in flight (and cannot hoist the next load above a store that
// may alias it): on an H200 that ran BatchNorm at 15-28% of the copy rate. Eight independent
// loads per thread cover the memory latency.
// Loops over two inputs (backward: x and dy) take kPairUnroll rows of each, the same loads in
// flight; eight of each took 100-127 registers (two blocks per SM) or spilled under a cap.
constexpr int kRowUnroll = 8;
constexpr int kPairUnroll = 4;
// The row kernels' register cap: 65536 / (256 * 3) = 85 registers, three blocks per SM.
constexpr int kMinBlocksPerSm = 3;

// a[r * cols + s.col] for the rows r0, r0 + s.step, ... below s.r_end (reduce::load_column_rows).
template <int N, class T>
__device__ __forceinline__ int load_rows(const T* a, const Slice& s, int64_t r0, int64_t cols, T (&v)[N]) {
  return reduce::load_column_rows(a, r0, s.r_end, s.step, cols, s.col, v);
}

__device__ __forceinline__ Slice my_slice(int64_t rows, int64_t rows_per_chunk) {
  Slice s;
  s.col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunk_begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  s.r_begin = chunk_begin + threadIdx.y;
  s.r_end = chunk_begin + rows_per_chunk < rows ? chunk_begin + rows_per_chunk : rows;
  s.step = static_cast<int>(blockDim.y);
  return s;
}

// ---- forward -------------------------------------------------------------------------------------

// Forward statistics, as on the CPU: per column {count, sum u, sum u^2} with u = x - k, k the
// column's first value x[0, col], the same for every thread and chunk, so states simply add
// (reduce::Add). One add and one multiply-add per value: the Welford groups these replace (Chan's
// combination, two double divisions per 8 values) left the 16-byte statistics pass bound by
// double-precision arithmetic on an H200, at 67% of the copy rate where the backward's sums ran
// at 95% (benchmarks/results/2026-11-26-h200-0b18ac6). The cost in precision is the CPU's: a
// factor (var + (mean - k)^2) / var of m2's, in practice ~2 (see shifted_moments).
template <class T>
__device__ __forceinline__ double column_shift(const T* x, int64_t col) {
  return static_cast<double>(x[col]);
}

// Adds rows u < count of a group (value(u)) to a state {count, sum u, sum u^2}. The scalar and
// vector statistics passes both use it, over the same rows in the same order: the same bits.
template <int N, class Value>
__device__ __forceinline__ void add_shifted_group(double (&st)[3], int count, double k, Value value) {
#pragma unroll
  for (int u = 0; u < N; ++u) {
    if (u < count) {
      const double d = value(u) - k;
      st[1] += d;
      st[2] = fma(d, d, st[2]);
    }
  }
  st[0] += count;
}

// The column's batch statistics from its full state {count, sum u, sum u^2}: save_mean /
// save_invstd, and the running statistics moved towards the batch mean and unbiased variance, as
// torch does.
template <class T>
__device__ __forceinline__ void finish_forward(const ForwardParams<T>& p, int64_t col, const double (&st)[3]) {
  double mean, m2;
  shifted_moments(st[0], column_shift(p.x, col), st[1], st[2], mean, m2);
  finish_batch_stats(st[0], mean, m2, p.eps, p.momentum, p.save_mean[col], p.save_invstd[col],
                     p.running_mean ? p.running_mean + col : nullptr, p.running_var ? p.running_var + col : nullptr);
}

// A column's y = ((x - hi) - lo) * scale + shift, with mean = hi + lo, from the saved statistics
// (training: batch; eval: running ones, whose mean is a T, so lo = 0). The scalar pass below and
// the 16-byte pass (normalise_vec_kernel) both use it, so they give the same bits.
template <class T>
struct ColumnNormaliser {
  T hi, lo, scale, shift;
  ColumnNormaliser() = default;
  __device__ __forceinline__ ColumnNormaliser(const ForwardParams<T>& p, int64_t col)
      : ColumnNormaliser(p, col, p.save_mean[col], p.save_invstd[col]) {}
  __device__ __forceinline__ ColumnNormaliser(const ForwardParams<T>& p, int64_t col, double mean, double invstd) {
    split_hi_lo(mean, hi, lo);
    scale = static_cast<T>(batchnorm_gain(invstd, p.weight, col));
    shift = batchnorm_shift(p.bias, col);
  }
  __device__ __forceinline__ T operator()(T x) const { return ((x - hi) - lo) * scale + shift; }
};

// y over the thread's rows.
template <class T>
__device__ __forceinline__ void normalise(const ForwardParams<T>& p, const Slice& s) {
  if (!s.has_column(p.cols)) return;
  const ColumnNormaliser<T> y(p, s.col);
  for (int64_t r0 = s.r_begin; r0 < s.r_end; r0 += kRowUnroll * s.step) {
    T v[kRowUnroll];
    const int count = load_rows(p.x, s, r0, p.cols, v);
    const int64_t at = r0 * p.cols + s.col, stride = s.step * p.cols;
    T* out = p.y + at;
    if (p.epilogue.any()) {
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u)
        if (u < count) out[u * stride] = p.epilogue(y(v[u]), at + u * stride);
    } else {
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u)
        if (u < count) out[u * stride] = y(v[u]);
    }
  }
}

// Training forward. One chunk: statistics, running stats and y in this launch. Several chunks:
// this chunk's states into p.partials.
template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads, kMinBlocksPerSm) forward_train_kernel(ForwardParams<T> p) {
  const Slice s = my_slice(p.rows, p.rows_per_chunk);
  double st[3] = {0.0, 0.0, 0.0};
  if (s.has_column(p.cols)) {
    const double k = column_shift(p.x, s.col);
    for (int64_t r0 = s.r_begin; r0 < s.r_end; r0 += kRowUnroll * s.step) {
      T v[kRowUnroll];
      const int count = load_rows(p.x, s, r0, p.cols, v);
      add_shifted_group<kRowUnroll>(st, count, k, [&](int u) { return static_cast<double>(v[u]); });
    }
  }
  reduce::column_reduce<3, reduce::Add>(st);
  if (gridDim.y == 1) {  // the same for every block: the barrier below is reached by all threads
    if (threadIdx.y == 0 && s.has_column(p.cols)) finish_forward(p, s.col, st);
    __syncthreads();  // save_mean / save_invstd of the block's columns are written
    normalise(p, s);
  } else if (threadIdx.y == 0 && s.has_column(p.cols)) {
    double* out = p.partials + (static_cast<int64_t>(blockIdx.y) * p.cols + s.col) * 3;
    out[0] = st[0], out[1] = st[1], out[2] = st[2];
  }
}

// Several chunks: one thread per column adds the chunks' states in chunk order.
template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads) forward_finish_kernel(ForwardParams<T> p, int64_t chunks) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p.cols) return;
  double st[3] = {0.0, 0.0, 0.0};
#pragma unroll 8  // the chunks' loads in flight together, not one latency after another
  for (int64_t k = 0; k < chunks; ++k) {
    const double* in = p.partials + (k * p.cols + col) * 3;
    st[0] += in[0], st[1] += in[1], st[2] += in[2];
  }
  finish_forward(p, col, st);
}

// Eval: the saved statistics are the running ones.
template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads) forward_eval_stats_kernel(ForwardParams<T> p) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p.cols) return;
  p.save_mean[col] = static_cast<double>(p.running_mean[col]);
  p.save_invstd[col] = batchnorm_invstd(static_cast<double>(p.running_var[col]), p.eps);
}

template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads, kMinBlocksPerSm) normalise_kernel(ForwardParams<T> p) {
  normalise(p, my_slice(p.rows, p.rows_per_chunk));
}

// ---- backward ------------------------------------------------------------------------------------

// Sums per column for the training backward, with u = x - save_mean: sum u, sum dy, sum dy u and,
// for float32 (where dx may be formed in float), sum u^2 and sum dy^2 for the cancellation test.
template <class T>
constexpr int kTrainSums = sizeof(T) < sizeof(double) ? 5 : 3;
constexpr int kCoefs = 5;  // mean, k_dy, k_x, k_0, exact

// One row's terms added to a column's training-backward sums (u = x - save_mean, g = dy), in the
// order the scalar and vector passes share.
template <int NS>
__device__ __forceinline__ void add_backward_sums(double* sums, double u, double g) {
  sums[0] += u;
  sums[1] += g;
  sums[2] += g * u;
  if constexpr (NS == 5) {
    sums[3] += u * u;
    sums[4] += g * g;
  }
}

// dweight / dbias of the column, and the coefficients of dx = k_dy dy + k_x (x - mean) + k_0
// (batchnorm_backward_coefs in ops/batchnorm.h, shared with the CPU). exact: dx is formed in double;
// else, for float32, in float.
template <class T>
__device__ __forceinline__ void finish_backward(const BackwardParams<T>& p, int64_t col,
                                                const double (&sums)[kTrainSums<T>], double (&coef)[kCoefs]) {
  constexpr bool kFloat = sizeof(T) < sizeof(double);
  const double invstd = p.save_invstd[col];
  const BatchnormBackwardCoefs k = batchnorm_backward_coefs(
      p.rows, p.save_mean[col], invstd, batchnorm_gain(invstd, p.weight, col), sums[0], sums[1], sums[2],
      kFloat ? sums[kTrainSums<T> - 2] : 0.0, kFloat ? sums[kTrainSums<T> - 1] : 0.0, kFloat);
  if (p.dweight) store_grad(p.dweight, col, k.dweight, p.accumulate);
  if (p.dbias) store_grad(p.dbias, col, k.dbias, p.accumulate);
  coef[0] = k.mean;
  coef[1] = k.k_dy;
  coef[2] = k.k_x;
  coef[3] = k.k_0;
  coef[4] = k.exact ? 1.0 : 0.0;
}

// A column's dx = k_dy dy + k_x (x - mean) + k_0 from its kCoefs coefficients (finish_backward):
// in double where it cancels (exact), else in T with mean = hi + lo. write_dx and the 16-byte pass
// (backward_dx_vec_kernel) both use it, so they give the same bits.
template <class T>
struct ColumnDx {
  double mean, k_dy, k_x, k_0;
  T hi, lo, f_dy, f_x, f_0;
  bool exact;
  ColumnDx() = default;
  __device__ __forceinline__ explicit ColumnDx(const double* coef)
      : mean(coef[0]), k_dy(coef[1]), k_x(coef[2]), k_0(coef[3]), exact(coef[4] != 0.0) {
    split_hi_lo(mean, hi, lo);
    f_dy = static_cast<T>(k_dy), f_x = static_cast<T>(k_x), f_0 = static_cast<T>(k_0);
  }
  __device__ __forceinline__ T operator()(T x, T g) const {
    return exact ? static_cast<T>(k_dy * static_cast<double>(g) + k_x * (static_cast<double>(x) - mean) + k_0)
                 : f_dy * g + f_x * ((x - hi) - lo) + f_0;
  }
};

template <bool kGated, class T>
__device__ __forceinline__ void write_dx(const BackwardParams<T>& p, const Slice& s, const double* coef) {
  if (!s.has_column(p.cols)) return;
  const ColumnDx<T> dx(coef);
  for (int64_t r0 = s.r_begin; r0 < s.r_end; r0 += kPairUnroll * s.step) {
    T xs[kPairUnroll], gs[kPairUnroll];
    const int count = load_rows(p.x, s, r0, p.cols, xs);
    load_rows(p.dy, s, r0, p.cols, gs);
    gate_rows<kGated>(p, r0, s.r_end, s.step, s.col, gs);
    T* out = p.dx + r0 * p.cols + s.col;
    const int64_t stride = s.step * p.cols;
#pragma unroll
    for (int u = 0; u < kPairUnroll; ++u) {
      if (u >= count) continue;
      out[u * stride] = dx(xs[u], gs[u]);
    }
  }
}

// Training backward. One chunk: sums, parameter gradients and dx in this launch (dx may alias x or
// dy: every read of the block's columns happens before the barrier). Several chunks: this chunk's
// sums into p.partials.
template <class T, bool kGated>
__global__ void __launch_bounds__(reduce::kReduceThreads, kMinBlocksPerSm) backward_train_kernel(BackwardParams<T> p) {
  constexpr int NS = kTrainSums<T>;
  __shared__ double block_coefs[32][kCoefs];
  const Slice s = my_slice(p.rows, p.rows_per_chunk);
  double sums[NS];
#pragma unroll
  for (int k = 0; k < NS; ++k) sums[k] = 0.0;
  if (s.has_column(p.cols)) {
    const double shift = p.save_mean[s.col];
    for (int64_t r0 = s.r_begin; r0 < s.r_end; r0 += kPairUnroll * s.step) {
      T xs[kPairUnroll], gs[kPairUnroll];
      const int count = load_rows(p.x, s, r0, p.cols, xs);
      load_rows(p.dy, s, r0, p.cols, gs);
      gate_rows<kGated>(p, r0, s.r_end, s.step, s.col, gs);
#pragma unroll
      for (int k = 0; k < kPairUnroll; ++k) {
        if (k >= count) continue;
        add_backward_sums<NS>(sums, static_cast<double>(xs[k]) - shift, static_cast<double>(gs[k]));
      }
    }
  }
  reduce::column_reduce<NS, reduce::Add>(sums);
  if (gridDim.y == 1) {  // uniform: the barrier below is reached by all threads
    if (threadIdx.y == 0 && s.has_column(p.cols)) finish_backward(p, s.col, sums, block_coefs[threadIdx.x]);
    __syncthreads();
    write_dx<kGated>(p, s, block_coefs[threadIdx.x]);
  } else if (threadIdx.y == 0 && s.has_column(p.cols)) {
    double* out = p.partials + (static_cast<int64_t>(blockIdx.y) * p.cols + s.col) * NS;
#pragma unroll
    for (int k = 0; k < NS; ++k) out[k] = sums[k];
  }
}

template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads) backward_finish_kernel(BackwardParams<T> p, int64_t chunks) {
  constexpr int NS = kTrainSums<T>;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p.cols) return;
  double sums[NS];
#pragma unroll
  for (int k = 0; k < NS; ++k) sums[k] = 0.0;
#pragma unroll 8  // the chunks' loads in flight together, not one latency after another
  for (int64_t c = 0; c < chunks; ++c) {
    const double* in = p.partials + (c * p.cols + col) * NS;
#pragma unroll
    for (int k = 0; k < NS; ++k) sums[k] += in[k];
  }
  double coef[kCoefs];
  finish_backward(p, col, sums, coef);
#pragma unroll
  for (int k = 0; k < kCoefs; ++k) p.coefs[col * kCoefs + k] = coef[k];
}

template <class T, bool kGated>
__global__ void __launch_bounds__(reduce::kReduceThreads, kMinBlocksPerSm) backward_dx_kernel(BackwardParams<T> p) {
  const Slice s = my_slice(p.rows, p.rows_per_chunk);
  write_dx<kGated>(p, s, s.has_column(p.cols) ? p.coefs + s.col * kCoefs : p.coefs);
}

// Eval backward: dx = dy * weight * invstd, in the pass that sums dy and dy (x - mean) for the
// parameter gradients (when wanted: `sums` is a kernel argument, uniform over the block). One
// chunk: dweight / dbias written here; several: this chunk's two sums into p.partials.
template <class T, bool kGated>
__global__ void __launch_bounds__(reduce::kReduceThreads, kMinBlocksPerSm) backward_eval_kernel(BackwardParams<T> p, bool sums_wanted) {
  const Slice s = my_slice(p.rows, p.rows_per_chunk);
  double sums[2] = {0.0, 0.0};
  if (s.has_column(p.cols)) {
    const double invstd = p.save_invstd[s.col], mean = p.save_mean[s.col];
    const T k = static_cast<T>(batchnorm_gain(invstd, p.weight, s.col));
    for (int64_t r0 = s.r_begin; r0 < s.r_end; r0 += kPairUnroll * s.step) {
      T gs[kPairUnroll], xs[kPairUnroll];
      const int count = load_rows(p.dy, s, r0, p.cols, gs);
      gate_rows<kGated>(p, r0, s.r_end, s.step, s.col, gs);
      if (sums_wanted) load_rows(p.x, s, r0, p.cols, xs);
#pragma unroll
      for (int u = 0; u < kPairUnroll; ++u) {
        if (u >= count) continue;
        if (sums_wanted) {
          const double gc = static_cast<double>(gs[u]);
          sums[0] += gc;
          sums[1] += gc * (static_cast<double>(xs[u]) - mean);
        }
        p.dx[(r0 + static_cast<int64_t>(u) * s.step) * p.cols + s.col] = gs[u] * k;  // eval: rarely hot
      }
    }
  }
  if (sums_wanted) {
    reduce::column_reduce<2, reduce::Add>(sums);
    if (threadIdx.y == 0 && s.has_column(p.cols)) {
      if (gridDim.y == 1) {
        if (p.dweight) store_grad(p.dweight, s.col, p.save_invstd[s.col] * sums[1], p.accumulate);
        if (p.dbias) store_grad(p.dbias, s.col, sums[0], p.accumulate);
      } else {
        double* out = p.partials + (static_cast<int64_t>(blockIdx.y) * p.cols + s.col) * 2;
        out[0] = sums[0], out[1] = sums[1];
      }
    }
  }
}

template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads) backward_eval_finish_kernel(BackwardParams<T> p, int64_t chunks) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p.cols) return;
  double sum_dy = 0.0, sum_dy_u = 0.0;
#pragma unroll 8  // the chunks' loads in flight together, not one latency after another
  for (int64_t c = 0; c < chunks; ++c) {
    const double* in = p.partials + (c * p.cols + col) * 2;
    sum_dy += in[0];
    sum_dy_u += in[1];
  }
  if (p.dweight) store_grad(p.dweight, col, p.save_invstd[col] * sum_dy_u, p.accumulate);
  if (p.dbias) store_grad(p.dbias, col, sum_dy, p.accumulate);
}

// ---- 16-byte apply passes --------------------------------------------------------------------------
//
// The passes that write y (normalise) and dx (backward_dx) after a multi-chunk reduction are
// elementwise with per-column constants. When the columns come in whole 16-byte vectors (C a
// multiple of 4 floats / 2 doubles, aligned bases) a thread owns one vector of columns and walks
// rows with float4 / double2 loads and stores: a quarter of the memory instructions of the scalar
// loops, whole 16-byte runs per lane. Their own geometry (vec_grid) only needs enough blocks;
// nothing is reduced, so results are bitwise those of the scalar loops.

template <class T>
constexpr int kVecWidth = cuda_rt::Vec16<T>::width;
constexpr int kVecUnroll = 4;  // vectors in flight per thread

// Row chunks of at least kVecChunkRows rows, about kVecTargetBlocks blocks: nothing is reduced,
// so the chunks only need to fill the GPU.
constexpr int64_t kVecChunkRows = 128;
constexpr int64_t kVecTargetBlocks = 2048;

inline reduce::ColumnGrid vec_grid(int64_t rows, int64_t vec_cols) {
  return reduce::column_grid(rows, vec_cols, kVecChunkRows, kVecTargetBlocks, /*one_chunk_below=*/0);
}

// The thread's vector of columns (the first column of it; none past `cols`) over rows
// [chunk_begin, r_end), the block's rows split by threadIdx.y: out[r][col..] = f(u, &in_x[r][col..],
// &in_g[r][col..], &in_y[r][col..]) element u by element, kVecUnroll rows' vectors loaded before any
// is stored (out may alias an input), then post(vector, index of its first element in out). in_g,
// in_y: null when not wanted.
template <class T, class F, class Post>
__device__ __forceinline__ void vec_rows(int64_t cols, int64_t col, int64_t chunk_begin, int64_t r_end,
                                         const T* in_x, const T* in_g, const T* in_y, T* out, F f, Post post) {
  using V = typename cuda_rt::Vec16<T>::type;
  constexpr int VW = kVecWidth<T>;
  const int step = static_cast<int>(blockDim.y);
  const int64_t stride = step * cols;
  for (int64_t r0 = chunk_begin + threadIdx.y; r0 < r_end; r0 += kVecUnroll * step) {
    const int64_t at = r0 * cols + col;
    V xs[kVecUnroll], gs[kVecUnroll], ys[kVecUnroll];
#pragma unroll
    for (int u = 0; u < kVecUnroll; ++u)
      if (r0 + static_cast<int64_t>(u) * step < r_end) {
        xs[u] = *reinterpret_cast<const V*>(in_x + at + u * stride);
        if (in_g) gs[u] = *reinterpret_cast<const V*>(in_g + at + u * stride);
        if (in_y) ys[u] = *reinterpret_cast<const V*>(in_y + at + u * stride);
      }
#pragma unroll
    for (int u = 0; u < kVecUnroll; ++u) {
      if (r0 + static_cast<int64_t>(u) * step >= r_end) continue;
      T* xe = reinterpret_cast<T*>(&xs[u]);
      const T* ge = reinterpret_cast<const T*>(&gs[u]);
      const T* ye = reinterpret_cast<const T*>(&ys[u]);
#pragma unroll
      for (int v = 0; v < VW; ++v) xe[v] = f(v, xe[v], in_g ? ge[v] : T(0), in_y ? ye[v] : T(0));
      post(xe, at + u * stride);
      *reinterpret_cast<V*>(out + at + u * stride) = xs[u];
    }
  }
}

__device__ __forceinline__ int64_t vec_column(int width) {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * width;
}

// A vec_grid launch's chunk of rows for this block, [begin, end), taken last rows first: the
// statistics launch just before read the rows in block order, so the last of them are the ones
// still in L2 (tens of MB of a pass over 128+ MB) when the first blocks of this launch start.
// Nothing is reduced in the apply passes: the order changes no bits.
__device__ __forceinline__ void reverse_vec_chunk(int64_t rows, int64_t rows_per_chunk, int64_t& begin, int64_t& end) {
  begin = static_cast<int64_t>(gridDim.y - 1 - blockIdx.y) * rows_per_chunk;
  end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
}

// y over rows [begin, end) of the vector of columns at col, from its columns' normalisers, through
// the epilogue when there is one (the 16-byte pass below and the pipeline's apply items).
template <class T>
__device__ __forceinline__ void normalise_vec_rows(const ForwardParams<T>& p, int64_t col, int64_t begin, int64_t end,
                                                   const ColumnNormaliser<T> (&y)[kVecWidth<T>]) {
  constexpr int VW = kVecWidth<T>;
  const auto normalised = [&](int v, T x, T, T) { return y[v](x); };
  const T* none = nullptr;
  if (p.epilogue.any())
    vec_rows(p.cols, col, begin, end, p.x, none, none, p.y, normalised,
             [&](T* v, int64_t i) { p.epilogue.template vector<VW>(v, i); });
  else
    vec_rows(p.cols, col, begin, end, p.x, none, none, p.y, normalised, [](T*, int64_t) {});
}

// y = ((x - hi) - lo) * scale + shift, as normalise(), a vector of columns per thread.
template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads) normalise_vec_kernel(ForwardParams<T> p, int64_t rows_per_chunk) {
  constexpr int VW = kVecWidth<T>;
  const int64_t col = vec_column(VW);
  if (col >= p.cols) return;  // no barrier in this kernel
  ColumnNormaliser<T> y[VW];
#pragma unroll
  for (int v = 0; v < VW; ++v) y[v] = ColumnNormaliser<T>(p, col + v);
  int64_t begin, end;
  reverse_vec_chunk(p.rows, rows_per_chunk, begin, end);
  normalise_vec_rows(p, col, begin, end, y);
}

// dx from the per-column coefficients (p.coefs), as write_dx(), a vector of columns per thread.
template <class T, bool kGated>
__global__ void __launch_bounds__(reduce::kReduceThreads) backward_dx_vec_kernel(BackwardParams<T> p, int64_t rows_per_chunk) {
  constexpr int VW = kVecWidth<T>;
  const int64_t col = vec_column(VW);
  if (col >= p.cols) return;  // no barrier in this kernel
  ColumnDx<T> dx[VW];
#pragma unroll
  for (int v = 0; v < VW; ++v) dx[v] = ColumnDx<T>(p.coefs + (col + v) * kCoefs);
  int64_t begin, end;
  reverse_vec_chunk(p.rows, rows_per_chunk, begin, end);
  vec_rows(p.cols, col, begin, end, p.x, p.dy, kGated ? p.relu_output : nullptr, p.dx,
           [&](int v, T x, T g, T y) {
             if constexpr (kGated) g = dropout_relu_grad(y, g, p.relu_scale);
             return dx[v](x, g);
           },
           [](T*, int64_t) {});
}

// ---- 16-byte statistics passes ----------------------------------------------------------------
//
// The statistics launches of the several-chunk path under the same conditions as the vector apply
// passes: a thread owns a vector of columns (4 floats / 2 doubles) and loads whole 16-byte runs,
// so a warp has 512 bytes in flight per load where the scalar loops have 128. The scalar stats
// passes (8 loads of 4 bytes per thread, at most 3 blocks per SM for registers) keep about 24 KB
// per SM in flight: at an H200's ~1 us loaded latency that caps them near 3.2 TB/s, about what
// the second visit measured for BatchNorm as a whole (2.9 TB/s). Their launch is the scalar pass's
// (block shape, chunks, rows per thread, groups of 8 rows) with a vector of columns per
// lane, so each column is reduced over the same rows in the same order: the same bits. The
// per-column partial states are laid out as the scalar pass writes them; the finish launches
// are shared.

// Rows r0, r0 + step, ... (N of them, those below r_end) of the vector at column col of a, every
// load issued before any use; missing rows read as zero. Returns how many rows there were.
template <int N, class T>
__device__ __forceinline__ int load_vec_rows(const T* a, int64_t r0, int64_t r_end, int step, int64_t cols,
                                             int64_t col, T (&v)[N][kVecWidth<T>]) {
  using V = typename cuda_rt::Vec16<T>::type;
  constexpr int VW = kVecWidth<T>;
  int count = 0;
#pragma unroll
  for (int u = 0; u < N; ++u) {
    const int64_t r = r0 + static_cast<int64_t>(u) * step;
    V x;
    if (r < r_end) {
      x = *reinterpret_cast<const V*>(a + r * cols + col);
      count = u + 1;
    } else {
      x = V{};
    }
    const T* xe = reinterpret_cast<const T*>(&x);
#pragma unroll
    for (int e = 0; e < VW; ++e) v[u][e] = xe[e];
  }
  return count;
}

// A vec_grid-style launch's chunk of rows for this block: [begin, end).
__device__ __forceinline__ void vec_chunk(int64_t rows, int64_t rows_per_chunk, int64_t& begin, int64_t& end) {
  begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
}

// Rows per thread before use in the vector statistics passes: 8 x 16 bytes (forward; 4 of x and 4
// of dy backward), 4 KB per warp in flight. Their per-thread states (3 or 5 doubles per column,
// four columns) need the registers of two blocks per SM, not three (under the 85-register cap they
// spilled 116-232 bytes): 64 KB in flight per SM against the scalar passes' 24 KB.
constexpr int kVecRowUnroll = 8;
constexpr int kVecPairUnroll = 4;
constexpr int kVecStatsBlocksPerSm = 2;
static_assert(kVecRowUnroll == kRowUnroll, "the forward's row groups decide its bits: the scalar pass's");

// Training forward statistics, several chunks: this chunk's states of the thread's columns into
// p.partials (add_shifted_group over groups of kVecRowUnroll rows; per column of
// the vector).
// The thread's states of its vector of columns at col over its rows of [chunk_begin, r_end); the
// block's column_reduce then combines them.
template <class T>
__device__ __forceinline__ void forward_vec_states(const ForwardParams<T>& p, int64_t col, int64_t chunk_begin,
                                                   int64_t r_end, double (&st)[3 * kVecWidth<T>]) {
  constexpr int VW = kVecWidth<T>;
  const int step = static_cast<int>(blockDim.y);
#pragma unroll
  for (int k = 0; k < 3 * VW; ++k) st[k] = 0.0;
  if (col < p.cols) {
    double k[VW];
#pragma unroll
    for (int e = 0; e < VW; ++e) k[e] = column_shift(p.x, col + e);
    for (int64_t r0 = chunk_begin + threadIdx.y; r0 < r_end; r0 += kVecRowUnroll * step) {
      T v[kVecRowUnroll][VW];
      const int count = load_vec_rows(p.x, r0, r_end, step, p.cols, col, v);
#pragma unroll
      for (int e = 0; e < VW; ++e) {
        double se[3] = {st[3 * e], st[3 * e + 1], st[3 * e + 2]};
        add_shifted_group<kVecRowUnroll>(se, count, k[e], [&](int u) { return static_cast<double>(v[u][e]); });
        st[3 * e] = se[0], st[3 * e + 1] = se[1], st[3 * e + 2] = se[2];
      }
    }
  }
}

template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads, kVecStatsBlocksPerSm) forward_stats_vec_kernel(ForwardParams<T> p) {
  constexpr int VW = kVecWidth<T>;
  const int64_t col = vec_column(VW);
  int64_t chunk_begin, r_end;
  vec_chunk(p.rows, p.rows_per_chunk, chunk_begin, r_end);
  double st[3 * VW];
  forward_vec_states(p, col, chunk_begin, r_end, st);
  reduce::column_reduce<3 * VW, reduce::Add>(st);
  if (threadIdx.y == 0 && col < p.cols) {
    double* out = p.partials + (static_cast<int64_t>(blockIdx.y) * p.cols + col) * 3;
#pragma unroll
    for (int k = 0; k < 3 * VW; ++k) out[k] = st[k];
  }
}

// Training backward sums, several chunks: this chunk's sums of the thread's columns into p.partials
// (backward_train_kernel's, per column of the vector; sums of column e at [e * NS, e * NS + NS)).
// The thread's sums of its vector of columns at col over its rows of [chunk_begin, r_end).
template <bool kGated, class T>
__device__ __forceinline__ void backward_vec_sums(const BackwardParams<T>& p, int64_t col, int64_t chunk_begin,
                                                  int64_t r_end, double (&sums)[kTrainSums<T> * kVecWidth<T>]) {
  constexpr int VW = kVecWidth<T>;
  constexpr int NS = kTrainSums<T>;
  const int step = static_cast<int>(blockDim.y);
#pragma unroll
  for (int k = 0; k < NS * VW; ++k) sums[k] = 0.0;
  if (col < p.cols) {
    double shift[VW];
#pragma unroll
    for (int e = 0; e < VW; ++e) shift[e] = p.save_mean[col + e];
    for (int64_t r0 = chunk_begin + threadIdx.y; r0 < r_end; r0 += kVecPairUnroll * step) {
      T xs[kVecPairUnroll][VW], gs[kVecPairUnroll][VW];
      const int count = load_vec_rows(p.x, r0, r_end, step, p.cols, col, xs);
      load_vec_rows(p.dy, r0, r_end, step, p.cols, col, gs);
      if constexpr (kGated) {
        T ys[kVecPairUnroll][VW];
        load_vec_rows(p.relu_output, r0, r_end, step, p.cols, col, ys);
#pragma unroll
        for (int u = 0; u < kVecPairUnroll; ++u)
#pragma unroll
          for (int e = 0; e < VW; ++e) gs[u][e] = dropout_relu_grad(ys[u][e], gs[u][e], p.relu_scale);
      }
#pragma unroll
      for (int u = 0; u < kVecPairUnroll; ++u) {
        if (u >= count) continue;
#pragma unroll
        for (int e = 0; e < VW; ++e) {
          add_backward_sums<NS>(sums + NS * e, static_cast<double>(xs[u][e]) - shift[e], static_cast<double>(gs[u][e]));
        }
      }
    }
  }
}

template <class T, bool kGated>
__global__ void __launch_bounds__(reduce::kReduceThreads, kVecStatsBlocksPerSm) backward_stats_vec_kernel(BackwardParams<T> p) {
  constexpr int VW = kVecWidth<T>;
  constexpr int NS = kTrainSums<T>;
  const int64_t col = vec_column(VW);
  int64_t chunk_begin, r_end;
  vec_chunk(p.rows, p.rows_per_chunk, chunk_begin, r_end);
  double sums[NS * VW];
  backward_vec_sums<kGated>(p, col, chunk_begin, r_end, sums);
  reduce::column_reduce<NS * VW, reduce::Add>(sums);
  if (threadIdx.y == 0 && col < p.cols) {
    double* out = p.partials + (static_cast<int64_t>(blockIdx.y) * p.cols + col) * NS;
#pragma unroll
    for (int k = 0; k < NS * VW; ++k) out[k] = sums[k];
  }
}

// ---- One-read pipeline (training, inputs larger than L2) -----------------------------------------
//
// The several-chunk path reads its input from memory twice when it outgrows L2 (8192 x 4096
// float32, 128 MB, against an H100's 50 MB or an H200's 60 MB): statistics launch, then the apply
// launch, which finds only the last tens of MB still in L2. Here one persistent launch walks the
// columns in slabs of kPipeLanes 16-byte vectors (128 floats / 64 doubles, 512-byte row
// segments), and its blocks take work items from a ticket, in this order:
//   statistics of slabs 0 .. D-1, then statistics of slab s + D and the apply items of slab s
//   alternately, then the last D slabs' apply items (D = lookahead slabs),
// each item kPipeChunkRows rows of one slab. A slab's statistics items leave per-chunk states (the
// several-chunk path's layout); the last of them to arrive combines them in chunk order, finishes
// the slab's columns and raises the slab's flag; its apply items wait for the flag, then read the
// slab again, normally from L2: the lookahead keeps D + 1 slabs (a few tens of MB) between a
// slab's two reads. An item waits only on items with smaller tickets, taken by blocks already
// running, so no placement of blocks can deadlock, and the result does not depend on which block
// takes which item: states are combined in chunk order, so the bits are fixed by the shape.

constexpr int kPipeLanes = 32;             // blockDim.x: a warp per row of a slab
constexpr int64_t kPipeChunkRows = 128;    // rows per item: a block's item is 64 KB of float32 x
constexpr int kPipeBlocksPerSm = kVecStatsBlocksPerSm;

// The launch's schedule and its counters (zeroed by the host before each launch).
struct PipelineSchedule {
  int64_t slabs, chunks, lookahead;
  unsigned* ticket;   // the next item
  unsigned* arrived;  // per slab: statistics items done
  unsigned* ready;    // per slab: nonzero once its columns are finished
  __host__ __device__ int64_t items() const { return 2 * slabs * chunks; }
};

struct PipelineItem {
  int64_t slab, chunk;
  bool apply;
};

__host__ __device__ inline PipelineItem pipeline_item(const PipelineSchedule& s, int64_t ticket) {
  const int64_t group = ticket / s.chunks, chunk = ticket % s.chunks, d = s.lookahead;
  if (group < d) return {group, chunk, false};
  if (group < 2 * s.slabs - d) {
    const int64_t j = group - d;
    return j % 2 == 0 ? PipelineItem{d + j / 2, chunk, false} : PipelineItem{j / 2, chunk, true};
  }
  return {group - s.slabs, chunk, true};
}

// The next item's ticket, the same in every thread of the block.
__device__ __forceinline__ int64_t next_ticket(const PipelineSchedule& s) {
  __shared__ unsigned ticket;
  __syncthreads();  // every thread has read the previous ticket
  if (threadIdx.x == 0 && threadIdx.y == 0) ticket = atomicAdd(s.ticket, 1u);
  __syncthreads();
  return ticket;
}

// Called by every thread after a statistics item's states are stored: true in every thread of the
// block whose item was the slab's last to arrive (whose loads below then see every item's states).
__device__ __forceinline__ bool last_of_slab(const PipelineSchedule& s, int64_t slab) {
  __shared__ bool last;
  __threadfence();  // this item's states are visible device-wide before it counts as arrived
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0) last = atomicAdd(s.arrived + slab, 1u) + 1 == s.chunks;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// The combining threads of a finish: parts of the block per column of the slab, each adding its
// share of the chunks in order; part 0 then adds the later parts in order. Returns the column's
// combined NV values in part 0's threads (part == 0, col < cols).
template <int NV, int Columns>
__device__ __forceinline__ void combine_chunks(const double* partials, int64_t chunks, int64_t cols, int64_t first_col,
                                               int& part, int64_t& col, double (&v)[NV]) {
  constexpr int kParts = reduce::kReduceThreads / Columns;
  // parts 1.. only: with column_reduce's 40 KB (float32 backward) all of them passed 48 KB
  __shared__ double part_states[kParts - 1][Columns][NV];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  part = tid / Columns;
  col = first_col + tid % Columns;
  const int64_t per_part = (chunks + kParts - 1) / kParts;
  const int64_t c0 = part * per_part, c1 = c0 + per_part < chunks ? c0 + per_part : chunks;
#pragma unroll
  for (int k = 0; k < NV; ++k) v[k] = 0.0;
  if (col < cols) {
#pragma unroll 8  // the chunks' loads in flight together
    for (int64_t c = c0; c < c1; ++c)
#pragma unroll
      for (int k = 0; k < NV; ++k) v[k] += cuda_rt::load_bypassing_l1(partials + (c * cols + col) * NV + k);
  }
  if (part > 0)
#pragma unroll
    for (int k = 0; k < NV; ++k) part_states[part - 1][tid % Columns][k] = v[k];
  __syncthreads();
  if (part == 0)
    for (int q = 1; q < kParts; ++q)
#pragma unroll
      for (int k = 0; k < NV; ++k) v[k] += part_states[q - 1][tid % Columns][k];
}

// Raises the slab's flag once every thread's finish is stored.
__device__ __forceinline__ void raise_ready(const PipelineSchedule& s, int64_t slab) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0) atomicExch(s.ready + slab, 1u);
}

__device__ __forceinline__ void wait_ready(const PipelineSchedule& s, int64_t slab) {
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    while (atomicAdd(s.ready + slab, 0u) == 0u) {
#ifdef __CUDA_ARCH__
      __nanosleep(128);  // fewer atomics on the flag's L2 slice while the slab's last items finish
#endif
    }
    __threadfence();
  }
  __syncthreads();
}

// The pipeline's loop, shared by the forward and backward kernels: items until none are left.
// states(col, begin, end, st) fills the thread's NV states per column of its vector at col over
// its rows of [begin, end) (before the block's column_reduce); finish(col, total) finishes a column
// from its states combined over every chunk; apply(col, begin, end) writes the thread's vector of
// columns over those rows.
template <int VW, int NV, class States, class Finish, class Apply>
__device__ __forceinline__ void run_pipeline(const PipelineSchedule& s, int64_t rows, int64_t cols, double* partials,
                                             States states, Finish finish, Apply apply) {
  constexpr int kSlabCols = kPipeLanes * VW;
  for (;;) {
    const int64_t ticket = next_ticket(s);
    if (ticket >= s.items()) return;
    const PipelineItem it = pipeline_item(s, ticket);
    const int64_t col = (it.slab * kPipeLanes + threadIdx.x) * VW;
    const int64_t begin = it.chunk * kPipeChunkRows, end = begin + kPipeChunkRows < rows ? begin + kPipeChunkRows : rows;
    if (!it.apply) {
      double st[NV * VW];
      states(col, begin, end, st);
      reduce::column_reduce<NV * VW, reduce::Add>(st);
      if (threadIdx.y == 0 && col < cols) {
        double* out = partials + (it.chunk * cols + col) * NV;
#pragma unroll
        for (int k = 0; k < NV * VW; ++k) out[k] = st[k];
      }
      if (last_of_slab(s, it.slab)) {
        int part;
        int64_t c;
        double total[NV];
        combine_chunks<NV, kSlabCols>(partials, s.chunks, cols, it.slab * kSlabCols, part, c, total);
        if (part == 0 && c < cols) finish(c, total);
        raise_ready(s, it.slab);
      }
    } else {
      wait_ready(s, it.slab);
      if (col < cols) apply(col, begin, end);
    }
  }
}

// Training forward over a pipeline schedule: block (kPipeLanes, kReduceThreads / kPipeLanes).
template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads, kPipeBlocksPerSm)
    forward_pipeline_kernel(ForwardParams<T> p, PipelineSchedule s) {
  constexpr int VW = kVecWidth<T>;
  run_pipeline<VW, 3>(
      s, p.rows, p.cols, p.partials,
      [&](int64_t col, int64_t begin, int64_t end, double (&st)[3 * VW]) { forward_vec_states(p, col, begin, end, st); },
      [&](int64_t col, const double (&total)[3]) { finish_forward(p, col, total); },
      [&](int64_t col, int64_t begin, int64_t end) {
        ColumnNormaliser<T> y[VW];
#pragma unroll
        for (int v = 0; v < VW; ++v)
          y[v] = ColumnNormaliser<T>(p, col + v, cuda_rt::load_bypassing_l1(p.save_mean + col + v),
                                     cuda_rt::load_bypassing_l1(p.save_invstd + col + v));
        normalise_vec_rows(p, col, begin, end, y);
      });
}

// Training backward over a pipeline schedule: sums, then dx (p.coefs holds the slab's coefficients
// between the two).
template <class T, bool kGated>
__global__ void __launch_bounds__(reduce::kReduceThreads, kPipeBlocksPerSm)
    backward_pipeline_kernel(BackwardParams<T> p, PipelineSchedule s) {
  constexpr int VW = kVecWidth<T>;
  constexpr int NS = kTrainSums<T>;
  run_pipeline<VW, NS>(
      s, p.rows, p.cols, p.partials,
      [&](int64_t col, int64_t begin, int64_t end, double (&sums)[NS * VW]) { backward_vec_sums<kGated>(p, col, begin, end, sums); },
      [&](int64_t col, const double (&total)[NS]) {
        double coef[kCoefs];
        finish_backward(p, col, total, coef);
#pragma unroll
        for (int k = 0; k < kCoefs; ++k) p.coefs[col * kCoefs + k] = coef[k];
      },
      [&](int64_t col, int64_t begin, int64_t end) {
        ColumnDx<T> dx[VW];
#pragma unroll
        for (int v = 0; v < VW; ++v) {
          double coef[kCoefs];
#pragma unroll
          for (int k = 0; k < kCoefs; ++k) coef[k] = cuda_rt::load_bypassing_l1(p.coefs + (col + v) * kCoefs + k);
          dx[v] = ColumnDx<T>(coef);
        }
        vec_rows(p.cols, col, begin, end, p.x, p.dy, kGated ? p.relu_output : nullptr, p.dx,
                 [&](int v, T x, T g, T y) {
             if constexpr (kGated) g = dropout_relu_grad(y, g, p.relu_scale);
             return dx[v](x, g);
           },
                 [](T*, int64_t) {});
      });
}

}  // namespace fastnn::cuda::batchnorm_detail
