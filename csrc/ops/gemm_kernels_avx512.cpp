// AVX-512 GEMM micro-kernels: a 6 x 64 float tile (6 x 32 for double) held in 24 zmm
// accumulators, the shape that measured best on Zen 4 (its 32 vector registers are what beats an
// 8-accumulator AVX2 kernel at equal FMA throughput). Compiled with target attributes so the
// rest of the build stays portable; chosen at run time by active_kernels().
#include "ops/gemm.h"
#include "ops/gemm_cpu_blocks.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "core/cpu_features.h"
#include "core/simd_avx512.h"

#include <algorithm>
#include <array>
#include <utility>


namespace fastnn::cpu::gemm_detail {
namespace {

using simd::Zmm;

constexpr int kMR = 6;  // rows of the register tile
constexpr int kNV = 4;  // zmm registers per row: NR = 4 * W columns

// One R x (NV * W) tile (R <= 6, NV <= 4; the last vector masked to t.cols). A_ROWS: op(A) is read
// row-major (A(i, k) = a[i * a_rs + k]); otherwise k-major (A(i, k) = a[k * a_cs + i]).
template <class T, int R, int NV, bool A_ROWS>
FASTNN_TARGET_AVX512 void micro_tile(const MicroTile<T>& t) {
  using Z = Zmm<T>;
  using reg = typename Z::reg;
  constexpr int W = Z::W;
  reg acc[R][NV];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = Z::zero();

  // C is read in the epilogue when beta != 0 (a gradient accumulated into): fetched now, its lines
  // arrive during the k loop instead of stalling the epilogue. The weight gradient's GEMM at batch
  // 128 (K = 128: a short loop, a 4 MB C read once) made the lecture step 5-10% slower without.
  if (t.beta != T(0)) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) _mm_prefetch(reinterpret_cast<const char*>(t.c + i * t.ldc + v * W), _MM_HINT_T0);
  }
  // Masked loads of B's last vector: the columns past t.cols may lie past the end of B.
  const typename Z::mask tail = Z::first(t.cols - (NV - 1) * W);
  const T* b = t.b;
  const int64_t b_rs = t.b_rs, kc = t.kc;
  if constexpr (A_ROWS) {
    const T* ar[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) ar[i] = t.a + i * t.a_rs;
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; ++k) {
      reg bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV - 1; ++v) bv[v] = Z::load(b + v * W);
      bv[NV - 1] = Z::load(tail, b + (NV - 1) * W);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const reg ai = Z::set1(ar[i][k]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = Z::fmadd(ai, bv[v], acc[i][v]);
      }
      b += b_rs;
    }
  } else {
    const T* a = t.a;
    const int64_t a_cs = t.a_cs;
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; ++k) {
      reg bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV - 1; ++v) bv[v] = Z::load(b + v * W);
      bv[NV - 1] = Z::load(tail, b + (NV - 1) * W);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const reg ai = Z::set1(a[i]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = Z::fmadd(ai, bv[v], acc[i][v]);
      }
      a += a_cs;
      b += b_rs;
    }
  }

  // Epilogue, on the register tile: scale, add beta * C (C not read when beta == 0), add the
  // bias; then the activation on the stored tile while it is in L1.
  const reg va = Z::set1(t.alpha), vb = Z::set1(t.beta);
  const bool read_c = t.beta != T(0);
  reg bias[NV];
  if (t.bias) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bias[v] = Z::load(v == NV - 1 ? tail : Z::first(W), t.bias + v * W);
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    T* c = t.c + i * t.ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const typename Z::mask m = v == NV - 1 ? tail : Z::first(W);
      reg x = Z::mul(acc[i][v], va);
      if (read_c) x = Z::fmadd(Z::load(m, c + v * W), vb, x);
      if (t.bias) x = Z::add(x, bias[v]);
      Z::store(c + v * W, m, x);
    }
  }
  if (t.act != Activation::none) activate_tile(t.act, t.c, t.ldc, R, t.cols);
}

// In-register transposes: r[i] holds row i of a W x W block; afterwards r[j] holds column j.
FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void transpose(__m512 (&r)[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + c], 128-bit lane L: column 4L + c, rows 4i .. 4i + 3
  __m512 u[16];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    const __m512d t0 = _mm512_castps_pd(t[4 * i]), t1 = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d t2 = _mm512_castps_pd(t[4 * i + 2]), t3 = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
    const __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
    r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
    r[4 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
  }
}

FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void transpose(__m512d (&r)[8]) {
  // t[2i + c], 128-bit lane L: column 2L + c, rows 2i, 2i + 1
  __m512d t[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm512_unpacklo_pd(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_pd(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int c = 0; c < 2; ++c) {
    const __m512d v0 = _mm512_shuffle_f64x2(t[c], t[2 + c], 0x88);
    const __m512d v1 = _mm512_shuffle_f64x2(t[c], t[2 + c], 0xdd);
    const __m512d v2 = _mm512_shuffle_f64x2(t[4 + c], t[6 + c], 0x88);
    const __m512d v3 = _mm512_shuffle_f64x2(t[4 + c], t[6 + c], 0xdd);
    r[c] = _mm512_shuffle_f64x2(v0, v2, 0x88);
    r[4 + c] = _mm512_shuffle_f64x2(v0, v2, 0xdd);
    r[2 + c] = _mm512_shuffle_f64x2(v1, v3, 0x88);
    r[6 + c] = _mm512_shuffle_f64x2(v1, v3, 0xdd);
  }
}

// One W x W block of a transposed B: rows q of src (ldb apart) become rows q of dst (dst_rs
// apart), transposed. `rows` and `kk` below W read zeros / write fewer rows (masked loads: the
// block may end at the last element of B).
template <class T, bool FULL>
FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void pack_block(const T* src, int64_t ldb, T* dst, int64_t dst_rs,
                                                         int rows, int kk) {
  using Z = Zmm<T>;
  constexpr int W = Z::W;
  typename Z::reg r[W];
  const typename Z::mask kmask = Z::first(FULL ? W : kk);
#pragma GCC unroll 16
  for (int q = 0; q < W; ++q)
    r[q] = FULL ? Z::load(src + q * ldb) : q < rows ? Z::load(kmask, src + q * ldb) : Z::zero();
  transpose(r);
#pragma GCC unroll 16
  for (int q = 0; q < W; ++q)
    if (FULL || q < kk) Z::store(dst + q * dst_rs, Z::first(W), r[q]);
}

// B packer. A transposed B (the weight in X W^T) is packed W x W blocks at a time through an
// in-register transpose (the loops: pack_bt_blocks in gemm.h); the scalar packer's one element per
// cycle made packing a 1024 x 784 weight take a third as long as the GEMM itself. Whole blocks
// take a straight-line path (the general one's per-row conditions cost ~6%).
template <class T>
FASTNN_TARGET_AVX512 void pack_block_full(const T* src, int64_t ldb, T* dst, int64_t dst_rs) {
  pack_block<T, true>(src, ldb, dst, dst_rs, Zmm<T>::W, Zmm<T>::W);
}

template <class T>
FASTNN_TARGET_AVX512 void pack_block_edge(const T* src, int64_t ldb, T* dst, int64_t dst_rs, int rows, int kk) {
  pack_block<T, false>(src, ldb, dst, dst_rs, rows, kk);
}

template <class T>
void pack_b(bool trans_b, const T* b, int64_t ldb, int64_t pc, int64_t jc, int64_t kc, int64_t nc, int nr,
            int vec, T* dst) {
  if (!trans_b) return pack_b_generic(trans_b, b, ldb, pc, jc, kc, nc, nr, vec, dst);
  pack_bt_blocks<Zmm<T>::W>(b, ldb, pc, jc, kc, nc, nr, dst, pack_block_full<T>, pack_block_edge<T>);
}

// Narrow X W^T: an RA x RB block of C as RA * RB dot products of length K, each accumulated in
// one register across K and reduced once at the end.
constexpr int kDotRA = 4, kDotRB = 5;

template <class T, int RA, int RB>
FASTNN_TARGET_AVX512 void dot_block(const GemmProblem<T>& p, int64_t i0, int64_t j0) {
  using Z = Zmm<T>;
  using reg = typename Z::reg;
  constexpr int W = Z::W;
  reg acc[RA][RB];
#pragma GCC unroll 4
  for (int r = 0; r < RA; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < RB; ++j) acc[r][j] = Z::zero();
  const T* a = p.a + i0 * p.lda;
  const T* b = p.b + j0 * p.ldb;
  const int64_t lda = p.lda, ldb = p.ldb;
  auto step = [&](int64_t k, typename Z::mask m)
      __attribute__((always_inline, target("avx512f,avx512dq,avx512bw,avx512vl,fma"))) {
    reg bv[RB];
#pragma GCC unroll 8
    for (int j = 0; j < RB; ++j) bv[j] = Z::load(m, b + j * ldb + k);
#pragma GCC unroll 4
    for (int r = 0; r < RA; ++r) {
      const reg av = Z::load(m, a + r * lda + k);
#pragma GCC unroll 8
      for (int j = 0; j < RB; ++j) acc[r][j] = Z::fmadd(av, bv[j], acc[r][j]);
    }
  };
  int64_t k = 0;
  for (; k + W <= p.k; k += W) step(k, Z::first(W));
  if (k < p.k) step(k, Z::first(static_cast<int>(p.k - k)));

  T sums[RA][RB];
#pragma GCC unroll 4
  for (int r = 0; r < RA; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < RB; ++j) sums[r][j] = Z::reduce(acc[r][j]);
  store_dot_block(p, i0, j0, sums);
}

template <class T, int... I>
constexpr std::array<void (*)(const GemmProblem<T>&, int64_t, int64_t), sizeof...(I)> make_dot_table(
    std::integer_sequence<int, I...>) {
  return {&dot_block<T, I / kDotRB + 1, I % kDotRB + 1>...};
}

template <class T>
const auto kDotBlocks = make_dot_table<T>(std::make_integer_sequence<int, kDotRA * kDotRB>{});

template <class T>
void dot_nt(const GemmProblem<T>& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  dot_nt_blocks<kDotRA, kDotRB>(p, m0, m1, n0, n1, kDotBlocks<T>);
}

template <class T, bool A_ROWS, int... I>
constexpr std::array<MicroKernel<T>, sizeof...(I)> make_tile_table(std::integer_sequence<int, I...>) {
  return {&micro_tile<T, I / kNV + 1, I % kNV + 1, A_ROWS>...};
}

template <class T, bool A_ROWS>
const std::array<MicroKernel<T>, kMR * kNV> kTiles =
    make_tile_table<T, A_ROWS>(std::make_integer_sequence<int, kMR * kNV>{});

template <class T>
void micro_entry(const MicroTile<T>& t) {
  const int nv = (t.cols + Zmm<T>::W - 1) / Zmm<T>::W;
  const int idx = (t.rows - 1) * kNV + nv - 1;
  // a_rs == 1 is the k-major layout (packed, or A^T read in place); it also covers the
  // degenerate row-major case of a single row or lda == 1.
  if (t.a_rs == 1)
    kTiles<T, false>[idx](t);
  else
    kTiles<T, true>[idx](t);
}

}  // namespace

template <class T>
KernelSet<T> kernels_avx512() {
  KernelSet<T> ks;
  ks.name = "avx512";
  ks.mr = kMR;
  ks.nr = kNV * Zmm<T>::W;
  ks.vec = Zmm<T>::W;
  ks.micro = micro_entry<T>;
  ks.pack_b = pack_b<T>;
  ks.dot_nt = dot_nt<T>;
  ks.transpose_block = pack_block_full<T>;
  return ks;
}

template KernelSet<float> kernels_avx512<float>();
template KernelSet<double> kernels_avx512<double>();

}  // namespace fastnn::cpu::gemm_detail

#else  // not x86: no AVX-512 variant

namespace fastnn::cpu::gemm_detail {
template <class T>
KernelSet<T> kernels_avx512() {
  return kernels_scalar<T>();
}
template KernelSet<float> kernels_avx512<float>();
template KernelSet<double> kernels_avx512<double>();
}  // namespace fastnn::cpu::gemm_detail

#endif
