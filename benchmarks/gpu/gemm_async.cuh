// A candidate float32 GEMM kernel for the tile sweep (gemm_tiles.cu), not yet production: the same
// tiles, per-thread register blocking, summation order and epilogue (store_tile) as gemm_kernel in
// csrc/ops/gemm_kernels.cuh, with the slabs moved by cp.async instead of through registers.
//
// Why (ncu on an H200, benchmarks/results/2026-11-26-h200-c54e4ea/gemm_tiles.md): the production
// kernel at the batch-1024 shapes keeps the FMA pipe 43-51% busy, issue slots 66%, with 107-113
// registers (two blocks, 16 warps per SM) and 28-31% of cycles with no eligible warp. Its slabs go
// global -> registers -> shared (12 scalar transposing stores per thread per slab for a k-contiguous
// operand, then a barrier), one slab ahead. Here:
//   - cp.async (sm_80+) copies 16-byte chunks straight into shared memory, kStages slabs in flight
//     (3: two slabs' loads overlap each slab's FMAs), no staging registers, no store instructions;
//   - a k-contiguous operand (X, or W in X W^T) is stored as it lies, row by row ("rk"), and read 4
//     k at a time with one 16-byte load per row: as many shared loads per FMA as the k-major
//     layout's. Its chunks are XOR-swizzled (rk_index) so the 8 threads of a 16-byte load phase,
//     which read rows 4 apart, hit 8 different bank groups;
//   - an operand contiguous along its rows (A^T, or B in dY W) stays k-major ("kr"), as now.
// Each element of C is still one thread's sum over k = 0, 1, ... in order: the same bits as
// gemm_kernel (the sweep checks).
//
// Measured (H200, benchmarks/results/2026-11-26-h200-7cb7af5-gemm-sweep): the same bits on the GPU
// at every shape, but no faster. 128 x 64: 0.88-0.90x of production for X W^T (both operands
// row by row), 0.91-1.00x for dY W and dY^T X; 128 x 128 8 x 8 at one block per SM with K in 2:
// 1.08x for dY^T X, 0.97-0.98x for dY W, 0.88-0.89x for X W^T. ncu: issue slots as busy as
// production's (55-68%), cycles with no eligible warp the same (28%), and the FMA pipe less busy
// (38-44% against 43-52%): more instructions per FMA (the swizzled row reads' address arithmetic
// under a 128-register cap), while the latency cp.async hides was not what held production back.
// Kept, with its emulator check, as the harness for the next try: fewer non-FMA instructions per
// FMA (precomputed swizzled offsets, 8 x 8 per thread at the one-wave shapes).
#pragma once
#include <cstdint>

#include "ops/gemm_kernels.cuh"

namespace fastnn::cuda::gemm_detail {

template <class Base, int STAGES>
struct AsyncConfig : Base {
  static constexpr int kStages = STAGES;
  static_assert(Base::BK == 16, "rk_index swizzles the 4 chunks of a 16-deep row");
  static_assert(sizeof(typename Base::Elem) == 4, "float32 only");
};

// 16 bytes from global to shared memory, of which the first src_bytes (0, 4, 8, 12 or 16) are read
// and the rest zero-filled; the source must be 16-byte aligned (and valid even when src_bytes is 0).
#if defined(FASTNN_CUDA_EMULATED)
// The CPU emulation copies at once, a valid order of the asynchronous copy: commit and wait then
// have nothing left to order, and its barrier checks still see which thread wrote which buffer when
// (tests/emu/gemm_async_check.cu).
__device__ __forceinline__ void cp_async16(float* smem, const float* gmem, int src_bytes) {
  for (int e = 0; e < 4; ++e) smem[e] = 4 * e < src_bytes ? gmem[e] : 0.0f;
}
__device__ __forceinline__ void cp_async_commit() {}
template <int N>
__device__ __forceinline__ void cp_async_wait() {}
#else
__device__ __forceinline__ void cp_async16(float* smem, const float* gmem, int src_bytes) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// One operand's R x BK slab in shared memory (R * 16 floats). CONTIG_K: X(r, k) = x[r * ld + k],
// stored "rk"; else X(r, k) = x[k * ld + r], stored "kr" (S[k * R + r]).
template <class Cfg, int R, bool CONTIG_K>
struct AsyncSlab {
  static constexpr int BK = Cfg::BK;
  static constexpr int kChunks = R * BK / 4;
  static constexpr int kPerThread = kChunks / Cfg::kThreads;
  static_assert(kChunks % Cfg::kThreads == 0, "every thread copies the same number of chunks");

  // Float index of chunk q (k = 4q .. 4q + 3) of row r: two rows per 128-byte line, the line's 8
  // chunks permuted by XOR with (r / 4) % 8.
  __device__ __forceinline__ static int rk_index(int r, int q) {
    const int c = (((r & 1) << 2) | q) ^ ((r >> 2) & 7);
    return (r >> 1) * 32 + c * 4;
  }

  // Rows r0 + [0, R) and k0 + [0, BK) of X into S; rows >= r_lim or k >= k_lim as zeros. The
  // operand's base and leading dimension allow 16-byte loads (the caller checks).
  __device__ __forceinline__ static void load(float* S, const float* x, int64_t ld, int64_t r0, int64_t k0,
                                              int64_t r_lim, int64_t k_lim) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int v = static_cast<int>(threadIdx.x) + i * Cfg::kThreads;
      if constexpr (CONTIG_K) {
        const int r = v / (BK / 4), q = v % (BK / 4);
        const int64_t gr = r0 + r, gk = k0 + q * 4;
        const int64_t left = gr < r_lim ? k_lim - gk : 0;
        const int bytes = left <= 0 ? 0 : left >= 4 ? 16 : static_cast<int>(left) * 4;
        cp_async16(S + rk_index(r, q), bytes ? x + gr * ld + gk : x, bytes);
      } else {
        const int k = v / (R / 4), rc = v % (R / 4);
        const int64_t gk = k0 + k, gr = r0 + rc * 4;
        const int64_t left = gk < k_lim ? r_lim - gr : 0;
        const int bytes = left <= 0 ? 0 : left >= 4 ? 16 : static_cast<int>(left) * 4;
        cp_async16(S + k * R + rc * 4, bytes ? x + gk * ld + gr : x, bytes);
      }
    }
  }

  // The thread's NR rows (rows g * 4 * THREADS_R + t * 4 + i) at k = 4 kq .. 4 kq + 3:
  // out[g * 4 + i][kk].
  template <int NR, int THREADS_R>
  __device__ __forceinline__ static void fetch(const float* S, int t, int kq, float (&out)[NR][4]) {
#pragma unroll
    for (int g = 0; g < NR / 4; ++g) {
      const int rbase = g * 4 * THREADS_R + t * 4;
      if constexpr (CONTIG_K) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float4 v = *reinterpret_cast<const float4*>(S + rk_index(rbase + i, kq));
          out[g * 4 + i][0] = v.x, out[g * 4 + i][1] = v.y, out[g * 4 + i][2] = v.z, out[g * 4 + i][3] = v.w;
        }
      } else {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const float4 v = *reinterpret_cast<const float4*>(S + (kq * 4 + kk) * R + rbase);
          out[g * 4 + 0][kk] = v.x, out[g * 4 + 1][kk] = v.y, out[g * 4 + 2][kk] = v.z, out[g * 4 + 3][kk] = v.w;
        }
      }
    }
  }
};

// gemm_kernel's contract (grid, split K, epilogue) for float operands that allow 16-byte loads.
template <class Cfg, bool TRANS_A, bool TRANS_B, bool SPLIT_K>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    gemm_async_kernel(GemmProblem<float> p, bool c_vec, int64_t k_chunk, float* __restrict__ partials) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN, S = Cfg::kStages;
  __shared__ __align__(128) float As[S][BM * BK];
  __shared__ __align__(128) float Bs[S][BN * BK];
  using ASlab = AsyncSlab<Cfg, BM, !TRANS_A>;
  using BSlab = AsyncSlab<Cfg, BN, TRANS_B>;

  const int tx = static_cast<int>(threadIdx.x) % Cfg::kThreadsX;
  const int ty = static_cast<int>(threadIdx.x) / Cfg::kThreadsX;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int64_t k_begin = SPLIT_K ? static_cast<int64_t>(blockIdx.z) * k_chunk : 0;
  const int64_t k_end = SPLIT_K && k_begin + k_chunk < p.k ? k_begin + k_chunk : p.k;
  const int64_t slabs = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;

  auto load_slab = [&](int64_t s) {
    const int buf = static_cast<int>(s % S);
    ASlab::load(As[buf], p.a, p.lda, m0, k_begin + s * BK, p.m, k_end);
    BSlab::load(Bs[buf], p.b, p.ldb, n0, k_begin + s * BK, p.n, k_end);
  };

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

  // one commit group per slab (empty past the last), so wait_group<S - 2> means "slab s is in"
#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    if (s < slabs) load_slab(s);
    cp_async_commit();
  }
  for (int64_t s = 0; s < slabs; ++s) {
    cp_async_wait<S - 2>();
    __syncthreads();  // slab s is everyone's, and everyone is done with slab s - 1's buffer
    if (s + S - 1 < slabs) load_slab(s + S - 1);
    cp_async_commit();
    const float* a_s = As[s % S];
    const float* b_s = Bs[s % S];
#pragma unroll
    for (int kq = 0; kq < BK / 4; ++kq) {
      float a[TM][4], b[TN][4];
      ASlab::template fetch<TM, Cfg::kThreadsY>(a_s, ty, kq, a);
      BSlab::template fetch<TN, Cfg::kThreadsX>(b_s, tx, kq, b);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] += a[i][kk] * b[j][kk];
    }
  }
  cp_async_wait<0>();  // no copy may land in shared memory after the block has exited

  store_tile<Cfg, SPLIT_K>(p, acc, m0, n0, tx, ty, c_vec, partials);
}

}  // namespace fastnn::cuda::gemm_detail
