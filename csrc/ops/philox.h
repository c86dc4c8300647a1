// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator behind dropout. Output is a pure function of (counter, key), so a dropout
// mask depends only on (seed, offset, element index): the same on every device, thread count and
// chunking, and the backward pass regenerates it instead of storing it.
//
// Dropout's stream: key = (seed lo, seed hi); counter = (q lo, q hi, offset lo, offset hi). A call
// keeps each element with probability 1 - threshold / 2^16, threshold = round(p * 2^16), and draws
// for each element the fewest random bits that express that exactly: b = dropout_bits(threshold) in
// {1, 2, 4, 8, 16}, the smallest power of two with threshold a multiple of 2^(16 - b) (p = 0.5: one
// bit; 0.25 or 0.75: two; 0.1, 0.2 or 0.3: sixteen). Quad q = i / (128 / b) serves element i: its
// field e = i % (128 / b) is bits [b e, b e + b) of the call's four output words read as one
// little-endian 128-bit number (word b e / 32, bits b (e % (32 / b)) up), and element i is kept iff
// field * 2^(16 - b) >= threshold. So P(keep) = 1 - threshold / 2^16 whatever b is, 1 - p to
// within 2^-17; p = 0 keeps everything and p = 1 (threshold 2^16, above every draw) nothing.
// Drawing 16 bits rather than 32 halved the Philox work, which bounded the fused relu + dropout
// forward on AVX-512 (0.46 ns an element per core on Zen 4, 55% of the copy rate at 4096x4096);
// drawing b rather than 16 divides it by 16 / b again (FlashAttention's dropout takes 8 bits for
// every p, and with them P(keep) off by up to 2^-9).
// The scale stays torch's 1 / (1 - p), so with p' = threshold / 2^16 the drop probability actually
// used, E[y] = x (1 - p') / (1 - p): within 2^-17 / (1 - p) of x, relative.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/macros.h"

namespace fastnn {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // multipliers of the two S-boxes
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // Weyl key increments: golden ratio, sqrt(3) - 1
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kDropoutMaxBits = 16;                                  // random bits an element, at most
constexpr uint64_t kDropoutThresholdNone = uint64_t{1} << kDropoutMaxBits;  // threshold that keeps nothing
// Elements a quad serves at the most bits: any aligned run of this many shares one quad at every b.
constexpr int kDropoutMinPerQuad = 128 / kDropoutMaxBits;

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

// The four Philox words of quad q of dropout call (seed, offset).
FASTNN_HD void dropout_words(uint64_t seed, uint64_t offset, uint64_t q, uint32_t out[4]) {
  philox4x32_10(static_cast<uint32_t>(q), static_cast<uint32_t>(q >> 32),
                static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), out);
}

// log2 of the random bits an element draws for a threshold in (0, 2^16): the fewest bits, a power
// of two, that express it exactly. (0 and 2^16 give 0; callers draw nothing for them.) Kernels index
// quads, fields and words by this shift, not by dividing: a division by a run-time divisor is a
// software sequence on a GPU, a 64-bit one longer still (with it, the H200's mask kernel took 96 us
// at 8192 x 4096 against 85 us with shifts, same layout).
FASTNN_HD int dropout_log2_bits(uint32_t threshold) {
  int log2_bits = 0;
  while ((1 << log2_bits) < kDropoutMaxBits &&
         (threshold & ((1u << (kDropoutMaxBits - (1 << log2_bits))) - 1u)) != 0)
    ++log2_bits;
  return log2_bits;
}

FASTNN_HD int dropout_bits(uint32_t threshold) { return 1 << dropout_log2_bits(threshold); }

// Elements one Philox quad serves.
FASTNN_HD int dropout_per_quad(int bits) { return 128 / bits; }

// The quad that serves element i, and i's field in it, at 2^log2_bits bits an element.
FASTNN_HD uint64_t dropout_quad(uint64_t i, int log2_bits) { return i >> (7 - log2_bits); }
FASTNN_HD int dropout_field(uint64_t i, int log2_bits) {
  return static_cast<int>(i & ((uint64_t{128} >> log2_bits) - 1u));
}

// Field e (e < 128 / bits) of a quad's words, scaled to 16 bits: what element e of the quad compares
// against the threshold. bits = 2^log2_bits.
FASTNN_HD uint32_t dropout_draw(const uint32_t words[4], int e, int log2_bits) {
  const int bits = 1 << log2_bits, index = e >> (5 - log2_bits);
  // selects, not words[index]: indexed at run time, a GPU thread's words would go to local memory
  const uint32_t word = index < 2 ? (index == 0 ? words[0] : words[1]) : (index == 2 ? words[2] : words[3]);
  // bits * (e % (32 / bits)) is (e * bits) % 32
  const uint32_t field = (word >> ((e << log2_bits) & 31)) & ((1u << bits) - 1u);
  return field << (kDropoutMaxBits - bits);
}

// round(p * 2^16) for p in [0, 1]; the product is exact (a power-of-two scaling), so the only
// rounding is to the nearest integer. Values up to 2^16 inclusive.
FASTNN_HD uint32_t dropout_threshold(double p) {
  return static_cast<uint32_t>(std::floor(p * static_cast<double>(kDropoutThresholdNone) + 0.5));
}

FASTNN_HD bool dropout_keep(uint32_t draw, uint32_t threshold) { return draw >= threshold; }

// Whether element i of dropout call (seed, offset) is kept: the scalar definition that the block
// kernels must reproduce bit for bit.
FASTNN_HD bool dropout_keep_element(uint64_t seed, uint64_t offset, uint32_t threshold, uint64_t i) {
  const int log2_bits = dropout_log2_bits(threshold);
  uint32_t w[4];
  dropout_words(seed, offset, dropout_quad(i, log2_bits), w);
  return dropout_keep(dropout_draw(w, dropout_field(i, log2_bits), log2_bits), threshold);
}

// Inverted-dropout scale 1 / (1 - p); 0 when p = 1, where nothing is kept, so that the product
// kept * scale never forms 0 * inf.
FASTNN_HD double dropout_scale(double p) { return p < 1.0 ? 1.0 / (1.0 - p) : 0.0; }

}  // namespace fastnn
