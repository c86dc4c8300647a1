// Zero-copy exchange with numpy and torch through DLPack. The facts behind each rule here (what
// numpy 2.4 and torch 2.13 pass, who frees what, which thread) are in shared/design/dlpack.md.
#include <Python.h>
#include <pybind11/stl.h>

#include <cstring>
#include <iterator>
#include <string>

#include "bindings/convert.h"
#include "core/dispatch.h"
#include "core/dlpack.h"

namespace fastnn::bind {

static const char* const kVersionedName = "dltensor_versioned";
static const char* const kUsedVersionedName = "used_dltensor_versioned";
static const char* const kLegacyName = "dltensor";
static const char* const kUsedLegacyName = "used_dltensor";

// ---------------------------------------------------------------------------------------------
// dtype mapping

static DLDataType to_dl_dtype(DType t) {
  switch (t) {
    case DType::float32: return {kDLFloat, 32, 1};
    case DType::float64: return {kDLFloat, 64, 1};
    case DType::int32: return {kDLInt, 32, 1};
    case DType::int64: return {kDLInt, 64, 1};
    case DType::uint8: return {kDLUInt, 8, 1};
    case DType::bool_: return {kDLBool, 8, 1};
  }
  return {0, 0, 0};
}

static bool from_dl_dtype(DLDataType d, DType* out) {
  if (d.lanes != 1) return false;
  if (d.code == kDLFloat && d.bits == 32) *out = DType::float32;
  else if (d.code == kDLFloat && d.bits == 64) *out = DType::float64;
  else if (d.code == kDLInt && d.bits == 32) *out = DType::int32;
  else if (d.code == kDLInt && d.bits == 64) *out = DType::int64;
  else if (d.code == kDLUInt && d.bits == 8) *out = DType::uint8;
  else if (d.code == kDLBool && d.bits == 8) *out = DType::bool_;
  else return false;
  return true;
}

// How numpy and torch name a DLPack dtype ("float16", "bfloat16", "complex64"), for messages.
static std::string dl_dtype_name(DLDataType d) {
  static const char* const kinds[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  if (d.code >= std::size(kinds)) return "of an unknown kind";
  std::string name = kinds[d.code];
  if (d.code != kDLBool) name += std::to_string(d.bits);
  if (d.lanes != 1) name += "x" + std::to_string(d.lanes);
  return name;
}

// ---------------------------------------------------------------------------------------------
// Producer: fastnn -> numpy / torch

namespace {
// Owns what a DLPack consumer borrows: one reference to the Storage plus shape/strides arrays.
// It holds no Python object, so its deleter may run on any thread without the GIL (torch frees
// saved tensors inside backward() with the GIL released).
struct ExportContext {
  std::shared_ptr<Storage> storage;
  std::vector<int64_t> shape, strides;
  uintptr_t consumer_stream = 0;  // a CUDA consumer's stream other than fastnn's (0: none)
  ExportContext() { debug_stats().live_export_contexts++; }
  ~ExportContext() {
    // the block may go back to the allocator now: not before the consumer's queued reads are done
    if (consumer_stream && storage) cuda_fastnn_waits_for_consumer(storage->device, consumer_stream);
    debug_stats().live_export_contexts--;
  }
};

template <class Managed>
void fill_managed(Managed* m, ExportContext* ctx, const Tensor& t) {
  const int64_t nd = t.dim();
  ctx->storage = t.storage();
  ctx->shape = t.shape();
  ctx->strides.assign(nd, 1);
  for (int64_t d = nd - 2; d >= 0; --d) ctx->strides[d] = ctx->strides[d + 1] * ctx->shape[d + 1];
  DLTensor& dl = m->dl_tensor;
  dl.data = t.raw_data();  // view offsets are folded into the pointer; byte_offset stays 0
  dl.device = {t.device().is_cuda() ? kDLCUDA : kDLCPU, t.device().is_cuda() ? t.device().index : 0};
  dl.ndim = static_cast<int32_t>(nd);
  dl.dtype = to_dl_dtype(t.dtype());
  dl.shape = nd ? ctx->shape.data() : nullptr;
  dl.strides = nd ? ctx->strides.data() : nullptr;
  dl.byte_offset = 0;
  m->manager_ctx = ctx;
}

void delete_versioned(DLManagedTensorVersioned* m) {
  delete static_cast<ExportContext*>(m->manager_ctx);
  delete m;
}

void delete_legacy(DLManagedTensor* m) {
  delete static_cast<ExportContext*>(m->manager_ctx);
  delete m;
}

// Capsule destructors take PyObject*: pybind11's void* overload would call the deleter even after
// a consumer renamed the capsule to used_..., freeing memory the consumer still uses.
void capsule_destructor_versioned(PyObject* cap) {
  if (PyCapsule_IsValid(cap, kUsedVersionedName)) return;
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, kVersionedName));
  if (m && m->deleter) m->deleter(m);
  PyErr_Clear();
  PyErr_Restore(type, value, tb);
}

void capsule_destructor_legacy(PyObject* cap) {
  if (PyCapsule_IsValid(cap, kUsedLegacyName)) return;
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, kLegacyName));
  if (m && m->deleter) m->deleter(m);
  PyErr_Clear();
  PyErr_Restore(type, value, tb);
}

bool truthy(py::handle h) { return !h.is_none() && py::bool_(py::reinterpret_borrow<py::object>(h)); }
}  // namespace

py::object to_dlpack(const Tensor& tensor, py::handle stream, py::handle max_version,
                     py::handle dl_device, py::handle copy) {
  Tensor t = tensor;
  uint64_t flags = 0;
  const bool copy_false = !copy.is_none() && !truthy(copy);
  // DLPack's stream for a CUDA tensor: None and 1 are the legacy default stream, fastnn's own (no
  // wait needed); -1 asks for no synchronisation; 0 is ambiguous and forbidden; 2 is the per-thread
  // default stream; anything larger is a cudaStream_t.
  uintptr_t consumer_stream = 0;
  if (!stream.is_none()) {
    FASTNN_CHECK(PyLong_Check(stream.ptr()), TypeError, "__dlpack__: stream must be an int or None, got ",
                 py::str(py::type::handle_of(stream).attr("__name__")).cast<std::string>());
    const long long s = py::cast<long long>(stream);
    if (t.device().is_cpu()) {
      FASTNN_CHECK(s == -1, ValueError, "__dlpack__: a CPU tensor takes stream=None (or -1), got ", s);
    } else {
      FASTNN_CHECK(s != 0 && s >= -1, ValueError, "__dlpack__: stream=", s, " is not a CUDA stream (DLPack: "
                   "1 = legacy default, 2 = per-thread default, a cudaStream_t as an int, -1 = no sync)");
      if (s >= 2) consumer_stream = static_cast<uintptr_t>(s);
    }
  }
  if (!dl_device.is_none()) {
    auto dev = py::cast<std::pair<int, int>>(dl_device);
    const bool want_cpu = dev.first == kDLCPU;
    const bool want_cuda = dev.first == kDLCUDA;
    if (want_cpu && t.device().is_cuda()) {
      FASTNN_CHECK(!copy_false, BufferError, "__dlpack__: a CUDA tensor cannot be exported to the CPU with copy=False");
      Tensor host = Tensor::empty(t.shape(), t.dtype(), cpu_device());
      copy_(host, t);
      t = host;
      flags |= DLPACK_FLAG_BITMASK_IS_COPIED;
    } else if (!(want_cpu && t.device().is_cpu()) &&
               !(want_cuda && t.device().is_cuda() && t.device().index == dev.second)) {
      throw BufferError(detail::concat("__dlpack__: cannot export a ", t.device().str(),
                                       " tensor to DLPack device (", dev.first, ", ", dev.second, ")"));
    }
  }
  if (truthy(copy) && !(flags & DLPACK_FLAG_BITMASK_IS_COPIED)) {
    Tensor c = t.clone();
    t = c;
    flags |= DLPACK_FLAG_BITMASK_IS_COPIED;
  } else if (t.readonly()) {
    flags |= DLPACK_FLAG_BITMASK_READ_ONLY;
  }

  bool versioned = false;
  if (!max_version.is_none()) {
    auto v = py::cast<std::pair<int, int>>(max_version);
    versioned = v.first >= 1;
  }
  if (consumer_stream) cuda_consumer_waits_for_fastnn(t.device(), consumer_stream);  // after any copy above
  auto* ctx = new ExportContext();
  ctx->consumer_stream = consumer_stream;
  if (versioned) {
    auto* m = new DLManagedTensorVersioned{};
    m->version = {FASTNN_DLPACK_MAJOR, FASTNN_DLPACK_MINOR};
    m->deleter = delete_versioned;
    m->flags = flags;
    fill_managed(m, ctx, t);
    PyObject* cap = PyCapsule_New(m, kVersionedName, capsule_destructor_versioned);
    if (!cap) {
      delete_versioned(m);
      throw py::error_already_set();
    }
    return py::reinterpret_steal<py::object>(cap);
  }
  if (flags & DLPACK_FLAG_BITMASK_READ_ONLY) {
    delete ctx;
    throw BufferError("__dlpack__: a read-only tensor cannot be exported as a legacy (unversioned) "
                      "DLPack capsule; ask for max_version >= (1, 0) or pass copy=True");
  }
  auto* m = new DLManagedTensor{};
  m->deleter = delete_legacy;
  fill_managed(m, ctx, t);
  PyObject* cap = PyCapsule_New(m, kLegacyName, capsule_destructor_legacy);
  if (!cap) {
    delete_legacy(m);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(cap);
}

// ---------------------------------------------------------------------------------------------
// Consumer: numpy / torch -> fastnn

namespace {

// Copies a strided (possibly negative- or zero-stride) array into contiguous memory.
void strided_copy(char* dst, const char* src, const int64_t* shape, const int64_t* strides,
                  int ndim, size_t itemsize, int dim) {
  if (dim == ndim) {
    std::memcpy(dst, src, itemsize);
    return;
  }
  int64_t inner = 1;
  for (int d = dim + 1; d < ndim; ++d) inner *= shape[d];
  for (int64_t i = 0; i < shape[dim]; ++i)
    strided_copy(dst + i * inner * itemsize, src + i * strides[dim] * static_cast<int64_t>(itemsize),
                 shape, strides, ndim, itemsize, dim + 1);
}

std::string strides_str(const DLTensor& dl) {
  std::string s = "(";
  for (int d = 0; d < dl.ndim; ++d) s += (d ? ", " : "") + std::to_string(dl.strides[d]);
  return s + ")";
}

}  // namespace

Tensor from_dlpack(py::handle obj, py::handle copy, const char* arg) {
  py::object cap;
  if (PyCapsule_CheckExact(obj.ptr())) {
    cap = py::reinterpret_borrow<py::object>(obj);
  } else {
    if (!has_attr(obj, "__dlpack__"))
      throw TypeError(detail::concat(arg, ": expected an object with __dlpack__ (numpy array, torch tensor) or a DLPack capsule"));
    if (has_attr(obj, "requires_grad") && truthy(obj.attr("requires_grad")))
      throw BufferError(detail::concat(arg, ": a torch tensor that requires grad cannot be shared; pass tensor.detach()"));
    py::dict kwargs;
    kwargs["max_version"] = py::make_tuple(FASTNN_DLPACK_MAJOR, FASTNN_DLPACK_MINOR);
    if (!copy.is_none()) kwargs["copy"] = copy;
    // A CUDA producer is told the stream fastnn reads on, the legacy default (1), so it orders its
    // pending work before ours (torch's own default, -1, would skip that).
    if (has_attr(obj, "__dlpack_device__")) {
      py::tuple dev = obj.attr("__dlpack_device__")();
      if (dev.size() >= 1 && py::int_(dev[0]).cast<int>() == kDLCUDA) kwargs["stream"] = 1;
    }
    // PyObject_Call with the dict as it stands: pybind11's (**kwargs) copies it key by key first
    const py::object method = obj.attr("__dlpack__");
    cap = py::reinterpret_steal<py::object>(PyObject_Call(method.ptr(), py::tuple().ptr(), kwargs.ptr()));
    if (!cap) {
      if (!PyErr_ExceptionMatches(PyExc_TypeError)) throw py::error_already_set();
      PyErr_Clear();
      cap = method();  // producers older than the 2023 array API
    }
  }

  bool versioned = PyCapsule_IsValid(cap.ptr(), kVersionedName);
  if (!versioned && !PyCapsule_IsValid(cap.ptr(), kLegacyName))
    throw BufferError(detail::concat(arg, ": not a live DLPack capsule (a capsule can be consumed only once)"));

  DLTensor* dl;
  bool readonly = false;
  void* managed;
  if (versioned) {
    auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap.ptr(), kVersionedName));
    FASTNN_CHECK(m->version.major == 1, BufferError, arg, ": unsupported DLPack major version ",
                 m->version.major);
    dl = &m->dl_tensor;
    readonly = m->flags & DLPACK_FLAG_BITMASK_READ_ONLY;
    managed = m;
  } else {
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), kLegacyName));
    dl = &m->dl_tensor;
    managed = m;
  }

  // Validate everything before taking ownership: a failure leaves the capsule to its destructor.
  DType dtype;
  FASTNN_CHECK(from_dl_dtype(dl->dtype, &dtype), BufferError, arg, ": unsupported dtype ",
               dl_dtype_name(dl->dtype), " (DLPack code ",
               int(dl->dtype.code), ", bits ", int(dl->dtype.bits), ", lanes ", dl->dtype.lanes,
               "); fastnn takes ", dtype_list());
  Device device;
  if (dl->device.device_type == kDLCPU || dl->device.device_type == kDLCUDAHost) {
    device = cpu_device();
  } else if (dl->device.device_type == kDLCUDA && cuda_compiled()) {
    device = Device{DeviceType::CUDA, dl->device.device_id};
  } else {
    throw BufferError(detail::concat(arg, ": unsupported DLPack device type ", int(dl->device.device_type),
                                     cuda_compiled() ? "" : " (this fastnn build has no CUDA)"));
  }
  FASTNN_CHECK(dl->ndim >= 0 && (dl->ndim == 0 || dl->shape), BufferError, arg, ": malformed DLPack tensor");
  Shape shape(dl->shape, dl->shape + dl->ndim);
  int64_t numel = 1;
  for (int64_t s : shape) {
    FASTNN_CHECK(s >= 0, BufferError, arg, ": negative extent in DLPack shape");
    numel *= s;
  }
  const size_t isz = itemsize(dtype);
  char* data = static_cast<char*>(dl->data) + dl->byte_offset;

  bool contiguous = true;
  if (dl->strides && numel > 0) {
    int64_t expected = 1;
    for (int d = dl->ndim - 1; d >= 0; --d) {
      if (shape[d] == 1) continue;  // a size-1 dimension's stride is arbitrary
      if (dl->strides[d] != expected) contiguous = false;
      expected *= shape[d];
    }
  }
  const bool aligned = numel == 0 || reinterpret_cast<uintptr_t>(data) % isz == 0;
  const bool force_copy = truthy(copy);
  const bool copy_false = !copy.is_none() && !force_copy;

  if (!contiguous || !aligned || force_copy) {
    FASTNN_CHECK(!copy_false, BufferError, arg,
                 !contiguous ? ": DLPack tensor is not C-contiguous (strides in elements: " + strides_str(*dl) + ")"
                             : std::string(": DLPack data is not aligned to its item size"),
                 " and copy=False forbids a copy");
    FASTNN_CHECK(device.is_cpu(), BufferError, arg,
                 ": a non-contiguous CUDA tensor cannot be imported; make it contiguous first");
    // Copy while the producer still owns the memory; the capsule destructor then frees it.
    Tensor out = Tensor::empty(shape, dtype, device);
    if (numel > 0) {
      if (contiguous || !dl->strides) std::memcpy(out.raw_data(), data, out.nbytes());
      else strided_copy(static_cast<char*>(out.raw_data()), data, shape.data(), dl->strides, dl->ndim, isz, 0);
    }
    return out;
  }

  // Zero-copy: the Storage calls the producer's deleter exactly once, when the last fastnn view dies.
  std::function<void(void*)> release;
  if (versioned) {
    auto* m = static_cast<DLManagedTensorVersioned*>(managed);
    release = [m](void*) {
      debug_stats().foreign_deleter_calls++;
      if (m->deleter) m->deleter(m);
    };
  } else {
    auto* m = static_cast<DLManagedTensor*>(managed);
    release = [m](void*) {
      debug_stats().foreign_deleter_calls++;
      if (m->deleter) m->deleter(m);
    };
  }
  auto storage = std::make_shared<Storage>(static_cast<void*>(data), numel * isz, device, std::function<void(void*)>());
  if (PyCapsule_SetName(cap.ptr(), versioned ? kUsedVersionedName : kUsedLegacyName) != 0)
    throw py::error_already_set();  // the storage has no release yet: nothing is freed twice
  storage->release = std::move(release);
  return Tensor(std::move(storage), 0, std::move(shape), dtype, readonly);
}

}  // namespace fastnn::bind
