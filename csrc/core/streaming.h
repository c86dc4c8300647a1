// Streaming stores for elementwise passes whose output will have left the caches before anyone
// reads it: a streaming store writes a whole 64-byte line without first reading it (an ordinary
// store's read for ownership makes a copy move 3 bytes per 2) and leaves the caches to the inputs.
// Compilers emit none from a plain loop (GCC 12 ignores `omp simd nontemporal`), so for_outputs
// computes a plain loop's values into an L1 buffer and streams the buffer out.
#pragma once
#include <algorithm>
#include <cstdint>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/cpu_features.h"

namespace fastnn::cpu {

// Bytes a pass moves (inputs + output) above which its output takes streaming stores: a pass that
// large has evicted most of its own output from the 32 MiB L3 by the time the next op reads it.
// Timed with that read (a numpy sum of BatchNorm's output), float32, 2 threads: passes of 4-8 MiB
// (forward of 512x1024, 1024x1024) took 15-29% longer with streaming, 12-16 MiB gained nothing,
// 24 MiB and more (backward of 2048x1024, forward of 4096x1024) gained 6-10%.
constexpr int64_t kStreamPassBytes = int64_t{16} << 20;

// Copies `lines` 64-byte lines from src (in L1) to dst (64-byte aligned) with streaming stores.
using StreamLines = void (*)(void* dst, const void* src, int64_t lines);

#if defined(__x86_64__)
FASTNN_TARGET_AVX512 inline void stream_lines_avx512(void* dst, const void* src, int64_t lines) {
  auto* d = static_cast<__m512i*>(dst);
  const auto* s = static_cast<const __m512i*>(src);
  for (int64_t i = 0; i < lines; ++i) _mm512_stream_si512(d + i, _mm512_load_si512(s + i));
}
FASTNN_TARGET_AVX2 inline void stream_lines_avx2(void* dst, const void* src, int64_t lines) {
  auto* d = static_cast<__m256i*>(dst);
  const auto* s = static_cast<const __m256i*>(src);
  for (int64_t i = 0; i < 2 * lines; ++i) _mm256_stream_si256(d + i, _mm256_load_si256(s + i));
}
inline void stream_lines_sse2(void* dst, const void* src, int64_t lines) {
  auto* d = static_cast<__m128i*>(dst);
  const auto* s = static_cast<const __m128i*>(src);
  for (int64_t i = 0; i < 4 * lines; ++i) _mm_stream_si128(d + i, _mm_load_si128(s + i));
}
#endif

// The streaming copy for an ISA (null where there is none: the output takes ordinary stores).
inline StreamLines stream_lines_for(CpuIsa isa) {
#if defined(__x86_64__)
  return isa == CpuIsa::avx512 ? &stream_lines_avx512 : isa == CpuIsa::avx2 ? &stream_lines_avx2 : &stream_lines_sse2;
#else
  (void)isa;
  return nullptr;
#endif
}

// Elements computed into the L1 buffer at a time before they are streamed out.
constexpr int64_t kStreamChunk = 1024;

// out[i] = elem(i) for i in [b, e): in one plain loop, or with `stream` in chunks computed into an
// L1 buffer and streamed out, the ends that are not whole aligned lines with ordinary stores
// (threads' ranges may share a line there). elem must be an always-inline lambda so the loops
// vectorise with the caller's ISA. A thread's last for_outputs with `stream` must be followed by
// end_streaming before its work is done (one fence per row of a softmax cost more than it saved).
template <class T, class Elem>
FASTNN_FORCE_INLINE void for_outputs(T* out, int64_t b, int64_t e, StreamLines stream, Elem elem) {
  int64_t i = b;
#if defined(__x86_64__)
  const int64_t misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(out + i) % 64);
  if (stream && misaligned % static_cast<int64_t>(sizeof(T)) == 0) {
    const int64_t head = std::min(e - i, misaligned ? (64 - misaligned) / static_cast<int64_t>(sizeof(T)) : 0);
#pragma omp simd
    for (int64_t k = i; k < i + head; ++k) out[k] = elem(k);
    i += head;
    constexpr int64_t kPerLine = 64 / static_cast<int64_t>(sizeof(T));
    alignas(64) T buffer[kStreamChunk];
    for (int64_t n; (n = std::min(kStreamChunk, (e - i) / kPerLine * kPerLine)) > 0; i += n) {
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) buffer[k] = elem(i + k);
      stream(out + i, buffer, n / kPerLine);
    }
  }
#endif
#pragma omp simd
  for (int64_t k = i; k < e; ++k) out[k] = elem(k);
}

// Streaming stores are weakly ordered: they must be complete before another thread (the pool's
// join) reads what they wrote.
inline void end_streaming(StreamLines stream) {
#if defined(__x86_64__)
  if (stream) _mm_sfence();
#else
  (void)stream;
#endif
}

}  // namespace fastnn::cpu
