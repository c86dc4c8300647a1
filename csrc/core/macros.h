// Lets one function body serve both backends: the op's math is written once, as an inline
// FASTNN_HD function in the op's header, and called from the CPU loop and the CUDA kernel.
#pragma once
#if defined(__CUDACC__)
#define FASTNN_HD __host__ __device__ __forceinline__
#else
#define FASTNN_HD inline __attribute__((always_inline))
#endif

// 1 in a build under AddressSanitizer (GCC says so with __SANITIZE_ADDRESS__, Clang through
// __has_feature), else 0: caches that would hide frees from it turn themselves off.
#if defined(__SANITIZE_ADDRESS__)
#define FASTNN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FASTNN_ASAN 1
#endif
#endif
#if !defined(FASTNN_ASAN)
#define FASTNN_ASAN 0
#endif
