// Machine probes for the benchmark suite: what this CPU and memory can do right now, measured
// beside each benchmark so ratios to the hardware limit (and disturbance by other load) show.
#pragma once
#include <cstddef>

namespace fastnn {

// FMA throughput of `threads` threads for about `seconds`, in GFLOP/s (float32, 2 FLOP per FMA).
double probe_peak_gflops(int threads, double seconds);
// Copy bandwidth over `bytes`-sized buffers with `threads` threads, in GB/s (read + write bytes):
// memcpy, or with `streaming` a copy whose stores bypass the caches (x86; memcpy elsewhere). The
// best of `repeats`.
double probe_copy_gbps(size_t bytes, int threads, int repeats, bool streaming);

}  // namespace fastnn
