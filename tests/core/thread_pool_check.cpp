// The thread pool (csrc/core/parallel.cpp) under ThreadSanitizer: tiny jobs back to back, at 2 and
// 3 threads, chunks that throw, and nested calls. Compiled and run by tests/test_thread_pool.py;
// exits non-zero when a chunk ran wrongly, and TSan's report fails the test on any data race.
#include <cstdio>
#include <stdexcept>

#include "core/parallel.h"

int main() {
  using namespace fastnn;
  long faults = 0;
  for (int threads : {2, 3}) {
    set_num_threads(threads);
    const long f = parallel_self_check(100000);
    std::printf("%d threads: %ld chunks run wrongly\n", threads, f);
    faults += f;
  }
  int caught = 0;
  for (int i = 0; i < 2000; ++i) {
    try {
      parallel_pieces(64, 8, [&](int64_t b, int64_t) {
        if (b == 32) throw std::runtime_error("chunk 4 throws");
      });
    } catch (const std::runtime_error&) {
      ++caught;
    }
    long covered = 0;
    parallel_for(100000, 1000, [&](int64_t b, int64_t e) {
      parallel_for(10, 1, [](int64_t, int64_t) {});  // nested: runs inline
      __atomic_fetch_add(&covered, e - b, __ATOMIC_RELAXED);
    });
    if (covered != 100000) ++faults;
  }
  std::printf("exceptions rethrown: %d of 2000; faults: %ld\n", caught, faults);
  return faults == 0 && caught == 2000 ? 0 : 1;
}
