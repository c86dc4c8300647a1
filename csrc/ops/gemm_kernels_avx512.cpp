// AVX-512 GEMM micro-kernels: a 6 x 64 float tile (6 x 32 for double) held in 24 zmm
// accumulators, the shape that measured best on Zen 4 (its 32 vector registers are what beats an
// 8-accumulator AVX2 kernel at equal FMA throughput). Compiled with target attributes so the
// rest of the build stays portable; chosen at run time by active_kernels().
#include "ops/gemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <array>
#include <utility>

#define FASTNN_AVX512_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))
#define FASTNN_AVX512_INLINE \
  inline __attribute__((always_inline, target("avx512f,avx512dq,avx512bw,avx512vl,fma")))

namespace fastnn::cpu::gemm_detail {
namespace {

template <class T>
struct Zmm;

template <>
struct Zmm<float> {
  using reg = __m512;
  using mask = __mmask16;
  static constexpr int W = 16;
  static FASTNN_AVX512_INLINE reg zero() { return _mm512_setzero_ps(); }
  static FASTNN_AVX512_INLINE reg set1(float x) { return _mm512_set1_ps(x); }
  static FASTNN_AVX512_INLINE reg load(const float* p) { return _mm512_loadu_ps(p); }
  static FASTNN_AVX512_INLINE reg load(mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static FASTNN_AVX512_INLINE void store(float* p, mask m, reg v) { _mm512_mask_storeu_ps(p, m, v); }
  static FASTNN_AVX512_INLINE reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static FASTNN_AVX512_INLINE reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static FASTNN_AVX512_INLINE reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static constexpr mask first(int n) { return static_cast<mask>((1u << n) - 1u); }  // n in 1..16
};

template <>
struct Zmm<double> {
  using reg = __m512d;
  using mask = __mmask8;
  static constexpr int W = 8;
  static FASTNN_AVX512_INLINE reg zero() { return _mm512_setzero_pd(); }
  static FASTNN_AVX512_INLINE reg set1(double x) { return _mm512_set1_pd(x); }
  static FASTNN_AVX512_INLINE reg load(const double* p) { return _mm512_loadu_pd(p); }
  static FASTNN_AVX512_INLINE reg load(mask m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static FASTNN_AVX512_INLINE void store(double* p, mask m, reg v) { _mm512_mask_storeu_pd(p, m, v); }
  static FASTNN_AVX512_INLINE reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static FASTNN_AVX512_INLINE reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
  static FASTNN_AVX512_INLINE reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static constexpr mask first(int n) { return static_cast<mask>((1u << n) - 1u); }  // n in 1..8
};

constexpr int kMR = 6;  // rows of the register tile
constexpr int kNV = 4;  // zmm registers per row: NR = 4 * W columns

// One R x (NV * W) tile (R <= 6, NV <= 4; the last vector masked to t.cols). A_ROWS: op(A) is read
// row-major (A(i, k) = a[i * a_rs + k]); otherwise k-major (A(i, k) = a[k * a_cs + i]).
template <class T, int R, int NV, bool A_ROWS>
FASTNN_AVX512_TARGET void micro_tile(const MicroTile<T>& t) {
  using Z = Zmm<T>;
  using reg = typename Z::reg;
  constexpr int W = Z::W;
  reg acc[R][NV];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = Z::zero();

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
  ks.pack_b = pack_b_generic<T>;
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
