// The CUDA memory layer: device count, allocation and copies. Any CUDA error surfaces as a
// RuntimeError naming the call. The caching allocator arrives with the CUDA kernels.
#include "core/cuda_runtime.h"

#include "core/dispatch.h"
#include "core/tensor.h"

namespace fastnn {

static void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(detail::concat(what, " failed: ", cudaGetErrorString(err)));
}

bool cuda_compiled() { return true; }

int cuda_device_count() {
  // Without a driver this returns cudaErrorInsufficientDriver (35) or cudaErrorNoDevice (100):
  // any error means "no usable GPU", never a failure to import.
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
}

static void require_device(Device device) {
  int n = cuda_device_count();
  FASTNN_CHECK(device.index >= 0 && device.index < n, ValueError, "device ", device.str(),
               " is not available (", n, " CUDA device(s) usable)");
  check_cuda(cudaSetDevice(device.index), "cudaSetDevice");
}

std::shared_ptr<Storage> cuda_allocate(size_t nbytes, Device device) {
  require_device(device);
  void* p = nullptr;
  if (nbytes) check_cuda(cudaMalloc(&p, nbytes), "cudaMalloc");
  debug_stats().owned_bytes += static_cast<int64_t>(nbytes);
  return std::make_shared<Storage>(p, nbytes, device, [nbytes, device](void* q) {
    debug_stats().owned_bytes -= static_cast<int64_t>(nbytes);
    if (q) {
      cudaSetDevice(device.index);
      cudaFree(q);  // errors at process exit (cudart unloading) are deliberately ignored
    }
  });
}

void cuda_memset_zero(void* data, size_t nbytes, Device device) {
  require_device(device);
  if (nbytes) check_cuda(cudaMemset(data, 0, nbytes), "cudaMemset");
}

void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (!nbytes) return;
  cudaMemcpyKind kind = dst_device.is_cuda()
                            ? (src_device.is_cuda() ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                            : cudaMemcpyDeviceToHost;
  require_device(dst_device.is_cuda() ? dst_device : src_device);
  check_cuda(cudaMemcpy(dst, src, nbytes, kind), "cudaMemcpy");
}

}  // namespace fastnn
