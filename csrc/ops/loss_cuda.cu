// Host side of the CUDA losses: the launches of loss_kernels.cuh and their scratch buffers (per-block
// partial sums, the labels' summary), allocated through the caching allocator.
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/cuda_graph.h"
#include "core/cuda_launch.h"
#include "ops/loss.h"
#include "ops/loss_kernels.cuh"

namespace fastnn {
namespace cuda {
namespace {

using namespace loss_detail;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

const dim3 kThreads(reduce::kReduceThreads);

template <class F>
void dispatch_cross_entropy(const Tensor& logits, const Tensor& target, F&& f) {
  dispatch_floating(logits.dtype(), "logits", [&](auto ftag) {
    dispatch_index(target.dtype(), "target", [&](auto itag) { f(ftag, itag); });
  });
}

template <class T, class I>
CrossEntropyParams<T, I> cross_entropy_params(const Tensor& logits, const Tensor& target,
                                              const Tensor& weight, int64_t ignore_index) {
  CrossEntropyParams<T, I> p{};
  p.logits = logits.data<T>();
  p.labels = target.data<I>();
  p.weight = weight.defined() ? weight.data<T>() : nullptr;
  p.rows = logits.size(0);
  p.classes = logits.size(1);
  p.ignore_index = ignore_index;
  return p;
}

// Scratch for {sum, count} partials of `blocks` blocks (at least one element: a valid pointer).
Tensor partials_buffer(int64_t blocks, Device device) {
  return Tensor::empty({blocks > 0 ? blocks : 1, 2}, DType::float64, device);
}

template <class T>
void finish_loss(const Tensor& partials, int64_t blocks, bool mean, Tensor& loss) {
  cuda_rt::launch("loss_finish", loss_finish_kernel<T>, dim3(1), kThreads, 0,
                  static_cast<const double*>(partials.data<double>()), blocks, mean, loss.data<T>());
}

// The labels pass (loss_kernels.cuh) and its check, read on the host without stalling the stream:
// the pass's LabelSummary goes to pinned memory by an async copy, an event marks its arrival, and
// the host waits on that event only once the rows kernel is queued behind it, so the GPU runs the
// labels pass and the rows back to back. (A blocking copy between them, the check before any
// launch, left the GPU idle ~30 us a call on an H100: 151 us of wall time at 33,554 x 1000 for
// 107 us of kernels.) When dlogits is the logits themselves the host waits before the rows kernel
// instead, so that raising never leaves the caller's logits overwritten. In a graph capture there
// is nothing to read (the graph gives NaN for a bad label: documented in fastnn.cuda).
struct HostSummarySlot {
  LabelSummary* summary = nullptr;
  cudaEvent_t arrived = nullptr;
};

// One per thread and device, allocated at first use and kept for the process: freeing pinned
// memory and events at thread exit could run after the CUDA runtime's own teardown.
HostSummarySlot& host_summary_slot() {
  thread_local std::vector<HostSummarySlot> slots;
  int device = 0;
  FASTNN_CUDA_CHECK(cudaGetDevice(&device));
  if (slots.size() <= static_cast<size_t>(device)) slots.resize(static_cast<size_t>(device) + 1);
  HostSummarySlot& slot = slots[static_cast<size_t>(device)];
  if (!slot.summary) {
    FASTNN_CUDA_CHECK(cudaEventCreateWithFlags(&slot.arrived, cudaEventDisableTiming));
    FASTNN_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&slot.summary), sizeof(LabelSummary)));
  }
  return slot;
}

class LabelCheck {
 public:
  template <class T, class I>
  LabelCheck(const CrossEntropyParams<T, I>& p, Device device)
      : classes_(p.classes), ignore_index_(p.ignore_index), summary_(summary_tensor(device)) {
    auto* summary = reinterpret_cast<LabelSummary*>(summary_.data<int64_t>());
    const int64_t blocks = std::max<int64_t>(1, ceil_div(p.rows, kElementsPerBlock));
    if (blocks == 1) {
      cuda_rt::launch("cross_entropy_labels", cross_entropy_labels_kernel<T, I>, dim3(1), kThreads, 0, p,
                      static_cast<double*>(nullptr), static_cast<int64_t*>(nullptr), summary);
    } else {
      Tensor weights = Tensor::empty({blocks}, DType::float64, device);
      Tensor first_bad = Tensor::empty({blocks}, DType::int64, device);
      cuda_rt::launch("cross_entropy_labels", cross_entropy_labels_kernel<T, I>,
                      dim3(static_cast<unsigned>(blocks)), kThreads, 0, p, weights.data<double>(),
                      first_bad.data<int64_t>(), summary);
      cuda_rt::launch("cross_entropy_labels_finish", cross_entropy_labels_finish_kernel<I>, dim3(1), kThreads, 0,
                      p.labels, static_cast<const double*>(weights.data<double>()),
                      static_cast<const int64_t*>(first_bad.data<int64_t>()), blocks, summary);
    }
    if (cuda_capturing()) return;
    slot_ = &host_summary_slot();
    const cudaStream_t stream = cuda_rt::current_stream();
    FASTNN_CUDA_CHECK(cudaMemcpyAsync(slot_->summary, summary, sizeof(LabelSummary), cudaMemcpyDeviceToHost, stream));
    FASTNN_CUDA_CHECK(cudaEventRecord(slot_->arrived, stream));
  }
  LabelCheck(const LabelCheck&) = delete;
  LabelCheck& operator=(const LabelCheck&) = delete;
  // A call that failed before raise_if_bad still lets its copy land before the slot's next use.
  ~LabelCheck() {
    if (slot_) cudaEventSynchronize(slot_->arrived);
  }

  // The "mean" denominator, on the device.
  const double* total_weight() const {
    return &reinterpret_cast<const LabelSummary*>(summary_.data<int64_t>())->total_weight;
  }

  // Waits for the labels pass (not for what was queued after it) and raises on a bad label.
  void raise_if_bad() {
    if (!slot_) return;
    HostSummarySlot* slot = std::exchange(slot_, nullptr);
    FASTNN_CUDA_CHECK(cudaEventSynchronize(slot->arrived));
    const LabelSummary s = *slot->summary;
    if (s.first_bad != kNoBadLabel) throw_bad_label(BadLabel{s.first_bad, s.bad_label}, classes_, ignore_index_);
  }

 private:
  static Tensor summary_tensor(Device device) {
    static_assert(sizeof(LabelSummary) == 3 * sizeof(int64_t), "the summary is three 8-byte words");
    return Tensor::empty({3}, DType::int64, device);
  }

  int64_t classes_, ignore_index_;
  Tensor summary_;
  HostSummarySlot* slot_ = nullptr;
};

bool overlap(const Tensor& a, const Tensor& b) {
  const auto* a0 = static_cast<const char*>(a.raw_data());
  const auto* b0 = static_cast<const char*>(b.raw_data());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

template <class T, class I, int kCache>
void launch_cached_rows(const CrossEntropyParams<T, I>& p, dim3 grid) {
  constexpr int VW = 16 / sizeof(T);
  // 16-byte accesses when every row starts on one (a whole number of vectors per row)
  if (p.classes % VW == 0 && cuda_rt::aligned16(p.logits) && (!p.dlogits || cuda_rt::aligned16(p.dlogits)))
    cuda_rt::launch("cross_entropy_rows", cross_entropy_rows_kernel<T, I, kCache, VW>, grid, kThreads, 0, p);
  else
    cuda_rt::launch("cross_entropy_rows", cross_entropy_rows_kernel<T, I, kCache>, grid, kThreads, 0, p);
}

template <class T, class I>
void launch_rows(const CrossEntropyParams<T, I>& p) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.rows, kRowsPerBlock)));
  // registers per lane for the row: 1 (MNIST's 10 classes), 8 or 32; wider rows stream
  if (p.classes <= 32)
    cuda_rt::launch("cross_entropy_rows", cross_entropy_rows_kernel<T, I, 1>, grid, kThreads, 0, p);
  else if (p.classes <= 32 * 8)
    launch_cached_rows<T, I, 8>(p, grid);
  else if (p.classes <= 32 * 32)
    launch_cached_rows<T, I, 32>(p, grid);
  else
    cuda_rt::launch("cross_entropy_rows", cross_entropy_rows_kernel<T, I, 0>, grid, kThreads, 0, p);
}

template <class T>
ElementwiseParams<T> elementwise_params(const Tensor& input, const Tensor& target) {
  ElementwiseParams<T> p{};
  p.x = input.data<T>();
  p.t = target.data<T>();
  p.n = input.numel();
  return p;
}

template <class T>
void bce_options(ElementwiseParams<T>& p, const Tensor& input, const Tensor& weight, const Tensor& pos_weight) {
  p.weight = broadcast_of<T>(weight, input);
  p.pos_weight = broadcast_of<T>(pos_weight, input);
}

unsigned elementwise_grid(int64_t n) { return cuda_rt::grid_for(n, reduce::kReduceThreads); }

template <class T, class Op>
void elementwise_forward(ElementwiseParams<T> p, Reduction reduction, Tensor& loss, const Device device,
                         const char* name_none, const char* name_sum) {
  if (reduction == Reduction::none) {
    p.loss = loss.data<T>();
    cuda_rt::launch(name_none, elementwise_loss_kernel<T, Op>, dim3(elementwise_grid(p.n)), kThreads, 0, p);
    return;
  }
  const int64_t blocks = ceil_div(p.n, kElementsPerBlock);
  Tensor partials = partials_buffer(blocks, device);
  p.partials = partials.data<double>();
  cuda_rt::launch(name_sum, elementwise_sum_kernel<T, Op>, dim3(static_cast<unsigned>(blocks)), kThreads, 0, p);
  finish_loss<T>(partials, blocks, reduction == Reduction::mean, loss);
}

template <class T, class Op>
void elementwise_backward(ElementwiseParams<T> p, const Tensor& dloss, Reduction reduction, Tensor& dinput,
                          const char* name) {
  if (p.n == 0) return;
  p.grad = dinput.data<T>();
  if (reduction == Reduction::none) p.upstream = dloss.data<T>();
  else p.dloss = dloss.data<T>();
  p.mean = reduction == Reduction::mean;
  cuda_rt::launch(name, elementwise_grad_kernel<T, Op>, dim3(elementwise_grid(p.n)), kThreads, 0, p);
}

}  // namespace

void cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                           Reduction reduction, int64_t ignore_index, Tensor& loss) {
  dispatch_cross_entropy(logits, target, [&](auto ftag, auto itag) {
    using T = decltype(ftag);
    auto p = cross_entropy_params<T, decltype(itag)>(logits, target, weight, ignore_index);
    LabelCheck labels(p, logits.device());
    if (reduction == Reduction::none) {
      p.row_loss = loss.data<T>();
      launch_rows(p);
    } else {
      const int64_t blocks = ceil_div(p.rows, kRowsPerBlock);
      Tensor partials = partials_buffer(blocks, logits.device());
      p.partials = partials.data<double>();
      launch_rows(p);
      finish_loss<T>(partials, blocks, reduction == Reduction::mean, loss);
    }
    labels.raise_if_bad();
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& dloss,
                            const Tensor& weight, Reduction reduction, int64_t ignore_index,
                            Tensor& dlogits) {
  if (logits.size(0) == 0) return;
  dispatch_cross_entropy(logits, target, [&](auto ftag, auto itag) {
    using T = decltype(ftag);
    auto p = cross_entropy_params<T, decltype(itag)>(logits, target, weight, ignore_index);
    p.dlogits = dlogits.data<T>();
    LabelCheck labels(p, logits.device());
    if (reduction == Reduction::none) {
      p.row_upstream = dloss.data<T>();
    } else {
      p.dloss = dloss.data<T>();
      if (reduction == Reduction::mean) p.denominator = labels.total_weight();
    }
    if (overlap(dlogits, logits)) labels.raise_if_bad();
    launch_rows(p);
    labels.raise_if_bad();
  });
}

void cross_entropy_fused(const Tensor& logits, const Tensor& target, const Tensor& weight,
                         Reduction reduction, int64_t ignore_index, Tensor& loss, Tensor& dlogits) {
  dispatch_cross_entropy(logits, target, [&](auto ftag, auto itag) {
    using T = decltype(ftag);
    auto p = cross_entropy_params<T, decltype(itag)>(logits, target, weight, ignore_index);
    p.dlogits = dlogits.data<T>();
    LabelCheck labels(p, logits.device());
    if (reduction == Reduction::mean) p.denominator = labels.total_weight();
    const int64_t blocks = ceil_div(p.rows, kRowsPerBlock);
    Tensor partials = partials_buffer(blocks, logits.device());
    p.partials = partials.data<double>();
    if (overlap(dlogits, logits)) labels.raise_if_bad();
    launch_rows(p);
    finish_loss<T>(partials, blocks, reduction == Reduction::mean, loss);
    labels.raise_if_bad();
  });
}

void mse_forward(const Tensor& input, const Tensor& target, Reduction reduction, Tensor& loss) {
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    elementwise_forward<T, MseOp>(elementwise_params<T>(input, target), reduction, loss, input.device(),
                                  "mse_loss", "mse_sum");
  });
}

void mse_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                  Reduction reduction, Tensor& dinput) {
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    elementwise_backward<T, MseOp>(elementwise_params<T>(input, target), dloss, reduction, dinput, "mse_grad");
  });
}

void bce_with_logits_forward(const Tensor& input, const Tensor& target, const Tensor& weight,
                             const Tensor& pos_weight, Reduction reduction, Tensor& loss) {
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    ElementwiseParams<T> p = elementwise_params<T>(input, target);
    bce_options(p, input, weight, pos_weight);
    elementwise_forward<T, BceOp>(p, reduction, loss, input.device(), "bce_with_logits_loss",
                                  "bce_with_logits_sum");
  });
}

void bce_with_logits_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                              const Tensor& weight, const Tensor& pos_weight, Reduction reduction,
                              Tensor& dinput) {
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    ElementwiseParams<T> p = elementwise_params<T>(input, target);
    bce_options(p, input, weight, pos_weight);
    elementwise_backward<T, BceOp>(p, dloss, reduction, dinput, "bce_with_logits_grad");
  });
}

}  // namespace cuda
}  // namespace fastnn
