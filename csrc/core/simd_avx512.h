// One 512-bit vector of float or double, for the AVX-512 variants of the CPU kernels (the GEMM
// micro-kernels, BatchNorm's row passes): the same few operations, spelt once per type. Every
// function carries the AVX-512 target attribute, so the including file stays portable and calls
// them only from AVX-512 variants chosen at run time (cpu_isa()).
#pragma once
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "core/cpu_features.h"

namespace fastnn::simd {

template <class T>
struct Zmm;

template <>
struct Zmm<float> {
  using reg = __m512;
  using mask = __mmask16;
  static constexpr int W = 16;
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg zero() { return _mm512_setzero_ps(); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg set1(float x) { return _mm512_set1_ps(x); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg load(const float* p) { return _mm512_loadu_ps(p); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg load(mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void store(float* p, mask m, reg v) { _mm512_mask_storeu_ps(p, m, v); }
  // A whole 64-byte line written past the caches (no read for ownership); p 64-byte aligned.
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void stream(float* p, reg v) { _mm512_stream_ps(p, v); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  // where > 0 ? a * b : 0, lane by lane (a NaN `where` gives 0, as the scalar `where > 0` does)
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg mul_where_positive(reg where, reg a, reg b) {
    return _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(where, zero(), _CMP_GT_OQ), a, b);
  }
  static constexpr mask first(int n) { return static_cast<mask>((1u << n) - 1u); }  // n in 1..16
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 float reduce(reg v) { return _mm512_reduce_add_ps(v); }
};

template <>
struct Zmm<double> {
  using reg = __m512d;
  using mask = __mmask8;
  static constexpr int W = 8;
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg zero() { return _mm512_setzero_pd(); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg set1(double x) { return _mm512_set1_pd(x); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg load(const double* p) { return _mm512_loadu_pd(p); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg load(mask m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void store(double* p, mask m, reg v) { _mm512_mask_storeu_pd(p, m, v); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void stream(double* p, reg v) { _mm512_stream_pd(p, v); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg sub(reg a, reg b) { return _mm512_sub_pd(a, b); }
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 reg mul_where_positive(reg where, reg a, reg b) {
    return _mm512_maskz_mul_pd(_mm512_cmp_pd_mask(where, zero(), _CMP_GT_OQ), a, b);
  }
  static constexpr mask first(int n) { return static_cast<mask>((1u << n) - 1u); }  // n in 1..8
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 double reduce(reg v) { return _mm512_reduce_add_pd(v); }
};

}  // namespace fastnn::simd

#endif
