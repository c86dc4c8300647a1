// The CUDA memory layer of a CPU-only build: every CUDA request fails with a clear message.
#ifndef FASTNN_WITH_CUDA
#include "core/cuda_graph.h"
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
void cuda_synchronize(Device) { throw ValueError(kNoCuda); }
void cuda_consumer_waits_for_fastnn(Device, uintptr_t) { throw ValueError(kNoCuda); }
void cuda_fastnn_waits_for_consumer(Device, uintptr_t) noexcept {}

bool cuda_capturing() { return false; }
struct CudaGraph::Impl {};
CudaGraph::CudaGraph() = default;
CudaGraph::~CudaGraph() = default;
void CudaGraph::capture_begin(Device) { throw ValueError(kNoCuda); }
void CudaGraph::capture_end() { throw ValueError(kNoCuda); }
void CudaGraph::replay() { throw ValueError(kNoCuda); }
void CudaGraph::reset() {}
bool CudaGraph::capturing() const { return false; }
bool CudaGraph::captured() const { return false; }
int64_t CudaGraph::num_nodes() const { return 0; }
Device CudaGraph::device() const { return Device{DeviceType::CUDA, 0}; }
int CudaGraph::new_slot() { throw ValueError(kNoCuda); }
GraphSlot CudaGraph::slot(int) const { throw ValueError(kNoCuda); }

}  // namespace fastnn
#endif
