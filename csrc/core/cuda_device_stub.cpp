// The CUDA memory layer of a CPU-only build: every CUDA request fails with a clear message.
#ifndef FASTNN_WITH_CUDA
#include "core/dispatch.h"
#include "core/tensor.h"

namespace fastnn {

static constexpr const char* kNoCuda =
    "fastnn was built without CUDA (nvcc was not found, or FASTNN_CUDA=OFF); use device='cpu'";

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
std::shared_ptr<Storage> cuda_allocate(size_t, Device) { throw ValueError(kNoCuda); }
void cuda_memset_zero(void*, size_t, Device) { throw ValueError(kNoCuda); }
void cuda_copy(void*, Device, const void*, Device, size_t) { throw ValueError(kNoCuda); }
CudaMemoryStats cuda_memory_stats(Device) { throw ValueError(kNoCuda); }
void cuda_empty_cache() {}

}  // namespace fastnn
#endif
