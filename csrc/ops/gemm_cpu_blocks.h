// The loops and the scalar epilogue around the SIMD GEMM blocks, shared by the AVX-512 and AVX2
// kernel files; each passes its own blocks, compiled for its instruction set (a call per block:
// ~1% of a block's work). CPU-only: the CUDA GEMM includes gemm.h, not this.
#pragma once
#include <algorithm>
#include <cstdint>

#include "ops/gemm.h"

namespace fastnn::cpu::gemm_detail {

// A transposed B's block (pc, jc) into packed panels (KernelSet::pack_b's layout), W x W at a time:
// full(src, ldb, dst, dst_rs) for whole blocks, edge(src, ldb, dst, dst_rs, rows, kk) where the
// rows or K run out. Each group of W rows of B^T is walked along K before the next: W streams that
// the prefetchers follow (all nr rows at each k took a 512 x 1024 half-weight 90 us, this 67).
template <int W, class T, class Full, class Edge>
void pack_bt_blocks(const T* b, int64_t ldb, int64_t pc, int64_t jc, int64_t kc, int64_t nc, int nr,
                    T* dst, Full full, Edge edge) {
  for (int64_t jr = 0; jr < nc; jr += nr) {
    const int cols = static_cast<int>(std::min<int64_t>(nr, nc - jr));
    const int w = packed_width(cols, nr, W);
    T* panel = dst + (jr / nr) * kc * nr;
    const T* src = b + (jc + jr) * ldb + pc;
    for (int j0 = 0; j0 < w; j0 += W) {
      const int rows = std::min(W, cols - j0);
      const T* s = src + j0 * ldb;
      int64_t k0 = 0;
      if (rows == W)
        for (; k0 + W <= kc; k0 += W) full(s + k0, ldb, panel + k0 * w + j0, w);
      for (; k0 < kc; k0 += W)
        edge(s + k0, ldb, panel + k0 * w + j0, w, rows, static_cast<int>(std::min<int64_t>(W, kc - k0)));
    }
  }
}

// KernelSet::dot_nt from RA x RB dot-product blocks, blocks[(ra - 1) * RB + cb - 1](p, i0, j0)
// computing C[i0:i0+ra, j0:j0+cb]. Columns go in equal groups of at most RB (10 = 5 + 5, not
// 5 + 5 + 0 or 6 + 4), and B^T's rows in chunks of about 256 KB, which every row group of A then
// reads from L2 rather than all of B from further out.
template <int RA, int RB, class T, class Blocks>
void dot_nt_blocks(const GemmProblem<T>& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                   const Blocks& blocks) {
  constexpr int64_t kChunkBytes = 256 << 10;
  const int64_t width = n1 - n0, groups = (width + RB - 1) / RB, rb = (width + groups - 1) / groups;
  const int64_t chunk = std::max<int64_t>(1, kChunkBytes / (p.k * static_cast<int64_t>(sizeof(T))) / rb) * rb;
  for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
    const int64_t c1 = std::min(n1, c0 + chunk);
    for (int64_t i0 = m0; i0 < m1; i0 += RA) {
      const int ra = static_cast<int>(std::min<int64_t>(RA, m1 - i0));
      for (int64_t j0 = c0; j0 < c1; j0 += rb)
        blocks[(ra - 1) * RB + static_cast<int>(std::min<int64_t>(rb, c1 - j0)) - 1](p, i0, j0);
    }
  }
}

// The epilogue of a dot-product block (see dot_nt_blocks), from its reduced sums: C[i0 + r][j0 + j]
// = act(alpha * sums[r][j] + beta * C + bias[j0 + j]), in the micro-kernels' order.
template <class T, int RA, int RB>
inline void store_dot_block(const GemmProblem<T>& p, int64_t i0, int64_t j0, const T (&sums)[RA][RB]) {
  T* c = p.c + i0 * p.ldc + j0;
#pragma GCC unroll 4
  for (int r = 0; r < RA; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < RB; ++j) {
      T v = p.alpha * sums[r][j];
      if (p.beta != T(0)) v += p.beta * c[r * p.ldc + j];
      if (p.bias) v += p.bias[j0 + j];
      c[r * p.ldc + j] = v;
    }
  if (p.act != Activation::none) activate_tile(p.act, c, p.ldc, RA, RB);
}

}  // namespace fastnn::cpu::gemm_detail
