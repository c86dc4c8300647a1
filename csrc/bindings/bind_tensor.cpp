#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "bindings/convert.h"
#include "core/cpu_features.h"
#include "core/dispatch.h"
#include "core/dlpack.h"
#include "core/parallel.h"
#include "core/probe.h"

#include <cstring>

namespace fastnn::bind {

static py::object tensor_numpy(const Tensor& t) {
  FASTNN_CHECK(t.device().is_cpu(), TypeError, "numpy(): tensor is on ", t.device().str(),
               "; copy it to the CPU first with .to('cpu')");
  return py::module_::import("numpy").attr("from_dlpack")(py::cast(t));
}

static Tensor tensor_to(const Tensor& t, py::handle device) {
  Device target = parse_device(device);
  if (target == t.device()) return t;
  Tensor out = Tensor::empty(t.shape(), t.dtype(), target);
  copy_(out, t);
  return out;
}

void bind_tensor(py::module_& m) {
  py::class_<Tensor>(m, "Tensor", R"doc(
A dense, C-contiguous array of one dtype on one device. Shares memory with numpy arrays and torch
tensors through DLPack: ``np.from_dlpack(t)``, ``torch.from_dlpack(t)`` and ``fastnn.from_dlpack(x)``
copy nothing.)doc")
      .def_property_readonly("shape", [](const Tensor& t) { return py::tuple(py::cast(t.shape())); })
      .def_property_readonly("dtype", [](const Tensor& t) { return dtype_to_numpy(t.dtype()); })
      .def_property_readonly("device", [](const Tensor& t) { return t.device().str(); })
      .def_property_readonly("ndim", &Tensor::dim)
      .def_property_readonly("nbytes", &Tensor::nbytes)
      .def_property_readonly("is_readonly", &Tensor::readonly)
      .def("numel", &Tensor::numel)
      .def("data_ptr", [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw_data()); })
      .def("__len__", [](const Tensor& t) {
        FASTNN_CHECK(t.dim() > 0, TypeError, "len() of a 0-d tensor");
        return t.size(0);
      })
      .def("numpy", &tensor_numpy, "A numpy array sharing this tensor's memory (CPU tensors only).")
      .def("__array__", [](const Tensor& t, py::handle dtype, py::handle copy) {
             py::object a = tensor_numpy(t);
             if (!copy.is_none() && py::bool_(py::reinterpret_borrow<py::object>(copy))) a = a.attr("copy")();
             if (!dtype.is_none()) a = a.attr("astype")(dtype, py::arg("copy") = false);
             return a;
           }, py::arg("dtype") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack__", &to_dlpack, py::kw_only(), py::arg("stream") = py::none(),
           py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(),
           py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const Tensor& t) {
        return py::make_tuple(t.device().is_cuda() ? 2 : 1, t.device().is_cuda() ? t.device().index : 0);
      })
      .def("reshape", [](const Tensor& t, py::args shape) {
             Shape s;
             if (shape.size() == 1 && !py::isinstance<py::int_>(shape[0])) s = shape[0].cast<Shape>();
             else s = shape.cast<Shape>();
             return t.reshape(s);
           })
      .def("_flat_slice", &Tensor::flat_slice, py::arg("offset"), py::arg("shape"),
           "A view of elements [offset, offset + prod(shape)) of the flattened tensor.")
      .def("clone", &Tensor::clone)
      // Pickling support (fastnn/_tensor.py): tensors that share a Storage are pickled as views of
      // one byte buffer, so a model's flat parameter buffer and its per-parameter views stay shared.
      .def("_storage_id", [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.storage().get()); })
      .def("_storage_bytes", [](const Tensor& t) {
        const auto& st = t.storage();
        return Tensor(st, 0, Shape{static_cast<int64_t>(st ? st->nbytes : 0)}, DType::uint8, t.readonly());
      })
      .def_property_readonly("_byte_offset", &Tensor::byte_offset)
      .def("to", &tensor_to, py::arg("device"))
      .def("copy_", [](Tensor& t, py::handle src) {
             Tensor s = to_tensor(src, "src");
             copy_(t, s);
             return t;
           }, py::arg("src"))
      .def("fill_", [](Tensor& t, double v) { fill_(t, v); return t; }, py::arg("value"))
      .def("zero_", [](Tensor& t) {
        check_writable(t, "self");
        if (t.device().is_cuda()) cuda_memset_zero(t.raw_data(), t.nbytes(), t.device());
        else if (t.nbytes()) std::memset(t.raw_data(), 0, t.nbytes());
        return t;
      })
      .def("item", [](const Tensor& t) {
        FASTNN_CHECK(t.numel() == 1, ValueError, "item(): tensor has ", t.numel(), " elements, not 1");
        return tensor_numpy(t.device().is_cpu() ? t : tensor_to(t, py::str("cpu"))).attr("item")();
      })
      .def("__repr__", [](const Tensor& t) {
        if (!t.device().is_cpu()) return t.str();
        std::string body = py::repr(tensor_numpy(t)).cast<std::string>();
        return "fastnn." + body.replace(0, 5, "tensor") ;
      });

  m.def("empty", [](py::handle shape, py::handle dtype, py::handle device) {
          return Tensor::empty(shape.cast<Shape>(), parse_dtype(dtype), parse_device(device));
        }, py::arg("shape"), py::arg("dtype") = "float32", py::arg("device") = "cpu");
  m.def("zeros", [](py::handle shape, py::handle dtype, py::handle device) {
          return Tensor::zeros(shape.cast<Shape>(), parse_dtype(dtype), parse_device(device));
        }, py::arg("shape"), py::arg("dtype") = "float32", py::arg("device") = "cpu");
  m.def("from_dlpack", [](py::handle x, py::handle device, py::handle copy) {
          Tensor t = from_dlpack(x, copy, "x");
          return device.is_none() ? t : tensor_to(t, device);
        }, py::arg("x"), py::kw_only(), py::arg("device") = py::none(), py::arg("copy") = py::none(),
        "A fastnn.Tensor sharing x's memory (numpy array, torch tensor or DLPack capsule). "
        "Non-contiguous or misaligned input is copied (copy=False raises BufferError instead).");
  m.def("as_tensor", [](py::handle x, const char* arg) { return to_tensor(x, arg); },
        py::arg("x"), py::arg("name") = "x");

  m.def("_tensor_view", [](const Tensor& bytes, size_t byte_offset, const Shape& shape, py::handle dtype) {
        DType dt = parse_dtype(dtype);
        FASTNN_CHECK(bytes.dtype() == DType::uint8 && bytes.byte_offset() == 0, ValueError,
                     "_tensor_view: expected the uint8 storage tensor from _storage_bytes()");
        const size_t need = byte_offset + static_cast<size_t>(shape_numel(shape)) * itemsize(dt);
        FASTNN_CHECK(need <= static_cast<size_t>(bytes.numel()) && byte_offset % itemsize(dt) == 0, ValueError,
                     "_tensor_view: view of ", need, " bytes does not fit a storage of ", bytes.numel());
        return Tensor(bytes.storage(), byte_offset, shape, dt, bytes.readonly());
      }, py::arg("storage_bytes"), py::arg("byte_offset"), py::arg("shape"), py::arg("dtype"));
  py::list dtypes;
  for (DType t : kAllDTypes) dtypes.append(dtype_name(t));
  m.attr("dtypes") = py::tuple(dtypes);  // the dtypes a Tensor holds, by name
  m.attr("dtype_list") = dtype_list();   // the same, for messages
  m.def("build_info", []() {
    py::dict d;
    d["version"] = FASTNN_VERSION;
    d["compiler"] = FASTNN_COMPILER;
    d["cpu_isa"] = cpu_isa_name(cpu_isa());
    d["threads"] = num_threads();  // fastnn's own pool (core/parallel.h), not OpenMP
    d["idle_spin_us"] = idle_spin_us();  // FASTNN_SPIN_US
    d["cuda_compiled"] = cuda_compiled();
    d["cuda_device_count"] = cuda_device_count();
    d["cuda_available"] = cuda_device_count() > 0;
#if defined(FASTNN_CUDA_EMULATED)
    d["cuda_emulated"] = true;  // the 'cuda' device is the CPU emulation of CUDA (csrc/emu)
#else
    d["cuda_emulated"] = false;
#endif
    return d;
  });
  m.def("_probe_peak_gflops", &probe_peak_gflops, py::arg("threads"), py::arg("seconds") = 0.05,
        py::call_guard<py::gil_scoped_release>(), "float32 FMA-loop throughput, GFLOP/s");
  m.def("_probe_copy_gbps", &probe_copy_gbps, py::arg("bytes"), py::arg("threads"), py::arg("repeats") = 5,
        py::arg("streaming") = false,
        py::call_guard<py::gil_scoped_release>(), "copy bandwidth (read + write bytes), GB/s: memcpy, or with streaming a copy with streaming stores");

  m.def("_cuda_memory_stats", [](py::handle device) {
    const CudaMemoryStats s = cuda_memory_stats(parse_device(device));
    py::dict d;
    d["in_use_bytes"] = s.in_use_bytes;
    d["cached_bytes"] = s.cached_bytes;
    d["malloc_calls"] = s.malloc_calls;
    d["free_calls"] = s.free_calls;
    d["cache_hits"] = s.cache_hits;
    return d;
  }, py::arg("device") = "cuda",
  "Counters of the CUDA caching allocator: bytes in use and cached, cudaMalloc/cudaFree calls, cache hits.");
  m.def("_cuda_empty_cache", &cuda_empty_cache, "Returns every cached CUDA block to the driver.");
  m.def("set_num_threads", [](int n) {
    FASTNN_CHECK(n >= 1, ValueError, "set_num_threads: n must be >= 1, got ", n);
    set_num_threads(n);
  }, py::arg("n"));
  m.def("get_num_threads", []() { return num_threads(); });
  m.def("_physical_cores", &physical_cores, py::arg("cpus"), py::arg("sysfs_cpu_root") = "/sys/devices/system/cpu",
        "Physical cores of the logical CPUs `cpus` per the sysfs topology under sysfs_cpu_root; 0 if unreadable.");
  m.def("_parallel_self_check", &parallel_self_check, py::arg("jobs"), py::call_guard<py::gil_scoped_release>(),
        "Runs `jobs` tiny thread-pool jobs back to back; returns how many chunks ran wrongly (0 is right).");
  m.def("_cpu_cache_stats", []() {
    const HostCacheStats s = host_cache_stats();
    py::dict d;
    d["available"] = s.available;
    d["cached_bytes"] = s.cached_bytes;
    d["hits"] = s.hits;
    return d;
  }, "The CPU allocator's cache of freed large blocks: bytes held, allocations it served.");
  m.def("_cpu_empty_cache", &host_empty_cache, "Frees every block the CPU allocator keeps for reuse.");
  m.def("_debug_stats", []() {
    auto& s = debug_stats();
    py::dict d;
    d["live_storages"] = s.live_storages.load();
    d["owned_bytes"] = s.owned_bytes.load();
    d["live_export_contexts"] = s.live_export_contexts.load();
    d["foreign_deleter_calls"] = s.foreign_deleter_calls.load();
    return d;
  });
  m.def("_dlpack_layout", []() {
    // sizes and offsets of the ABI structs, checked against the specification by the tests
    py::dict d;
    d["DLTensor"] = sizeof(DLTensor);
    d["DLManagedTensor"] = sizeof(DLManagedTensor);
    d["DLManagedTensorVersioned"] = sizeof(DLManagedTensorVersioned);
    d["DLManagedTensorVersioned.dl_tensor"] = offsetof(DLManagedTensorVersioned, dl_tensor);
    d["DLManagedTensorVersioned.flags"] = offsetof(DLManagedTensorVersioned, flags);
    d["DLTensor.byte_offset"] = offsetof(DLTensor, byte_offset);
    d["DLTensor.dtype"] = offsetof(DLTensor, dtype);
    return d;
  });
}

}  // namespace fastnn::bind
