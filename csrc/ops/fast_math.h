// Branch-free exp, log1p, tanh and sigmoid for the CPU loops: plain arithmetic and selects, so a
// loop over them vectorises (16 float lanes under AVX-512), where a libm call per element keeps it
// scalar at ~40 cycles an element (a tanh layer of 128 x 1024 took 1.2 ms, more than its GEMM; BCE
// was 10x slower than torch). IEEE special values are kept: NaN in, NaN out; +-inf saturate.
// Accuracy: a few ulp (tests compare with float64 torch): a minimax cubic for float exp (after
// Cephes' range reduction) and Cephes' Pade form for double, Cephes' series for log1p, a rational
// minimax fit for float tanh and Cephes' two forms for double. Used by the activations and the
// losses, both dtypes (float64 sigmoid and tanh took libm's exp and tanh until 2026-11-29: 7.7x
// and 4.4x slower than torch, which vectorises them). They rely
// on -fno-trapping-math (CMakeLists.txt): with GCC's default every FP operation may trap, so a
// select such as `underflow ? 0 : p * 2^n` is sunk into branches and the loops stay scalar.
// CUDA device code keeps CUDA's own tanhf / expf (activation.h picks).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/cpu_features.h"

namespace fastnn::fastmath {

FASTNN_FORCE_INLINE uint32_t bits_of(float x) { uint32_t b; std::memcpy(&b, &x, 4); return b; }
FASTNN_FORCE_INLINE uint64_t bits_of(double x) { uint64_t b; std::memcpy(&b, &x, 8); return b; }
FASTNN_FORCE_INLINE float float_of(uint32_t b) { float x; std::memcpy(&x, &b, 4); return x; }
FASTNN_FORCE_INLINE double double_of(uint64_t b) { double x; std::memcpy(&x, &b, 8); return x; }

// exp(x) for x <= 0 (all that sigmoid and softmax need): x = n ln2 + r, |r| <= ln2 / 2, exp(r) =
// 1 + r + r^2 P(r), 2^n built in the exponent bits as a normal factor and a constant so results
// down to the subnormal range come out right. Below -104 the result rounds to 0. P is a cubic,
// fitted for minimax relative error (Lawson's weighted least squares). The loops over it are bound
// by the FMA pipes, and Cephes' quintic P cost 2 FMAs more for 1.01 ulp instead of 2.27: one Zen 3
// core, AVX2, in L1, 0.345 -> 0.284 ns an element. The 2.27 ulp is the worst over every float in
// [-104, 0] with a normal result, against float64 exp (the fit alone: 1.05e-7 relative).
FASTNN_FORCE_INLINE float exp_nonpositive(float x) {
  const float xc = x < -104.0f ? -104.0f : x;  // NaN passes through the comparison unchanged
  // round(x / ln2) by the 1.5 * 2^23 trick: the integer lands in the low mantissa bits
  const float shifted = xc * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  const int32_t ni = static_cast<int32_t>(bits_of(shifted) - 0x4B400000u);  // in [-150, 0]
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 8.312527038728442e-3f;
  p = p * r + 4.18901165776813e-2f;
  p = p * r + 1.6667114452492024e-1f;
  p = p * r + 4.999923175983087e-1f;
  const float er = p * (r * r) + r + 1.0f;
  // 2^n = 2^(n + 64) * 2^-64 with 2^(n + 64) >= 2^-86 normal: er * 2^(n + 64) is exact, and a
  // subnormal result rounds once, in the last product
  const float y = er * float_of(static_cast<uint32_t>(ni + 64 + 127) << 23) * 5.42101086242752217e-20f;
  return x < -104.0f ? 0.0f : y;
}

// exp(x) for x <= 0 in double, in parts: Cephes' range reduction (as float's) and Pade form,
// exp(x) = (q + px) / (q - px) * two_n * 2^-1000, with px = r P(r^2), q = Q(r^2) and 2^n built as
// a normal factor two_n = 2^(n + 1000) times 2^-1000, so that results in the subnormal range (x down
// to -745.13) round once, in the last product; below that they round to 0.
struct ExpParts {
  double px, q, two_n;
};
constexpr double kTwoToMinus1000 = 9.332636185032189e-302;
FASTNN_FORCE_INLINE ExpParts exp_parts(double x) {
  const double xc = x < -746.0 ? -746.0 : x;  // NaN passes through the comparison unchanged
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double k = xc * 1.4426950408889634074 + shifter;
  const double n = k - shifter;
  double r = xc - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  const double rr = r * r;
  double px = 1.26177193074810590878e-4;
  px = px * rr + 3.02994407707441961300e-2;
  px = px * rr + 9.99999999999999999910e-1;
  px = px * r;
  double q = 3.00198505138664455042e-6;
  q = q * rr + 2.52448340349684104192e-3;
  q = q * rr + 2.27265548208155028766e-1;
  q = q * rr + 2.00000000000000000009e0;
  return {px, q, double_of((bits_of(k) - bits_of(shifter) + 1000u + 1023u) << 52)};  // n in [-1076, 0]
}

// exp(x) for x <= 0 in double, within 2 ulp: 1 + 2 px / (q - px), Cephes' more accurate spelling
// of the quotient.
FASTNN_FORCE_INLINE double exp_nonpositive(double x) {
  const ExpParts e = exp_parts(x);
  return (1.0 + 2.0 * (e.px / (e.q - e.px))) * e.two_n * kTwoToMinus1000;
}

// log1p(u) for u in [0, 1] (u = exp(-|x|) in BCE), within 3 ulp: log(1 + u) = 2 atanh(s) with
// s = u / (2 + u), or log 2 + 2 atanh(s) with s = (u - 1) / (u + 3) once 1 + u > sqrt 2, so that
// |s| <= 0.1716 and the odd series of atanh converges fast. s comes from u directly, never from
// 1 + u, so small u keep their full precision.
template <class T>
FASTNN_FORCE_INLINE T log1p_unit(T u);

template <>
FASTNN_FORCE_INLINE float log1p_unit(float u) {
  const bool high = u > 0.41421356f;
  const float u_minus_1 = u - 1.0f, u_plus_3 = u + 3.0f, u_plus_2 = u + 2.0f;
  const float s = (high ? u_minus_1 : u) / (high ? u_plus_3 : u_plus_2);
  const float z = s * s;
  // atanh(s) / s = sum z^k / (2k + 1); the first omitted term is z^5 / 11 < 2e-9
  float p = 1.0f / 9;
  p = p * z + 1.0f / 7;
  p = p * z + 1.0f / 5;
  p = p * z + 1.0f / 3;
  p = p * z + 1.0f;
  return (high ? 0.693147180559945309f : 0.0f) + 2.0f * s * p;
}

template <>
FASTNN_FORCE_INLINE double log1p_unit(double u) {
  const bool high = u > 0.41421356237309505;
  const double u_minus_1 = u - 1.0, u_plus_3 = u + 3.0, u_plus_2 = u + 2.0;
  const double s = (high ? u_minus_1 : u) / (high ? u_plus_3 : u_plus_2);
  const double z = s * s;
  // the first omitted term is z^10 / 21 < 3e-17
  double p = 1.0 / 19;
  p = p * z + 1.0 / 17;
  p = p * z + 1.0 / 15;
  p = p * z + 1.0 / 13;
  p = p * z + 1.0 / 11;
  p = p * z + 1.0 / 9;
  p = p * z + 1.0 / 7;
  p = p * z + 1.0 / 5;
  p = p * z + 1.0 / 3;
  p = p * z + 1.0;
  return (high ? 0.69314718055994530942 : 0.0) + 2.0 * s * p;
}

// 1 / (1 + e^-x) without overflow: e = exp(-|x|) <= 1, and the result is 1 / (1 + e) for x >= 0,
// e / (1 + e) below. -|x| is x with its sign bit set, not `x < 0 ? -x : x`, which GCC vectorises
// as a compare, a negation and a blend; the numerator is chosen before the one division, where
// e * (1 / (1 + e)) took a multiply, a blend and a second rounding. One Zen 3 core, AVX2, in L1:
// 0.585 -> 0.437 ns an element, worst error 3.62 -> 3.40 ulp (every 0.00037 in [-120, 120] with a
// normal result, against float64). NaN: e is NaN, and so is the quotient.
FASTNN_FORCE_INLINE float sigmoid(float x) {
  const float e = exp_nonpositive(float_of(bits_of(x) | 0x80000000u));
  return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}

// tanh as one rational function, p(x) / q(x) with p odd of degree 13 and q even of degree 6, on x
// clamped to +-7.905 (where it reaches 1 exactly in float and tanh rounds to +-1): the coefficients
// of the minimax fit Eigen uses for float tanh. One division and 11 multiply-adds, where Cephes'
// polynomial below 0.625 and (1 - e) / (1 + e) above it evaluated both sides and an exp for every
// element: one core of a Zen 4, AVX-512, 0.585 -> 0.315 ns an element (in L2). Over every float in
// [1e-30, 12], at most 4.9 ulp from float64 tanh (2.9e-7 relative; Cephes' form: 1.5 ulp). Below
// |x| = 4e-4 it returns x, which tanh rounds to. NaN stays NaN (the clamp's comparisons fail).
FASTNN_FORCE_INLINE float tanh(float x) {
  constexpr float kClamp = 7.90531110763549805f;
  const float xc = x > kClamp ? kClamp : (x < -kClamp ? -kClamp : x);
  const float z = xc * xc;
  float p = -2.76076847742355e-16f;
  p = p * z + 2.00018790482477e-13f;
  p = p * z - 8.60467152213735e-11f;
  p = p * z + 5.12229709037114e-08f;
  p = p * z + 1.48572235717979e-05f;
  p = p * z + 6.37261928875436e-04f;
  p = p * z + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * z + 1.18534705686654e-04f;
  q = q * z + 2.26843463243900e-03f;
  q = q * z + 4.89352518554385e-03f;
  return std::fabs(x) < 4e-4f ? x : p * xc / q;
}

// sigmoid in double, vectorisable (libm's exp per element kept the float64 loop scalar, 7.7x
// slower than torch), with one division: exp(-|x|) = a / b, so the result is b / (b + a) for
// x >= 0 and a / (b + a) below (a carries 2^n). Within 3 ulp.
FASTNN_FORCE_INLINE double sigmoid(double x) {
  const ExpParts e = exp_parts(double_of(bits_of(x) | 0x8000000000000000u));
  const double a = (e.q + e.px) * e.two_n * kTwoToMinus1000, b = e.q - e.px;
  return (x >= 0.0 ? b : a) / (b + a);  // NaN: a and b are NaN
}

// tanh in double, vectorisable, within 2 ulp: Cephes' two forms, both evaluated and the quotient
// taken once. |x| < 0.625: x + x^3 P(x^2) / Q(x^2); above: (1 - e) / (1 + e) with e = exp(-2|x|)
// <= 0.287, so 1 - e does not cancel; far out e rounds to 0, and the result to +-1. (Folding exp's
// own quotient in, as sigmoid does, saved 14% but lost most of an ulp: 2.48 against 1.66.)
FASTNN_FORCE_INLINE double tanh(double x) {
  const double ax = std::fabs(x);
  const double z = x * x;
  double p = -9.64399179425052238628e-1;
  p = p * z - 9.92877231001918586564e1;
  p = p * z - 1.61468768441708447952e3;
  double q = z + 1.12811678491632931402e2;
  q = q * z + 2.23548839060100448583e3;
  q = q * z + 4.84406305325125486048e3;
  const double e = exp_nonpositive(-2.0 * ax);
  const bool small = ax < 0.625;
  // + 0.0: at x = -0, p z is -0, and x + x * (-0 / q) would be +0
  const double ratio = (small ? p * z + 0.0 : 1.0 - e) / (small ? q : 1.0 + e);
  const double large = x < 0.0 ? -ratio : ratio;
  return small ? x + x * ratio : large;  // NaN: small is false, and ratio is NaN
}

// The largest of x[0], ..., x[n - 1], NaN passed over (-inf for none): softmax's and the
// cross-entropy's row max. The ternary, not std::max, is what keeps the reduction a vector max.
template <class T>
FASTNN_FORCE_INLINE T max_of(const T* x, int64_t n) {
  T m = -INFINITY;
  if (n < 16) {  // a vector reduction's set-up and tail would cost more (softmax of 4096 x 10: 1.6x)
    for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
  }
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// x[0] + ... + x[n - 1]: a row sum of softmax's and the cross-entropy's few-class tiles. One
// scalar accumulator made a chain of n dependent adds, 3-4 cycles each, which cost more than the
// row's exponentials; four chains below 16 values, a vector reduction from there.
template <class T>
FASTNN_FORCE_INLINE T sum_of(const T* x, int64_t n) {
  if (n < 16) {
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      s0 += x[i];
      s1 += x[i + 1];
      s2 += x[i + 2];
      s3 += x[i + 3];
    }
    for (; i < n; ++i) s0 += x[i];
    return (s0 + s1) + (s2 + s3);
  }
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

}  // namespace fastnn::fastmath
