// CUDA kernels of the losses, the twins of loss_cpu.cpp, with the per-element math from ops/loss.h.
//
// Cross-entropy: one warp per row (8 rows per 256-thread block). The warp finds the row max and the
// sum of the other classes' exponentials with shuffles, and, for the gradient, writes
// coef * (softmax - onehot) in the same launch (the fused forward + backward reads the logits once
// from DRAM; the second read of the row hits L1/L2). dlogits may be the logits themselves: each
// lane rewrites only the elements it has read, after the whole warp has read the target's logit.
//
// MSE and BCE-with-logits: elementwise; each block owns a fixed range of kElementsPerBlock elements.
//
// Reduced losses are deterministic: every block writes its partial sums (in double), and one
// single-block launch adds the partials in a fixed order and divides ("mean"). The shapes of all
// launches depend on the problem size alone. Upstream gradients and the "mean" denominator stay on
// the device (0-d tensors); kernels read them, so no call waits for the GPU's work on the logits (a
// cross-entropy call waits for its labels pass alone, to raise on a bad label: loss_cuda.cu).
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/cuda_elementwise.cuh"
#include "core/cuda_runtime.h"
#include "ops/loss.h"
#include "ops/reduce_kernels.cuh"

namespace fastnn::cuda::loss_detail {

constexpr int kRowsPerBlock = reduce::kReduceWarps;  // cross-entropy: a warp per row
constexpr int kItemsPerThread = 16;
constexpr int64_t kElementsPerBlock = int64_t{reduce::kReduceThreads} * kItemsPerThread;

// ---- shared pieces ---------------------------------------------------------------------------------

// loss = mean ? sum / count : sum from the partials {sum, count} of `blocks` blocks (count is the
// number of elements, or cross-entropy's total class weight). No blocks: 0 for sum, 0/0 = NaN for
// mean, as torch gives for an empty input.
template <class T>
__global__ void __launch_bounds__(reduce::kReduceThreads)
    loss_finish_kernel(const double* __restrict__ partials, int64_t blocks, bool mean, T* __restrict__ loss) {
  double total[2];
  reduce::final_reduce(partials, blocks, total, cuda_rt::SumOp{}, 0.0);
  if (threadIdx.x == 0) loss[0] = static_cast<T>(mean ? total[0] / total[1] : total[0]);
}

// ---- cross-entropy -----------------------------------------------------------------------------

template <class T, class I>
struct CrossEntropyParams {
  const T* logits;
  const I* labels;
  const T* weight;  // nullptr: every class weighs 1
  int64_t rows, classes, ignore_index;
  T* dlogits;                  // gradient out; nullptr for the forward
  T* row_loss;                 // per-row weighted losses (reduction "none" forward), or nullptr
  const T* row_upstream;       // per-row upstream gradient (reduction "none" backward), or nullptr
  const T* dloss;              // 0-d upstream gradient of a reduced backward; nullptr: 1 (fused)
  const double* denominator;   // "mean" backward: the total class weight (LabelSummary); nullptr: 1
  double* partials;            // per block {sum w[y] l, sum w[y]} (reduced forward), or nullptr
};


// The upstream gradient of a row times its class weight.
template <class T, class I>
__device__ __forceinline__ T row_coef(const CrossEntropyParams<T, I>& p, int64_t row, T w) {
  double upstream = p.row_upstream ? static_cast<double>(p.row_upstream[row])
                                   : p.dloss ? static_cast<double>(p.dloss[0]) : 1.0;
  if (p.denominator) upstream /= p.denominator[0];
  return static_cast<T>(static_cast<double>(w) * upstream);
}

// A row of up to 32 * kCache classes held in registers, all loads in flight at once: the max, the
// sum of exponentials and the gradient all come from them, so the row is read from memory once and
// each exponential computed once. (Reading it three times, one element per lane at a time, ran at
// 45% of an H200's copy rate at 1000 classes.) The loads are issued before the row's label is read
// (cross_entropy_rows_kernel), not after: the label's load and the row's then overlap instead of
// costing two memory latencies in a row.
//
// Where lane l's k-th value lies in the row: VW = 1, class l + 32 k (one 4- or 8-byte access per
// value); VW = 16 / sizeof(T), for rows of whole 16-byte vectors, lane l's j-th vector holds classes
// VW (l + 32 j) to VW (l + 32 j) + VW - 1 (a quarter of the float loads and stores for the same
// bytes: the row kernel ran at 80% of an H200's copy rate with one access per value).
// Class indices: cached rows have at most 32 * 32 classes. Under the float row's 85-register cap
// ptxas spilled the vector layout with 64-bit indices (44-72 bytes; 0-4 with 32-bit ones) and the
// scalar one with 32-bit indices (12-24 bytes; none with 64-bit ones).
template <int VW>
using ClassIndex = std::conditional_t<VW == 1, int64_t, int>;

template <int VW>
__device__ __forceinline__ ClassIndex<VW> cached_class(int lane, int k) {
  return static_cast<ClassIndex<VW>>(VW) * (lane + 32 * (k / VW)) + k % VW;
}

template <int kCache, int VW, class T>
__device__ __forceinline__ void load_cached_row(const T* x, int64_t C, int lane, T (&v)[kCache]) {
  static_assert(kCache % VW == 0, "whole vectors per lane");
  if constexpr (VW == 1) {
#pragma unroll
    for (int k = 0; k < kCache; ++k) {
      const int64_t c = cached_class<1>(lane, k);
      v[k] = c < C ? x[c] : T(-INFINITY);
    }
  } else {
    using V = typename cuda_rt::Vec16<T>::type;
#pragma unroll
    for (int j = 0; j < kCache / VW; ++j) {
      const int c = cached_class<VW>(lane, j * VW);
      if (c < C) {  // C is a whole number of vectors
        const V x4 = *reinterpret_cast<const V*>(x + c);
        const T* e = reinterpret_cast<const T*>(&x4);
#pragma unroll
        for (int u = 0; u < VW; ++u) v[j * VW + u] = e[u];
      } else {
#pragma unroll
        for (int u = 0; u < VW; ++u) v[j * VW + u] = T(-INFINITY);
      }
    }
  }
}

// The row's loss (and gradient into d) from its values in v (load_cached_row). The target's
// logit comes from the lane that holds it, not from a load that would wait for the label.
template <int kCache, int VW, class T, class I>
__device__ __forceinline__ T cached_row(const CrossEntropyParams<T, I>& p, int64_t row, int64_t y, T w, T (&v)[kCache],
                                        T* d, int lane) {
  using Index = ClassIndex<VW>;
  const Index C = static_cast<Index>(p.classes), target = static_cast<Index>(y);  // y in [0, C) here
  T held = T(0);
#pragma unroll
  for (int k = 0; k < kCache; ++k)
    if (cached_class<VW>(lane, k) == target) held = v[k];
  const T target_logit = __shfl_sync(0xffffffffu, held, (target / VW) & 31);
  T m = v[0];
#pragma unroll
  for (int k = 1; k < kCache; ++k) m = cuda_rt::MaxOp{}(m, v[k]);
  m = cuda_rt::warp_reduce(m, cuda_rt::MaxOp{});
  T others = T(0);
#pragma unroll
  for (int k = 0; k < kCache; ++k) {
    const Index c = cached_class<VW>(lane, k);
    v[k] = c < C ? std::exp(v[k] - m) : T(0);  // from here on v holds exp(x - max)
    if (c != target) others += v[k];
  }
  others = cuda_rt::warp_reduce(others, cuda_rt::SumOp{});
  const T target_exp = std::exp(target_logit - m);
  if (d) {
    const T coef = row_coef(p, row, w), inv_sum = T(1) / (target_exp + others);
    // (d may be x: every lane's loads of the row were used by the shuffles above, so no lane
    // still has to read what another overwrites)
    if constexpr (VW == 1) {
#pragma unroll
      for (int k = 0; k < kCache; ++k) {
        const Index c = cached_class<1>(lane, k);
        if (c < C) d[c] = cross_entropy_grad(v[k], others, c == target, inv_sum, coef);
      }
    } else {
      using V = typename cuda_rt::Vec16<T>::type;
#pragma unroll
      for (int j = 0; j < kCache / VW; ++j) {
        const int c = cached_class<VW>(lane, j * VW);
        if (c >= C) continue;
        V g;
        T* e = reinterpret_cast<T*>(&g);
#pragma unroll
        for (int u = 0; u < VW; ++u) e[u] = cross_entropy_grad(v[j * VW + u], others, c + u == target, inv_sum, coef);
        *reinterpret_cast<V*>(d + c) = g;
      }
    }
  }
  return cross_entropy_row_loss(m, target_logit, target_exp, others);
}

// Any number of classes: the row is read three times (max, sum of exponentials, gradient); the
// second and third reads hit L1/L2.
template <class T, class I>
__device__ __forceinline__ T streamed_row(const CrossEntropyParams<T, I>& p, int64_t row, int64_t y, T w, const T* x,
                                          T* d, int lane) {
  const int64_t C = p.classes;
  const T target_logit = x[y];
  T m = -INFINITY;
  for (int64_t c = lane; c < C; c += 32) m = cuda_rt::MaxOp{}(m, x[c]);
  m = cuda_rt::warp_reduce(m, cuda_rt::MaxOp{});
  T others = T(0);
  for (int64_t c = lane; c < C; c += 32)
    if (c != y) others += std::exp(x[c] - m);
  others = cuda_rt::warp_reduce(others, cuda_rt::SumOp{});
  const T target_exp = std::exp(target_logit - m);
  if (d) {
    const T coef = row_coef(p, row, w), inv_sum = T(1) / (target_exp + others);
    __syncwarp();  // every lane has read x[y] before any lane may overwrite it (d == x)
    for (int64_t c = lane; c < C; c += 32)
      d[c] = c == y ? cross_entropy_grad(target_exp, others, true, inv_sum, coef)
                    : cross_entropy_grad(std::exp(x[c] - m), others, false, inv_sum, coef);
  }
  return cross_entropy_row_loss(m, target_logit, target_exp, others);
}

// kCache > 0: rows of at most 32 * kCache classes, held in registers (cached_row), VW values per
// access (1, or a 16-byte vector: cached_class); 0: any width.
// float rows in 32 registers per lane: capped at 85 registers (three blocks, 24 warps per SM), which
// they fit without spilling; uncapped, the loads issued ahead of the label took 128 (two blocks).
template <class T, class I, int kCache, int VW = 1>
__global__ void __launch_bounds__(reduce::kReduceThreads, kCache >= 32 && sizeof(T) == 4 ? 3 : 1)
    cross_entropy_rows_kernel(CrossEntropyParams<T, I> p) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  const int64_t C = p.classes;
  double acc[2] = {0.0, 0.0};  // w[y] * loss, w[y]
  if (row < p.rows) {  // the same for the whole warp
    const T* x = p.logits + row * C;
    T v[kCache > 0 ? kCache : 1];
    if constexpr (kCache > 0) load_cached_row<kCache, VW>(x, C, lane, v);
    const int64_t y = static_cast<int64_t>(p.labels[row]);
    T* d = p.dlogits ? p.dlogits + row * C : nullptr;
    if (y == p.ignore_index) {
      if (d)
        for (int64_t c = lane; c < C; c += 32) d[c] = T(0);
      if (p.row_loss && lane == 0) p.row_loss[row] = T(0);
    } else if (y < 0 || y >= C) {
      // A bad label: an eager call raises once the host reads the labels pass (loss_cuda.cu), a
      // captured graph cannot; either way the loss and this row's gradient become NaN rather than
      // reading out of bounds.
      if (d)
        for (int64_t c = lane; c < C; c += 32) d[c] = T(NAN);
      if (p.row_loss && lane == 0) p.row_loss[row] = T(NAN);
      acc[0] = acc[1] = NAN;
    } else {
      const T w = p.weight ? p.weight[y] : T(1);
      T loss;
      if constexpr (kCache > 0)
        loss = cached_row<kCache, VW>(p, row, y, w, v, d, lane);
      else
        loss = streamed_row(p, row, y, w, x, d, lane);
      if (p.row_loss && lane == 0) p.row_loss[row] = w * loss;
      acc[0] = static_cast<double>(w) * static_cast<double>(loss);
      acc[1] = static_cast<double>(w);
    }
  }
  if (p.partials) {  // a kernel argument: the same for the whole block
    // Every lane of a warp holds its row's values: take them from lane 0 only.
    if (lane != 0) acc[0] = acc[1] = 0.0;
    reduce::block_sum(acc);
    if (threadIdx.x == 0) {
      p.partials[2 * static_cast<int64_t>(blockIdx.x)] = acc[0];
      p.partials[2 * static_cast<int64_t>(blockIdx.x) + 1] = acc[1];
    }
  }
}

// ---- the labels pass: the labels' check and the "mean" denominator ------------------------------

// What the labels alone say, known before a logit is read: the first row whose label is outside
// [0, classes) and is not ignore_index (kNoBadLabel: none) and that label; the "mean" denominator,
// the sum of w[y] over the rows not ignored (NaN with a bad label). Three 8-byte words, so that a
// tensor of 3 int64 holds it and one copy takes it to the host.
struct LabelSummary {
  double total_weight;
  int64_t first_bad;
  int64_t bad_label;
};
constexpr int64_t kNoBadLabel = INT64_MAX;

template <class I>
__device__ __forceinline__ void write_label_summary(const I* labels, double total_weight, int64_t first_bad,
                                                    LabelSummary* summary) {
  summary->total_weight = total_weight;
  summary->first_bad = first_bad;
  summary->bad_label = first_bad == kNoBadLabel ? 0 : static_cast<int64_t>(labels[first_bad]);
}

// Block b reads the labels [b, b + 1) * kElementsPerBlock, every thread's kItemsPerThread loads
// issued before any is used. (One block walking all the labels had one load in flight per thread
// at a time: at 33,554 rows that serial chain, not the logits, set the pace of the fused loss on an
// H200.) A single block (a training batch) writes the summary itself; more write their {weight,
// first bad row} for labels_finish_kernel.
template <class T, class I>
__global__ void __launch_bounds__(reduce::kReduceThreads)
    cross_entropy_labels_kernel(CrossEntropyParams<T, I> p, double* __restrict__ block_weight,
                                int64_t* __restrict__ block_first_bad, LabelSummary* __restrict__ summary) {
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kElementsPerBlock;
  int64_t y[kItemsPerThread];
#pragma unroll
  for (int k = 0; k < kItemsPerThread; ++k) {
    const int64_t r = begin + k * reduce::kReduceThreads + threadIdx.x;
    y[k] = r < p.rows ? static_cast<int64_t>(p.labels[r]) : p.ignore_index;
  }
  double weight[1] = {0.0};
  int64_t first_bad[1] = {kNoBadLabel};
#pragma unroll
  for (int k = 0; k < kItemsPerThread; ++k) {
    if (y[k] == p.ignore_index) continue;
    if (y[k] < 0 || y[k] >= p.classes) {
      weight[0] = NAN;
      const int64_t r = begin + k * reduce::kReduceThreads + threadIdx.x;
      if (r < first_bad[0]) first_bad[0] = r;
    } else {
      weight[0] += p.weight ? static_cast<double>(p.weight[y[k]]) : 1.0;
    }
  }
  reduce::block_sum(weight);
  reduce::block_reduce_n(first_bad, reduce::MinOp{}, kNoBadLabel);
  if (threadIdx.x != 0) return;
  if (gridDim.x == 1) {
    write_label_summary(p.labels, weight[0], first_bad[0], summary);
  } else {
    block_weight[blockIdx.x] = weight[0];
    block_first_bad[blockIdx.x] = first_bad[0];
  }
}

template <class I>
__global__ void __launch_bounds__(reduce::kReduceThreads)
    cross_entropy_labels_finish_kernel(const I* __restrict__ labels, const double* __restrict__ block_weight,
                                       const int64_t* __restrict__ block_first_bad, int64_t blocks,
                                       LabelSummary* __restrict__ summary) {
  double weight[1];
  int64_t first_bad[1];
  reduce::final_reduce(block_weight, blocks, weight, cuda_rt::SumOp{}, 0.0);
  reduce::final_reduce(block_first_bad, blocks, first_bad, reduce::MinOp{}, kNoBadLabel);
  if (threadIdx.x == 0) write_label_summary(labels, weight[0], first_bad[0], summary);
}

// ---- MSE and BCE with logits -------------------------------------------------------------------

template <class T>
struct ElementwiseParams {
  const T* x;
  const T* t;
  Broadcast<T> weight, pos_weight;  // BCE (ops/loss.h); absent: 1
  int64_t n;
  T* loss;              // per-element losses (reduction "none" forward)
  T* grad;              // gradient (backward)
  const T* upstream;    // per-element upstream gradient (reduction "none" backward), or nullptr
  const T* dloss;       // 0-d upstream gradient of a reduced backward
  bool mean;            // reduced backward: the upstream gradient is dloss / n
  double* partials;     // per block {sum of losses, elements} (reduced forward)
};

struct MseOp {
  template <class T>
  __device__ __forceinline__ static T loss(const ElementwiseParams<T>& p, int64_t i) {
    return mse_loss(p.x[i], p.t[i]);
  }
  template <class T>
  __device__ __forceinline__ static T grad(const ElementwiseParams<T>& p, int64_t i, T scale) {
    return mse_grad(p.x[i], p.t[i], scale);
  }
};

struct BceOp {
  template <class T>
  __device__ __forceinline__ static T loss(const ElementwiseParams<T>& p, int64_t i) {
    const T l = bce_with_logits_loss(p.x[i], p.t[i], p.pos_weight[i]);
    return p.weight[i] * l;  // torch weighs the loss last; an absent weight reads 1, and 1 * l is l
  }
  template <class T>
  __device__ __forceinline__ static T grad(const ElementwiseParams<T>& p, int64_t i, T scale) {
    const T g = bce_with_logits_grad(p.x[i], p.t[i], p.pos_weight[i]) * scale;
    return g * p.weight[i];  // torch weighs the gradient last
  }
};

// Reduced forward: block b sums the losses of elements [b, b + 1) * kElementsPerBlock in double.
template <class T, class Op>
__global__ void __launch_bounds__(reduce::kReduceThreads) elementwise_sum_kernel(ElementwiseParams<T> p) {
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kElementsPerBlock;
  double acc[2] = {0.0, 0.0};
  for (int k = 0; k < kItemsPerThread; ++k) {
    const int64_t i = begin + k * reduce::kReduceThreads + threadIdx.x;
    if (i < p.n) {
      acc[0] += static_cast<double>(Op::loss(p, i));
      acc[1] += 1.0;
    }
  }
  reduce::block_sum(acc);
  if (threadIdx.x == 0) {
    p.partials[2 * static_cast<int64_t>(blockIdx.x)] = acc[0];
    p.partials[2 * static_cast<int64_t>(blockIdx.x) + 1] = acc[1];
  }
}

// Reduction "none" forward: one loss per element.
template <class T, class Op>
__global__ void __launch_bounds__(reduce::kReduceThreads) elementwise_loss_kernel(ElementwiseParams<T> p) {
  for (int64_t i = cuda_rt::global_thread_index(); i < p.n; i += cuda_rt::grid_stride()) p.loss[i] = Op::loss(p, i);
}

// Backward: the upstream gradient per element ("none"), or dloss (/ n for "mean") for all, rounded
// to T once, as the CPU does.
template <class T, class Op>
__global__ void __launch_bounds__(reduce::kReduceThreads) elementwise_grad_kernel(ElementwiseParams<T> p) {
  T scale = T(0);
  if (!p.upstream) {
    const double g = static_cast<double>(p.dloss[0]);
    scale = static_cast<T>(p.mean ? g / static_cast<double>(p.n) : g);
  }
  for (int64_t i = cuda_rt::global_thread_index(); i < p.n; i += cuda_rt::grid_stride())
    p.grad[i] = Op::grad(p, i, p.upstream ? p.upstream[i] : scale);
}

}  // namespace fastnn::cuda::loss_detail
