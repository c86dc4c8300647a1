#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include <pthread.h>

#include "core/dispatch.h"
#include "core/env.h"
#include "core/free_blocks.h"
#include "core/host_memory.h"
#include "core/macros.h"

namespace fastnn {

DebugStats& debug_stats() {
  static DebugStats stats;
  return stats;
}

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += detail::concat(i ? ", " : "", shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    FASTNN_CHECK(s >= 0, ValueError, "negative dimension in shape ", shape_str(shape));
    n *= s;
  }
  return n;
}

Storage::Storage(void* data_, size_t nbytes_, Device device_, std::function<void(void*)> release_)
    : data(data_), nbytes(nbytes_), device(device_), release(std::move(release_)) {
  debug_stats().live_storages++;
}

Storage::~Storage() {
  debug_stats().live_storages--;
  if (release) release(data);
}

namespace {

// Freed CPU blocks of at least kHostCacheMinBytes, kept for the next allocation of the same size.
// A training step allocates the same activations and gradients every step; at batch 1024 those are
// 3-4 MiB blocks, which glibc serves with mmap and hands back with munmap (or trims off the heap),
// so every step faulted them in again page by page: 365-520 page faults per step of the lecture
// model, none with the blocks kept (Zen 3, 2026-11-27; the kernels then took 1.04-1.05x their hot
// time inside the step instead of 1.09-1.12x, and the frees between them 0.8-1.0 ms of the step
// instead of 1.3-1.4). Smaller blocks come from malloc's own bins.
// At most FASTNN_CPU_CACHE_MB MiB (default 256; 0 turns the cache off) stay cached; a block that
// would pass that evicts others first. Off under AddressSanitizer, which must see every free.
constexpr size_t kHostCacheMinBytes = size_t{256} << 10;
constexpr int64_t kHostCacheDefaultMb = 256;

constexpr bool kHostCacheAllowed = !FASTNN_ASAN;

// The cap in bytes; `strict`: a malformed FASTNN_CPU_CACHE_MB raises (allocation), else it reads as
// 0 (a Storage destructor must not throw).
size_t host_cache_cap(bool strict) {
  if (!kHostCacheAllowed) return 0;
  try {
    return static_cast<size_t>(env_int("FASTNN_CPU_CACHE_MB", 0).value_or(kHostCacheDefaultMb)) << 20;
  } catch (...) {
    if (strict) throw;
    return 0;
  }
}

class HostBlockCache {
 public:
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    void* p = free_.take(bytes);
    if (p) ++hits_;
    return p;
  }

  // Keeps `p` for reuse, making room under the cap, or frees it when the cache is off, it alone
  // passes the cap, or no list entry can be made for it.
  void give(void* p, size_t bytes) noexcept {
    const size_t cap = host_cache_cap(false);
    if (bytes <= cap) {
      std::lock_guard<std::mutex> lock(mutex_);
      free_.release_until(cap - bytes, [](void* q, size_t) { std::free(q); });
      try {
        free_.put(p, bytes);
        return;
      } catch (...) {
      }
    }
    std::free(p);
  }

  void empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.release_all([](void* p, size_t) { std::free(p); });
  }

  HostCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {kHostCacheAllowed, static_cast<int64_t>(free_.bytes()), hits_};
  }

  // fork() holds the mutex across the copy (pthread_atfork, below), so the child's lists are whole
  // even if another thread was freeing a tensor; the child, whose copy of the mutex is locked by a
  // thread it does not have, starts from a fresh one and keeps the blocks (its own copies).
  void lock_for_fork() { mutex_.lock(); }
  void unlock_after_fork_in_parent() { mutex_.unlock(); }
  void reset_after_fork_in_child() { new (&mutex_) std::mutex(); }

 private:
  std::mutex mutex_;
  FreeBlocks free_;
  int64_t hits_ = 0;
};

// Never destroyed: Storage deleters may run during interpreter exit, after static destructors.
HostBlockCache& host_cache() {
  static HostBlockCache* cache = [] {
    auto* c = new HostBlockCache();
    pthread_atfork([] { host_cache().lock_for_fork(); }, [] { host_cache().unlock_after_fork_in_parent(); },
                   [] { host_cache().reset_after_fork_in_child(); });
    return c;
  }();
  return *cache;
}

}  // namespace

HostCacheStats host_cache_stats() { return host_cache().stats(); }
void host_empty_cache() { host_cache().empty(); }

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) {
  if (device.is_cuda()) return cuda_allocate(nbytes, device);
  const size_t rounded = (nbytes + 63) / 64 * 64;
  const bool cacheable = rounded >= kHostCacheMinBytes && host_cache_cap(true) > 0;
  void* p = cacheable ? host_cache().take(rounded) : nullptr;
  if (rounded && !p) p = host_allocate(rounded);
  debug_stats().owned_bytes += static_cast<int64_t>(rounded);
  return std::make_shared<Storage>(p, nbytes, device, [rounded, cacheable](void* q) {
    debug_stats().owned_bytes -= static_cast<int64_t>(rounded);
    if (cacheable) host_cache().give(q, rounded);
    else std::free(q);
  });
}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, Shape shape, DType dtype,
               bool readonly)
    : storage_(std::move(storage)),
      byte_offset_(byte_offset),
      shape_(std::move(shape)),
      numel_(shape_numel(shape_)),
      dtype_(dtype),
      readonly_(readonly) {}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  int64_t n = shape_numel(shape);
  return Tensor(Storage::allocate(static_cast<size_t>(n) * itemsize(dtype), device), 0, shape,
                dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device.is_cuda()) {
    cuda_memset_zero(t.raw_data(), t.nbytes(), device);
  } else if (t.nbytes()) {
    std::memset(t.raw_data(), 0, t.nbytes());
  }
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      FASTNN_CHECK(infer < 0, ValueError, "reshape: only one dimension can be -1");
      infer = static_cast<int64_t>(i);
    } else {
      FASTNN_CHECK(shape[i] >= 0, ValueError, "reshape: invalid shape ", shape_str(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    FASTNN_CHECK(known != 0 && numel_ % known == 0, ValueError, "reshape: cannot view ",
                 shape_str(shape_), " as ", shape_str(shape));
    shape[infer] = numel_ / known;
  }
  FASTNN_CHECK(shape_numel(shape) == numel_, ValueError, "reshape: cannot view ", shape_str(shape_),
               " (", numel_, " elements) as ", shape_str(shape));
  return Tensor(storage_, byte_offset_, std::move(shape), dtype_, readonly_);
}

Tensor Tensor::flat_slice(int64_t offset, const Shape& shape) const {
  int64_t n = shape_numel(shape);
  FASTNN_CHECK(offset >= 0 && offset + n <= numel_, IndexError, "flat_slice: elements [", offset,
               ", ", offset + n, ") out of range for a tensor of ", numel_);
  return Tensor(storage_, byte_offset_ + static_cast<size_t>(offset) * itemsize(dtype_), shape,
                dtype_, readonly_);
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device());
  copy_(out, *this);
  return out;
}

std::string Tensor::str() const {
  return detail::concat("Tensor(shape=", shape_str(shape_), ", dtype=", dtype_name(dtype_),
                        ", device=", device().str(), ")");
}

void copy_(Tensor& dst, const Tensor& src) {
  FASTNN_CHECK(dst.dtype() == src.dtype(), TypeError, "copy_: dtype mismatch (", dtype_name(dst.dtype()),
               " vs ", dtype_name(src.dtype()), ")");
  FASTNN_CHECK(dst.numel() == src.numel(), ValueError, "copy_: size mismatch (",
               shape_str(dst.shape()), " vs ", shape_str(src.shape()), ")");
  FASTNN_CHECK(!dst.readonly(), ValueError, "copy_: destination is read-only");
  if (!dst.nbytes()) return;
  if (dst.device().is_cpu() && src.device().is_cpu()) {
    std::memmove(dst.raw_data(), src.raw_data(), dst.nbytes());
  } else {
    cuda_copy(dst.raw_data(), dst.device(), src.raw_data(), src.device(), dst.nbytes());
  }
}

void fill_(Tensor& dst, double value) {
  FASTNN_CHECK(!dst.readonly(), ValueError, "fill_: tensor is read-only");
  FASTNN_ON_DEVICE(dst.device(), fill, dst, value);
}

namespace cpu {
void fill(Tensor& dst, double value) {
  dispatch_floating(dst.dtype(), "fill_", [&](auto tag) {
    using T = decltype(tag);
    T* p = dst.data<T>();
    const T v = static_cast<T>(value);
    for (int64_t i = 0, n = dst.numel(); i < n; ++i) p[i] = v;
  });
}
}  // namespace cpu

}  // namespace fastnn
