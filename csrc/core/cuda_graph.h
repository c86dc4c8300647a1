// CUDA graphs of fastnn work: a whole training step (forward, loss, backward, optimizer) captured
// once and replayed with one launch, so a step of many small kernels is not bound by launch
// latency. The host-facing half (compiled by g++ into the bindings too); the CUDA half is
// core/cuda_graph.cu, and a CPU-only build's stub refuses.
//
// A replay re-runs the captured kernels with the arguments they were captured with, but a step has
// scalars that change every step: the dropout key, the optimizer's step count and bias
// corrections, the learning rate. Those ops read them through a GraphSlot: a few bytes of device
// memory that the kernel reads instead of a by-value argument, and a host copy that the host fills
// before each replay (one small async copy of all slots, ordered before the graph's launch). The
// host computes them with the very code of an eager step, so a replayed step gives the same bits.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "core/device.h"
#include "core/macros.h"

namespace fastnn {

constexpr size_t kGraphSlotBytes = 128;  // the largest per-step scalars: AdamScalars<double>
constexpr int kGraphMaxSlots = 256;

// An op's view of one slot. Empty (host == nullptr) in an eager call.
struct GraphSlot {
  unsigned char* host = nullptr;  // the staging bytes the host writes
  void* device = nullptr;         // where the captured kernel reads them
  bool recording = false;         // its graph is being captured: launch too (else only store)

  explicit operator bool() const { return host != nullptr; }

  // Stores this step's scalars; returns their device address for the kernel.
  template <class S>
  const S* store(const S& value) const {
    static_assert(sizeof(S) <= kGraphSlotBytes, "per-step scalars larger than a graph slot");
    std::memcpy(host, &value, sizeof(S));
    return static_cast<const S*>(device);
  }
};

// A kernel's per-step scalars: by value in an eager launch; read from a graph slot in a captured
// one (every replay then sees what the host stored for that step).
template <class S>
struct StepScalars {
  S value;
  const S* slot = nullptr;
  FASTNN_HD S get() const { return slot ? *slot : value; }
};

// This call's scalars as a kernel takes them, and whether to launch it: with a slot of a graph
// being captured the kernel is recorded reading the slot; with a slot of a captured graph the call
// only stores the scalars for the next replay.
template <class S>
bool step_scalars(const S& value, const GraphSlot& slot, StepScalars<S>& out) {
  out.value = value;
  out.slot = nullptr;
  if (!slot) return true;
  out.slot = slot.store(value);
  return slot.recording;
}

// Whether the calling thread is capturing a graph (ops that would synchronise with the host refuse
// or take a capture-safe path).
bool cuda_capturing();

// One captured graph. Capture and replay on the thread that made it; not copyable.
class CudaGraph {
 public:
  CudaGraph();
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Starts recording this thread's fastnn work on `device`: kernels, device copies and fills go
  // into the graph instead of running; new tensors come from the graph's own memory pool, which
  // stays reserved for it (replays write there) until reset(). Host copies and anything that would
  // wait for the device raise.
  void capture_begin(Device device);
  // Ends the recording and instantiates the graph. On error nothing is left captured.
  void capture_end();
  // Copies the slots to the device, then launches the graph on the default stream, after all
  // work queued before and before all work queued after. Asynchronous, as a kernel launch is.
  void replay();
  // Drops the graph and gives its memory pool back to the allocator (tensors still alive keep
  // their memory until they die).
  void reset();

  bool capturing() const;
  bool captured() const;
  int64_t num_nodes() const;  // recorded kernels, copies and fills
  Device device() const;

  // The next free slot, during capture (the ops of one captured call take one each).
  int new_slot();
  GraphSlot slot(int index) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The caching allocator's side of capture (core/cuda_device.cu), for core/cuda_graph.cu.
namespace detail {
struct CapturePool;
// From now until capture_pool_end(), this thread's allocations on `device` come from a new pool
// whose blocks only that graph's capture may reuse, so nothing else takes memory that its replays
// write.
std::shared_ptr<CapturePool> capture_pool_begin(Device device);
void capture_pool_end();
// The graph is gone: the pool's free blocks, and its live ones when they are freed, go back to the
// shared cache.
void capture_pool_release(const std::shared_ptr<CapturePool>& pool);
}  // namespace detail

}  // namespace fastnn
