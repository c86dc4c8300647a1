// CUDA graphs of fastnn work (interface and the why: core/cuda_graph.h).
//
// Capture runs on a stream of the graph's own, non-blocking and created for it, because the legacy
// default stream cannot be captured; replays are launched on the default stream, so they stay in
// order with the eager work around them. Capture mode is relaxed so that the caching allocator may
// still cudaMalloc a block the graph needs; everything that would reach the host (a copy to or
// from it, a synchronisation) is refused by fastnn before it is made (and by the emulator, which
// fails any such call during a capture).
#include <vector>

#include "core/cuda_graph.h"
#include "core/cuda_launch.h"
#include "core/error.h"

namespace fastnn {

namespace {
thread_local CudaGraph* tl_capturing_graph = nullptr;
}

bool cuda_capturing() { return tl_capturing_graph != nullptr; }

struct CudaGraph::Impl {
  Device device{DeviceType::CUDA, 0};
  cudaStream_t stream = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  std::shared_ptr<detail::CapturePool> pool;
  bool capturing = false;
  int64_t num_nodes = 0;
  // Per-step scalars: host staging and the device block the captured kernels read.
  std::vector<unsigned char> slots_host;
  void* slots_device = nullptr;
  int slots_used = 0;

  void free_graph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    exec = nullptr, graph = nullptr, num_nodes = 0;
  }
};

CudaGraph::CudaGraph() : impl_(std::make_unique<Impl>()) {}

CudaGraph::~CudaGraph() {
  // Destructors must not throw: a failing call here leaves memory to the process's end.
  if (impl_->capturing) {
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(impl_->stream, &g);
    if (g) cudaGraphDestroy(g);
    detail::capture_pool_end();
    tl_capturing_graph = nullptr;
    cuda_rt::detail::tl_current_stream = nullptr;
  }
  impl_->free_graph();
  detail::capture_pool_release(impl_->pool);
  if (impl_->slots_device) cudaFree(impl_->slots_device);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
  cudaGetLastError();
}

void CudaGraph::capture_begin(Device device) {
  FASTNN_CHECK(device.is_cuda(), ValueError, "device: a CUDA graph captures CUDA work, got ", device.str());
  FASTNN_CHECK(!cuda_capturing(), ValueError, "a CUDA graph is already being captured on this thread");
  FASTNN_CHECK(!impl_->capturing && !impl_->exec, ValueError,
               "this graph already holds a capture: reset() it before capturing again");
  Impl& g = *impl_;
  g.device = device;
  FASTNN_CUDA_CHECK(cudaSetDevice(device.index));
  if (!g.stream) FASTNN_CUDA_CHECK(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking));
  if (!g.slots_device) {
    FASTNN_CUDA_CHECK(cudaMalloc(&g.slots_device, kGraphSlotBytes * kGraphMaxSlots));
    g.slots_host.assign(kGraphSlotBytes * kGraphMaxSlots, 0);
  }
  g.slots_used = 0;
  // Nothing recorded runs now, so the capture need not wait for the eager work before it: replays
  // are queued after that work on the default stream.
  FASTNN_CUDA_CHECK(cudaStreamBeginCapture(g.stream, cudaStreamCaptureModeRelaxed));
  detail::capture_pool_release(g.pool);  // left by a capture that failed
  g.pool = detail::capture_pool_begin(device);
  g.capturing = true;
  tl_capturing_graph = this;
  cuda_rt::detail::tl_current_stream = g.stream;
}

void CudaGraph::capture_end() {
  Impl& g = *impl_;
  FASTNN_CHECK(g.capturing, ValueError, "capture_end(): this graph is not being captured");
  g.capturing = false;
  tl_capturing_graph = nullptr;
  cuda_rt::detail::tl_current_stream = nullptr;
  detail::capture_pool_end();
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(g.stream, &graph);
  if (err != cudaSuccess) {
    cudaGetLastError();
    cuda_rt::throw_cuda_error("cudaStreamEndCapture (a call during the capture was not capturable)", err,
                              __FILE__, __LINE__);
  }
  g.graph = graph;
  size_t nodes = 0;
  FASTNN_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
  g.num_nodes = static_cast<int64_t>(nodes);
  FASTNN_CUDA_CHECK(cudaGraphInstantiate(&g.exec, graph, 0));
}

void CudaGraph::replay() {
  Impl& g = *impl_;
  FASTNN_CHECK(g.exec, ValueError, "replay(): nothing captured yet (capture a step first)");
  FASTNN_CHECK(!cuda_capturing(), ValueError, "replay(): a graph cannot be replayed while one is being captured");
  FASTNN_CUDA_CHECK(cudaSetDevice(g.device.index));
  // Pageable source: the copy is staged before this returns, so the host may refill the slots for
  // the next step at once.
  if (g.slots_used)
    FASTNN_CUDA_CHECK(cudaMemcpyAsync(g.slots_device, g.slots_host.data(), kGraphSlotBytes * g.slots_used,
                                      cudaMemcpyHostToDevice, cuda_rt::current_stream()));
  FASTNN_CUDA_CHECK(cudaGraphLaunch(g.exec, cuda_rt::current_stream()));
  if (cuda_rt::launch_blocking()) FASTNN_CUDA_CHECK(cudaDeviceSynchronize());
}

void CudaGraph::reset() {
  FASTNN_CHECK(!impl_->capturing, ValueError, "reset(): end the capture first");
  impl_->free_graph();
  detail::capture_pool_release(impl_->pool);
  impl_->pool.reset();
  impl_->slots_used = 0;
}

bool CudaGraph::capturing() const { return impl_->capturing; }
bool CudaGraph::captured() const { return impl_->exec != nullptr; }
int64_t CudaGraph::num_nodes() const { return impl_->num_nodes; }
Device CudaGraph::device() const { return impl_->device; }

int CudaGraph::new_slot() {
  Impl& g = *impl_;
  FASTNN_CHECK(g.capturing, ValueError, "graph slots are handed out during capture only");
  FASTNN_CHECK(g.slots_used < kGraphMaxSlots, ValueError, "a captured graph holds at most ", kGraphMaxSlots,
               " ops with per-step scalars (dropout layers, optimizer groups)");
  return g.slots_used++;
}

GraphSlot CudaGraph::slot(int index) const {
  const Impl& g = *impl_;
  FASTNN_CHECK(index >= 0 && index < g.slots_used, IndexError, "graph slot ", index, " does not exist");
  GraphSlot s;
  s.host = const_cast<unsigned char*>(g.slots_host.data()) + kGraphSlotBytes * index;
  s.device = static_cast<unsigned char*>(g.slots_device) + kGraphSlotBytes * index;
  s.recording = g.capturing;
  return s;
}

}  // namespace fastnn
