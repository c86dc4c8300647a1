// AVX2 + FMA GEMM micro-kernels: a 6 x 16 float tile (6 x 8 for double) in 12 ymm accumulators,
// which with two B vectors and one broadcast fills the 16 ymm registers. Same structure as the
// AVX-512 kernel (gemm_kernels_avx512.cpp); edges use vmaskmov loads and stores.
#include "ops/gemm.h"
#include "ops/gemm_cpu_blocks.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "core/cpu_features.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <utility>


namespace fastnn::cpu::gemm_detail {
namespace {

// Lane masks for vmaskmov: entries [8 - n, 16 - n) hold n leading all-ones lanes.
alignas(64) constexpr int32_t kMask32[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
alignas(64) constexpr int64_t kMask64[8] = {-1, -1, -1, -1, 0, 0, 0, 0};

template <class T>
struct Ymm;

template <>
struct Ymm<float> {
  using reg = __m256;
  using mask = __m256i;
  static constexpr int W = 8;
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg zero() { return _mm256_setzero_ps(); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg set1(float x) { return _mm256_set1_ps(x); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg load(const float* p) { return _mm256_loadu_ps(p); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg load(mask m, const float* p) { return _mm256_maskload_ps(p, m); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 void store(float* p, mask m, reg v) { _mm256_maskstore_ps(p, m, v); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 float reduce(reg v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
  }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 mask first(int n) {  // n in 1..8
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask32 + 8 - n));
  }
};

template <>
struct Ymm<double> {
  using reg = __m256d;
  using mask = __m256i;
  static constexpr int W = 4;
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg zero() { return _mm256_setzero_pd(); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg set1(double x) { return _mm256_set1_pd(x); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg load(const double* p) { return _mm256_loadu_pd(p); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg load(mask m, const double* p) { return _mm256_maskload_pd(p, m); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 void store(double* p, mask m, reg v) { _mm256_maskstore_pd(p, m, v); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 void store(double* p, reg v) { _mm256_storeu_pd(p, v); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 double reduce(reg v) {
    const __m128d x = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(x, _mm_unpackhi_pd(x, x)));
  }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 mask first(int n) {  // n in 1..4
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask64 + 4 - n));
  }
};

constexpr int kMR = 6;  // rows of the register tile
constexpr int kNV = 2;  // ymm registers per row: NR = 2 * W columns

// One R x (NV * W) tile; see micro_tile in gemm_kernels_avx512.cpp for the layouts. FULL: all
// NV * W columns are there, so B's last vector is a plain load (vmaskmovps in the k loop held a
// full-width tile to 91% of the FMA peak, 99% without it, on Zen 5).
template <class T, int R, int NV, bool A_ROWS, bool FULL>
FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 void micro_tile_body(const MicroTile<T>& t) {
  using Y = Ymm<T>;
  using reg = typename Y::reg;
  constexpr int W = Y::W;
  reg acc[R][NV];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = Y::zero();

  // C's lines fetched during the k loop when the epilogue will read them (beta != 0): see
  // micro_tile in gemm_kernels_avx512.cpp. A row of the tile is 64 bytes: its first and last
  // element cover it, aligned or not.
  if (t.beta != T(0)) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(t.c + i * t.ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(t.c + i * t.ldc + NV * W - 1), _MM_HINT_T0);
    }
  }
  const typename Y::mask tail = Y::first(t.cols - (NV - 1) * W);
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
      for (int v = 0; v < NV - 1; ++v) bv[v] = Y::load(b + v * W);
      bv[NV - 1] = FULL ? Y::load(b + (NV - 1) * W) : Y::load(tail, b + (NV - 1) * W);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const reg ai = Y::set1(ar[i][k]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = Y::fmadd(ai, bv[v], acc[i][v]);
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
      for (int v = 0; v < NV - 1; ++v) bv[v] = Y::load(b + v * W);
      bv[NV - 1] = FULL ? Y::load(b + (NV - 1) * W) : Y::load(tail, b + (NV - 1) * W);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const reg ai = Y::set1(a[i]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = Y::fmadd(ai, bv[v], acc[i][v]);
      }
      a += a_cs;
      b += b_rs;
    }
  }

  const reg va = Y::set1(t.alpha), vb = Y::set1(t.beta);
  const bool read_c = t.beta != T(0);
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    T* c = t.c + i * t.ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      reg x = Y::mul(acc[i][v], va);
      if (FULL || v < NV - 1) {
        if (read_c) x = Y::fmadd(Y::load(c + v * W), vb, x);
        if (t.bias) x = Y::add(x, Y::load(t.bias + v * W));
        Y::store(c + v * W, x);
      } else {
        if (read_c) x = Y::fmadd(Y::load(tail, c + v * W), vb, x);
        if (t.bias) x = Y::add(x, Y::load(tail, t.bias + v * W));
        Y::store(c + v * W, tail, x);
      }
    }
  }
  if (t.act != Activation::none) activate_tile(t.act, t.c, t.ldc, R, t.cols);
}

template <class T, int R, int NV, bool A_ROWS>
FASTNN_TARGET_AVX2 void micro_tile(const MicroTile<T>& t) {
  if (t.cols == NV * Ymm<T>::W)
    micro_tile_body<T, R, NV, A_ROWS, true>(t);
  else
    micro_tile_body<T, R, NV, A_ROWS, false>(t);
}

template <class T, bool A_ROWS, int... I>
constexpr std::array<MicroKernel<T>, sizeof...(I)> make_tile_table(std::integer_sequence<int, I...>) {
  return {&micro_tile<T, I / kNV + 1, I % kNV + 1, A_ROWS>...};
}

template <class T, bool A_ROWS>
const std::array<MicroKernel<T>, kMR * kNV> kTiles =
    make_tile_table<T, A_ROWS>(std::make_integer_sequence<int, kMR * kNV>{});

// In-register transposes: r[i] holds row i of a W x W block; afterwards r[j] holds column j.
FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 void transpose(__m256 (&r)[8]) {
  __m256 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4h + c], 128-bit half L: column c + 4L of rows 4h .. 4h + 3
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xee);
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xee);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}

FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 void transpose(__m256d (&r)[4]) {
  const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
  r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
  r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
  r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

// The transposing B packer of gemm_kernels_avx512.cpp with 8 x 8 (4 x 4) blocks, in the same loops
// (pack_bt_blocks). The scalar packer it replaces took a sixth of a batch-128 forward GEMM's time.
template <class T, bool FULL>
FASTNN_FORCE_INLINE FASTNN_TARGET_AVX2 void pack_block(const T* src, int64_t ldb, T* dst, int64_t dst_rs,
                                                       int rows, int kk) {
  using Y = Ymm<T>;
  constexpr int W = Y::W;
  typename Y::reg r[W];
  const typename Y::mask kmask = Y::first(FULL ? W : kk);
#pragma GCC unroll 8
  for (int q = 0; q < W; ++q)
    r[q] = FULL ? Y::load(src + q * ldb) : q < rows ? Y::load(kmask, src + q * ldb) : Y::zero();
  transpose(r);
#pragma GCC unroll 8
  for (int q = 0; q < W; ++q)
    if (FULL || q < kk) Y::store(dst + q * dst_rs, r[q]);
}

template <class T>
FASTNN_TARGET_AVX2 void pack_block_full(const T* src, int64_t ldb, T* dst, int64_t dst_rs) {
  pack_block<T, true>(src, ldb, dst, dst_rs, Ymm<T>::W, Ymm<T>::W);
}

template <class T>
FASTNN_TARGET_AVX2 void pack_block_edge(const T* src, int64_t ldb, T* dst, int64_t dst_rs, int rows, int kk) {
  pack_block<T, false>(src, ldb, dst, dst_rs, rows, kk);
}

// B as stored (dY W), row k of the block into every panel, as pack_b_generic walks it: a 16-wide
// panel row is two vectors here, where the generic packer's memcpy per 64-byte row was a libc
// call each (65 K of them for a 1024 x 1024 weight: 7% of the batch-128 lecture step on Zen 3).
template <class T>
FASTNN_TARGET_AVX2 void pack_b_rows(const T* b, int64_t ldb, int64_t pc, int64_t jc, int64_t kc, int64_t nc,
                                    T* dst) {
  using Y = Ymm<T>;
  constexpr int W = Y::W, NR = kNV * W;
  const int64_t full_panels = nc / NR;
  const int tail_cols = static_cast<int>(nc - full_panels * NR);
  const int tail_w = packed_width(tail_cols, NR, W);
  for (int64_t k = 0; k < kc; ++k) {
    const T* src = b + (pc + k) * ldb + jc;
    T* row = dst + k * NR;
    for (int64_t p = 0; p < full_panels; ++p, src += NR, row += kc * NR)
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) Y::store(row + v * W, Y::load(src + v * W));
    if (tail_cols) {
      T* tail_row = dst + full_panels * kc * NR + k * tail_w;
      for (int v = 0; v * W < tail_w; ++v) {
        const int cols = std::min(W, tail_cols - v * W);
        Y::store(tail_row + v * W, cols == W ? Y::load(src + v * W) : Y::load(Y::first(cols), src + v * W));
      }
    }
  }
}

template <class T>
void pack_b(bool trans_b, const T* b, int64_t ldb, int64_t pc, int64_t jc, int64_t kc, int64_t nc, int nr,
            int vec, T* dst) {
  if (!trans_b) return pack_b_rows(b, ldb, pc, jc, kc, nc, dst);
  pack_bt_blocks<Ymm<T>::W>(b, ldb, pc, jc, kc, nc, nr, dst, pack_block_full<T>, pack_block_edge<T>);
}

// X W^T as dot products: gemm_kernels_avx512.cpp's dot_block for 16 registers (an RA x RB block
// takes RA * RB accumulators, RB loaded vectors of B and one of A), in the same loops (dot_nt_blocks).
constexpr int kDotRA = 4, kDotRB = 3;

template <class T, int RA, int RB>
FASTNN_TARGET_AVX2 void dot_block(const GemmProblem<T>& p, int64_t i0, int64_t j0) {
  using Y = Ymm<T>;
  using reg = typename Y::reg;
  constexpr int W = Y::W;
  reg acc[RA][RB];
#pragma GCC unroll 4
  for (int r = 0; r < RA; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < RB; ++j) acc[r][j] = Y::zero();
  const T* a = p.a + i0 * p.lda;
  const T* b = p.b + j0 * p.ldb;
  const int64_t lda = p.lda, ldb = p.ldb;
  auto step = [&](int64_t k, auto full, typename Y::mask m) __attribute__((always_inline, target("avx2,fma"))) {
    reg bv[RB];
#pragma GCC unroll 4
    for (int j = 0; j < RB; ++j) bv[j] = full ? Y::load(b + j * ldb + k) : Y::load(m, b + j * ldb + k);
#pragma GCC unroll 4
    for (int r = 0; r < RA; ++r) {
      const reg av = full ? Y::load(a + r * lda + k) : Y::load(m, a + r * lda + k);
#pragma GCC unroll 4
      for (int j = 0; j < RB; ++j) acc[r][j] = Y::fmadd(av, bv[j], acc[r][j]);
    }
  };
  int64_t k = 0;
  for (; k + W <= p.k; k += W) step(k, std::true_type{}, typename Y::mask{});
  if (k < p.k) step(k, std::false_type{}, Y::first(static_cast<int>(p.k - k)));

  T sums[RA][RB];
#pragma GCC unroll 4
  for (int r = 0; r < RA; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < RB; ++j) sums[r][j] = Y::reduce(acc[r][j]);
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

template <class T>
void micro_entry(const MicroTile<T>& t) {
  const int nv = (t.cols + Ymm<T>::W - 1) / Ymm<T>::W;
  const int idx = (t.rows - 1) * kNV + nv - 1;
  if (t.a_rs == 1)
    kTiles<T, false>[idx](t);
  else
    kTiles<T, true>[idx](t);
}

}  // namespace

template <class T>
KernelSet<T> kernels_avx2() {
  KernelSet<T> ks;
  ks.name = "avx2";
  ks.mr = kMR;
  ks.nr = kNV * Ymm<T>::W;
  ks.vec = Ymm<T>::W;
  ks.micro = micro_entry<T>;
  ks.pack_b = pack_b<T>;
  ks.dot_nt = dot_nt<T>;
  ks.transpose_block = pack_block_full<T>;
  ks.transpose_a_first = true;
  return ks;
}

template KernelSet<float> kernels_avx2<float>();
template KernelSet<double> kernels_avx2<double>();

}  // namespace fastnn::cpu::gemm_detail

#else  // not x86: no AVX2 variant

namespace fastnn::cpu::gemm_detail {
template <class T>
KernelSet<T> kernels_avx2() {
  return kernels_scalar<T>();
}
template KernelSet<float> kernels_avx2<float>();
template KernelSet<double> kernels_avx2<double>();
}  // namespace fastnn::cpu::gemm_detail

#endif
