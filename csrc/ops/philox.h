// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator behind dropout. Output is a pure function of (counter, key), so a dropout
// mask depends only on (seed, offset, element index): the same on every device, thread count and
// chunking, and the backward pass regenerates it instead of storing it.
//
// Dropout's stream: key = (seed lo, seed hi); counter = (q lo, q hi, offset lo, offset hi) with
// q = i / 4 for element i, which takes output word i % 4. Element i is kept iff that word is
// >= threshold = round(p * 2^32): P(keep) = 1 - p to within 2^-33, p = 0 keeps everything and
// p = 1 (threshold 2^32, above every word) keeps nothing, exactly.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/macros.h"

namespace fastnn {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // multipliers of the two S-boxes
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // Weyl key increments: golden ratio, sqrt(3) - 1
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr uint64_t kDropoutThresholdNone = uint64_t{1} << 32;  // threshold that keeps nothing

// out[0..3] = Philox4x32-10(counter c0..c3, key k0, k1). Plain scalar code with no branches, so a
// loop of independent calls vectorises (the 32x32->64 products map to vpmuludq).
FASTNN_HD void philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                             uint32_t k1, uint32_t out[4]) {
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 10
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
#if defined(__CUDA_ARCH__)
    const uint32_t hi0 = __umulhi(kPhiloxM0, c0), lo0 = kPhiloxM0 * c0;
    const uint32_t hi1 = __umulhi(kPhiloxM1, c2), lo1 = kPhiloxM1 * c2;
#else
    const uint64_t p0 = uint64_t{kPhiloxM0} * c0, p1 = uint64_t{kPhiloxM1} * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
#endif
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// The four mask words of elements 4q .. 4q+3 of dropout call (seed, offset).
FASTNN_HD void dropout_words(uint64_t seed, uint64_t offset, uint64_t q, uint32_t out[4]) {
  philox4x32_10(static_cast<uint32_t>(q), static_cast<uint32_t>(q >> 32),
                static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), out);
}

// round(p * 2^32) for p in [0, 1]; the product is exact (a power-of-two scaling), so the only
// rounding is to the nearest integer. Values up to 2^32 inclusive.
FASTNN_HD uint64_t dropout_threshold(double p) {
  return static_cast<uint64_t>(std::floor(p * 4294967296.0 + 0.5));
}

FASTNN_HD bool dropout_keep(uint32_t word, uint64_t threshold) { return word >= threshold; }

// Whether element i of dropout call (seed, offset) is kept: the scalar definition that the block
// kernels must reproduce bit for bit.
FASTNN_HD bool dropout_keep_element(uint64_t seed, uint64_t offset, uint64_t threshold, uint64_t i) {
  uint32_t w[4];
  dropout_words(seed, offset, i >> 2, w);
  return dropout_keep(w[i & 3], threshold);
}

// Inverted-dropout scale 1 / (1 - p); 0 when p = 1, where nothing is kept, so that the product
// kept * scale never forms 0 * inf.
FASTNN_HD double dropout_scale(double p) { return p < 1.0 ? 1.0 / (1.0 - p) : 0.0; }

}  // namespace fastnn
