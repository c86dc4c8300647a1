// Lets one function body serve both backends: the op's math is written once, as an inline
// FASTNN_HD function in the op's header, and called from the CPU loop and the CUDA kernel.
#pragma once
#if defined(__CUDACC__)
#define FASTNN_HD __host__ __device__ __forceinline__
#else
#define FASTNN_HD inline __attribute__((always_inline))
#endif
