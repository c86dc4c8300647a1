#pragma once

namespace fastnn {

// The widest SIMD instruction set this CPU runs, detected once at run time. Kernels compiled for
// several ISAs (with target attributes) pick their variant from this.
enum class CpuIsa { scalar = 0, avx2 = 1, avx512 = 2 };

CpuIsa cpu_isa();
const char* cpu_isa_name(CpuIsa isa);

}  // namespace fastnn
