#pragma once

// Kernels keep one portable build and compile their hot loops once per ISA with these attributes,
// picking the variant at run time from cpu_isa(). prefer-vector-width=512: GCC otherwise keeps
// auto-vectorised loops at 256 bits even inside AVX-512 functions.
#define FASTNN_FORCE_INLINE inline __attribute__((always_inline))
#define FASTNN_ALWAYS_INLINE __attribute__((always_inline))  // for lambdas, which take no `inline`
#define FASTNN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FASTNN_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")))

namespace fastnn {

// The widest SIMD instruction set this CPU runs, detected once at run time. Kernels compiled for
// several ISAs (with target attributes) pick their variant from this.
enum class CpuIsa { scalar = 0, avx2 = 1, avx512 = 2 };

CpuIsa cpu_isa();
const char* cpu_isa_name(CpuIsa isa);

// Of one kernel's variants, the one compiled for this CPU's widest ISA.
template <class F>
F* isa_variant(F* avx512, F* avx2, F* scalar) {
  const CpuIsa isa = cpu_isa();
  return isa == CpuIsa::avx512 ? avx512 : isa == CpuIsa::avx2 ? avx2 : scalar;
}

}  // namespace fastnn
