// The Python handle of a graph slot (core/cuda_graph.h): which graph, which slot. Ops that take
// per-step scalars accept one as `slot=`.
#pragma once
#include <memory>

#include "bindings/convert.h"
#include "core/cuda_graph.h"

namespace fastnn::bind {

struct GraphSlotHandle {
  std::shared_ptr<CudaGraph> graph;
  int index = 0;
};

// None -> an empty slot (an eager call). Otherwise `t` (the op's main tensor) must live on the
// graph's device, and the graph must be capturing (record the launch) or captured (store only).
GraphSlot to_graph_slot(py::handle slot, const Tensor& t, const char* tensor_arg);

}  // namespace fastnn::bind
