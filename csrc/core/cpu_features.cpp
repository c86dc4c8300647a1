#include "core/cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace fastnn {

static CpuIsa detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  CpuIsa best = CpuIsa::scalar;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = CpuIsa::avx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    best = CpuIsa::avx512;
  // FASTNN_ISA=scalar|avx2 caps the choice, so tests can exercise every variant on one machine.
  if (const char* cap = std::getenv("FASTNN_ISA")) {
    CpuIsa want = !std::strcmp(cap, "scalar") ? CpuIsa::scalar
                  : !std::strcmp(cap, "avx2") ? CpuIsa::avx2
                                              : CpuIsa::avx512;
    if (want < best) best = want;
  }
  return best;
#else
  return CpuIsa::scalar;
#endif
}

CpuIsa cpu_isa() {
  static const CpuIsa isa = detect();
  return isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx512: return "AVX-512";
    case CpuIsa::avx2: return "AVX2";
    default: return "scalar";
  }
}

}  // namespace fastnn
