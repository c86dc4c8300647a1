// The CUDA GEMM: C = act(alpha * op(A) @ op(B) + beta * C + bias), row-major, the four N/T
// combinations as template parameters. The steps of the SGEMM_CUDA ladder it takes:
//   - shared-memory tiles: a block computes a BM x BN tile of C, walking K in slabs of BK; each
//     slab of op(A) (BM x BK) and op(B) (BK x BN) is stored k-major in shared memory, As[k][m] and
//     Bs[k][n], whatever the transposes, so the inner loop is the same for all four;
//   - 2D register blocking: each thread accumulates a TM x TN sub-tile in registers and reads TM + TN
//     values from shared memory per k for TM * TN FMAs. Its rows (and columns) are groups of four
//     adjacent ones, the groups 4 * threads apart, so one warp's 16-byte shared loads cover
//     consecutive addresses (no bank conflicts) and its stores of C are whole 16-byte runs;
//   - vectorised global loads: 16 bytes (float4 / double2) along the operand's contiguous dimension
//     when the bases and leading dimensions allow (a uniform run-time flag), scalar loads with zero
//     fill at the edges;
//   - double buffering: the next slab is loaded into registers while the current one is multiplied,
//     then stored to the other shared buffer: one __syncthreads per slab;
//   - fused epilogue: alpha, beta (beta == 0 never reads C), the per-column bias and the activation
//     (activation_apply from ops/activation.h, the CPU's own function) applied as C is stored.
// Every element of C is one thread's sum over k in increasing order, whatever the tile shape, so
// results are deterministic, and identical between the tile configurations.
//
// Split K, for the MLP's shapes at small batch (128 x 1024 x 1024 is 32 tiles of 64 x 64, a quarter
// of an H100's SMs, each walking all of K) and for one wave of 128 x 64 tiles (batch 1024; dY^T X
// there takes 128 x 128 tiles, K in 4): blockIdx.z takes one chunk of K and writes its raw sums
// to a workspace, and gemm_split_k_reduce adds the chunks in order z = 0, 1, ... and applies the
// epilogue. Still deterministic; the split depends on the shape only (not on the card), so a given
// shape gives the same bits on every GPU.
#pragma once
#include <cstdint>
#include <type_traits>

#include "core/cuda_elementwise.cuh"
#include "ops/gemm.h"

namespace fastnn::cuda::gemm_detail {

// The problem description shared with the CPU GEMM (row-major, leading dimensions in elements).
template <class T>
using GemmProblem = cpu::GemmProblem<T>;

// C (or the raw problem) on the current stream. Defined for float and double in gemm_cuda.cu.
template <class T>
void launch_gemm(const GemmProblem<T>& p);

// Tile shape: a block of (BN / TN) x (BM / TM) threads computes BM x BN of C in K-slabs of BK.
// HOIST: slabs loaded by HoistedSlabLoader (each vector's address and row check once per block,
// not once per slab): the 128 x 64 tile's; the others keep SlabLoader, where hoisting did not pay.
template <class T, int BM_, int BN_, int BK_, int TM_, int TN_, int MIN_BLOCKS, bool HOIST = false>
struct TileConfig {
  using Elem = T;
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr bool kHoist = HOIST;
  static constexpr int kMinBlocks = MIN_BLOCKS;  // resident blocks per SM asked of the register allocator
  static constexpr int kThreadsX = BN / TN, kThreadsY = BM / TM;
  static constexpr int kThreads = kThreadsX * kThreadsY;
  static constexpr int VW = 16 / sizeof(T);  // elements per 16-byte load
  // Shared rows padded by 4 elements: the transposing stores (As[k + j][m]) of neighbouring
  // threads then fall in different banks, and rows stay 16-byte aligned.
  static constexpr int kPad = 4;
  static_assert(TM % 4 == 0 && TN % 4 == 0, "register tiles are groups of 4 rows / columns");
  static_assert(BK % VW == 0 && BM % VW == 0 && BN % VW == 0, "slabs are whole vectors");
  static_assert((BM * BK / VW) % kThreads == 0 && (BN * BK / VW) % kThreads == 0,
                "every thread loads the same number of vectors per slab");
};

// float32, large problems: 128 x 128 tiles, 8 x 8 per thread (64 FMAs per 16 shared loads); at most
// 128 registers, so two blocks (16 warps) share an SM.
using ConfigF32Large = TileConfig<float, 128, 128, 8, 8, 8, 2>;
// float32, about one wave of 128 x 64 tiles (an MLP layer at batch 1024: 104-128 of them): 8 x 4 per
// thread, 16-deep slabs. On an H200 it ran 1.01-1.07x the 64 x 64 tile at those shapes, where
// 128 x 128 tiles (56-64 of them) ran 0.58-0.66x (benchmarks/results/2026-11-26-h200-7de1a8a).
// Hoisted slab loads: on an H100 (benchmarks/results/2026-11-26-h100-cde6ae1/gemm_tiles.md) the
// unsplit tile ran 1.07x SlabLoader's at the 128-tile batch-1024 shapes (dY^T X 1.03x) and
// 1.02-1.03x at 4096^3, 0.95-1.00x at the 104-tile ones (which split K: 0.98-1.01x there); the
// 64 x 64 (0.93-1.00x) and 128 x 128 (0.87-1.00x) tiles lost, so they keep SlabLoader.
using ConfigF32Wide = TileConfig<float, 128, 64, 16, 8, 4, 2, true>;
// float32, problems of fewer than ~one wave of large tiles: 64 x 64, 4 x 4 per thread.
using ConfigF32Medium = TileConfig<float, 64, 64, 16, 4, 4, 1>;
// float32, MLP layers at small batch (128 x 512 x 512 is 16 tiles of 64 x 64, a tenth of an H100):
// 32 x 32 tiles of 64 threads, four times as many blocks again.
using ConfigF32Small = TileConfig<float, 32, 32, 16, 4, 4, 1>;
// float64: 64 x 64 tiles, 4 x 4 per thread (the register budget of 8 x 8 doubles is too high).
using ConfigF64 = TileConfig<double, 64, 64, 8, 4, 4, 1>;

// One operand slab in registers: R x BK values of X(r, k), stored k-major into shared S[k][r].
//   CONTIG_K: X(r, k) = x[r * ld + k]  (A, or B^T: the K dimension is contiguous)
//   else:     X(r, k) = x[k * ld + r]  (A^T, or B: the R dimension is contiguous)
template <class Cfg, int R, bool CONTIG_K>
struct SlabLoader {
  using T = typename Cfg::Elem;
  using V = typename cuda_rt::Vec16<T>::type;  // float4 / double2
  static constexpr int VW = Cfg::VW, BK = Cfg::BK;
  static constexpr int kVectors = R * BK / VW / Cfg::kThreads;  // per thread
  static constexpr int kPerRow = CONTIG_K ? BK / VW : R / VW;    // vectors along the contiguous dim

  T regs[kVectors][VW] = {};  // (always loaded before use; the initialiser costs nothing once optimised)

  // Where vector i of this thread lies in the slab: (r, k) of its first element.
  __device__ __forceinline__ static void position(int i, int& r, int& k) {
    const int v = static_cast<int>(threadIdx.x) + i * Cfg::kThreads;
    if (CONTIG_K) {
      r = v / kPerRow;
      k = (v % kPerRow) * VW;
    } else {
      k = v / kPerRow;
      r = (v % kPerRow) * VW;
    }
  }

  // Slab rows r0.., k0..; rows >= r_lim or k >= k_lim read as zero. vec: 16-byte loads allowed.
  __device__ __forceinline__ void load(const T* __restrict__ x, int64_t ld, int64_t r0, int64_t k0,
                                       int64_t r_lim, int64_t k_lim, bool vec) {
#pragma unroll
    for (int i = 0; i < kVectors; ++i) {
      int r, k;
      position(i, r, k);
      const int64_t gr = r0 + r, gk = k0 + k;
      if (CONTIG_K) {
        const T* src = x + gr * ld + gk;
        if (vec && gr < r_lim && gk + VW <= k_lim) {
          const V v = *reinterpret_cast<const V*>(src);
          store_vec(regs[i], v);
        } else {
#pragma unroll
          for (int j = 0; j < VW; ++j) regs[i][j] = gr < r_lim && gk + j < k_lim ? src[j] : T(0);
        }
      } else {
        const T* src = x + gk * ld + gr;
        if (vec && gk < k_lim && gr + VW <= r_lim) {
          const V v = *reinterpret_cast<const V*>(src);
          store_vec(regs[i], v);
        } else {
#pragma unroll
          for (int j = 0; j < VW; ++j) regs[i][j] = gk < k_lim && gr + j < r_lim ? src[j] : T(0);
        }
      }
    }
  }

  // The kernel's interface, shared with HoistedSlabLoader: nothing to set up; slab s starts at k0.
  __device__ __forceinline__ void init(const T*, int64_t, int64_t, int64_t, int64_t) {}
  __device__ __forceinline__ void load_slab(const T* __restrict__ x, int64_t ld, int64_t r0, int64_t k0,
                                            int64_t r_lim, int64_t k_lim, bool vec, int64_t /*s*/) {
    load(x, ld, r0, k0, r_lim, k_lim, vec);
  }

  __device__ __forceinline__ void store(T (*S)[R + Cfg::kPad]) const {
#pragma unroll
    for (int i = 0; i < kVectors; ++i) {
      int r, k;
      position(i, r, k);
      if (CONTIG_K) {
#pragma unroll
        for (int j = 0; j < VW; ++j) S[k + j][r] = regs[i][j];
      } else {
        V v;
        load_vec(v, regs[i]);
        *reinterpret_cast<V*>(&S[k][r]) = v;
      }
    }
  }

 private:
  __device__ __forceinline__ static void store_vec(T (&dst)[VW], const float4& v) {
    dst[0] = v.x, dst[1] = v.y, dst[2] = v.z, dst[3] = v.w;
  }
  __device__ __forceinline__ static void store_vec(T (&dst)[VW], const double2& v) {
    dst[0] = v.x, dst[1] = v.y;
  }
  __device__ __forceinline__ static void load_vec(float4& v, const T (&src)[VW]) {
    v = make_float4(src[0], src[1], src[2], src[3]);
  }
  __device__ __forceinline__ static void load_vec(double2& v, const T (&src)[VW]) {
    v = make_double2(src[0], src[1]);
  }
};

// SlabLoader with its per-slab work hoisted out of the K loop. The disassembly of the 128 x 64
// kernel showed each 16-byte load of a slab costing ~25 instructions of 64-bit address arithmetic,
// bounds tests and branches between the vector and scalar paths (FFMA ~74% of the instructions
// executed, as ncu counted on an H200). Here each vector's address at the block's first slab and
// its row test are computed once; a slab whose K range is whole (all but maybe the last) then
// costs a vector one add and one predicated load, and only the last, partial slab (or operands
// without 16-byte loads) takes SlabLoader's general path. The same values land in the same
// registers: the same bits.
template <class Cfg, int R, bool CONTIG_K>
struct HoistedSlabLoader : SlabLoader<Cfg, R, CONTIG_K> {
  using Base = SlabLoader<Cfg, R, CONTIG_K>;
  using T = typename Base::T;
  using V = typename Base::V;
  static constexpr int VW = Cfg::VW, BK = Cfg::BK, kVectors = Base::kVectors;

  // (initialised for the compilers that cannot see init() always runs first; free once optimised)
  const T* first[kVectors] = {};  // vector i's first element in the slab at k_begin
  bool whole[kVectors] = {};      // CONTIG_K: its row is below r_lim; else: all VW of its rows are

  __device__ __forceinline__ void init(const T* x, int64_t ld, int64_t r0, int64_t k_begin, int64_t r_lim) {
#pragma unroll
    for (int i = 0; i < kVectors; ++i) {
      int r, k;
      Base::position(i, r, k);
      const int64_t gr = r0 + r, gk = k_begin + k;
      first[i] = CONTIG_K ? x + gr * ld + gk : x + gk * ld + gr;
      whole[i] = CONTIG_K ? gr < r_lim : gr + VW <= r_lim;
    }
  }

  __device__ __forceinline__ void load_slab(const T* __restrict__ x, int64_t ld, int64_t r0, int64_t k0,
                                            int64_t r_lim, int64_t k_lim, bool vec, int64_t s) {
    if (!vec || k0 + BK > k_lim) {  // uniform over the block: the last slab of a ragged K, or no 16-byte loads
      Base::load(x, ld, r0, k0, r_lim, k_lim, vec);
      return;
    }
    const int64_t offset = s * (CONTIG_K ? BK : BK * ld);  // slab s: BK elements on, or BK rows of ld
    bool all_whole = true;
#pragma unroll
    for (int i = 0; i < kVectors; ++i) {
      if (whole[i]) {
        const V v = *reinterpret_cast<const V*>(first[i] + offset);
        const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
        for (int j = 0; j < VW; ++j) this->regs[i][j] = e[j];
      } else {
        all_whole = false;
      }
    }
    if (!all_whole) {  // a block at the edge of the rows: its partial vectors element by element
#pragma unroll
      for (int i = 0; i < kVectors; ++i) {
        if (whole[i]) continue;
        int r, k;
        Base::position(i, r, k);
        const int64_t gr = r0 + r;
        const T* src = first[i] + offset;
#pragma unroll
        for (int j = 0; j < VW; ++j) {
          const bool in = CONTIG_K ? gr < r_lim : gr + j < r_lim;
          this->regs[i][j] = in ? src[j] : T(0);
        }
      }
    }
  }
};

// The epilogue of one element: what the CPU micro-kernels compute, in the same order.
template <class T>
__device__ __forceinline__ T epilogue(T acc, T alpha, T beta, const T* c, const T* bias, int64_t col,
                                      Activation act) {
  T v = alpha * acc;
  if (beta != T(0)) v += beta * *c;
  if (bias) v += bias[col];
  return activation_apply(act, v);
}

// Four adjacent elements of C, 16-byte aligned: one float4 or two double2.
__device__ __forceinline__ void load4(const float* c, float (&v)[4]) {
  const float4 x = *reinterpret_cast<const float4*>(c);
  v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
}
__device__ __forceinline__ void load4(const double* c, double (&v)[4]) {
  const double2 x = reinterpret_cast<const double2*>(c)[0], y = reinterpret_cast<const double2*>(c)[1];
  v[0] = x.x, v[1] = x.y, v[2] = y.x, v[3] = y.y;
}
__device__ __forceinline__ void store4(float* c, const float (&v)[4]) {
  *reinterpret_cast<float4*>(c) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(double* c, const double (&v)[4]) {
  reinterpret_cast<double2*>(c)[0] = make_double2(v[0], v[1]);
  reinterpret_cast<double2*>(c)[1] = make_double2(v[2], v[3]);
}

// A block's BM x BN tile of C from the threads' accumulators (thread (tx, ty) holds rows
// gi * 4 * kThreadsY + ty * 4 + i and columns gj * 4 * kThreadsX + tx * 4 + j): the epilogue, or,
// SPLIT_K, the raw sums into partials[blockIdx.z]. Shared by the GEMM kernels.
template <class Cfg, bool SPLIT_K>
__device__ __forceinline__ void store_tile(const GemmProblem<typename Cfg::Elem>& p,
                                           const typename Cfg::Elem (&acc)[Cfg::TM][Cfg::TN], int64_t m0,
                                           int64_t n0, int tx, int ty, bool c_vec,
                                           typename Cfg::Elem* __restrict__ partials) {
  using T = typename Cfg::Elem;
  constexpr int TM = Cfg::TM, TN = Cfg::TN;
  if constexpr (SPLIT_K) {
    T* part = partials + static_cast<int64_t>(blockIdx.z) * p.m * p.n;
#pragma unroll
    for (int gi = 0; gi < TM / 4; ++gi)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t row = m0 + gi * 4 * Cfg::kThreadsY + ty * 4 + i;
        if (row >= p.m) continue;
#pragma unroll
        for (int gj = 0; gj < TN / 4; ++gj)
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int64_t col = n0 + gj * 4 * Cfg::kThreadsX + tx * 4 + j;
            if (col < p.n) part[row * p.n + col] = acc[gi * 4 + i][gj * 4 + j];
          }
      }
    return;
  }

  const T alpha = p.alpha, beta = p.beta;
#pragma unroll
  for (int gi = 0; gi < TM / 4; ++gi) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = m0 + gi * 4 * Cfg::kThreadsY + ty * 4 + i;
      if (row >= p.m) continue;
#pragma unroll
      for (int gj = 0; gj < TN / 4; ++gj) {
        const int64_t col = n0 + gj * 4 * Cfg::kThreadsX + tx * 4;
        T* c = p.c + row * p.ldc + col;
        const T* acc4 = &acc[gi * 4 + i][gj * 4];
        if (c_vec && col + 4 <= p.n) {
          T old[4] = {T(0), T(0), T(0), T(0)};
          if (beta != T(0)) load4(c, old);
          T out[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) out[j] = epilogue(acc4[j], alpha, beta, old + j, p.bias, col + j, p.act);
          store4(c, out);
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (col + j < p.n) c[j] = epilogue(acc4[j], alpha, beta, c + j, p.bias, col + j, p.act);
        }
      }
    }
  }
}

// Adds op(A)(m0.., k) op(B)(k, n0..) over k in [k_begin, k_end) to acc: slabs double-buffered
// through As / Bs, the next slab's global loads in flight during this one's FMAs. Every thread of
// the block calls it (it holds barriers) and it ends on one, so the buffers may be refilled after.
template <class Cfg, bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void accumulate_k_range(
    const GemmProblem<typename Cfg::Elem>& p, int64_t m0, int64_t n0, int64_t k_begin, int64_t k_end, bool vec,
    int tx, int ty, typename Cfg::Elem (&As)[2][Cfg::BK][Cfg::BM + Cfg::kPad],
    typename Cfg::Elem (&Bs)[2][Cfg::BK][Cfg::BN + Cfg::kPad], typename Cfg::Elem (&acc)[Cfg::TM][Cfg::TN]) {
  using T = typename Cfg::Elem;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN;
  // op(A)(m, k): A is (M, K) (k contiguous) or, transposed, (K, M) (m contiguous).
  using ALoader = std::conditional_t<Cfg::kHoist, HoistedSlabLoader<Cfg, BM, !TRANS_A>, SlabLoader<Cfg, BM, !TRANS_A>>;
  using BLoader = std::conditional_t<Cfg::kHoist, HoistedSlabLoader<Cfg, BN, TRANS_B>, SlabLoader<Cfg, BN, TRANS_B>>;
  ALoader a_slab;
  // op(B)(k, n) seen as X(n, k): B is (K, N) (n contiguous) or, transposed, (N, K) (k contiguous).
  BLoader b_slab;

  const int64_t slabs = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
  if (slabs > 0) {
    a_slab.init(p.a, p.lda, m0, k_begin, p.m);
    b_slab.init(p.b, p.ldb, n0, k_begin, p.n);
    a_slab.load_slab(p.a, p.lda, m0, k_begin, p.m, k_end, vec, 0);
    b_slab.load_slab(p.b, p.ldb, n0, k_begin, p.n, k_end, vec, 0);
    a_slab.store(As[0]);
    b_slab.store(Bs[0]);
  }
  __syncthreads();

  for (int64_t s = 0; s < slabs; ++s) {
    const int buf = static_cast<int>(s & 1);
    const bool more = s + 1 < slabs;
    if (more) {  // the next slab's global loads are in flight during the FMAs below
      a_slab.load_slab(p.a, p.lda, m0, k_begin + (s + 1) * BK, p.m, k_end, vec, s + 1);
      b_slab.load_slab(p.b, p.ldb, n0, k_begin + (s + 1) * BK, p.n, k_end, vec, s + 1);
    }
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
#pragma unroll
      for (int g = 0; g < TM / 4; ++g)
#pragma unroll
        for (int i = 0; i < 4; ++i) a[g * 4 + i] = As[buf][kk][g * 4 * Cfg::kThreadsY + ty * 4 + i];
#pragma unroll
      for (int g = 0; g < TN / 4; ++g)
#pragma unroll
        for (int j = 0; j < 4; ++j) b[g * 4 + j] = Bs[buf][kk][g * 4 * Cfg::kThreadsX + tx * 4 + j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
    if (more) {  // the other buffer was last read before the previous barrier
      a_slab.store(As[buf ^ 1]);
      b_slab.store(Bs[buf ^ 1]);
    }
    __syncthreads();
  }
}

// One launch computes all of C. blockIdx.x walks the row tiles (M may be large: a batch),
// blockIdx.y the column tiles. vec: A and B allow 16-byte loads; c_vec: C allows 16-byte stores.
// SPLIT_K: block z sums k in [z * k_chunk, (z + 1) * k_chunk) into partials[z][m][n], without the
// epilogue (a separate instance, so the unsplit kernels keep their registers).
template <class Cfg, bool TRANS_A, bool TRANS_B, bool SPLIT_K>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    gemm_kernel(GemmProblem<typename Cfg::Elem> p, bool vec, bool c_vec, int64_t k_chunk,
                typename Cfg::Elem* __restrict__ partials) {
  using T = typename Cfg::Elem;
  __shared__ __align__(16) T As[2][Cfg::BK][Cfg::BM + Cfg::kPad];
  __shared__ __align__(16) T Bs[2][Cfg::BK][Cfg::BN + Cfg::kPad];

  const int tx = static_cast<int>(threadIdx.x) % Cfg::kThreadsX;
  const int ty = static_cast<int>(threadIdx.x) / Cfg::kThreadsX;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * Cfg::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * Cfg::BN;

  T acc[Cfg::TM][Cfg::TN];
#pragma unroll
  for (int i = 0; i < Cfg::TM; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::TN; ++j) acc[i][j] = T(0);

  const int64_t k_begin = SPLIT_K ? static_cast<int64_t>(blockIdx.z) * k_chunk : 0;
  const int64_t k_end = SPLIT_K && k_begin + k_chunk < p.k ? k_begin + k_chunk : p.k;
  accumulate_k_range<Cfg, TRANS_A, TRANS_B>(p, m0, n0, k_begin, k_end, vec, tx, ty, As, Bs, acc);
  store_tile<Cfg, SPLIT_K>(p, acc, m0, n0, tx, ty, c_vec, partials);
}

// C = epilogue(sum over z of partials[z]), z in increasing order, one thread per element of C.
template <class T>
__global__ void gemm_split_k_reduce(GemmProblem<T> p, const T* __restrict__ partials, int64_t splits) {
  const int64_t count = p.m * p.n;
  for (int64_t i = cuda_rt::global_thread_index(); i < count; i += cuda_rt::grid_stride()) {
    T sum = partials[i];
    for (int64_t z = 1; z < splits; ++z) sum += partials[z * count + i];
    const int64_t row = i / p.n, col = i - row * p.n;
    T* c = p.c + row * p.ldc + col;
    *c = epilogue(sum, p.alpha, p.beta, c, p.bias, col, p.act);
  }
}

}  // namespace fastnn::cuda::gemm_detail
