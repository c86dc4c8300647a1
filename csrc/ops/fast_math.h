// Branch-free float32 exp, tanh and sigmoid for the CPU loops. std::tanh / std::exp are library
// calls the compiler cannot vectorise (without -ffast-math), about 40 cycles an element: a tanh
// layer of 128 x 1024 took 1.2 ms, more than its GEMM. These are plain arithmetic and selects, so
// a loop over them vectorises (16 lanes under AVX-512), and they keep IEEE special values: NaN in,
// NaN out; +-inf saturate. Accuracy: the Cephes single-precision polynomials, a few ulp
// (tests compare with torch to 1e-5 relative in float32). float64 keeps std::.
// CUDA device code keeps CUDA's own tanhf / expf (activation.h picks).
#pragma once
#include <cstdint>
#include <cstring>

namespace fastnn::fastmath {

inline __attribute__((always_inline)) float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline __attribute__((always_inline)) uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// exp(x) for x <= 0 (all that tanh, sigmoid and softmax need): x = n ln2 + r, |r| <= ln2 / 2,
// exp(r) by Cephes' degree-6 polynomial, 2^n built in the exponent bits as two normal factors so
// results down to the subnormal range come out right. Below -104 the result rounds to 0.
inline __attribute__((always_inline)) float exp_nonpositive(float x) {
  const float xc = x < -104.0f ? -104.0f : x;  // NaN passes through the comparison unchanged
  // round(x / ln2) by the 1.5 * 2^23 trick: the integer lands in the low mantissa bits
  const float shifted = xc * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  const int32_t ni = static_cast<int32_t>(float_to_bits(shifted) - 0x4B400000u);  // in [-150, 0]
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * (r * r) + r + 1.0f;
  const int32_t half = ni / 2;  // 2^n = 2^half * 2^(n - half), both at least 2^-75
  const float scale_a = bits_to_float(static_cast<uint32_t>(half + 127) << 23);
  const float scale_b = bits_to_float(static_cast<uint32_t>(ni - half + 127) << 23);
  const float y = er * scale_a * scale_b;
  return x < -104.0f ? 0.0f : y;
}

// 1 / (1 + e^-x) without overflow: e = exp(-|x|) <= 1, and for x < 0 the result is e / (1 + e).
inline __attribute__((always_inline)) float sigmoid(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float e = exp_nonpositive(-ax);
  const float s = 1.0f / (1.0f + e);
  return x >= 0.0f ? s : e * s;  // NaN: s is NaN, and so is e * s
}

// Cephes tanhf: an odd polynomial below 0.625, where 1 - 2 / (e^2x + 1) would cancel; above it,
// written with e = exp(-2|x|) <= 1: tanh |x| = (1 - e) / (1 + e).
inline __attribute__((always_inline)) float tanh(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float e = exp_nonpositive(-2.0f * ax);
  const float large_abs = (1.0f - e) / (1.0f + e);
  const float large = x < 0.0f ? -large_abs : large_abs;
  return ax < 0.625f ? small : large;  // NaN: ax < 0.625 is false and large is NaN
}

}  // namespace fastnn::fastmath
