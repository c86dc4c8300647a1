// The CUDA memory layer: device count, a caching allocator, fills and copies. Every CUDA call is
// checked; an error surfaces as a RuntimeError naming the call.
//
// The caching allocator keeps freed blocks in per-device free lists keyed by a size class, so a
// training step that allocates the same tensors as the one before it is served from the lists and
// makes no cudaMalloc (cudaMalloc synchronises the device and costs far more than a kernel).
// Size classes are 512 bytes up to 2 KiB, then four per power of two (waste under 25%); exact sizes
// under emulation (see size_class). Blocks are
// only ever used on the legacy default stream (cuda_rt::current_stream), where work is ordered, so
// a block freed on the host can be handed out again at once. cudaMalloc failing with out-of-memory
// empties the cache and retries once.
//
// During a graph capture (core/cuda_graph.h) allocations come from that graph's private pool:
// a block handed out then belongs to the pool for good, and when freed goes back to the pool, not
// to the shared lists, because every replay of the graph writes it. Within the capture the pool's
// free blocks are reused in recording order, which is the order the replay runs in. When the
// graph is reset the pool's blocks rejoin the shared lists.
#include <algorithm>
#include <mutex>

#include "core/cuda_graph.h"
#include "core/cuda_launch.h"
#include "core/dispatch.h"
#include "core/free_blocks.h"
#include "core/tensor.h"

namespace fastnn {

namespace detail {
struct CapturePool {
  int device = 0;
  bool alive = true;  // its graph still exists (guarded by the device cache's mutex)
  FreeBlocks free;
};
}  // namespace detail

namespace {

using detail::CapturePool;

// The pool this thread's capture allocates from (null when not capturing).
thread_local std::shared_ptr<CapturePool> tl_capture_pool;

constexpr int kMaxDevices = 64;

size_t size_class(size_t n) {
#if defined(FASTNN_CUDA_EMULATED)
  // Exact sizes under emulation: a kernel reading past a tensor's end then runs off its cudaMalloc
  // block, where AddressSanitizer sees it. Steady training steps still reuse blocks of equal size.
  return n;
#else
  constexpr size_t kMin = 512;
  if (n <= kMin) return kMin;
  const int e = 63 - __builtin_clzll(n - 1);  // 2^e < n <= 2^(e + 1)
  const size_t step = std::max(kMin, size_t{1} << (e - 2));
  return (n + step - 1) / step * step;
#endif
}

class DeviceCache {
 public:
  explicit DeviceCache(int device) : device_(device) {}

  // A block of `bytes` (a size class): from the shared free list, or during a capture from the
  // pool's own (never the shared one: a block freed during the capture may still be read by a kernel
  // recorded before the free, and the graph must not also write it), else cudaMalloc.
  void* allocate(size_t bytes, CapturePool* pool) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (void* p = (pool ? pool->free : free_).take(bytes)) {
      cached_bytes_ -= bytes;
      in_use_bytes_ += bytes;
      ++stats_.cache_hits;
#if defined(FASTNN_CUDA_EMULATED)
      // as fresh cudaMalloc memory is: NaN, so a kernel that reads an output before writing it
      // shows it in its results rather than reading the previous tensor's values (in a capture,
      // at that point of every replay)
      FASTNN_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, bytes, cuda_rt::current_stream()));
#endif
      return p;
    }
    FASTNN_CUDA_CHECK(cudaSetDevice(device_));
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky: clear it, give the cache back and try once more
      release_cached_locked();
      err = cudaMalloc(&p, bytes);
      if (err == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        throw std::runtime_error(detail::concat(
            "CUDA out of memory: cannot allocate ", bytes, " bytes on cuda:", device_, " (",
            in_use_bytes_, " bytes in use by live tensors; the allocator's cache was emptied)"));
      }
    }
    if (err != cudaSuccess) cuda_rt::throw_cuda_error("cudaMalloc", err, __FILE__, __LINE__);
    ++stats_.malloc_calls;
    in_use_bytes_ += bytes;
    return p;
  }

  // Called by Storage destructors: no CUDA call, nothing that can throw but bad_alloc.
  void release(void* p, size_t bytes, CapturePool* pool) {
    std::lock_guard<std::mutex> lock(mutex_);
    (pool && pool->alive ? pool->free : free_).put(p, bytes);
    in_use_bytes_ -= bytes;
    cached_bytes_ += bytes;
  }

  void release_pool(CapturePool& pool) {
    std::lock_guard<std::mutex> lock(mutex_);
    pool.alive = false;
    free_.absorb(pool.free);
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached_locked();
  }

  CudaMemoryStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    CudaMemoryStats s = stats_;
    s.in_use_bytes = static_cast<int64_t>(in_use_bytes_);
    s.cached_bytes = static_cast<int64_t>(cached_bytes_);
    return s;
  }

 private:
  // Frees the shared lists' blocks. A live graph's pool keeps its own (every replay writes them):
  // they stay counted in cached_bytes_ and rejoin the shared lists when the graph is reset.
  void release_cached_locked() {
    if (!free_.bytes()) return;
    FASTNN_CUDA_CHECK(cudaSetDevice(device_));
    free_.release_all([&](void* p, size_t bytes) {
      FASTNN_CUDA_CHECK(cudaFree(p));  // a throw leaves this block listed and counted
      ++stats_.free_calls;
      cached_bytes_ -= bytes;
    });
  }

  const int device_;
  std::mutex mutex_;
  FreeBlocks free_;
  size_t in_use_bytes_ = 0, cached_bytes_ = 0;  // cached: in free_ and in the live pools' lists
  CudaMemoryStats stats_;
};

// Created on first use and never destroyed: Storage deleters may run during interpreter exit,
// after static destructors; the driver reclaims the memory with the process.
DeviceCache& device_cache(int device) {
  static DeviceCache* caches[kMaxDevices] = {};
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (!caches[device]) caches[device] = new DeviceCache(device);
  return *caches[device];
}

void require_device(Device device) {
  const int n = cuda_device_count();
  FASTNN_CHECK(device.index >= 0 && device.index < n && device.index < kMaxDevices, ValueError, "device ",
               device.str(), " is not available (", n, " CUDA device(s) usable)");
  FASTNN_CUDA_CHECK(cudaSetDevice(device.index));
}

}  // namespace

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

std::shared_ptr<Storage> cuda_allocate(size_t nbytes, Device device) {
  require_device(device);
  void* p = nullptr;
  const size_t bytes = nbytes ? size_class(nbytes) : 0;
  DeviceCache& cache = device_cache(device.index);
  std::shared_ptr<CapturePool> pool =
      tl_capture_pool && tl_capture_pool->device == device.index ? tl_capture_pool : nullptr;
  if (bytes) p = cache.allocate(bytes, pool.get());
  debug_stats().owned_bytes += static_cast<int64_t>(nbytes);
  return std::make_shared<Storage>(p, nbytes, device, [nbytes, bytes, &cache, pool](void* q) {
    debug_stats().owned_bytes -= static_cast<int64_t>(nbytes);
    if (q) cache.release(q, bytes, pool.get());
  });
}

namespace detail {

std::shared_ptr<CapturePool> capture_pool_begin(Device device) {
  require_device(device);
  auto pool = std::make_shared<CapturePool>();
  pool->device = device.index;
  tl_capture_pool = pool;
  return pool;
}

void capture_pool_end() { tl_capture_pool.reset(); }

void capture_pool_release(const std::shared_ptr<CapturePool>& pool) {
  if (pool) device_cache(pool->device).release_pool(*pool);
}

}  // namespace detail

CudaMemoryStats cuda_memory_stats(Device device) {
  require_device(device);
  return device_cache(device.index).stats();
}

void cuda_empty_cache() {
  for (int d = 0; d < std::min(cuda_device_count(), kMaxDevices); ++d) device_cache(d).empty_cache();
}

void cuda_synchronize(Device device) {
  FASTNN_CHECK(!cuda_capturing(), ValueError,
               "synchronize() inside a CUDA graph capture: the capture records work, it runs none");
  require_device(device);
  FASTNN_CUDA_CHECK(cudaDeviceSynchronize());
}

namespace {
cudaStream_t dlpack_stream(uintptr_t stream) {
  return stream == 2 ? cudaStreamPerThread : reinterpret_cast<cudaStream_t>(stream);
}
}  // namespace

void cuda_consumer_waits_for_fastnn(Device device, uintptr_t stream) {
  FASTNN_CHECK(!cuda_capturing(), ValueError,
               "__dlpack__(stream=...) inside a CUDA graph capture: nothing captured has run yet");
  require_device(device);
  cudaEvent_t done = nullptr;
  FASTNN_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  // An event may be destroyed once the wait is queued: the wait still covers its work.
  const cudaError_t recorded = cudaEventRecord(done, cuda_rt::current_stream());
  const cudaError_t waited = recorded == cudaSuccess ? cudaStreamWaitEvent(dlpack_stream(stream), done, 0) : recorded;
  cudaEventDestroy(done);
  FASTNN_CUDA_CHECK(waited);
}

void cuda_fastnn_waits_for_consumer(Device device, uintptr_t stream) noexcept {
  // Runs in DLPack deleters, on any thread and possibly at exit: failures are dropped (a stream
  // destroyed by then has nothing left to wait for).
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess || cudaSetDevice(device.index) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  cudaEvent_t done = nullptr;
  if (cudaEventCreateWithFlags(&done, cudaEventDisableTiming) == cudaSuccess) {
    if (cudaEventRecord(done, dlpack_stream(stream)) == cudaSuccess)
      cudaStreamWaitEvent(cuda_rt::current_stream(), done, 0);
    cudaEventDestroy(done);
  }
  cudaSetDevice(previous);
  cudaGetLastError();
}

// Fills and device-to-device copies are queued on the stream like kernels (and so can be captured);
// copies to or from the host wait for the device, which a capture cannot record.
void cuda_memset_zero(void* data, size_t nbytes, Device device) {
  require_device(device);
  if (nbytes) FASTNN_CUDA_CHECK(cudaMemsetAsync(data, 0, nbytes, cuda_rt::current_stream()));
}

void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (!nbytes) return;
  require_device(dst_device.is_cuda() ? dst_device : src_device);
  if (dst_device.is_cuda() && src_device.is_cuda()) {
    FASTNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, cuda_rt::current_stream()));
    return;
  }
  FASTNN_CHECK(!cuda_capturing(), ValueError, "a copy between ", src_device.str(), " and ", dst_device.str(),
               " cannot be captured in a CUDA graph (it would happen once, at capture): copy into the "
               "graph's input tensors before replay() instead");
  FASTNN_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, dst_device.is_cuda() ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost));
}

}  // namespace fastnn
