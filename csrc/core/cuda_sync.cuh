// Device helpers for blocks of one launch that hand data to each other through global memory (the
// stream-K GEMM's partial tiles, BatchNorm's one-read pipeline): a writer stores, fences and raises
// a flag; a reader that saw the flag loads what the writer stored through L2.
#pragma once
#include "core/cuda_runtime.h"

namespace fastnn::cuda_rt {

// *p, written by another SM in this launch: L2 holds it, this SM's L1 may hold an older copy.
template <class T>
__device__ __forceinline__ T load_bypassing_l1(const T* p) {
#ifdef __CUDA_ARCH__
  return __ldcg(p);
#else
  return *p;
#endif
}

}  // namespace fastnn::cuda_rt
