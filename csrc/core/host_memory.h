// Host memory for tensors (core/tensor.cpp) and the CPU GEMM's packing buffers (ops/gemm_cpu.cpp):
// 64-byte aligned (a cache line, a whole AVX-512 vector), and from 2 MiB on backed by transparent
// huge pages where the kernel offers them only on request (THP "madvise", the default of many
// distributions). A training step streams ~35 MB of weights, gradients and optimizer state (the
// lecture model) through 4 KiB pages, more than the L2 TLB's reach (2048 entries, 8 MiB on Zen 3):
// with the blocks of 2 MiB and more on huge pages the lecture step took 0.972-0.978x the time at
// batch 128 and 0.964x at 1024 (Zen 3, 2 threads, two models stepped alternately in one process,
// 30-40 rounds). The allocation is not rounded up: only the whole 2 MiB pages inside it are
// advised, so it costs no memory; the rest stays on small pages. FASTNN_HUGE_PAGES=0 turns the
// request off (read at each allocation, so a test or an A/B run can flip it).
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "core/env.h"

namespace fastnn {

constexpr size_t kHugePageBytes = size_t{2} << 20;

// `bytes` (a multiple of 64) of uninitialised memory for std::free; throws std::bad_alloc.
inline void* host_allocate(size_t bytes) {
  const bool huge = bytes >= kHugePageBytes && env_flag("FASTNN_HUGE_PAGES").value_or(true);
  // posix_memalign, not aligned_alloc: C11 leaves aligned_alloc undefined unless the size is a
  // multiple of the alignment, and most blocks here are not whole huge pages.
  void* p = nullptr;
  if (posix_memalign(&p, huge ? kHugePageBytes : 64, bytes) != 0) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  // A hint: where THP is off ("never") or already on for all memory ("always") it changes nothing,
  // and its failure is no error.
  if (huge) madvise(p, bytes / kHugePageBytes * kHugePageBytes, MADV_HUGEPAGE);
#endif
  return p;
}

}  // namespace fastnn
