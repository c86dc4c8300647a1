// Dropout on the CPU: one pass over memory. Each thread walks its range in blocks of 256 elements:
// a vectorised loop of 64 independent Philox calls fills 256 mask words in L1, then a vectorised
// loop applies them. The integer Philox math is exact, so every ISA variant (AVX-512, AVX2,
// baseline) and every chunking produces the same mask bits as the scalar definition in philox.h.
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
constexpr int64_t kBlock = 4 * kQuads;
// Philox costs a few ns per 4 elements on one core: worth a thread sooner than a plain copy.
constexpr int64_t kDropoutGrain = kParallelGrain / 4;

enum class Kind { forward, forward_relu, backward, mask };

// words[4j + r] = word r of Philox quad q0 + j for j < count (count <= kQuads). The portable
// version: a loop of independent calls that the compiler vectorises as best it can.
template <CpuIsa kIsa>
FASTNN_FORCE_INLINE void philox_block(const DropoutParams& p, uint64_t q0, int count, uint32_t* words) {
  const uint32_t q_lo = static_cast<uint32_t>(q0), q_hi = static_cast<uint32_t>(q0 >> 32);
  const uint32_t o_lo = static_cast<uint32_t>(p.offset), o_hi = static_cast<uint32_t>(p.offset >> 32);
  const uint32_t k_lo = static_cast<uint32_t>(p.seed), k_hi = static_cast<uint32_t>(p.seed >> 32);
  for (int j = 0; j < count; ++j) {
    uint32_t w[4];
    philox4x32_10(q_lo + static_cast<uint32_t>(j), q_hi, o_lo, o_hi, k_lo, k_hi, w);
    words[4 * j + 0] = w[0];
    words[4 * j + 1] = w[1];
    words[4 * j + 2] = w[2];
    words[4 * j + 3] = w[3];
  }
}

#if defined(__x86_64__)
// Hand-vectorised Philox: compilers widen every 32x32->64 product to 64-bit lanes and gain little
// (AVX2 no faster than scalar). Here each 32-bit state word sits in the low half of a 64-bit lane,
// so one vpmuludq gives a product's high and low words at once, and the words are transposed on the
// way out so that word r of quad j lands at 4j + r. Scalar: 1.8 ns per mask element on one core.
// Not always_inline: the caller is generic until inlined into its ISA wrapper, and one call per
// 256 elements costs nothing. These blocks compute whole groups of quads, possibly past `count`:
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
FASTNN_TARGET_AVX2 void philox_block<CpuIsa::avx2>(const DropoutParams& p, uint64_t q0,
                                                                int count, uint32_t* words) {
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
// 3.2-3.3 -> 2.5 ms, where the memory becomes the limit.
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
FASTNN_TARGET_AVX512 void philox_block<CpuIsa::avx512>(const DropoutParams& p, uint64_t q0,
                                                                    int count, uint32_t* words) {
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
#endif

// Elements [begin, end) of one dropout call. Only for thresholds in (0, 2^32): callers handle
// keep-all and keep-none without drawing numbers.
template <CpuIsa kIsa, Kind kKind, class T>
FASTNN_FORCE_INLINE void dropout_range(const T* in, T* out, bool* mask, int64_t begin, int64_t end,
                                 const DropoutParams& p) {
  alignas(64) uint32_t words[kBlock];
  const uint32_t threshold = static_cast<uint32_t>(p.threshold);
  const T scale = static_cast<T>(p.scale);
  for (int64_t q = begin / 4; q * 4 < end;) {
    const int64_t q_end = std::min((q / kQuads + 1) * kQuads, (end + 3) / 4);
    philox_block<kIsa>(p, static_cast<uint64_t>(q), static_cast<int>(q_end - q), words);
    const int64_t first = std::max(begin, 4 * q), len = std::min(end, 4 * q_end) - first;
    const uint32_t* w = words + (first - 4 * q);
    if constexpr (kKind == Kind::mask) {
      bool* m = mask + first;
      for (int64_t k = 0; k < len; ++k) m[k] = w[k] >= threshold;
    } else {
      const T* a = in + first;
      T* b = out + first;
      for (int64_t k = 0; k < len; ++k) {
        const T v = kKind == Kind::forward_relu ? activation_apply(Activation::relu, a[k]) : a[k];
        b[k] = v * dropout_factor(w[k] >= threshold, scale);
      }
    }
    q = q_end;
  }
}

#if defined(__x86_64__)
template <Kind kKind, class T>
FASTNN_TARGET_AVX512 void dropout_range_avx512(const T* in, T* out, bool* mask, int64_t begin,
                                               int64_t end, const DropoutParams& p) {
  dropout_range<CpuIsa::avx512, kKind, T>(in, out, mask, begin, end, p);
}
template <Kind kKind, class T>
FASTNN_TARGET_AVX2 void dropout_range_avx2(const T* in, T* out, bool* mask, int64_t begin,
                                           int64_t end, const DropoutParams& p) {
  dropout_range<CpuIsa::avx2, kKind, T>(in, out, mask, begin, end, p);
}
#endif
template <Kind kKind, class T>
void dropout_range_baseline(const T* in, T* out, bool* mask, int64_t begin, int64_t end,
                            const DropoutParams& p) {
  dropout_range<CpuIsa::scalar, kKind, T>(in, out, mask, begin, end, p);
}

template <Kind kKind, class T>
auto range_for_isa() {
  auto* range = &dropout_range_baseline<kKind, T>;
#if defined(__x86_64__)
  if (cpu_isa() == CpuIsa::avx512) range = &dropout_range_avx512<kKind, T>;
  else if (cpu_isa() == CpuIsa::avx2) range = &dropout_range_avx2<kKind, T>;
#endif
  return range;
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
  parallel_for(n, kDropoutGrain, [&](int64_t b, int64_t e) { range(in, out, mask, b, e, p); }, kBlock);
}

// out = act(in) * factor over [b, e) for a factor shared by every element (p = 0: 1, p = 1: 0).
template <class T>
void scale_uniform_span(const T* in, T* out, int64_t b, int64_t e, bool relu, T factor) {
  if (!relu && factor == T(1)) {
    if (in != out && e > b) std::memmove(out + b, in + b, static_cast<size_t>(e - b) * sizeof(T));
  } else if (relu) {
    for (int64_t i = b; i < e; ++i) out[i] = activation_apply(Activation::relu, in[i]) * factor;
  } else {
    for (int64_t i = b; i < e; ++i) out[i] = in[i] * factor;
  }
}

template <class T>
void scale_uniform(const T* in, T* out, int64_t n, bool relu, T factor) {
  if (!relu && factor == T(1)) {
    scale_uniform_span(in, out, 0, n, relu, factor);
    return;
  }
  parallel_for(n, kParallelGrain, [&](int64_t b, int64_t e) { scale_uniform_span(in, out, b, e, relu, factor); });
}

}  // namespace

template <class T>
void dropout_forward_span(const T* x, T* y, int64_t begin, int64_t end, const DropoutParams& params,
                          Activation act) {
  const bool relu = act == Activation::relu;
  if (params.keeps_all() || params.keeps_none())
    scale_uniform_span(x, y, begin, end, relu, params.keeps_all() ? T(1) : T(0));
  else if (relu)
    range_for_isa<Kind::forward_relu, T>()(x, y, nullptr, begin, end, params);
  else
    range_for_isa<Kind::forward, T>()(x, y, nullptr, begin, end, params);
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
      auto* range = &relu_grad_baseline<T>;
#if defined(__x86_64__)
      if (cpu_isa() == CpuIsa::avx512) range = &relu_grad_avx512<T>;
      else if (cpu_isa() == CpuIsa::avx2) range = &relu_grad_avx2<T>;
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
