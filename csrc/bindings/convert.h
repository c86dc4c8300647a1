// The single gate between Python and the kernels: every argument is turned into a Tensor and
// checked here, once, with messages that name the argument. Kernels trust what they are given.
#pragma once
#include <pybind11/pybind11.h>

#include <optional>

#include "core/tensor.h"

namespace fastnn::bind {

namespace py = pybind11;

// fastnn.Tensor as is; numpy arrays and torch tensors (and anything with __dlpack__) zero-copy
// when C-contiguous and aligned, else as a contiguous copy. Anything else: TypeError naming `arg`.
Tensor to_tensor(py::handle obj, const char* arg);

// hasattr without the cost of a miss: pybind11's py::hasattr(obj, "name") is
// PyObject_HasAttrString, which on Python 3.11 fetches the attribute and, when it is missing,
// formats and discards an AttributeError (4.5 of the 5.6 us that importing a numpy array took,
// asking it for requires_grad). PyObject_HasAttr with a str object asks without raising.
inline bool has_attr(py::handle obj, const char* name) {
  return PyObject_HasAttr(obj.ptr(), py::str(name).ptr()) == 1;
}
std::optional<Tensor> to_optional_tensor(py::handle obj, const char* arg);

// DLPack in both directions (bindings/dlpack.cpp).
Tensor from_dlpack(py::handle obj, py::handle copy, const char* arg = "x");
py::object to_dlpack(const Tensor& t, py::handle stream, py::handle max_version,
                     py::handle dl_device, py::handle copy);

// Checks, each raising TypeError (dtype) or ValueError (shape, device) that names `arg`.
void check_floating(const Tensor& t, const char* arg);
void check_dtype(const Tensor& t, DType dtype, const char* arg, const char* like = nullptr);
void check_dim(const Tensor& t, int64_t ndim, const char* arg);
void check_shape(const Tensor& t, const Shape& shape, const char* arg);
void check_same_device(const Tensor& t, const Tensor& ref, const char* arg, const char* ref_arg);
void check_writable(const Tensor& t, const char* arg);
// `t` must have the dtype and device of `ref` (named `ref_arg` in the message).
void check_like(const Tensor& t, const Tensor& ref, const char* arg, const char* ref_arg);

// An output argument: a given `out` is checked (shape, dtype, device, writable) and returned;
// None allocates a fresh tensor.
Tensor output(py::handle out, const Shape& shape, DType dtype, Device device, const char* arg = "out");

// Python-facing parsing of device strings ("cpu", "cuda", "cuda:1") and dtypes.
Device parse_device(py::handle obj);
DType parse_dtype(py::handle obj);
py::object dtype_to_numpy(DType dtype);

}  // namespace fastnn::bind
