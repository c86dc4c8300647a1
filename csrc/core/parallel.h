// How CPU kernels split work across cores: fastnn's own small thread pool, not OpenMP.
//
// Why not OpenMP: a parallel region waits for *every* thread. When another process holds one of
// the two cores, the second thread starts a scheduler time slice late and the whole region waits
// for it (a batch-128 GEMM fell from ~450 to ~26 GFLOP/s). Here each parallel_for is cut into
// chunks that threads *claim*: the caller runs chunks too, so a worker that has not woken up
// simply gets none and the caller finishes alone. Idle workers spin briefly (yielding the core),
// then sleep, so they do not take a core another process needs. Chunk boundaries depend only on
// the problem, never on which thread runs a chunk, so results are the same for any thread count
// that gives the same chunks, and bitwise the same run to run.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace fastnn {

// Elements of simple elementwise work worth one extra thread.
constexpr int64_t kParallelGrain = 32768;

int num_threads();            // threads a parallel_for may use, the caller included
void set_num_threads(int n);  // 1 disables the pool
int64_t idle_spin_us();       // how long an idle worker spins before it sleeps (FASTNN_SPIN_US)
bool in_parallel();           // true inside a parallel_for chunk (nested calls run inline)

// The physical cores that the logical CPUs `cpus` belong to, from the topology under
// `sysfs_cpu_root` (/sys/devices/system/cpu: cpuN/topology/core_cpus_list, or
// thread_siblings_list on older kernels); 0 where that topology cannot be read. The pool's
// default size: one thread per core the process may run on, as PyTorch's and MKL's defaults.
int physical_cores(const std::vector<int>& cpus, const std::string& sysfs_cpu_root);

// Runs `jobs` tiny pool jobs back to back (alternating kinds and chunk counts, nothing between
// them, like a GEMM's packing loops) and returns how many chunks ran wrongly: out of their job's
// range, with another job's function or context, or not exactly once. 0 is right.
int64_t parallel_self_check(int64_t jobs);

namespace detail {
// Runs fn(ctx, c) for c in [0, chunks), spread over the pool; returns when all are done and
// rethrows the first exception a chunk threw.
void run_chunks(int64_t chunks, void (*fn)(void*, int64_t), void* ctx);
}  // namespace detail

// Calls f(begin, end) over [0, n) cut into pieces of `piece` elements (the last may be shorter),
// which the threads claim one at a time as they finish theirs. For long jobs on a machine shared
// with other processes: a core that loses time to another process takes fewer pieces, where
// parallel_for's one chunk per thread would leave the other core waiting for it at the end.
template <class F>
void parallel_pieces(int64_t n, int64_t piece, F&& f) {
  if (n <= 0) return;
  piece = std::max<int64_t>(piece, 1);
  const int64_t pieces = (n + piece - 1) / piece;
  if (pieces <= 1 || num_threads() <= 1 || in_parallel()) {
    for (int64_t begin = 0; begin < n; begin += piece) f(begin, std::min(n, begin + piece));
    return;
  }
  struct Ctx {
    std::remove_reference_t<F>* f;
    int64_t n, piece;
  } ctx{&f, n, piece};
  detail::run_chunks(pieces, [](void* p, int64_t c) {
    auto* x = static_cast<Ctx*>(p);
    const int64_t begin = c * x->piece;
    (*x->f)(begin, std::min(x->n, begin + x->piece));
  }, &ctx);
}

// Calls f(begin, end) over contiguous chunks of [0, n), at most one per thread, in parallel when
// n is at least 2 * grain. Chunk boundaries are multiples of `align` so vector loops keep whole
// vectors.
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& f, int64_t align = 16) {
  if (n <= 0) return;
  const int64_t max_chunks = std::min<int64_t>(num_threads(), n / std::max<int64_t>(grain, 1));
  if (max_chunks <= 1 || in_parallel()) {
    f(int64_t{0}, n);
    return;
  }
  int64_t chunk = (n + max_chunks - 1) / max_chunks;
  chunk = (chunk + align - 1) / align * align;
  parallel_pieces(n, chunk, f);
}

}  // namespace fastnn
