#include "bindings/bindings.h"
#include "bindings/graph_slot.h"
#include "core/dispatch.h"

namespace fastnn::bind {

GraphSlot to_graph_slot(py::handle slot, const Tensor& t, const char* tensor_arg) {
  if (slot.is_none()) return GraphSlot{};
  if (!py::isinstance<GraphSlotHandle>(slot))
    throw TypeError(detail::concat("slot: expected None or a fastnn graph slot, got ",
                                   py::str(py::type::handle_of(slot).attr("__name__")).cast<std::string>()));
  const auto& h = slot.cast<const GraphSlotHandle&>();
  FASTNN_CHECK(h.graph->capturing() || h.graph->captured(), ValueError,
               "slot: its graph was reset; capture again");
  FASTNN_CHECK(t.device() == h.graph->device(), ValueError, "slot: ", tensor_arg, " is on ", t.device().str(),
               " but the graph captures ", h.graph->device().str());
  return h.graph->slot(h.index);
}

void bind_graph(py::module_& m) {
  py::class_<GraphSlotHandle>(m, "GraphSlot",
                              "A graph's slot for one op's per-step scalars (see fastnn.cuda).")
      .def_property_readonly("index", [](const GraphSlotHandle& h) { return h.index; });

  py::class_<CudaGraph, std::shared_ptr<CudaGraph>>(m, "CudaGraph", R"doc(
A CUDA graph of fastnn work (the low level of fastnn.cuda.CUDAGraph).

capture_begin(device) records this thread's fastnn kernels, device copies and fills instead of
running them, allocating new tensors from the graph's own pool; capture_end() instantiates the
graph; replay() launches it on the default stream after copying the slots' per-step scalars.)doc")
      .def(py::init<>())
      .def("capture_begin", [](CudaGraph& g, py::handle device) { g.capture_begin(parse_device(device)); },
           py::arg("device") = "cuda")
      .def("capture_end", &CudaGraph::capture_end)
      .def("replay", &CudaGraph::replay, py::call_guard<py::gil_scoped_release>())
      .def("reset", &CudaGraph::reset)
      .def("new_slot", [](std::shared_ptr<CudaGraph> g) { return GraphSlotHandle{g, g->new_slot()}; })
      .def_property_readonly("capturing", &CudaGraph::capturing)
      .def_property_readonly("captured", &CudaGraph::captured)
      .def_property_readonly("num_nodes", &CudaGraph::num_nodes)
      .def_property_readonly("device", [](const CudaGraph& g) { return g.device().str(); });

  m.def("cuda_synchronize", [](py::handle device_) {
          const Device device = parse_device(device_);
          py::gil_scoped_release no_gil;
          cuda_synchronize(device);
        },
        py::arg("device") = "cuda",
        "Waits for all work queued on the CUDA device.");
  m.def("cuda_capturing", &cuda_capturing, "Whether this thread is capturing a CUDA graph.");
}

}  // namespace fastnn::bind
