// BatchNorm1d on the CPU. (N, C) is row-major, so a column's values are C apart. Training takes
// two passes, the fewest the math allows:
//   1. statistics: threads own disjoint column ranges, walked in strips of up to kStrip columns row
//      by row (8 rows at a time, the next 8 prefetched when the input is large), with the strip's
//      accumulators in a workspace and a contiguous, vectorisable inner loop across the strip;
//      each column is reduced by one thread in row order, so results do not depend on the thread
//      count. The pass ends with per-column coefficients in a C-sized workspace.
//   2. elementwise (y, or dx): threads own row ranges and stream whole rows. Written column strip
//      by column strip (as pass 1 is read), the output measured 1.5-2x slower: 2 KiB segments
//      16 KiB apart defeat the prefetchers. The AVX-512 variant blocks rows by 4 when the
//      coefficients outgrow L1 and streams its output past the caches when the pass is large.
// Inputs larger than L3 (over kOneReadAboveBytes) would be read from memory twice that way; they
// take the one-read path instead: each thread walks its columns in blocks small enough to stay in
// L3, pass 1 then pass 2 per block, so memory sees each input once (ForwardTrainBlocks).
// A forward's epilogue (BatchnormEpilogue: relu, then dropout) runs in pass 2, on each few KiB of
// rows right after they are written, so BatchNorm -> ReLU -> Dropout writes y once; the one-read
// path, whose blocks are columns, runs it as a pass of its own.
// Each kernel is compiled for AVX-512, AVX2 and the baseline and picked at run time.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>

#include "core/cpu_features.h"
#include "core/env.h"
#include "core/simd_avx512.h"
#include "core/parallel.h"
#include "core/streaming.h"
#include "ops/batchnorm.h"


namespace fastnn::cpu {
namespace {

// Columns per strip. Each row of a strip is read as one contiguous segment, and segments shorter
// than a few KiB defeat the prefetchers: on 4096x4096 float32 the statistics passes took 20%
// less time with 2048 columns (8 KiB) than with 512. The strip's accumulators (up to 80 KiB, in
// L2) are thread_local arrays: too large for a thread's stack, and in the output or workspace
// buffers (rows of cols doubles) the 1024x1024 float32 backward took 1.8x as long.
constexpr int64_t kStrip = 2048;

// Input bytes of a statistics pass above which it prefetches the next row block. Data read from
// memory gains (20-30% on 64 MiB of float32 of most shapes, 25% on 2048x2048's backward); data
// already in the caches loses (20% on 1024x1024), the prefetches costing issue slots.
constexpr int64_t kPrefetchBytes = int64_t{16} << 20;

// Columns per segment of the backward's elementwise pass with one exact-or-not flag: a segment
// where some column's dx cancels is formed in double, the others in T.
constexpr int64_t kApplyChunk = 1024;

// The AVX-512 elementwise pass (the only one with intrinsics) reads its 3-4 coefficient rows once
// per kApplyRows rows when they take more than kCoefBytesPerRow: with 4096 columns (48-64 KiB,
// L1's size) row by row, each row re-read them from L2 and 1-thread y ran at 26 GB/s against
// numpy's 36 for x + 0. Blocks of 4 rows took 10-18% less time on 4096x4096 and 2048x8192 float32
// with streaming stores (none without: the coefficient loads were not the only limit); 8 rows
// were no better, and coefficients that fit L1 (1024 columns) lost 20% to the 4 extra streams.
constexpr int kApplyRows = 4;
constexpr int64_t kCoefBytesPerRow = int64_t{16} << 10;

// The elementwise pass streams its output above kStreamPassBytes moved (core/streaming.h).

// The one-read training path (ForwardTrainBlocks, BackwardTrainBlocks) for inputs larger than
// L3 can hold twice over: each thread walks its columns in blocks of at most kBlockBytes of input
// (every row of the block's columns), reads a block from memory for its statistics and again from
// L3 for its elementwise pass. 4096x4096 float32, 2 threads, against the two-pass path in the same
// runs (% of the copy rate): forward 74-75% -> 80-81%, backward 62-64% -> 73%; 1024x16384 74/64%
// -> 82/78%; 4096x2048 (32 MiB) forward even, backward 66 -> 72%. Blocks of 2 MiB and 8 MiB did no
// better (8 MiB for two threads' blocks crowds what else lives in L3). A block's rows are short
// segments (128-512 columns) 16 KiB apart: narrower than kMinBlockCols (16384x1024: 64 columns)
// lost 20-45%, so such tall inputs keep two passes.
// All of that was measured on Zen 5 (AVX-512). On Zen 3 (AVX2, a cloud VM sharing its L3 with
// other tenants' cores) the same 4096x4096 float32 ran 41-42% / 26-30% of the copy rate one-read
// against 65-74% / 51-60% in two passes, in the same runs; blocks of 1-8 MiB all lost, the
// narrowest most: there the short strided segments, not L3's size, are the limit.
// On Zen 4 (AVX-512, a 2-core VM on a shared 32 MiB L3; medians of 5 calls, 8-15 interleaved
// rounds, 2-3 runs each, % of a numpy copy in the same rounds) the row count decides: with
// 4096 rows two passes won (4096x4096 forward 120-127% against 98-111%, backward 91-97% against
// 72-89%; 8192x2048 forward 109-125% against 62-71%), blocks of 2 or 8-12 MiB no better; with 1024
// and 2048 rows one read won or drew (1024x16384 forward 127-166% against 114-130%, backward
// 102-132% against 91-115%; 2048x8192 backward 95-107% against 85-98%, forward 101-118% against
// 111-122%). So the path is taken under AVX-512, for at most kOneReadMaxRows rows;
// FASTNN_BN_ONE_READ=1 forces it wherever the block width allows (the tests run it on AVX2
// machines and on taller inputs that way), 0 turns it off.
constexpr int64_t kOneReadAboveBytes = int64_t{24} << 20;
constexpr int64_t kOneReadMaxRows = 2048;
constexpr int64_t kBlockBytes = int64_t{4} << 20;
constexpr int64_t kMinBlockCols = 128;
// Rows ahead that the one-read path prefetches: its short row segments are done before 8 rows'
// worth of memory latency (the two-pass path's kRowBlock) has passed. 32 for the statistics and 16
// for the elementwise pass (whose block should be in L3, but the prefetchers do not follow 16 KiB
// strides) measured best; without them the path gained 0-5%.
constexpr int64_t kBlockStatsPrefetchRows = 32;
constexpr int64_t kBlockApplyPrefetchRows = 16;
// Bytes of y the fused epilogue (BatchnormEpilogue: relu, dropout) takes at a time right after
// the normalising pass wrote them: within L1 (48 KiB on Zen 3 and 4), beside the coefficients.
constexpr int64_t kEpilogueBytes = int64_t{16} << 10;
// Exactness (the float32 backward's double path) is decided per group of this many columns,
// aligned to column 0, which blocks never split: results do not depend on where blocks start.
constexpr int64_t kExactGroup = 16;

// Columns per block of the one-read path for `inputs` arrays of rows x cols T, or 0: two passes.
// A function of the shape and the machine only, so every thread count takes the same path.
template <class T>
int64_t one_read_block(int64_t rows, int64_t cols, int inputs) {
  const int64_t row_bytes = rows * static_cast<int64_t>(sizeof(T)) * inputs;
  if (row_bytes * cols <= kOneReadAboveBytes) return 0;
  const std::optional<bool> forced = env_flag("FASTNN_BN_ONE_READ");
  if (!forced.value_or(cpu_isa() == CpuIsa::avx512 && rows <= kOneReadMaxRows)) return 0;
  const int64_t w = std::min(kStrip, kBlockBytes / row_bytes / kExactGroup * kExactGroup);
  return w >= kMinBlockCols ? w : 0;
}

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
  bool prefetch;  // the statistics pass prefetches (kPrefetchBytes)
  bool stream;  // streaming stores for y where aligned (kStreamPassBytes)
  int64_t block;  // columns per block of the one-read path (ForwardTrainBlocks); 0: two passes
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
  bool prefetch;  // the statistics pass prefetches (kPrefetchBytes)
  bool stream;  // streaming stores for dx where aligned (kStreamPassBytes)
  int64_t block;  // columns per block of the one-read path (BackwardTrainBlocks); 0: two passes
  // The fused forward's relu (+ dropout): the gradient that reaches the BatchNorm is
  // dropout_relu_grad(relu_y, dy, relu_scale), formed as each kernel reads dy (kGated).
  const T* relu_y = nullptr;
  T relu_scale = 1;
};

// Element i of the gradient that reaches the BatchNorm: dy, or dy through the fused relu (+ dropout)
// when kGated, in T as the separate dropout_backward would have stored it.
template <bool kGated, class T>
FASTNN_FORCE_INLINE T incoming_grad(const BackwardArgs<T>& a, int64_t i) {
  if constexpr (kGated) return dropout_relu_grad(a.relu_y[i], a.dy[i], a.relu_scale);
  else return a.dy[i];
}

// Rows summed in registers before the accumulator arrays take the block: an eighth of the
// accumulator loads and stores. The forward sums in double (u = x - k and u^2 are exact in double
// for float32 input, so save_mean / save_invstd are float64-accurate for both dtypes); the float32
// backward sums each block in float (a quarter of the double work), as 8-term float sums lose
// nothing a float32 gradient can show.
constexpr int64_t kRowBlock = 8;

// Prefetches one cache line from each row of the row block at p: the statistics passes read 8
// rows at once, 16 short streams (x and dy), more than the hardware prefetchers follow well.
template <class T>
FASTNN_FORCE_INLINE void prefetch_block(const T* p, int64_t stride) {
#pragma GCC unroll 8
  for (int64_t r = 0; r < kRowBlock; ++r) __builtin_prefetch(p + r * stride, 0, 2);
}

// body(begin, end) over [0, w): a cache line of T at a time, each after prefetch(begin), when
// `ahead`; else at once.
template <class T, class Prefetch, class Body>
FASTNN_FORCE_INLINE void over_lines(int64_t w, bool ahead, Prefetch prefetch, Body body) {
  constexpr int64_t kLine = 64 / sizeof(T);
  int64_t c = 0;
  if (ahead) {
    for (; c + kLine <= w; c += kLine) {
      prefetch(c);
      body(c, c + kLine);
    }
  }
  body(c, w);
}

// The one-read path's elementwise pass over a block's columns [cb, ce) of rows [r0, r0 + count):
// each row's segments (`inputs`, e.g. x and dy; nullptr ones skipped) are fetched
// kBlockApplyPrefetchRows rows ahead, then row(r) runs. The block should be in L3, but its rows
// are short segments 16 KiB apart, which the hardware prefetchers do not follow: without this,
// every ISA waited on L3 for each row (AVX2 on Zen 3, 4096x4096 float32 backward: 3 GB/s).
template <class T, size_t N, class Row>
FASTNN_FORCE_INLINE void over_block_rows(const T* const (&inputs)[N], int64_t cols, int64_t r0, int64_t count,
                                         int64_t cb, int64_t ce, Row row) {
  constexpr int64_t d = kBlockApplyPrefetchRows;
  for (int64_t r = r0; r < r0 + count; ++r) {
    if (r + d < r0 + count)
      for (int64_t c = cb; c < ce; c += 64 / sizeof(T))
        for (const T* in : inputs)
          if (in) __builtin_prefetch(in + (r + d) * cols + c, 0, 3);
    row(r);
  }
}

// Training forward statistics over columns [c0, c0 + w): sums of u = x - k and u^2, k the column's
// first value (shifted_moments in ops/batchnorm.h says what that costs in precision and saves).
template <class T>
struct ForwardTrainStrip {
  using Args = ForwardArgs<T>;

  // Columns [begin, end) of the row block at row. A function of its own for the restrict
  // parameters: the lambdas that call it capture pointers without their restrict, and the
  // vectorised loop would test them for overlap at every call.
  static FASTNN_FORCE_INLINE void block(const T* row, int64_t cols, const T* __restrict k, double* __restrict sum_u,
                                        double* __restrict sum_u2, int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double su = 0, su2 = 0;
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRowBlock; ++r) {
        const double u = static_cast<double>(row[r * cols + c]) - static_cast<double>(k[c]);
        su += u;
        su2 += u * u;
      }
      sum_u[c] += su;
      sum_u2[c] += su2;
    }
  }

  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t c0, int64_t w) {
    // k waits in hi's row of coef until the coefficients replace it
    T* __restrict k = a.coef + c0;
    alignas(64) static thread_local double acc[2][kStrip];  // see kStrip
    double* __restrict sum_u = acc[0];
    double* __restrict sum_u2 = acc[1];
    for (int64_t c = 0; c < w; ++c) {
      k[c] = a.x[c0 + c];
      sum_u[c] = sum_u2[c] = 0.0;
    }
    int64_t n = 0;
    for (; n + kRowBlock <= a.rows; n += kRowBlock) {
      const T* row = a.x + n * a.cols + c0;
      const int64_t d = a.block ? kBlockStatsPrefetchRows : kRowBlock;
      over_lines<T>(w, a.prefetch && n + kRowBlock + d <= a.rows, [&](int64_t c) FASTNN_ALWAYS_INLINE {
        prefetch_block(row + d * a.cols + c, a.cols);
      }, [&](int64_t begin, int64_t end) FASTNN_ALWAYS_INLINE {
        block(row, a.cols, k, sum_u, sum_u2, begin, end);
      });
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
    T* scale = a.coef + a.cols;
    T* shift = a.coef + 2 * a.cols;
    const double rows = static_cast<double>(a.rows);
    for (int64_t c = 0; c < w; ++c) {
      const int64_t col = c0 + c;
      double mean, m2;
      shifted_moments(rows, static_cast<double>(k[c]), sum_u[c], sum_u2[c], mean, m2);
      finish_batch_stats(rows, mean, m2, a.eps, a.momentum, a.save_mean[col], a.save_invstd[col],
                         a.running_mean ? a.running_mean + col : nullptr,
                         a.running_var ? a.running_var + col : nullptr);
      // y = ((x - hi) - lo) * scale + shift = (x - hi) * scale + (shift - lo * scale) with
      // mean = hi + lo: x - hi is exact near the mean.
      T lo;
      split_hi_lo(mean, k[c], lo);  // k[c] is hi[col]
      const double gain = batchnorm_gain(a.save_invstd[col], a.weight, col);
      scale[col] = static_cast<T>(gain);
      shift[col] = static_cast<T>(static_cast<double>(batchnorm_shift(a.bias, col)) - static_cast<double>(lo) * gain);
    }
  }
};

#if defined(__x86_64__)
// The AVX-512 row kernels are written with intrinsics (core/simd_avx512.h) for the streaming stores
// (no compiler emits them from a plain loop) and the row blocks. A streaming store writes a whole
// 64-byte line without first reading it (an ordinary store's write-allocate does) and leaves the
// caches to the inputs. Each must be 64-byte aligned: streamed outputs have aligned rows, and the
// rest take ordinary stores.

// Streaming stores need 64-byte aligned vectors: every row's, so rows a whole number of lines.
template <class T>
bool streamable(const T* out, int64_t cols, bool wanted) {
  return wanted && reinterpret_cast<uintptr_t>(out) % 64 == 0 && cols * static_cast<int64_t>(sizeof(T)) % 64 == 0;
}
#endif

// y over rows [r0, r0 + count), columns [cb, ce), from the coefficients: training
// (ForwardTrainStrip's) and eval (the running statistics, whose mean is a T, so x - mean is exact
// as it stands).
template <class T>
struct ForwardApplyRows {
  using Args = ForwardArgs<T>;
  // Row r's columns [cb, ce), streamed out through `lines` unless it is null.
  static FASTNN_FORCE_INLINE void row(const Args& a, int64_t r, int64_t cb, int64_t ce, StreamLines lines = nullptr) {
    const T* x = a.x + r * a.cols;
    const T* hi = a.coef;
    const T* scale = a.coef + a.cols;
    const T* shift = a.coef + 2 * a.cols;
    for_outputs(a.y + r * a.cols, cb, ce, lines,
                [=](int64_t c) FASTNN_ALWAYS_INLINE { return (x[c] - hi[c]) * scale[c] + shift[c]; });
  }
  // The AVX2 and baseline pass; `lines` (the ISA's streaming copy) is used where a.stream.
  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t r0, int64_t count, StreamLines lines = nullptr) {
    lines = a.stream ? lines : nullptr;
    for (int64_t r = r0; r < r0 + count; ++r) row(a, r, 0, a.cols, lines);
    end_streaming(lines);
  }
  // The one-read path's elementwise pass over block [cb, ce), every row.
  static FASTNN_FORCE_INLINE void block(const Args& a, int64_t cb, int64_t ce) {
    const T* inputs[] = {a.x};
    over_block_rows(inputs, a.cols, 0, a.rows, cb, ce, [&](int64_t r) FASTNN_ALWAYS_INLINE { row(a, r, cb, ce); });
  }
#if defined(__x86_64__)
  // Rows [r, r + R), columns [cb, ce): each vector of coefficients serves R rows.
  template <int R>
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void rows_avx512(const Args& a, int64_t r, int64_t cb, int64_t ce,
                                                                   bool stream) {
    using A = simd::Zmm<T>;
    const T* hi = a.coef;
    const T* scale = a.coef + a.cols;
    const T* shift = a.coef + 2 * a.cols;
    const T* x = a.x + r * a.cols;
    T* y = a.y + r * a.cols;
    int64_t c = cb;
    for (; c + A::W <= ce; c += A::W) {
      const auto h = A::load(hi + c), s = A::load(scale + c), b = A::load(shift + c);
#pragma GCC unroll 8
      for (int rr = 0; rr < R; ++rr) {
        const auto v = A::fmadd(A::sub(A::load(x + rr * a.cols + c), h), s, b);
        if (stream) A::stream(y + rr * a.cols + c, v);
        else A::store(y + rr * a.cols + c, v);
      }
    }
    if (c < ce) {
      const auto m = A::first(static_cast<int>(ce - c));
      const auto h = A::load(m, hi + c), s = A::load(m, scale + c), b = A::load(m, shift + c);
      for (int rr = 0; rr < R; ++rr)
        A::store(y + rr * a.cols + c, m, A::fmadd(A::sub(A::load(m, x + rr * a.cols + c), h), s, b));
    }
  }

  static FASTNN_TARGET_AVX512 void run_avx512(const Args& a, int64_t r0, int64_t count) {
    const bool stream = streamable(a.y, a.cols, a.stream);
    int64_t r = r0;
    if (3 * a.cols * static_cast<int64_t>(sizeof(T)) > kCoefBytesPerRow)
      for (; r + kApplyRows <= r0 + count; r += kApplyRows) rows_avx512<kApplyRows>(a, r, 0, a.cols, stream);
    for (; r < r0 + count; ++r) rows_avx512<1>(a, r, 0, a.cols, stream);
    if (stream) _mm_sfence();  // streaming stores are weakly ordered: done before the pool's join
  }
  // block(): one row at a time (its coefficients fit L1).
  static FASTNN_TARGET_AVX512 void block_avx512(const Args& a, int64_t cb, int64_t ce) {
    const bool stream = streamable(a.y + cb, a.cols, a.stream);
    const T* inputs[] = {a.x};
    over_block_rows(inputs, a.cols, 0, a.rows, cb, ce, [&](int64_t r) FASTNN_TARGET_AVX512 {
      rows_avx512<1>(a, r, cb, ce, stream);
    });
    if (stream) _mm_sfence();  // streaming stores are weakly ordered: done before the pool's join
  }
#endif
};

// Training backward sums over columns [c0, c0 + w): u = x - hi (hi: save_mean rounded to T, so u
// is exact near the mean), dy, dy * u and, for the cancellation test of float32, u^2 and dy^2;
// batchnorm_backward_coefs turns them into dweight, dbias and the coefficients of
// dx = k_dy * dy + k_x * (x - mean) + k_0, which BackwardApplyRows forms in double where it
// cancels, else in T.
template <class T, bool kGated>
struct BackwardTrainStrip {
  using Args = BackwardArgs<T>;
  static constexpr bool kFloat = sizeof(T) < sizeof(double);

  // Columns [begin, end) of the row block whose first element is element `at` of x and dy; see
  // ForwardTrainStrip::block.
  static FASTNN_FORCE_INLINE void block(const Args& a, int64_t at, int64_t cols, const T* __restrict hi,
                                        double* __restrict sum_u, double* __restrict sum_dy,
                                        double* __restrict sum_dy_u, double* __restrict sum_u2,
                                        double* __restrict sum_dy2, int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      T su = 0, sd = 0, sdu = 0, su2 = 0, sd2 = 0;
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRowBlock; ++r) {
        const T u = a.x[at + r * cols + c] - hi[c], gc = incoming_grad<kGated>(a, at + r * cols + c);
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

  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t c0, int64_t w) {
    T* __restrict hi = a.coef + c0;  // until the coefficients replace it
    alignas(64) static thread_local double acc[5][kStrip];  // see kStrip
    double* __restrict sum_u = acc[0];
    double* __restrict sum_dy = acc[1];
    double* __restrict sum_dy_u = acc[2];
    double* __restrict sum_u2 = acc[3];
    double* __restrict sum_dy2 = acc[4];
    for (int64_t c = 0; c < w; ++c) {
      hi[c] = static_cast<T>(a.save_mean[c0 + c]);
      sum_u[c] = sum_dy[c] = sum_dy_u[c] = sum_u2[c] = sum_dy2[c] = 0.0;
    }
    int64_t n = 0;
    for (; n + kRowBlock <= a.rows; n += kRowBlock) {
      const int64_t at = n * a.cols + c0;
      const int64_t d = a.block ? kBlockStatsPrefetchRows : kRowBlock;
      over_lines<T>(w, a.prefetch && n + kRowBlock + d <= a.rows, [&](int64_t c) FASTNN_ALWAYS_INLINE {
        prefetch_block(a.x + at + d * a.cols + c, a.cols);
        prefetch_block(a.dy + at + d * a.cols + c, a.cols);
        if constexpr (kGated) prefetch_block(a.relu_y + at + d * a.cols + c, a.cols);
      }, [&](int64_t begin, int64_t end) FASTNN_ALWAYS_INLINE {
        block(a, at, a.cols, hi, sum_u, sum_dy, sum_dy_u, sum_u2, sum_dy2, begin, end);
      });
    }
    for (; n < a.rows; ++n) {
      const int64_t at = n * a.cols + c0;
      for (int64_t c = 0; c < w; ++c) {
        const double u = static_cast<double>(a.x[at + c]) - static_cast<double>(hi[c]),
                     gc = static_cast<double>(incoming_grad<kGated>(a, at + c));
        sum_u[c] += u;
        sum_dy[c] += gc;
        sum_dy_u[c] += gc * u;
        if constexpr (kFloat) {
          sum_u2[c] += u * u;
          sum_dy2[c] += gc * gc;
        }
      }
    }
    // coef64: mean, k_dy, k_x, k_0, exact; coef: hi, f_dy, f_x, f_0
    T* f_dy = a.coef + a.cols + c0;
    T* f_x = a.coef + 2 * a.cols + c0;
    T* f_0 = a.coef + 3 * a.cols + c0;
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
      split_hi_lo(k.mean, hi[c], lo);
      f_dy[c] = static_cast<T>(k.k_dy);
      f_x[c] = static_cast<T>(k.k_x);
      f_0[c] = static_cast<T>(k.k_0 - k.k_x * static_cast<double>(lo));
    }
  }
};

// A one-read block's columns [b, end) as runs of kExactGroup-column groups that are all exact (a
// column of the group has dx cancelling: formed in double) or all not.
struct ExactSegments {
  static constexpr int kMax = static_cast<int>(kStrip / kExactGroup) + 1;
  int count = 0;
  int64_t begin[kMax + 1];  // segment i is [begin[i], begin[i + 1])
  bool exact[kMax];
  ExactSegments(const double* column_exact, int64_t b, int64_t end) {
    for (int64_t g = b; g < end; g += kExactGroup) {
      bool e = false;
      for (int64_t c = g; c < std::min(end, g + kExactGroup); ++c) e = e || column_exact[c] != 0.0;
      if (count == 0 || e != exact[count - 1]) {
        begin[count] = g;
        exact[count++] = e;
      }
    }
    begin[count] = end;
  }
};

// dx over rows [r0, r0 + count) from BackwardTrainStrip's coefficients: in double for segments
// with a column whose dx cancels, else in T.
template <class T, bool kGated>
struct BackwardApplyRows {
  using Args = BackwardArgs<T>;
  // Row r's columns [c0, c0 + w) in double.
  static FASTNN_FORCE_INLINE void exact_segment(const Args& a, int64_t r, int64_t c0, int64_t w) {
    const int64_t at = r * a.cols + c0;
    const T* x = a.x + at;
    T* out = a.dx + at;
    const double* mean = a.coef64 + c0;
    const double* k_dy = a.coef64 + a.cols + c0;
    const double* k_x = a.coef64 + 2 * a.cols + c0;
    const double* k_0 = a.coef64 + 3 * a.cols + c0;
    for (int64_t c = 0; c < w; ++c) {
      const double u = static_cast<double>(x[c]) - mean[c];
      out[c] = static_cast<T>(k_dy[c] * static_cast<double>(incoming_grad<kGated>(a, at + c)) + k_x[c] * u + k_0[c]);
    }
  }

  // Row r's columns [c0, end) in T, or in double where `exact`; the T ones streamed out through
  // `lines` unless it is null.
  static FASTNN_FORCE_INLINE void segment(const Args& a, int64_t r, int64_t c0, int64_t end, bool exact,
                                          StreamLines lines = nullptr) {
    if (exact) return exact_segment(a, r, c0, end - c0);
    const int64_t at = r * a.cols;
    const T* x = a.x + at;
    const T *hi = a.coef, *f_dy = a.coef + a.cols, *f_x = a.coef + 2 * a.cols, *f_0 = a.coef + 3 * a.cols;
    for_outputs(a.dx + at, c0, end, lines, [=, &a](int64_t c) FASTNN_ALWAYS_INLINE {
      return f_dy[c] * incoming_grad<kGated>(a, at + c) + f_x[c] * (x[c] - hi[c]) + f_0[c];
    });
  }

  // Rows [r0, r0 + count), every column, each kApplyChunk segment exact as chunk_exact says: the
  // AVX2 and baseline pass; `lines` (the ISA's streaming copy) is used where a.stream.
  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t r0, int64_t count, StreamLines lines = nullptr) {
    lines = a.stream ? lines : nullptr;
    for (int64_t r = r0; r < r0 + count; ++r)
      for (int64_t c0 = 0, chunk = 0; c0 < a.cols; c0 += kApplyChunk, ++chunk)
        segment(a, r, c0, std::min(a.cols, c0 + kApplyChunk), a.chunk_exact[chunk] != 0.0, lines);
    end_streaming(lines);
  }
  // The one-read path's elementwise pass over block [cb, ce), every row, by exactness segments.
  static FASTNN_FORCE_INLINE void block(const Args& a, int64_t cb, int64_t ce) {
    const ExactSegments segs(a.exact, cb, ce);
    const T* inputs[] = {a.x, a.dy, a.relu_y};
    over_block_rows(inputs, a.cols, 0, a.rows, cb, ce, [&](int64_t r) FASTNN_ALWAYS_INLINE {
      for (int i = 0; i < segs.count; ++i) segment(a, r, segs.begin[i], segs.begin[i + 1], segs.exact[i]);
    });
  }
#if defined(__x86_64__)
  // Rows [r, r + R), columns [c0, end): each vector of coefficients serves R rows. For double the
  // exact coefficients are the T ones (lo = 0), so every segment takes the vector body; float
  // segments where dx cancels keep the double loop.
  template <int R>
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void rows_avx512(const Args& a, int64_t r, int64_t c0, int64_t end,
                                                                   bool exact, bool stream) {
    using A = simd::Zmm<T>;
    constexpr bool kFloat = sizeof(T) < sizeof(double);
    if (kFloat && exact) {
      for (int rr = 0; rr < R; ++rr) exact_segment(a, r + rr, c0, end - c0);
      return;
    }
    const T *hi = a.coef, *f_dy = a.coef + a.cols, *f_x = a.coef + 2 * a.cols, *f_0 = a.coef + 3 * a.cols;
    const T* x = a.x + r * a.cols;
    const T* g = a.dy + r * a.cols;
    const T* y = kGated ? a.relu_y + r * a.cols : nullptr;
    const auto scale = A::set1(a.relu_scale);
    T* dx = a.dx + r * a.cols;
    int64_t c = c0;
    for (; c + A::W <= end; c += A::W) {
      const auto h = A::load(hi + c), k_dy = A::load(f_dy + c), k_x = A::load(f_x + c), k_0 = A::load(f_0 + c);
#pragma GCC unroll 8
      for (int rr = 0; rr < R; ++rr) {
        const int64_t i = rr * a.cols + c;
        const auto gi = kGated ? A::mul_where_positive(A::load(y + i), A::load(g + i), scale) : A::load(g + i);
        const auto v = A::fmadd(k_dy, gi, A::fmadd(k_x, A::sub(A::load(x + i), h), k_0));
        if (stream) A::stream(dx + i, v);
        else A::store(dx + i, v);
      }
    }
    if (c < end) {
      const auto m = A::first(static_cast<int>(end - c));
      const auto h = A::load(m, hi + c), k_dy = A::load(m, f_dy + c), k_x = A::load(m, f_x + c),
                 k_0 = A::load(m, f_0 + c);
      for (int rr = 0; rr < R; ++rr) {
        const int64_t i = rr * a.cols + c;
        const auto gi = kGated ? A::mul_where_positive(A::load(m, y + i), A::load(m, g + i), scale) : A::load(m, g + i);
        A::store(dx + i, m, A::fmadd(k_dy, gi, A::fmadd(k_x, A::sub(A::load(m, x + i), h), k_0)));
      }
    }
  }

  template <int R>
  static FASTNN_FORCE_INLINE FASTNN_TARGET_AVX512 void all_chunks_avx512(const Args& a, int64_t r, bool stream) {
    for (int64_t c0 = 0, chunk = 0; c0 < a.cols; c0 += kApplyChunk, ++chunk)
      rows_avx512<R>(a, r, c0, std::min(a.cols, c0 + kApplyChunk), a.chunk_exact[chunk] != 0.0, stream);
  }

  static FASTNN_TARGET_AVX512 void run_avx512(const Args& a, int64_t r0, int64_t count) {
    const bool stream = streamable(a.dx, a.cols, a.stream);
    int64_t r = r0;
    if (4 * a.cols * static_cast<int64_t>(sizeof(T)) > kCoefBytesPerRow)
      for (; r + kApplyRows <= r0 + count; r += kApplyRows) all_chunks_avx512<kApplyRows>(a, r, stream);
    for (; r < r0 + count; ++r) all_chunks_avx512<1>(a, r, stream);
    if (stream) _mm_sfence();  // streaming stores are weakly ordered: done before the pool's join
  }

  // block(): one row at a time (its coefficients fit L1).
  static FASTNN_TARGET_AVX512 void block_avx512(const Args& a, int64_t cb, int64_t ce) {
    const ExactSegments segs(a.exact, cb, ce);
    const bool stream = streamable(a.dx + cb, a.cols, a.stream);
    const T* inputs[] = {a.x, a.dy, a.relu_y};
    over_block_rows(inputs, a.cols, 0, a.rows, cb, ce, [&](int64_t r) FASTNN_TARGET_AVX512 {
      for (int i = 0; i < segs.count; ++i)
        rows_avx512<1>(a, r, segs.begin[i], segs.begin[i + 1], segs.exact[i], stream);
    });
    if (stream) _mm_sfence();  // streaming stores are weakly ordered: done before the pool's join
  }
#endif
};

// The one-read training path (see kOneReadAboveBytes) over a thread's columns [c0, c0 + w): each
// block of at most a.block columns has its statistics (Strip), then at once its elementwise pass
// (Apply), which re-reads the block from L3.
template <class Strip, class Apply>
struct TrainBlocks {
  using Args = typename Strip::Args;
  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t c0, int64_t w) {
    for (int64_t b = c0; b < c0 + w; b += a.block) {
      const int64_t end = std::min(b + a.block, c0 + w);
      Strip::run(a, b, end - b);
      Apply::block(a, b, end);
    }
  }
#if defined(__x86_64__)
  static FASTNN_TARGET_AVX512 void run_avx512(const Args& a, int64_t c0, int64_t w) {
    for (int64_t b = c0; b < c0 + w; b += a.block) {
      const int64_t end = std::min(b + a.block, c0 + w);
      Strip::run(a, b, end - b);
      Apply::block_avx512(a, b, end);
    }
  }
#endif
};

template <class T>
using ForwardTrainBlocks = TrainBlocks<ForwardTrainStrip<T>, ForwardApplyRows<T>>;
template <class T, bool kGated>
using BackwardTrainBlocks = TrainBlocks<BackwardTrainStrip<T, kGated>, BackwardApplyRows<T, kGated>>;

// Eval backward over columns [c0, c0 + w): dx = dy * weight * invstd in the same pass that sums
// dy and dy * (x - mean) for the parameter gradients.
template <class T, bool kGated>
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
      const int64_t at = n * a.cols + c0;
      const T* row = a.x + at;
      T* out = a.dx + at;
      if (sums) {
        for (int64_t c = 0; c < w; ++c) {
          const T g = incoming_grad<kGated>(a, at + c);
          const double gc = static_cast<double>(g);
          sum_dy[c] += gc;
          sum_dy_u[c] += gc * (static_cast<double>(row[c]) - mean[c]);
          out[c] = g * k[c];
        }
      } else {
        for (int64_t c = 0; c < w; ++c) out[c] = incoming_grad<kGated>(a, at + c) * k[c];
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
auto kernel_for_isa() {
  return isa_variant(run_avx512<Kernel>, run_avx2<Kernel>, run_baseline<Kernel>);
}

// The same for a kernel with a hand-written AVX-512 form (Kernel::run_avx512: the row and block
// kernels), which AVX-512 CPUs run instead of the compiled Kernel::run.
template <class Kernel>
auto hand_written_kernel_for_isa() {
#if defined(__x86_64__)
  return isa_variant(&Kernel::run_avx512, run_avx2<Kernel>, run_baseline<Kernel>);
#else
  return kernel_for_isa<Kernel>();
#endif
}

// A row kernel's compiled run (AVX2, baseline) given its ISA's streaming copy for a.stream. The
// AVX-512 form streams with its own intrinsics. Without it the AVX2 pass's ordinary stores read
// each output line first: a forward moved 4 bytes for every 3 of two passes and a write.
template <class Kernel>
FASTNN_TARGET_AVX2 void run_streaming_avx2(const typename Kernel::Args& a, int64_t begin, int64_t count) {
  Kernel::run(a, begin, count, stream_lines_for(CpuIsa::avx2));
}
template <class Kernel>
void run_streaming_baseline(const typename Kernel::Args& a, int64_t begin, int64_t count) {
  Kernel::run(a, begin, count, stream_lines_for(CpuIsa::scalar));
}
template <class Kernel>
auto row_kernel_for_isa() {
#if defined(__x86_64__)
  return isa_variant(&Kernel::run_avx512, run_streaming_avx2<Kernel>, run_streaming_baseline<Kernel>);
#else
  return kernel_for_isa<Kernel>();
#endif
}

// Runs a strip kernel over all columns: threads take contiguous column ranges, each walked in
// strips of at most kStrip columns.
template <class Kernel>
void over_column_strips(const typename Kernel::Args& a, int64_t rows, int64_t cols) {
  auto* strip = kernel_for_isa<Kernel>();
  const int64_t grain = std::max<int64_t>(16, kParallelGrain / std::max<int64_t>(rows, 1));
  parallel_for(cols, grain, [&](int64_t begin, int64_t end) {
    for (int64_t c0 = begin; c0 < end; c0 += kStrip) strip(a, c0, std::min(kStrip, end - c0));
  }, 16);
}

// Runs a block kernel (ForwardTrainBlocks, BackwardTrainBlocks) over all columns: threads take
// contiguous column ranges, whole blocks where the columns allow.
template <class Kernel>
void over_column_blocks(const typename Kernel::Args& a, int64_t cols) {
  auto* kernel = hand_written_kernel_for_isa<Kernel>();
  parallel_for(cols, a.block, [&](int64_t begin, int64_t end) { kernel(a, begin, end - begin); }, 16);
}

// Runs a row kernel over all rows: threads take contiguous row ranges.
template <class Kernel>
void over_rows(const typename Kernel::Args& a, int64_t rows, int64_t cols) {
  auto* kernel = row_kernel_for_isa<Kernel>();
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)), [&](int64_t begin, int64_t end) {
    kernel(a, begin, end - begin);
  }, 1);
}

// over_rows, each thread's rows taken a few KiB at a time and handed to then(r0, count) as soon as
// the kernel has written them (in L1): an epilogue fused into the pass, not a pass of its own.
template <class Kernel, class Then>
void over_rows_then(const typename Kernel::Args& a, int64_t rows, int64_t cols, Then then) {
  auto* kernel = row_kernel_for_isa<Kernel>();
  // At least kApplyRows rows a call: the AVX-512 apply kernel blocks its coefficient loads by that
  // many rows, and one 16 KiB row a call (4096 float columns) lost it 10-18% of the pass.
  const int64_t step = std::max<int64_t>(kApplyRows, kEpilogueBytes / (cols * static_cast<int64_t>(sizeof(*a.x))));
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r += step) {
      const int64_t count = std::min(step, end - r);
      kernel(a, r, count);
      then(r, count);
    }
  }, 1);
}

template <class T>
const T* data_or_null(const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; }


}  // namespace

void batchnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, bool training,
                       double momentum, double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd,
                       const BatchnormEpilogue& epilogue) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = x.size(0), cols = x.size(1);
    if (cols == 0) return;
    Tensor coef = Tensor::empty({3, cols}, x.dtype());
    ForwardArgs<T> a{x.data<T>(), y.data<T>(), rows, cols, data_or_null<T>(weight), data_or_null<T>(bias),
                     running_mean.defined() ? running_mean.data<T>() : nullptr,
                     running_var.defined() ? running_var.data<T>() : nullptr,
                     momentum, eps, save_mean.data<double>(), save_invstd.data<double>(), coef.data<T>(),
                     x.numel() * static_cast<int64_t>(sizeof(T)) > kPrefetchBytes,
                     // the epilogue reads y back at once: from the caches, not past them
                     !epilogue.any() && 2 * x.numel() * static_cast<int64_t>(sizeof(T)) > kStreamPassBytes,
                     training ? one_read_block<T>(rows, cols, 1) : 0};
    if (a.block) {
      over_column_blocks<ForwardTrainBlocks<T>>(a, cols);
      if (epilogue.any())  // blocks of columns: the epilogue's Philox blocks run along rows, so a pass of its own
        parallel_for(y.numel(), kParallelGrain / 4, [&](int64_t b, int64_t e) {
          dropout_forward_span(a.y, a.y, b, e, epilogue.dropout, epilogue.act);
        }, 256);
      return;
    }
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
    if (epilogue.any())
      over_rows_then<ForwardApplyRows<T>>(a, rows, cols, [&](int64_t r0, int64_t count) {
        dropout_forward_span(a.y, a.y, r0 * cols, (r0 + count) * cols, epilogue.dropout, epilogue.act);
      });
    else
      over_rows<ForwardApplyRows<T>>(a, rows, cols);
  });
}

namespace {

template <class T, bool kGated>
void backward_with(BackwardArgs<T>& a, bool training) {
  const int64_t cols = a.cols;
  if (!training) {
    over_column_strips<BackwardEvalStrip<T, kGated>>(a, a.rows, cols);
    return;
  }
  // coefficients: T (4 x cols); double (4 x cols), per-column and per-segment exact flags
  const int64_t chunks = (cols + kApplyChunk - 1) / kApplyChunk;
  Tensor coef = Tensor::empty({4, cols}, dtype_of<T>::value), coef64 = Tensor::empty({5 * cols + chunks}, DType::float64);
  a.coef = coef.data<T>();
  a.coef64 = coef64.data<double>();
  a.exact = a.coef64 + 4 * cols;
  a.chunk_exact = a.exact + cols;
  if (a.block) {
    over_column_blocks<BackwardTrainBlocks<T, kGated>>(a, cols);
    return;
  }
  over_column_strips<BackwardTrainStrip<T, kGated>>(a, a.rows, cols);
  for (int64_t j = 0; j < chunks; ++j) {
    a.chunk_exact[j] = 0.0;
    for (int64_t c = j * kApplyChunk; c < std::min(cols, (j + 1) * kApplyChunk); ++c)
      if (a.exact[c] != 0.0) a.chunk_exact[j] = 1.0;
  }
  over_rows<BackwardApplyRows<T, kGated>>(a, a.rows, cols);
}

}  // namespace

void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& weight,
                        const Tensor& save_mean, const Tensor& save_invstd, bool training,
                        Tensor& dx, Tensor& dweight, Tensor& dbias, bool accumulate,
                        const Tensor& relu_output, double relu_scale) {
  // The fused forward's relu (+ dropout) is undone as each pass reads dy (kGated), not by a pass
  // of its own into a temporary: float32, Zen 3, 2 threads, in-process against that pass, 60
  // alternating rounds: 1024 x 1024 1.30x faster with the data in the caches, 1.06x with them
  // flushed before each call; 128 x 1024 1.54x / 1.03x.
  const bool gated = relu_output.defined();
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = x.size(0), cols = x.size(1);
    if (cols == 0) return;
    const int64_t inputs = gated ? 3 : 2;  // arrays the statistics pass reads: x, dy (and relu's y)
    BackwardArgs<T> a{x.data<T>(), dy.data<T>(), dx.data<T>(), rows, cols, data_or_null<T>(weight),
                      save_mean.data<double>(), save_invstd.data<double>(),
                      dweight.defined() ? dweight.data<T>() : nullptr,
                      dbias.defined() ? dbias.data<T>() : nullptr, accumulate,
                      nullptr, nullptr, nullptr, nullptr,
                      inputs * x.numel() * static_cast<int64_t>(sizeof(T)) > kPrefetchBytes,
                      (inputs + 1) * x.numel() * static_cast<int64_t>(sizeof(T)) > kStreamPassBytes,
                      training ? one_read_block<T>(rows, cols, static_cast<int>(inputs)) : 0};
    if (gated) {
      a.relu_y = relu_output.data<T>();
      a.relu_scale = static_cast<T>(relu_scale);
      backward_with<T, true>(a, training);
    } else {
      backward_with<T, false>(a, training);
    }
  });
}

}  // namespace fastnn::cpu
