#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

#include "core/dispatch.h"

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

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) {
  if (device.is_cuda()) return cuda_allocate(nbytes, device);
  // 64-byte alignment: one cache line, and a full AVX-512 vector.
  size_t rounded = (nbytes + 63) / 64 * 64;
  void* p = nullptr;
  if (rounded) {
    p = std::aligned_alloc(64, rounded);
    if (!p) throw std::bad_alloc();
  }
  debug_stats().owned_bytes += static_cast<int64_t>(rounded);
  return std::make_shared<Storage>(p, nbytes, device, [rounded](void* q) {
    debug_stats().owned_bytes -= static_cast<int64_t>(rounded);
    std::free(q);
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
