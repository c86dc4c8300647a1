// BatchNorm1d on the CPU. (N, C) is row-major, so a column's values are C apart. Training takes
// two passes, the fewest the math allows:
//   1. statistics: threads own disjoint column ranges, walked in strips of up to kStrip columns row
//      by row, with the strip's accumulators on the stack and a contiguous, vectorisable inner loop
//      across the strip; each column is reduced by one thread in row order, so results do not
//      depend on the thread count. The pass ends with per-column coefficients in a C-sized
//      workspace.
//   2. elementwise (y, or dx): threads own row ranges and stream whole rows, in kApplyChunk-column
//      segments whose coefficients stay in L1. Written column strip by column strip (as pass 1 is
//      read), the output measured 1.5-2x slower: 2 KiB segments 16 KiB apart defeat the
//      prefetchers. Streaming (non-temporal) stores measured slower here, not faster.
// Each kernel is compiled for AVX-512, AVX2 and the baseline and picked at run time.
#include <algorithm>
#include <cmath>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "ops/batchnorm.h"


namespace fastnn::cpu {
namespace {

// Columns per strip: up to 64 KiB of accumulators and coefficients on the stack, and 2-4 KiB read
// contiguously per row. Narrower strips (64-256) measured slower once the input outgrows the
// caches: each row's short segment defeats the prefetchers.
constexpr int64_t kStrip = 512;

// Columns per row segment of the elementwise pass: its input, output and 3-4 coefficient rows fit
// in L1 (48 KiB) with room to spare.
constexpr int64_t kApplyChunk = 1024;

template <class T>
struct ForwardArgs {
  const T* x;
  T* y;
  int64_t rows, cols;
  const T* weight;  // nullptr: 1
  const T* bias;    // nullptr: 0
  T* running_mean;  // nullptr: not tracked
  T* running_var;
  double momentum, eps;
  double* save_mean;  // float64 for both dtypes: the statistics as accumulated
  double* save_invstd;
  T* coef;  // workspace, 3 x cols: y = (x - hi) * scale + shift
};

template <class T>
struct BackwardArgs {
  const T* x;
  const T* dy;
  T* dx;
  int64_t rows, cols;
  const T* weight;  // nullptr: 1
  const double* save_mean;
  const double* save_invstd;
  T* dweight;  // nullptr: not wanted
  T* dbias;
  bool accumulate;
  // training workspace: dx = f_dy * dy + f_x * (x - hi) + f_0 in T (4 x cols), the same in double
  // (mean, k_dy, k_x, k_0: 4 x cols) for columns where dx cancels, whose flags (exact, cols) pass 2
  // reads per kApplyChunk segment (chunk_exact).
  T* coef;
  double* coef64;
  double* exact;
  double* chunk_exact;
};

// Rows summed in registers before the accumulator arrays take the block: an eighth of the
// accumulator loads and stores. The forward sums in double (u = x - k and u^2 are exact in double
// for float32 input, so save_mean / save_invstd are float64-accurate for both dtypes); the float32
// backward sums each block in float (a quarter of the double work), as 8-term float sums lose
// nothing a float32 gradient can show.
constexpr int64_t kRowBlock = 8;

// Training forward statistics over columns [c0, c0 + w): sums of u = x - k and u^2, k the column's
// first value. Shifted sums cost m2 = sum(u^2) - sum(u)^2 / N a factor (var + (mean - k)^2) / var
// <= N + 1 of precision (k's own deviation is part of the variance), in practice ~2, and take one
// add and one multiply-add per value where Welford's update takes a dependent multiply-add pair
// and its accumulators' loads and stores.
template <class T>
struct ForwardTrainStrip {
  using Args = ForwardArgs<T>;
  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t c0, int64_t w) {
    T k[kStrip];
    double sum_u[kStrip], sum_u2[kStrip];
    for (int64_t c = 0; c < w; ++c) {
      k[c] = a.x[c0 + c];
      sum_u[c] = sum_u2[c] = 0.0;
    }
    int64_t n = 0;
    for (; n + kRowBlock <= a.rows; n += kRowBlock) {
      const T* row = a.x + n * a.cols + c0;
      for (int64_t c = 0; c < w; ++c) {
        double su = 0, su2 = 0;
#pragma GCC unroll 8
        for (int64_t r = 0; r < kRowBlock; ++r) {
          const double u = static_cast<double>(row[r * a.cols + c]) - static_cast<double>(k[c]);
          su += u;
          su2 += u * u;
        }
        sum_u[c] += su;
        sum_u2[c] += su2;
      }
    }
    for (; n < a.rows; ++n) {
      const T* row = a.x + n * a.cols + c0;
      for (int64_t c = 0; c < w; ++c) {
        const double u = static_cast<double>(row[c]) - static_cast<double>(k[c]);
        sum_u[c] += u;
        sum_u2[c] += u * u;
      }
    }
    // y = ((x - hi) - lo) * scale + shift = (x - hi) * scale + (shift - lo * scale), mean = hi + lo:
    // x - hi is exact near the mean.
    T* hi = a.coef;
    T* scale = a.coef + a.cols;
    T* shift = a.coef + 2 * a.cols;
    const double rows = static_cast<double>(a.rows);
    for (int64_t c = 0; c < w; ++c) {
      const int64_t col = c0 + c;
      const double u_mean = sum_u[c] / rows;
      const double mean = static_cast<double>(k[c]) + u_mean;
      const double m2 = std::max(0.0, sum_u2[c] - u_mean * sum_u[c]);
      finish_batch_stats(rows, mean, m2, a.eps, a.momentum, a.save_mean[col], a.save_invstd[col],
                         a.running_mean ? a.running_mean + col : nullptr,
                         a.running_var ? a.running_var + col : nullptr);
      // y = ((x - hi) - lo) * scale + shift = (x - hi) * scale + (shift - lo * scale) with
      // mean = hi + lo: x - hi is exact near the mean.
      T lo;
      split_hi_lo(mean, hi[col], lo);
      const double gain = batchnorm_gain(a.save_invstd[col], a.weight, col);
      scale[col] = static_cast<T>(gain);
      shift[col] = static_cast<T>(static_cast<double>(batchnorm_shift(a.bias, col)) - static_cast<double>(lo) * gain);
    }
  }
};

// y over rows [r0, r0 + count) from the coefficients: training (ForwardTrainStrip's) and eval
// (the running statistics, whose mean is a T, so x - mean is exact as it stands).
template <class T>
struct ForwardApplyRows {
  using Args = ForwardArgs<T>;
  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t r0, int64_t count) {
    const T* hi = a.coef;
    const T* scale = a.coef + a.cols;
    const T* shift = a.coef + 2 * a.cols;
    for (int64_t r = r0; r < r0 + count; ++r) {
      for (int64_t c0 = 0; c0 < a.cols; c0 += kApplyChunk) {
        const int64_t w = std::min(kApplyChunk, a.cols - c0);
        const T* x = a.x + r * a.cols + c0;
        T* out = a.y + r * a.cols + c0;
        const T* h = hi + c0;
        const T* s = scale + c0;
        const T* b = shift + c0;
        for (int64_t c = 0; c < w; ++c) out[c] = (x[c] - h[c]) * s[c] + b[c];
      }
    }
  }
};

// Training backward sums over columns [c0, c0 + w): u = x - hi (hi: save_mean rounded to T, so u
// is exact near the mean), dy, dy * u and, for the cancellation test of float32, u^2 and dy^2;
// batchnorm_backward_coefs turns them into dweight, dbias and the coefficients of
// dx = k_dy * dy + k_x * (x - mean) + k_0, which BackwardApplyRows forms in double where it
// cancels, else in T.
template <class T>
struct BackwardTrainStrip {
  using Args = BackwardArgs<T>;
  static constexpr bool kFloat = sizeof(T) < sizeof(double);

  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t c0, int64_t w) {
    T hi[kStrip];
    double sum_u[kStrip], sum_dy[kStrip], sum_dy_u[kStrip], sum_u2[kStrip], sum_dy2[kStrip];
    for (int64_t c = 0; c < w; ++c) {
      hi[c] = static_cast<T>(a.save_mean[c0 + c]);
      sum_u[c] = sum_dy[c] = sum_dy_u[c] = sum_u2[c] = sum_dy2[c] = 0.0;
    }
    int64_t n = 0;
    for (; n + kRowBlock <= a.rows; n += kRowBlock) {
      const T* row = a.x + n * a.cols + c0;
      const T* g = a.dy + n * a.cols + c0;
      for (int64_t c = 0; c < w; ++c) {
        T su = 0, sd = 0, sdu = 0, su2 = 0, sd2 = 0;
#pragma GCC unroll 8
        for (int64_t r = 0; r < kRowBlock; ++r) {
          const T u = row[r * a.cols + c] - hi[c], gc = g[r * a.cols + c];
          su += u;
          sd += gc;
          sdu += gc * u;
          if constexpr (kFloat) {
            su2 += u * u;
            sd2 += gc * gc;
          }
        }
        sum_u[c] += su;
        sum_dy[c] += sd;
        sum_dy_u[c] += sdu;
        if constexpr (kFloat) {
          sum_u2[c] += su2;
          sum_dy2[c] += sd2;
        }
      }
    }
    for (; n < a.rows; ++n) {
      const T* row = a.x + n * a.cols + c0;
      const T* g = a.dy + n * a.cols + c0;
      for (int64_t c = 0; c < w; ++c) {
        const double u = static_cast<double>(row[c]) - static_cast<double>(hi[c]), gc = static_cast<double>(g[c]);
        sum_u[c] += u;
        sum_dy[c] += gc;
        sum_dy_u[c] += gc * u;
        if constexpr (kFloat) {
          sum_u2[c] += u * u;
          sum_dy2[c] += gc * gc;
        }
      }
    }
    T* f_hi = a.coef;
    T* f_dy = a.coef + a.cols;
    T* f_x = a.coef + 2 * a.cols;
    T* f_0 = a.coef + 3 * a.cols;
    for (int64_t c = 0; c < w; ++c) {
      const int64_t col = c0 + c;
      const double invstd = a.save_invstd[col];
      const BatchnormBackwardCoefs k = batchnorm_backward_coefs(
          a.rows, static_cast<double>(hi[c]), invstd, batchnorm_gain(invstd, a.weight, col), sum_u[c], sum_dy[c],
          sum_dy_u[c], sum_u2[c], sum_dy2[c], kFloat);
      if (a.dweight) store_grad(a.dweight, col, k.dweight, a.accumulate);
      if (a.dbias) store_grad(a.dbias, col, k.dbias, a.accumulate);
      a.coef64[col] = k.mean;
      a.coef64[a.cols + col] = k.k_dy;
      a.coef64[2 * a.cols + col] = k.k_x;
      a.coef64[3 * a.cols + col] = k.k_0;
      a.exact[col] = k.exact ? 1.0 : 0.0;
      // k_x * ((x - hi) - lo) + k_0 = k_x * (x - hi) + (k_0 - k_x * lo), mean = hi + lo
      T lo;
      split_hi_lo(k.mean, f_hi[col], lo);
      f_dy[col] = static_cast<T>(k.k_dy);
      f_x[col] = static_cast<T>(k.k_x);
      f_0[col] = static_cast<T>(k.k_0 - k.k_x * static_cast<double>(lo));
    }
  }
};

// dx over rows [r0, r0 + count) from BackwardTrainStrip's coefficients: in double for segments
// with a column whose dx cancels, else in T.
template <class T>
struct BackwardApplyRows {
  using Args = BackwardArgs<T>;
  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t r0, int64_t count) {
    for (int64_t r = r0; r < r0 + count; ++r) {
      for (int64_t c0 = 0, chunk = 0; c0 < a.cols; c0 += kApplyChunk, ++chunk) {
        const int64_t w = std::min(kApplyChunk, a.cols - c0);
        const T* x = a.x + r * a.cols + c0;
        const T* g = a.dy + r * a.cols + c0;
        T* out = a.dx + r * a.cols + c0;
        if (a.chunk_exact[chunk] != 0.0) {
          const double* mean = a.coef64 + c0;
          const double* k_dy = a.coef64 + a.cols + c0;
          const double* k_x = a.coef64 + 2 * a.cols + c0;
          const double* k_0 = a.coef64 + 3 * a.cols + c0;
          for (int64_t c = 0; c < w; ++c) {
            const double u = static_cast<double>(x[c]) - mean[c];
            out[c] = static_cast<T>(k_dy[c] * static_cast<double>(g[c]) + k_x[c] * u + k_0[c]);
          }
        } else {
          const T* hi = a.coef + c0;
          const T* f_dy = a.coef + a.cols + c0;
          const T* f_x = a.coef + 2 * a.cols + c0;
          const T* f_0 = a.coef + 3 * a.cols + c0;
          for (int64_t c = 0; c < w; ++c) out[c] = f_dy[c] * g[c] + f_x[c] * (x[c] - hi[c]) + f_0[c];
        }
      }
    }
  }
};

// Eval backward over columns [c0, c0 + w): dx = dy * weight * invstd in the same pass that sums
// dy and dy * (x - mean) for the parameter gradients.
template <class T>
struct BackwardEvalStrip {
  using Args = BackwardArgs<T>;
  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t c0, int64_t w) {
    T k[kStrip];
    double mean[kStrip], sum_dy[kStrip], sum_dy_u[kStrip];
    for (int64_t c = 0; c < w; ++c) {
      const double invstd = a.save_invstd[c0 + c];
      k[c] = static_cast<T>(batchnorm_gain(invstd, a.weight, c0 + c));
      mean[c] = a.save_mean[c0 + c];
      sum_dy[c] = sum_dy_u[c] = 0.0;
    }
    const bool sums = a.dweight || a.dbias;
    for (int64_t n = 0; n < a.rows; ++n) {
      const T* row = a.x + n * a.cols + c0;
      const T* g = a.dy + n * a.cols + c0;
      T* out = a.dx + n * a.cols + c0;
      if (sums) {
        for (int64_t c = 0; c < w; ++c) {
          const double gc = static_cast<double>(g[c]);
          sum_dy[c] += gc;
          sum_dy_u[c] += gc * (static_cast<double>(row[c]) - mean[c]);
          out[c] = g[c] * k[c];
        }
      } else {
        for (int64_t c = 0; c < w; ++c) out[c] = g[c] * k[c];
      }
    }
    for (int64_t c = 0; c < w; ++c) {
      if (a.dweight)
        store_grad(a.dweight, c0 + c, a.save_invstd[c0 + c] * sum_dy_u[c], a.accumulate);
      if (a.dbias) store_grad(a.dbias, c0 + c, sum_dy[c], a.accumulate);
    }
  }
};

// Kernel::run compiled for each ISA; the caller picks one at run time.
template <class Kernel>
FASTNN_TARGET_AVX512 void run_avx512(const typename Kernel::Args& a, int64_t begin, int64_t count) {
  Kernel::run(a, begin, count);
}
template <class Kernel>
FASTNN_TARGET_AVX2 void run_avx2(const typename Kernel::Args& a, int64_t begin, int64_t count) {
  Kernel::run(a, begin, count);
}
template <class Kernel>
void run_baseline(const typename Kernel::Args& a, int64_t begin, int64_t count) {
  Kernel::run(a, begin, count);
}

template <class Kernel>
auto isa_variant() {
  switch (cpu_isa()) {
    case CpuIsa::avx512: return &run_avx512<Kernel>;
    case CpuIsa::avx2: return &run_avx2<Kernel>;
    default: return &run_baseline<Kernel>;
  }
}

// Runs a strip kernel over all columns: threads take contiguous column ranges, each walked in
// strips of at most kStrip columns.
template <class Kernel>
void over_column_strips(const typename Kernel::Args& a, int64_t rows, int64_t cols) {
  auto* strip = isa_variant<Kernel>();
  const int64_t grain = std::max<int64_t>(16, kParallelGrain / std::max<int64_t>(rows, 1));
  parallel_for(cols, grain, [&](int64_t begin, int64_t end) {
    for (int64_t c0 = begin; c0 < end; c0 += kStrip) strip(a, c0, std::min(kStrip, end - c0));
  }, 16);
}

// Runs a row kernel over all rows: threads take contiguous row ranges.
template <class Kernel>
void over_rows(const typename Kernel::Args& a, int64_t rows, int64_t cols) {
  auto* kernel = isa_variant<Kernel>();
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)), [&](int64_t begin, int64_t end) {
    kernel(a, begin, end - begin);
  }, 1);
}

template <class T>
const T* data_or_null(const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; }

}  // namespace

void batchnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, bool training,
                       double momentum, double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = x.size(0), cols = x.size(1);
    if (cols == 0) return;
    Tensor coef = Tensor::empty({3, cols}, x.dtype());
    ForwardArgs<T> a{x.data<T>(), y.data<T>(), rows, cols, data_or_null<T>(weight), data_or_null<T>(bias),
                     running_mean.defined() ? running_mean.data<T>() : nullptr,
                     running_var.defined() ? running_var.data<T>() : nullptr,
                     momentum, eps, save_mean.data<double>(), save_invstd.data<double>(), coef.data<T>()};
    if (training) {
      over_column_strips<ForwardTrainStrip<T>>(a, rows, cols);
    } else {
      for (int64_t c = 0; c < cols; ++c) {
        a.save_mean[c] = static_cast<double>(a.running_mean[c]);
        a.save_invstd[c] = batchnorm_invstd(static_cast<double>(a.running_var[c]), eps);
        a.coef[c] = a.running_mean[c];
        a.coef[cols + c] = static_cast<T>(batchnorm_gain(a.save_invstd[c], a.weight, c));
        a.coef[2 * cols + c] = batchnorm_shift(a.bias, c);
      }
    }
    over_rows<ForwardApplyRows<T>>(a, rows, cols);
  });
}

void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& weight,
                        const Tensor& save_mean, const Tensor& save_invstd, bool training,
                        Tensor& dx, Tensor& dweight, Tensor& dbias, bool accumulate) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = x.size(0), cols = x.size(1);
    if (cols == 0) return;
    BackwardArgs<T> a{x.data<T>(), dy.data<T>(), dx.data<T>(), rows, cols, data_or_null<T>(weight),
                      save_mean.data<double>(), save_invstd.data<double>(),
                      dweight.defined() ? dweight.data<T>() : nullptr,
                      dbias.defined() ? dbias.data<T>() : nullptr, accumulate,
                      nullptr, nullptr, nullptr, nullptr};
    if (!training) {
      over_column_strips<BackwardEvalStrip<T>>(a, rows, cols);
      return;
    }
    // coefficients: T (4 x cols); double (4 x cols), per-column and per-segment exact flags
    const int64_t chunks = (cols + kApplyChunk - 1) / kApplyChunk;
    Tensor coef = Tensor::empty({4, cols}, x.dtype()), coef64 = Tensor::empty({5 * cols + chunks}, DType::float64);
    a.coef = coef.data<T>();
    a.coef64 = coef64.data<double>();
    a.exact = a.coef64 + 4 * cols;
    a.chunk_exact = a.exact + cols;
    over_column_strips<BackwardTrainStrip<T>>(a, rows, cols);
    for (int64_t j = 0; j < chunks; ++j) {
      a.chunk_exact[j] = 0.0;
      for (int64_t c = j * kApplyChunk; c < std::min(cols, (j + 1) * kApplyChunk); ++c)
        if (a.exact[c] != 0.0) a.chunk_exact[j] = 1.0;
    }
    over_rows<BackwardApplyRows<T>>(a, rows, cols);
  });
}

}  // namespace fastnn::cpu
