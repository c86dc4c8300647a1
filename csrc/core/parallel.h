// How CPU kernels split work across cores. Small problems stay on one thread: waking the OpenMP
// team costs microseconds, more than a few thousand elements of elementwise work.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace fastnn {

// Elements of simple elementwise work worth one extra thread.
constexpr int64_t kParallelGrain = 32768;

// Calls f(begin, end) over contiguous chunks of [0, n), one per thread, in parallel when n is
// at least `grain`. Chunk boundaries are multiples of `align` so vector loops keep whole vectors.
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& f, int64_t align = 16) {
  if (n <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), std::max<int64_t>(1, n / std::max<int64_t>(grain, 1))));
  if (threads <= 1 || omp_in_parallel()) {
    f(int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t chunk = (n + nt - 1) / nt;
    chunk = (chunk + align - 1) / align * align;
    const int64_t begin = std::min<int64_t>(n, t * chunk), end = std::min<int64_t>(n, begin + chunk);
    if (begin < end) f(begin, end);
  }
}

}  // namespace fastnn
