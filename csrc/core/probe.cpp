#include "core/probe.h"

#if defined(__x86_64__) || defined(__i386__)
#define FASTNN_PROBE_X86 1
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "core/streaming.h"

namespace fastnn {

namespace {

using Clock = std::chrono::steady_clock;

#ifdef FASTNN_PROBE_X86
// 12 independent accumulator chains hide the FMA latency (4 cycles x 2-3 pipes).
FASTNN_TARGET_AVX512 double fma_loop_avx512(long iters) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(1.0f + i * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s) + static_cast<double>(iters) * 12 * 16 * 2;  // flops, result kept live
}

FASTNN_TARGET_AVX2 double fma_loop_avx2(long iters) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(1.0f + i * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  __m256 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  float tmp[8];
  _mm256_storeu_ps(tmp, s);
  return tmp[0] * 0 + static_cast<double>(iters) * 12 * 8 * 2;
}

#endif

double fma_loop_scalar(long iters) {
  float acc[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 8; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
  return acc[0] * 0 + static_cast<double>(iters) * 8 * 2;
}

double fma_flops(long iters) {
#ifdef FASTNN_PROBE_X86
  switch (cpu_isa()) {
    case CpuIsa::avx512: return fma_loop_avx512(iters);
    case CpuIsa::avx2: return fma_loop_avx2(iters);
    default: break;
  }
#endif
  return fma_loop_scalar(iters);
}

}  // namespace

double probe_peak_gflops(int threads, double seconds) {
  threads = std::max(1, threads);
  const long chunk = 1 << 16;
  std::vector<double> flops(threads, 0.0);
  const auto start = Clock::now();
  // one chunk per thread, each running until the deadline, so all threads run at once
  struct Ctx { std::vector<double>* flops; Clock::time_point start; double seconds; long chunk; } ctx{&flops, start, seconds, chunk};
  detail::run_chunks(threads, [](void* p, int64_t t) {
    auto* c = static_cast<Ctx*>(p);
    double f = 0;
    while (std::chrono::duration<double>(Clock::now() - c->start).count() < c->seconds) f += fma_flops(c->chunk);
    (*c->flops)[t] = f;
  }, &ctx);
  double total_flops = 0;
  for (double f : flops) total_flops += f;
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  return total_flops / elapsed * 1e-9;
}

double probe_copy_gbps(size_t bytes, int threads, int repeats, bool streaming) {
  threads = std::max(1, threads);
  bytes = (bytes + 4095) / 4096 * 4096;
  char* src = static_cast<char*>(std::aligned_alloc(4096, bytes));
  char* dst = static_cast<char*>(std::aligned_alloc(4096, bytes));
  if (!src || !dst) {
    std::free(src);
    std::free(dst);
    return 0.0;
  }
  std::memset(src, 1, bytes);
  std::memset(dst, 0, bytes);  // touch every page before timing
  double best = 1e30;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    const auto t0 = Clock::now();
    const size_t part = (bytes / threads + 63) / 64 * 64;
    struct Ctx { char *dst, *src; size_t bytes, part; bool streaming; } ctx{dst, src, bytes, part, streaming};
    detail::run_chunks(threads, [](void* p, int64_t t) {
      auto* c = static_cast<Ctx*>(p);
      const size_t begin = std::min(c->bytes, c->part * t), end = std::min(c->bytes, begin + c->part);
      if (end <= begin) return;
      // streaming: the kernels' own streaming copy (core/streaming.h), SSE2 so every x86 has it;
      // parts are whole 64-byte lines of 4096-aligned buffers
      const cpu::StreamLines stream = c->streaming ? cpu::stream_lines_for(CpuIsa::scalar) : nullptr;
      if (!stream) return void(std::memcpy(c->dst + begin, c->src + begin, end - begin));
      stream(c->dst + begin, c->src + begin, static_cast<int64_t>((end - begin) / 64));
      cpu::end_streaming(stream);
    }, &ctx);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::free(src);
  std::free(dst);
  return 2.0 * static_cast<double>(bytes) / best * 1e-9;
}

}  // namespace fastnn
