// Host side of the CUDA BatchNorm1d: picks one launch (few rows), stats + finish + apply launches
// (rows split into chunks) or, for training inputs larger than L2, the one-read pipeline launch,
// as described in batchnorm_kernels.cuh.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>

#include "core/cuda_launch.h"
#include "core/env.h"
#include "ops/batchnorm.h"
#include "ops/batchnorm_kernels.cuh"

namespace fastnn {
namespace cuda {
namespace {

template <class T>
const T* data_or_null(const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; }
template <class T>
T* mutable_or_null(const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; }

dim3 column_threads(int64_t cols) {
  return dim3(static_cast<unsigned>((cols + reduce::kReduceThreads - 1) / reduce::kReduceThreads));
}

// The apply passes may use 16-byte vectors: whole vectors per row, every base aligned.
template <class T>
bool vectorisable(int64_t cols, std::initializer_list<const void*> bases) {
  if (cols % batchnorm_detail::kVecWidth<T> != 0) return false;
  for (const void* b : bases)
    if (!cuda_rt::aligned16(b)) return false;
  return true;
}

// Blocks below which the 16-byte statistics pass is not used: with a quarter of the scalar pass's
// blocks it must still give every SM of an H100/H200 (132) two of them. Smaller problems (the
// lecture model's 1024 x 1024 at batch 1024: 16 vector blocks) are in L2, where the scalar
// pass's 4x more blocks spread the same loads over more SMs.
constexpr int64_t kVecStatsMinBlocks = 256;

// kVecStatsMinBlocks, or 1 where FASTNN_BN_VEC_STATS_ALWAYS is set (a test hook, read once: the
// tests' chunked shapes are far below 256 blocks). The choice never changes a result's bits.
inline int64_t min_vec_stats_blocks() {
  static const int64_t blocks = std::getenv("FASTNN_BN_VEC_STATS_ALWAYS") ? 1 : kVecStatsMinBlocks;
  return blocks;
}

template <class T>
void launch_normalise(const batchnorm_detail::ForwardParams<T>& p, const reduce::ColumnGrid& g) {
  using namespace batchnorm_detail;
  if (vectorisable<T>(p.cols, {p.x, p.y})) {
    const reduce::ColumnGrid v = vec_grid(p.rows, p.cols / kVecWidth<T>);
    cuda_rt::launch("batchnorm_normalise_vec", normalise_vec_kernel<T>, v.grid(), v.block(), 0, p, v.rows_per_chunk);
  } else {
    cuda_rt::launch("batchnorm_normalise", normalise_kernel<T>, g.grid(), g.block(), 0, p);
  }
}

// The geometry of the 16-byte statistics passes (batchnorm_kernels.cuh): the scalar launch's
// blocks, chunks and rows per thread, each lane taking a vector of columns, so every column is
// summed over the same rows in the same order as by the scalar pass (the same bits, whichever is
// chosen). A grid of no chunks where they do not apply: the scalar launch takes one chunk (g), C
// is not in whole aligned vectors (then the apply pass is scalar too), or too few blocks.
template <class T>
reduce::ColumnGrid stats_vec_grid(const reduce::ColumnGrid& g, int64_t cols, std::initializer_list<const void*> bases) {
  using namespace batchnorm_detail;
  reduce::ColumnGrid v = g;
  v.col_blocks = (cols / kVecWidth<T> + g.cx - 1) / g.cx;
  if (g.chunks <= 1 || !vectorisable<T>(cols, bases) || v.col_blocks * v.chunks < min_vec_stats_blocks()) v.chunks = 0;
  return v;
}

// FASTNN_BN_PIPELINE_ABOVE=<bytes>: training inputs (x, or x and dy) larger than this take the
// one-read pipeline. Unset, it is off until a GPU has measured it against the chunked path:
// benchmarks/gpu/ab.py runs it at 64 MB, about an H100's or H200's L2 (50 / 60 MB), above which
// the chunked path's second read comes from memory (the prediction: benchmarks/gpu/NOTES.md).
// Read at each call, so the tests (0: every whole-vector input) and the A/B run switch it between
// calls. The choice changes bits (its chunks are not the chunked path's), never correctness.
constexpr int64_t kPipelineOff = INT64_MAX;
// L2 bytes the pipeline's lookahead keeps between a slab's two reads: half an H100's L2, so the
// ~17 MB its blocks have in flight and whatever else lives in L2 fit beside it.
constexpr int64_t kPipelineL2Bytes = int64_t{24} << 20;

inline int64_t pipeline_above_bytes() {
  return env_int("FASTNN_BN_PIPELINE_ABOVE", 0).value_or(kPipelineOff);
}

// The lookahead in slabs: what kPipelineL2Bytes holds, or FASTNN_BN_PIPELINE_LOOKAHEAD (a test
// hook like the one above: the tests' slabs are so small that every slab would fit).
inline int64_t pipeline_lookahead(int64_t slabs, int64_t slab_bytes) {
  const int64_t d = env_int("FASTNN_BN_PIPELINE_LOOKAHEAD", 1).value_or(kPipelineL2Bytes / slab_bytes - 1);
  return std::max<int64_t>(1, std::min<int64_t>(slabs, d));
}

template <class T>
bool use_pipeline(int64_t rows, int64_t cols, int inputs, std::initializer_list<const void*> bases) {
  return rows > 0 && vectorisable<T>(cols, bases) &&
         rows * cols * static_cast<int64_t>(sizeof(T)) * inputs > pipeline_above_bytes();
}

// The schedule of a pipeline launch over `inputs` arrays of (rows, cols) T, its counters zeroed
// on the stream (a memset node under graph capture) in `counters`, which must outlive the launch.
template <class T>
batchnorm_detail::PipelineSchedule pipeline_schedule(int64_t rows, int64_t cols, int inputs, Device device,
                                                     Tensor& counters) {
  using namespace batchnorm_detail;
  constexpr int64_t kSlabCols = kPipeLanes * kVecWidth<T>;
  PipelineSchedule s{};
  s.slabs = (cols + kSlabCols - 1) / kSlabCols;
  s.chunks = (rows + kPipeChunkRows - 1) / kPipeChunkRows;
  const int64_t slab_bytes = rows * kSlabCols * static_cast<int64_t>(sizeof(T)) * inputs;
  s.lookahead = pipeline_lookahead(s.slabs, slab_bytes);
  counters = Tensor::empty({1 + 2 * s.slabs}, DType::int32, device);
  auto* c = reinterpret_cast<unsigned*>(counters.data<int32_t>());
  FASTNN_CUDA_CHECK(cudaMemsetAsync(c, 0, sizeof(unsigned) * (1 + 2 * s.slabs), cuda_rt::current_stream()));
  s.ticket = c;
  s.arrived = c + 1;
  s.ready = c + 1 + s.slabs;
  return s;
}

template <class T, class Params>
void launch_pipeline(const char* name, void (*kernel)(Params, batchnorm_detail::PipelineSchedule), const Params& p,
                     const batchnorm_detail::PipelineSchedule& s) {
  using namespace batchnorm_detail;
  const int64_t most = static_cast<int64_t>(cuda_rt::multiprocessor_count()) * kPipeBlocksPerSm;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(s.items(), most));
  cuda_rt::launch(name, kernel, dim3(grid), dim3(kPipeLanes, reduce::kReduceThreads / kPipeLanes), 0, p, s);
}

template <class T>
batchnorm_detail::DeviceEpilogue<T> device_epilogue(const BatchnormEpilogue& e, const StepScalars<DropoutKey>& key) {
  batchnorm_detail::DeviceEpilogue<T> d;
  d.relu = e.act == Activation::relu;
  d.key = key;
  if (e.dropout.keeps_none()) {
    d.dropout = d.kUniform;
    d.scale = T(0);
  } else if (!e.dropout.keeps_all()) {
    d.dropout = d.kMask;
    d.threshold = e.dropout.threshold;  // in (0, 2^16) here
    d.scale = static_cast<T>(e.dropout.scale);
  }
  return d;
}

}  // namespace

void batchnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, bool training,
                       double momentum, double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd,
                       const BatchnormEpilogue& epilogue) {
  // the epilogue's dropout key, or in a capture the slot each replay refills
  StepScalars<DropoutKey> key;
  step_scalars(DropoutKey{epilogue.dropout.seed, epilogue.dropout.offset}, epilogue.dropout.slot, key);
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    using namespace batchnorm_detail;
    const int64_t rows = x.size(0), cols = x.size(1);
    if (cols == 0) return;
    const reduce::ColumnGrid g = reduce::column_grid(rows, cols);
    ForwardParams<T> p{x.data<T>(), y.data<T>(), rows, cols, g.rows_per_chunk,
                       data_or_null<T>(weight), data_or_null<T>(bias),
                       mutable_or_null<T>(running_mean), mutable_or_null<T>(running_var),
                       momentum, eps, save_mean.data<double>(), save_invstd.data<double>(), nullptr,
                       device_epilogue<T>(epilogue, key)};
    const dim3 threads(reduce::kReduceThreads);
    if (!training) {
      cuda_rt::launch("batchnorm_eval_stats", forward_eval_stats_kernel<T>, column_threads(cols), threads, 0, p);
      if (rows > 0) launch_normalise(p, g);
      return;
    }
    Tensor partials;
    if (use_pipeline<T>(rows, cols, 1, {p.x, p.y})) {
      Tensor counters;
      const PipelineSchedule s = pipeline_schedule<T>(rows, cols, 1, x.device(), counters);
      partials = Tensor::empty({s.chunks, cols, 3}, DType::float64, x.device());
      p.partials = partials.data<double>();
      launch_pipeline<T>("batchnorm_forward_pipeline", forward_pipeline_kernel<T>, p, s);
      return;
    }
    const reduce::ColumnGrid v = stats_vec_grid<T>(g, cols, {p.x, p.y});
    if (v.chunks > 1) {  // statistics in 16-byte vectors of columns, then the shared finish and apply
      partials = Tensor::empty({v.chunks, cols, 3}, DType::float64, x.device());
      p.partials = partials.data<double>();
      cuda_rt::launch("batchnorm_forward_stats_vec", forward_stats_vec_kernel<T>, v.grid(), v.block(), 0, p);
      cuda_rt::launch("batchnorm_forward_finish", forward_finish_kernel<T>, column_threads(cols), threads, 0,
                      p, v.chunks);
      launch_normalise(p, g);
      return;
    }
    if (g.chunks > 1) {
      partials = Tensor::empty({g.chunks, cols, 3}, DType::float64, x.device());
      p.partials = partials.data<double>();
    }
    cuda_rt::launch("batchnorm_forward_train", forward_train_kernel<T>, g.grid(), g.block(), 0, p);
    if (g.chunks > 1) {
      cuda_rt::launch("batchnorm_forward_finish", forward_finish_kernel<T>, column_threads(cols), threads, 0,
                      p, g.chunks);
      launch_normalise(p, g);
    }
  });
}

void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& weight,
                        const Tensor& save_mean, const Tensor& save_invstd, bool training,
                        Tensor& dx, Tensor& dweight, Tensor& dbias, bool accumulate,
                        const Tensor& relu_output, double relu_scale) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    using namespace batchnorm_detail;
    const int64_t rows = x.size(0), cols = x.size(1);
    if (cols == 0) return;
    const reduce::ColumnGrid g = reduce::column_grid(rows, cols);
    BackwardParams<T> p{x.data<T>(), dy.data<T>(), dx.data<T>(), rows, cols, g.rows_per_chunk,
                        data_or_null<T>(weight), save_mean.data<double>(), save_invstd.data<double>(),
                        mutable_or_null<T>(dweight), mutable_or_null<T>(dbias), accumulate, nullptr, nullptr,
                        data_or_null<T>(relu_output), static_cast<T>(relu_scale)};
    const bool gated = p.relu_output != nullptr;
    const dim3 threads(reduce::kReduceThreads);
    Tensor partials, coefs;
    if (!training) {
      const bool sums_wanted = p.dweight || p.dbias;
      if (sums_wanted && g.chunks > 1) {
        partials = Tensor::empty({g.chunks, cols, 2}, DType::float64, x.device());
        p.partials = partials.data<double>();
      }
      cuda_rt::launch("batchnorm_backward_eval", gated ? backward_eval_kernel<T, true> : backward_eval_kernel<T, false>, g.grid(), g.block(), 0, p,
                      sums_wanted);
      if (p.partials)
        cuda_rt::launch("batchnorm_backward_eval_finish", backward_eval_finish_kernel<T>, column_threads(cols),
                        threads, 0, p, g.chunks);
      return;
    }
    if (use_pipeline<T>(rows, cols, 2, {p.x, p.dy, p.dx, p.relu_output})) {
      Tensor counters;
      const PipelineSchedule s = pipeline_schedule<T>(rows, cols, 2, x.device(), counters);
      partials = Tensor::empty({s.chunks, cols, kTrainSums<T>}, DType::float64, x.device());
      coefs = Tensor::empty({cols, kCoefs}, DType::float64, x.device());
      p.partials = partials.data<double>();
      p.coefs = coefs.data<double>();
      launch_pipeline<T>("batchnorm_backward_pipeline",
                         gated ? backward_pipeline_kernel<T, true> : backward_pipeline_kernel<T, false>, p, s);
      return;
    }
    const reduce::ColumnGrid v = stats_vec_grid<T>(g, cols, {p.x, p.dy, p.dx, p.relu_output});
    const int64_t chunks = g.chunks;
    if (chunks > 1) {
      partials = Tensor::empty({chunks, cols, kTrainSums<T>}, DType::float64, x.device());
      coefs = Tensor::empty({cols, kCoefs}, DType::float64, x.device());
      p.partials = partials.data<double>();
      p.coefs = coefs.data<double>();
    }
    if (v.chunks > 1) {  // sums in 16-byte vectors of columns (then the vector dx pass below)
      cuda_rt::launch("batchnorm_backward_stats_vec", gated ? backward_stats_vec_kernel<T, true> : backward_stats_vec_kernel<T, false>,
                      v.grid(), v.block(), 0, p);
    } else {
      cuda_rt::launch("batchnorm_backward_train", gated ? backward_train_kernel<T, true> : backward_train_kernel<T, false>,
                      g.grid(), g.block(), 0, p);
    }
    if (chunks > 1) {
      cuda_rt::launch("batchnorm_backward_finish", backward_finish_kernel<T>, column_threads(cols), threads, 0,
                      p, chunks);
      if (vectorisable<T>(cols, {p.x, p.dy, p.dx, p.relu_output})) {
        const reduce::ColumnGrid v = vec_grid(rows, cols / kVecWidth<T>);
        cuda_rt::launch("batchnorm_backward_dx_vec", gated ? backward_dx_vec_kernel<T, true> : backward_dx_vec_kernel<T, false>,
                        v.grid(), v.block(), 0, p,
                        v.rows_per_chunk);
      } else {
        cuda_rt::launch("batchnorm_backward_dx", gated ? backward_dx_kernel<T, true> : backward_dx_kernel<T, false>,
                        g.grid(), g.block(), 0, p);
      }
    }
  });
}

}  // namespace cuda
}  // namespace fastnn
