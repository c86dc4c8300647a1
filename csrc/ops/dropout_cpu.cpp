// Dropout on the CPU: one pass over memory. Each thread walks its range in blocks of up to 64
// Philox quads: a vectorised loop of independent Philox calls fills the block's words in L1; then,
// 512 elements at a time, each element's draw (ops/philox.h) is spread to a 16-bit slot, unless it
// already is one (16 bits an element: the words are the draws), and a vectorised loop applies them.
// The integer math is exact, so every ISA variant (AVX-512, AVX2, baseline) and every chunking
// produces the same mask bits as the scalar definition in philox.h.
#include <algorithm>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "core/streaming.h"
#include "ops/dropout.h"


namespace fastnn::cpu {
namespace {

// Philox calls per block. Block boundaries are multiples of this in counter space, and 2^32 is one
// too, so no block crosses a carry into the counter's high word.
constexpr int64_t kQuads = 64;
// Elements whose draws are spread and applied at a time: one block's at 16 bits an element.
constexpr int64_t kPiece = kDropoutMinPerQuad * kQuads;
// Philox costs about 1 ns per 8 elements on one core at 16 bits: worth a thread sooner than a copy.
constexpr int64_t kDropoutGrain = kParallelGrain / 4;

enum class Kind { forward, forward_relu, backward, mask };

// words[4j + r] = word r of Philox quad q0 + j for j < count (count <= kQuads). The portable
// version: a loop of independent calls that the compiler vectorises as best it can.
template <CpuIsa kIsa>
FASTNN_FORCE_INLINE void philox_block(const DropoutParams& p, uint64_t q0, int count, uint32_t* words) {
  const uint32_t q_lo = static_cast<uint32_t>(q0), q_hi = static_cast<uint32_t>(q0 >> 32);
  const uint32_t o_lo = static_cast<uint32_t>(p.offset), o_hi = static_cast<uint32_t>(p.offset >> 32);
  const uint32_t k_lo = static_cast<uint32_t>(p.seed), k_hi = static_cast<uint32_t>(p.seed >> 32);
  for (int j = 0; j < count; ++j)
    philox4x32_10(q_lo + static_cast<uint32_t>(j), q_hi, o_lo, o_hi, k_lo, k_hi, words + 4 * j);
}

// draws[k] = dropout_draw(element first + k) for k < count, at 2^log2_bits < 16 bits an element, from
// the words of the block's quads (element 0: field 0 of words[0..3]). first and count are multiples
// of 16.
template <CpuIsa kIsa>
FASTNN_FORCE_INLINE void spread_draws(const uint32_t* words, int log2_bits, int64_t first, int64_t count,
                                      uint16_t* draws) {
  for (int64_t k = 0; k < count; ++k) {
    const uint64_t e = static_cast<uint64_t>(first + k);
    draws[k] = static_cast<uint16_t>(dropout_draw(words + 4 * dropout_quad(e, log2_bits), dropout_field(e, log2_bits), log2_bits));
  }
}

#if defined(__x86_64__)
// Hand-vectorised Philox: compilers widen every 32x32->64 product to 64-bit lanes and gain little
// (AVX2 no faster than scalar). Here each 32-bit state word sits in the low half of a 64-bit lane,
// so one vpmuludq gives a product's high and low words at once, and the words are transposed on the
// way out so that word r of quad j lands at 4j + r. Scalar: 1.8 ns per 32-bit word on one core.
// Not always_inline: the caller is generic until inlined into its ISA wrapper, and one call per
// 512 elements costs nothing. These blocks compute whole groups of quads, possibly past `count`:
// harmless, as words has room for kQuads (a multiple of every group) and blocks are aligned to
// kQuads, so the low counter word never wraps.
// Groups of quads whose Philox rounds run side by side in the SIMD versions (independent chains).
constexpr int kPhiloxGroups = 4;

// AVX2: the same scheme as the AVX-512 version below (64-bit lanes, one vpmuludq per product),
// 4 quads per vector, kPhiloxGroups vectors in flight.
struct PhiloxLanes64Avx2 {
  __m256i c0, c1, c2, c3;

  FASTNN_TARGET_AVX2 FASTNN_FORCE_INLINE void init(uint32_t first_quad_lo, uint32_t q_hi, uint64_t offset) {
    c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first_quad_lo)), _mm256_setr_epi32(0, 0, 1, 0, 2, 0, 3, 0));
    c1 = _mm256_set1_epi32(static_cast<int>(q_hi));
    c2 = _mm256_set1_epi32(static_cast<int>(offset));
    c3 = _mm256_set1_epi32(static_cast<int>(offset >> 32));
  }

  FASTNN_TARGET_AVX2 FASTNN_FORCE_INLINE void round(__m256i m0, __m256i m1, __m256i k0, __m256i k1) {
    const __m256i p0 = _mm256_mul_epu32(c0, m0), p1 = _mm256_mul_epu32(c2, m1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1), k0);
    c1 = p1;
    c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3), k1);
    c3 = p0;
  }

  // The 4 quads' words in order: 16 words from `out`.
  FASTNN_TARGET_AVX2 FASTNN_FORCE_INLINE void store(uint32_t* out) const {
    const __m256i w01 = _mm256_blend_epi32(c0, _mm256_slli_epi64(c1, 32), 0xAA);
    const __m256i w23 = _mm256_blend_epi32(c2, _mm256_slli_epi64(c3, 32), 0xAA);
    const __m256i even = _mm256_unpacklo_epi64(w01, w23);  // 128-bit lanes: quads 0, 2
    const __m256i odd = _mm256_unpackhi_epi64(w01, w23);   // quads 1, 3
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(even, odd, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), _mm256_permute2x128_si256(even, odd, 0x31));
  }
};

template <>
FASTNN_TARGET_AVX2 void philox_block<CpuIsa::avx2>(const DropoutParams& p, uint64_t q0, int count,
                                                   uint32_t* words) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  const uint32_t k_lo = static_cast<uint32_t>(p.seed), k_hi = static_cast<uint32_t>(p.seed >> 32);
  const uint32_t q_lo = static_cast<uint32_t>(q0), q_hi = static_cast<uint32_t>(q0 >> 32);
  constexpr int G = kPhiloxGroups;
  for (int j = 0; j < count; j += 4 * G) {
    PhiloxLanes64Avx2 g[G];
#pragma GCC unroll 4
    for (int i = 0; i < G; ++i) g[i].init(q_lo + static_cast<uint32_t>(j + 4 * i), q_hi, p.offset);
#pragma GCC unroll 10
    for (int round = 0; round < 10; ++round) {
      const __m256i k0 = _mm256_set1_epi32(static_cast<int>(k_lo + round * kPhiloxW0));
      const __m256i k1 = _mm256_set1_epi32(static_cast<int>(k_hi + round * kPhiloxW1));
#pragma GCC unroll 4
      for (int i = 0; i < G; ++i) g[i].round(m0, m1, k0, k1);
    }
#pragma GCC unroll 4
    for (int i = 0; i < G; ++i) g[i].store(words + 4 * (j + 4 * i));
  }
}

// AVX-512: each 32-bit state word of 8 quads sits in the low half of a 64-bit lane, so one vpmuludq
// gives a lane's whole 64-bit product (hi = product >> 32; lo = its low half), where 16 quads in
// 32-bit lanes took two multiplies, three shifts and two blends per mulhilo: 6 instructions per
// round per 8 quads instead of 9. The high halves hold garbage that vpmuludq never reads and that
// the xors never mix into the low halves. kPhiloxGroups groups of 8 quads run side by side, as
// independent dependency chains. Fused relu+dropout forward, one core, per element: 0.37 ns with
// 32-bit lanes; 64-bit lanes 0.31 (1 group), 0.29 (2), 0.24 ns (4 groups); 2 threads on 4096^2
// 3.2-3.3 -> 2.5 ms, where the memory becomes the limit (all on Zen 5, with a 32-bit word an
// element). Zen 4 splits each 512-bit multiply in two: 0.44-0.51 ns an element with 32-bit words,
// 0.27-0.31 with 16 bits; 4096^2 on 2 threads 3.7-4.7 -> 2.6 ms with streaming stores.
struct PhiloxLanes64 {
  __m512i c0, c1, c2, c3;

  FASTNN_TARGET_AVX512 FASTNN_FORCE_INLINE void init(uint32_t first_quad_lo, uint32_t q_hi, uint64_t offset) {
    // quad first + i in 64-bit lane i (low half; counters never carry into q_hi within a block)
    c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(first_quad_lo)),
                          _mm512_setr_epi32(0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0));
    c1 = _mm512_set1_epi32(static_cast<int>(q_hi));
    c2 = _mm512_set1_epi32(static_cast<int>(offset));
    c3 = _mm512_set1_epi32(static_cast<int>(offset >> 32));
  }

  FASTNN_TARGET_AVX512 FASTNN_FORCE_INLINE void round(__m512i m0, __m512i m1, __m512i k0, __m512i k1) {
    const __m512i p0 = _mm512_mul_epu32(c0, m0), p1 = _mm512_mul_epu32(c2, m1);
    c0 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), c1, k0, 0x96);  // hi1 ^ c1 ^ k0
    c1 = p1;                                                                   // lo1
    c2 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), c3, k1, 0x96);  // hi0 ^ c3 ^ k1
    c3 = p0;                                                                   // lo0
  }

  // The 8 quads' words in order (word r of quad i at 4i + r): 32 words from `out`.
  FASTNN_TARGET_AVX512 FASTNN_FORCE_INLINE void store(uint32_t* out) const {
    const __m512i w01 = _mm512_mask_blend_epi32(0xAAAA, c0, _mm512_slli_epi64(c1, 32));  // lane i: w0 | w1
    const __m512i w23 = _mm512_mask_blend_epi32(0xAAAA, c2, _mm512_slli_epi64(c3, 32));  // lane i: w2 | w3
    const __m512i even = _mm512_unpacklo_epi64(w01, w23);  // 128-bit lanes: quads 0, 2, 4, 6
    const __m512i odd = _mm512_unpackhi_epi64(w01, w23);   // quads 1, 3, 5, 7
    _mm512_storeu_si512(out, _mm512_permutex2var_epi64(even, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), odd));
    _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi64(even, _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15), odd));
  }
};

template <>
FASTNN_TARGET_AVX512 void philox_block<CpuIsa::avx512>(const DropoutParams& p, uint64_t q0, int count,
                                                       uint32_t* words) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  const uint32_t k_lo = static_cast<uint32_t>(p.seed), k_hi = static_cast<uint32_t>(p.seed >> 32);
  const uint32_t q_lo = static_cast<uint32_t>(q0), q_hi = static_cast<uint32_t>(q0 >> 32);
  constexpr int G = kPhiloxGroups;
  for (int j = 0; j < count; j += 8 * G) {
    PhiloxLanes64 g[G];
#pragma GCC unroll 4
    for (int i = 0; i < G; ++i) g[i].init(q_lo + static_cast<uint32_t>(j + 8 * i), q_hi, p.offset);
#pragma GCC unroll 10
    for (int round = 0; round < 10; ++round) {
      const __m512i k0 = _mm512_set1_epi32(static_cast<int>(k_lo + round * kPhiloxW0));
      const __m512i k1 = _mm512_set1_epi32(static_cast<int>(k_hi + round * kPhiloxW1));
#pragma GCC unroll 4
      for (int i = 0; i < G; ++i) g[i].round(m0, m1, k0, k1);
    }
#pragma GCC unroll 4
    for (int i = 0; i < G; ++i) g[i].store(words + 4 * (j + 8 * i));
  }
}

// AVX2 (and AVX-512, whose 16-bit variable shifts would save nothing here): 16 draws at a time from
// their 2b bytes. Each 16-bit lane picks the 16-bit word holding its field (vpshufb of the bytes,
// broadcast to both 128-bit halves) and a multiply by a power of two (vpmullw) lifts the field to
// the lane's top b bits. Below it lie lower fields' bits, which never change the comparison with a
// threshold (a multiple of 2^(16 - b)), so the spread values keep exactly the draws' elements.
// Per bit count b in {1, 2, 4, 8} (row log2 b): the vpshufb byte picks and the vpmullw factors.
struct SpreadTables {
  alignas(32) uint8_t pick[4][32];
  alignas(32) uint16_t lift[4][16];
};
constexpr SpreadTables make_spread_tables() {
  SpreadTables t{};
  for (int row = 0; row < 4; ++row) {
    const int bits = 1 << row;
    for (int e = 0; e < 16; ++e) {
      const int word = e * bits / 16, shift = e * bits % 16;
      t.pick[row][2 * e] = static_cast<uint8_t>(2 * word);
      t.pick[row][2 * e + 1] = static_cast<uint8_t>(2 * word + 1);
      t.lift[row][e] = static_cast<uint16_t>(1u << (kDropoutMaxBits - bits - shift));
    }
  }
  return t;
}
constexpr SpreadTables kSpreadTables = make_spread_tables();

FASTNN_TARGET_AVX2 void spread_draws_avx2(const uint32_t* words, int log2_bits, int64_t first, int64_t count,
                                          uint16_t* draws) {
  const int bits = 1 << log2_bits;
  const __m256i pick = _mm256_load_si256(reinterpret_cast<const __m256i*>(kSpreadTables.pick[log2_bits]));
  const __m256i lift = _mm256_load_si256(reinterpret_cast<const __m256i*>(kSpreadTables.lift[log2_bits]));
  const auto* bytes = reinterpret_cast<const uint8_t*>(words);
  for (int64_t k = 0; k < count; k += 16) {
    const __m128i chunk = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + (first + k) * bits / 8));
    const __m256i lanes = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(chunk), pick);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(draws + k), _mm256_mullo_epi16(lanes, lift));
  }
}

template <>
FASTNN_TARGET_AVX2 void spread_draws<CpuIsa::avx2>(const uint32_t* words, int log2_bits, int64_t first,
                                                   int64_t count, uint16_t* draws) {
  spread_draws_avx2(words, log2_bits, first, count, draws);
}
template <>
FASTNN_TARGET_AVX512 void spread_draws<CpuIsa::avx512>(const uint32_t* words, int log2_bits, int64_t first,
                                                       int64_t count, uint16_t* draws) {
  spread_draws_avx2(words, log2_bits, first, count, draws);
}
#endif

// The 16-bit halves of Philox words, read in place as the draws at 16 bits an element.
using WordHalves = const uint16_t __attribute__((may_alias))*;

// Elements [begin, end) of one dropout call. Only for thresholds in (0, 2^16): callers handle
// keep-all and keep-none without drawing numbers. With `stream` the output takes streaming stores.
template <CpuIsa kIsa, Kind kKind, class T>
FASTNN_FORCE_INLINE void dropout_range(const T* in, T* out, bool* mask, int64_t begin, int64_t end,
                                       const DropoutParams& p, bool stream) {
  const StreamLines lines = stream ? stream_lines_for(kIsa) : nullptr;
  alignas(64) uint32_t words[4 * kQuads + 4];  // 16 bytes over: the SIMD spread loads 16 at a time
  alignas(64) uint16_t spread[kPiece];
  const uint32_t threshold = p.threshold;
  const T scale = static_cast<T>(p.scale);
  const int log2_bits = dropout_log2_bits(threshold), bits = 1 << log2_bits;
  const int64_t per_quad = dropout_per_quad(bits);
  for (int64_t q = begin / per_quad; q * per_quad < end;) {
    const int64_t q_end = std::min((q / kQuads + 1) * kQuads, (end + per_quad - 1) / per_quad);
    philox_block<kIsa>(p, static_cast<uint64_t>(q), static_cast<int>(q_end - q), words);
    // this block's elements in [begin, end), by pieces of kPiece from element per_quad * q (field 0
    // of words): a whole block at 16 bits, 16 / bits pieces below
    const int64_t base = per_quad * q, stop = std::min(end, per_quad * q_end);
    for (int64_t first = std::max(begin, base); first < stop;) {
      const int64_t r = first - base, len = std::min(stop - first, kPiece - r % kPiece);
      WordHalves h;
      if (bits == kDropoutMaxBits) {
        h = reinterpret_cast<WordHalves>(words) + r;
      } else {  // from field r rounded down to 16, through field r + len rounded up
        const int64_t r16 = r / 16 * 16;
        spread_draws<kIsa>(words, log2_bits, r16, (r + len - r16 + 15) / 16 * 16, spread);
        h = spread + (r - r16);
      }
      if constexpr (kKind == Kind::mask) {
        bool* m = mask + first;
        for (int64_t k = 0; k < len; ++k) m[k] = dropout_keep(h[k], threshold);
      } else {
        const T* a = in + first;
        for_outputs(out + first, 0, len, lines, [=](int64_t k) FASTNN_ALWAYS_INLINE {
          const T v = kKind == Kind::forward_relu ? activation_apply(Activation::relu, a[k]) : a[k];
          return dropout_apply(v, h[k], threshold, scale);
        });
      }
      first += len;
    }
    q = q_end;
  }
  end_streaming(lines);
}

#if defined(__x86_64__)
template <Kind kKind, class T>
FASTNN_TARGET_AVX512 void dropout_range_avx512(const T* in, T* out, bool* mask, int64_t begin,
                                               int64_t end, const DropoutParams& p, bool stream) {
  dropout_range<CpuIsa::avx512, kKind, T>(in, out, mask, begin, end, p, stream);
}
template <Kind kKind, class T>
FASTNN_TARGET_AVX2 void dropout_range_avx2(const T* in, T* out, bool* mask, int64_t begin,
                                           int64_t end, const DropoutParams& p, bool stream) {
  dropout_range<CpuIsa::avx2, kKind, T>(in, out, mask, begin, end, p, stream);
}
#endif
template <Kind kKind, class T>
void dropout_range_baseline(const T* in, T* out, bool* mask, int64_t begin, int64_t end,
                            const DropoutParams& p, bool stream) {
  dropout_range<CpuIsa::scalar, kKind, T>(in, out, mask, begin, end, p, stream);
}

template <Kind kKind, class T>
auto range_for_isa() {
#if defined(__x86_64__)
  return isa_variant(dropout_range_avx512<kKind, T>, dropout_range_avx2<kKind, T>, dropout_range_baseline<kKind, T>);
#else
  return &dropout_range_baseline<kKind, T>;
#endif
}

// The fused relu + dropout backward, dx = (y > 0) ? dy * scale : 0 from the output alone, over
// [b, e), compiled per ISA like the mask kernels (the generic build's loop is SSE2).
template <class T>
FASTNN_FORCE_INLINE void relu_grad_range(const T* y, const T* dy, T* dx, T scale, int64_t b, int64_t e,
                                         StreamLines stream) {
  for_outputs(dx, b, e, stream, [=](int64_t i) FASTNN_ALWAYS_INLINE { return dropout_relu_grad(y[i], dy[i], scale); });
  end_streaming(stream);
}
#if defined(__x86_64__)
template <class T>
FASTNN_TARGET_AVX512 void relu_grad_avx512(const T* y, const T* dy, T* dx, T scale, int64_t b, int64_t e, bool stream) {
  relu_grad_range(y, dy, dx, scale, b, e, stream ? stream_lines_for(CpuIsa::avx512) : nullptr);
}
template <class T>
FASTNN_TARGET_AVX2 void relu_grad_avx2(const T* y, const T* dy, T* dx, T scale, int64_t b, int64_t e, bool stream) {
  relu_grad_range(y, dy, dx, scale, b, e, stream ? stream_lines_for(CpuIsa::avx2) : nullptr);
}
#endif
template <class T>
void relu_grad_baseline(const T* y, const T* dy, T* dx, T scale, int64_t b, int64_t e, bool stream) {
  relu_grad_range(y, dy, dx, scale, b, e, stream ? stream_lines_for(CpuIsa::scalar) : nullptr);
}

template <Kind kKind, class T>
void dropout_run(const T* in, T* out, bool* mask, int64_t n, const DropoutParams& p) {
  auto* range = range_for_isa<kKind, T>();
  // the output of a pass too large for the caches takes streaming stores (the mask is a bool
  // tensor a quarter the size: ordinary stores)
  const bool stream = kKind != Kind::mask && 2 * n * static_cast<int64_t>(sizeof(T)) > kStreamPassBytes;
  parallel_for(n, kDropoutGrain, [&](int64_t b, int64_t e) { range(in, out, mask, b, e, p, stream); }, kPiece);
}

// out = act(in) * factor over [b, e) for a factor shared by every element (p = 0: 1, p = 1: 0),
// compiled per ISA like the mask kernels: the generic build's SSE2 loop made BatchNorm -> ReLU's
// fused epilogue (dropout_forward_span with p = 0) cost three times a relu pass of its own.
template <class T>
FASTNN_FORCE_INLINE void scale_range(const T* in, T* out, int64_t b, int64_t e, bool relu, T factor,
                                     StreamLines stream) {
  if (relu)
    for_outputs(out, b, e, stream, [=](int64_t i) FASTNN_ALWAYS_INLINE {
      return activation_apply(Activation::relu, in[i]) * factor;
    });
  else
    for_outputs(out, b, e, stream, [=](int64_t i) FASTNN_ALWAYS_INLINE { return in[i] * factor; });
  end_streaming(stream);
}
#if defined(__x86_64__)
template <class T>
FASTNN_TARGET_AVX512 void scale_avx512(const T* in, T* out, int64_t b, int64_t e, bool relu, T factor, bool stream) {
  scale_range(in, out, b, e, relu, factor, stream ? stream_lines_for(CpuIsa::avx512) : nullptr);
}
template <class T>
FASTNN_TARGET_AVX2 void scale_avx2(const T* in, T* out, int64_t b, int64_t e, bool relu, T factor, bool stream) {
  scale_range(in, out, b, e, relu, factor, stream ? stream_lines_for(CpuIsa::avx2) : nullptr);
}
#endif
template <class T>
void scale_baseline(const T* in, T* out, int64_t b, int64_t e, bool relu, T factor, bool stream) {
  scale_range(in, out, b, e, relu, factor, stream ? stream_lines_for(CpuIsa::scalar) : nullptr);
}

template <class T>
auto scale_for_isa() {
#if defined(__x86_64__)
  return isa_variant(scale_avx512<T>, scale_avx2<T>, scale_baseline<T>);
#else
  return &scale_baseline<T>;
#endif
}

template <class T>
void scale_uniform_span(const T* in, T* out, int64_t b, int64_t e, bool relu, T factor) {
  if (!relu && factor == T(1)) {
    if (in != out && e > b) std::memmove(out + b, in + b, static_cast<size_t>(e - b) * sizeof(T));
    return;
  }
  scale_for_isa<T>()(in, out, b, e, relu, factor, false);
}

template <class T>
void scale_uniform(const T* in, T* out, int64_t n, bool relu, T factor) {
  if (!relu && factor == T(1)) {
    scale_uniform_span(in, out, 0, n, relu, factor);
    return;
  }
  auto* range = scale_for_isa<T>();
  const bool stream = 2 * n * static_cast<int64_t>(sizeof(T)) > kStreamPassBytes;
  parallel_for(n, kParallelGrain, [&](int64_t b, int64_t e) { range(in, out, b, e, relu, factor, stream); });
}

}  // namespace

template <class T>
void dropout_forward_span(const T* x, T* y, int64_t begin, int64_t end, const DropoutParams& params,
                          Activation act) {
  const bool relu = act == Activation::relu;
  if (params.keeps_all() || params.keeps_none())
    scale_uniform_span(x, y, begin, end, relu, params.keeps_all() ? T(1) : T(0));
  else if (relu)
    range_for_isa<Kind::forward_relu, T>()(x, y, nullptr, begin, end, params, false);
  else
    range_for_isa<Kind::forward, T>()(x, y, nullptr, begin, end, params, false);
}
template void dropout_forward_span<float>(const float*, float*, int64_t, int64_t, const DropoutParams&, Activation);
template void dropout_forward_span<double>(const double*, double*, int64_t, int64_t, const DropoutParams&,
                                           Activation);

void dropout_forward(const Tensor& x, Tensor& y, const DropoutParams& params, Activation act) {
  const bool relu = act == Activation::relu;
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const T* in = x.data<T>();
    T* out = y.data<T>();
    if (params.keeps_all() || params.keeps_none()) {
      scale_uniform(in, out, x.numel(), relu, params.keeps_all() ? T(1) : T(0));
    } else if (relu) {
      dropout_run<Kind::forward_relu, T>(in, out, nullptr, x.numel(), params);
    } else {
      dropout_run<Kind::forward, T>(in, out, nullptr, x.numel(), params);
    }
  });
}

void dropout_backward(const Tensor& dy, const Tensor& y, Tensor& dx, const DropoutParams& params,
                      Activation act) {
  dispatch_floating(dy.dtype(), "dy", [&](auto tag) {
    using T = decltype(tag);
    const T* g = dy.data<T>();
    T* gx = dx.data<T>();
    if (act == Activation::relu) {
      const T* out = y.data<T>();
      const T scale = static_cast<T>(params.scale);
#if defined(__x86_64__)
      auto* range = isa_variant(relu_grad_avx512<T>, relu_grad_avx2<T>, relu_grad_baseline<T>);
#else
      auto* range = &relu_grad_baseline<T>;
#endif
      const bool stream = 3 * dy.numel() * static_cast<int64_t>(sizeof(T)) > kStreamPassBytes;
      parallel_for(dy.numel(), kParallelGrain, [&](int64_t b, int64_t e) { range(out, g, gx, scale, b, e, stream); });
    } else if (params.keeps_all() || params.keeps_none()) {
      scale_uniform(g, gx, dy.numel(), false, params.keeps_all() ? T(1) : T(0));
    } else {
      dropout_run<Kind::backward, T>(g, gx, nullptr, dy.numel(), params);
    }
  });
}

void dropout_mask(Tensor& mask, const DropoutParams& params) {
  bool* m = mask.data<bool>();
  const int64_t n = mask.numel();
  if (params.keeps_all() || params.keeps_none()) {
    if (n) std::memset(m, params.keeps_all() ? 1 : 0, static_cast<size_t>(n));
    return;
  }
  dropout_run<Kind::mask, float>(nullptr, nullptr, m, n, params);
}

}  // namespace fastnn::cpu
