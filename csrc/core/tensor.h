// fastnn's Tensor: a dense, C-contiguous block of one dtype on one device, viewing a refcounted
// Storage at some byte offset. Views (reshape, flat slices of a model's parameter buffer) share
// the Storage; the memory goes away with the last Tensor, numpy array or torch tensor that uses it.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"

namespace fastnn {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);
int64_t shape_numel(const Shape& shape);

// Live-object counters, exposed as fastnn._C._debug_stats() so tests can prove nothing leaks.
struct DebugStats {
  std::atomic<int64_t> live_storages{0};
  std::atomic<int64_t> owned_bytes{0};
  std::atomic<int64_t> live_export_contexts{0};
  std::atomic<int64_t> foreign_deleter_calls{0};
};
DebugStats& debug_stats();

// The CPU allocator's cache of freed large blocks (Storage::allocate, tensor.cpp).
struct HostCacheStats {
  bool available = false;  // false in sanitizer builds
  int64_t cached_bytes = 0;
  int64_t hits = 0;
};
HostCacheStats host_cache_stats();
void host_empty_cache();  // frees every cached block

struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device;
  std::function<void(void*)> release;  // frees `data`; empty when nothing is owned

  Storage(void* data, size_t nbytes, Device device, std::function<void(void*)> release);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device);
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, Shape shape, DType dtype,
         bool readonly = false);

  static Tensor empty(const Shape& shape, DType dtype, Device device = cpu_device());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = cpu_device());

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t d) const { return shape_.at(d < 0 ? d + dim() : d); }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * itemsize(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : cpu_device(); }
  bool readonly() const { return readonly_; }
  size_t byte_offset() const { return byte_offset_; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* raw_data() const {
    return storage_ ? static_cast<char*>(storage_->data) + byte_offset_ : nullptr;
  }
  template <class T>
  T* data() const {
    FASTNN_CHECK(dtype_of<T>::value == dtype_, TypeError, "tensor is ", dtype_name(dtype_),
                 ", accessed as ", dtype_name(dtype_of<T>::value));
    return static_cast<T*>(raw_data());
  }
  // Pointer for writing: refuses tensors imported read-only (e.g. a non-writeable numpy array).
  template <class T>
  T* mutable_data(const char* what = "tensor") const {
    FASTNN_CHECK(!readonly_, ValueError, what, ": tensor is read-only");
    return data<T>();
  }

  // Same storage, new shape with the same number of elements (-1 infers one dimension).
  Tensor reshape(Shape shape) const;
  // Elements [offset, offset + numel(shape)) of the flattened tensor, viewed with `shape`.
  Tensor flat_slice(int64_t offset, const Shape& shape) const;
  // A fresh contiguous copy, on `device`.
  Tensor clone() const;

  std::string str() const;

 private:
  std::shared_ptr<Storage> storage_;
  size_t byte_offset_ = 0;
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::float32;
  bool readonly_ = false;
};

// Copies src into dst (same dtype and numel; devices may differ once CUDA is in).
void copy_(Tensor& dst, const Tensor& src);
// Sets every element of a floating tensor to `value`.
void fill_(Tensor& dst, double value);

// fill_'s backends (core/tensor.cpp, core/fill_cuda.cu).
namespace cpu {
void fill(Tensor& dst, double value);
}
namespace cuda {
void fill(Tensor& dst, double value);
}

}  // namespace fastnn
