// CPU loss kernels. The hot loops (exp over logits, exp + log1p over BCE elements) are written as
// plain loops the compiler vectorises, with exp and log1p the branch-free polynomials of
// ops/fast_math.h instead of libm calls. Each kernel is compiled three times, for the baseline
// x86-64, AVX2 and AVX-512, and picked by cpu_isa() at run time.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "ops/fast_math.h"
#include "ops/loss.h"

#if defined(__x86_64__) || defined(__i386__)
#define FASTNN_LOSS_X86 1
#endif

namespace fastnn::cpu {

namespace {

using fastmath::exp_nonpositive;
using fastmath::log1p_unit;


// ---- Deterministic blocked reduction -----------------------------------------------------------

// Elements of exp/log-heavy work worth one extra thread (a quarter of plain elementwise work).
constexpr int64_t kTranscendentalGrain = kParallelGrain / 4;
// Items per reduction block. Blocks are fixed by the problem size alone, never by the thread
// count, and their partial sums are added in block order: a reduced loss has the same bits on 1
// thread or 64. (Within a block the sum is vectorised in an order fixed at compile time, so the
// bits can differ between ISAs, i.e. between machines, never between runs.)
constexpr int64_t kReduceBlock = 4096;

// Sum over [0, n) of f(begin, end) evaluated on blocks of `block` items, blocks in parallel
// (each thread taking at least `grain` items), partials added in block order.
template <class F>
double blocked_reduce(int64_t n, int64_t block, int64_t grain, F&& f) {
  if (n <= 0) return 0.0;
  const int64_t blocks = (n + block - 1) / block;
  if (blocks == 1) return f(int64_t{0}, n);
  std::vector<double> partial(static_cast<size_t>(blocks));
  parallel_for(blocks, std::max<int64_t>(1, grain / block), [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) partial[k] = f(k * block, std::min(n, (k + 1) * block));
  }, 1);
  double total = 0;
  for (const double p : partial) total += p;
  return total;
}

// ---- Kernels, one per loss; each is instantiated per ISA below ----------------------------------

// Sum of exp(x[c] - m) over c in [b, e), each also stored in d[c] when kStore; next_max takes the
// max of next[c] over the same c as well (the next row's, so that its loads from memory overlap
// this row's exponentials, as in softmax_rows: activation_cpu.cpp).
template <bool kStore, class T>
FASTNN_FORCE_INLINE T sum_exp(const T* x, T* d, int64_t b, int64_t e, T m, const T* next, T& next_max) {
  T s = 0, nm = next_max;
#pragma omp simd reduction(+ : s) reduction(max : nm)
  for (int64_t c = b; c < e; ++c) {
    const T v = exp_nonpositive(x[c] - m);
    if constexpr (kStore) d[c] = v;
    s += v;
    nm = next[c] > nm ? next[c] : nm;
  }
  next_max = nm;
  return s;
}

// The other classes' exponentials, summed in two runs around the target. One loop over every
// class that zeroed the target's term compared a 64-bit index per lane (4 to a ymm): the fused
// cross-entropy of 64 x 1000 float32 took 0.695 ns an element that way, 0.570 in two runs (one
// Zen 3 core, AVX2, in L1, the two interleaved in one process). Returns next's max over all
// classes in next_max.
template <bool kStore, class T>
FASTNN_FORCE_INLINE T others_exp(const T* x, T* d, int64_t classes, int64_t y, T m, const T* next, T& next_max) {
  next_max = -INFINITY;
  const T below = sum_exp<kStore>(x, d, 0, y, m, next, next_max);
  const T above = sum_exp<kStore>(x, d, y + 1, classes, m, next, next_max);
  next_max = next[y] > next_max ? next[y] : next_max;
  return below + above;
}

// Unweighted loss of one row, -log softmax(x)[y], given its max m; the max of row `next` goes to
// next_max.
template <class T>
FASTNN_FORCE_INLINE T cross_entropy_row(const T* x, int64_t classes, int64_t y, T m, const T* next, T& next_max) {
  const T others = others_exp<false>(x, static_cast<T*>(nullptr), classes, y, m, next, next_max);
  return cross_entropy_row_loss(m, x[y], exp_nonpositive(x[y] - m), others);
}

// Writes coef * (softmax(x) - onehot(y)) into d and returns the row's unweighted loss (the same
// bits as cross_entropy_row). The exponentials wait in d between the two passes, so softmax costs
// one exp per logit. d may be x.
template <class T>
FASTNN_FORCE_INLINE T cross_entropy_row_grad(const T* x, T* d, int64_t classes, int64_t y, T coef, T m,
                                             const T* next, T& next_max) {
  const T target_logit = x[y];
  const T others = others_exp<true>(x, d, classes, y, m, next, next_max);
  const T target_exp = exp_nonpositive(target_logit - m);
  const T inv = T(1) / (target_exp + others);
#pragma omp simd
  for (int64_t c = 0; c < classes; ++c) d[c] = cross_entropy_grad(d[c], others, false, inv, coef);
  d[y] = cross_entropy_grad(target_exp, others, true, inv, coef);
  return cross_entropy_row_loss(m, target_logit, target_exp, others);
}

// One cross-entropy call over rows of logits (N, C) and their labels.
template <class T, class I>
struct CrossEntropyJob {
  const T* logits;
  const I* labels;
  const T* weight;  // nullptr: every class weighs 1
  int64_t classes;
  int64_t ignore_index;
  T* dlogits = nullptr;             // gradient out; nullptr for the forward
  T* row_loss = nullptr;            // per-row weighted losses out (reduction "none" forward)
  const T* row_upstream = nullptr;  // per-row upstream gradient (reduction "none" backward)
  double scale = 0;                 // else: d loss / d (weighted row loss) of every row

  bool ignored(int64_t r) const { return static_cast<int64_t>(labels[r]) == ignore_index; }
  T class_weight(int64_t label) const { return weight ? weight[label] : T(1); }
  // Rows per reduction block (about kReduceBlock logits) and per thread.
  int64_t block_rows() const { return std::max<int64_t>(1, kReduceBlock / classes); }
  int64_t grain_rows() const { return std::max<int64_t>(1, kTranscendentalGrain / classes); }
};

template <class T, class I>
FASTNN_FORCE_INLINE void write_ignored_row(const CrossEntropyJob<T, I>& j, int64_t r) {
  const int64_t C = j.classes;
  if (j.dlogits) std::fill(j.dlogits + r * C, j.dlogits + (r + 1) * C, T(0));
  if (j.row_loss) j.row_loss[r] = T(0);
}

// d loss / d (unweighted loss of row r), times the row's class weight w.
template <class T, class I>
FASTNN_FORCE_INLINE T row_coef(const CrossEntropyJob<T, I>& j, int64_t r, T w) {
  const double upstream = j.row_upstream ? static_cast<double>(j.row_upstream[r]) : j.scale;
  return static_cast<T>(static_cast<double>(w) * upstream);
}

// Rows [b, e), one at a time (many classes): writes what the job asks for and returns the sum of
// w[y] * loss over the rows.
template <class T, class I>
FASTNN_FORCE_INLINE double run_rows(const CrossEntropyJob<T, I>& j, int64_t b, int64_t e) {
  const int64_t C = j.classes;
  double total = 0;
  T m = b < e ? fastmath::max_of(j.logits + b * C, C) : T(0);  // row r's, carried from row r - 1
  for (int64_t r = b; r < e; ++r) {
    const T* x = j.logits + r * C;
    const T* next = r + 1 < e ? x + C : x;  // the last row's max again, unused
    if (j.ignored(r)) {
      write_ignored_row(j, r);
      m = fastmath::max_of(next, C);
      continue;
    }
    const int64_t y = static_cast<int64_t>(j.labels[r]);
    const T w = j.class_weight(y);
    T next_max;
    const T loss = j.dlogits ? cross_entropy_row_grad(x, j.dlogits + r * C, C, y, row_coef(j, r, w), m, next, next_max)
                             : cross_entropy_row(x, C, y, m, next, next_max);
    m = next_max;
    if (j.row_loss) j.row_loss[r] = w * loss;
    total += static_cast<double>(w) * static_cast<double>(loss);
  }
  return total;
}

// Below this many classes a row's exp loop is too short to vectorise (with 10 classes the whole
// row is a loop epilogue), so run_rows_tiled exponentiates a tile of rows in one flat loop.
constexpr int64_t kFewClasses = 64;
constexpr int64_t kTileElements = 1024;

// run_rows for C < kFewClasses: each tile of rows is shifted by its row maxes into a buffer, the
// buffer is exponentiated at full vector width, then each row is finished from its exponentials.
template <class T, class I>
FASTNN_FORCE_INLINE double run_rows_tiled(const CrossEntropyJob<T, I>& j, int64_t b, int64_t e) {
  const int64_t C = j.classes, tile_rows = kTileElements / C;
  alignas(64) T ex[kTileElements];
  T maxes[kTileElements];
  double total = 0;
  for (int64_t r0 = b; r0 < e; r0 += tile_rows) {
    const int64_t rows = std::min(e - r0, tile_rows), n = rows * C;
    const T* x = j.logits + r0 * C;
    for (int64_t r = 0; r < rows; ++r) {
      const T m = fastmath::max_of(x + r * C, C);
      maxes[r] = m;
      for (int64_t c = 0; c < C; ++c) ex[r * C + c] = x[r * C + c] - m;
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) ex[i] = exp_nonpositive(ex[i]);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = r0 + r;
      if (j.ignored(row)) {
        write_ignored_row(j, row);
        continue;
      }
      const int64_t y = static_cast<int64_t>(j.labels[row]);
      const T w = j.class_weight(y);
      const T* er = ex + r * C;
      const T others = fastmath::sum_of(er, y) + fastmath::sum_of(er + y + 1, C - y - 1);
      const T target_exp = er[y];
      // read before the gradient is written: dlogits may be the logits
      const T loss = cross_entropy_row_loss(maxes[r], x[r * C + y], target_exp, others);
      if (j.dlogits) {
        const T coef = row_coef(j, row, w), inv = T(1) / (target_exp + others);
        T* d = j.dlogits + row * C;
        for (int64_t c = 0; c < C; ++c) d[c] = cross_entropy_grad(er[c], others, false, inv, coef);
        d[y] = cross_entropy_grad(target_exp, others, true, inv, coef);
      }
      if (j.row_loss) j.row_loss[row] = w * loss;
      total += static_cast<double>(w) * static_cast<double>(loss);
    }
  }
  return total;
}

// One BCE-with-logits or MSE call over the flat elements of input.
template <class T>
struct ElementwiseJob {
  const T* x;
  const T* t;
  Broadcast<T> weight, pos_weight;  // BCE (ops/loss.h); absent: 1
  T* loss = nullptr;                // per-element losses out (reduction "none" forward)
  T* grad = nullptr;                // gradient out (backward)
  const T* upstream = nullptr;      // per-element upstream gradient (reduction "none" backward)
  T scale = 0;                      // else: the upstream gradient of every element
};

// A broadcast operand over elements [i, i + len): contiguous values (data) or one value for all.
template <class T>
struct OperandRun {
  const T* data;  // the value of element i, i + 1, ...; nullptr: `value` for every element
  T value;
  int64_t len;
};

// The longest such run from element i, up to `end`.
template <class T>
OperandRun<T> operand_run(const Broadcast<T>& o, int64_t i, int64_t end) {
  const BroadcastLayout& l = o.layout;
  if (!o.data || l.period == 1) return {nullptr, o[i], end - i};
  if (l.inner == 1) {
    const int64_t at = i % l.period;
    return {o.data + at, T(0), std::min(end - i, l.period - at)};
  }
  return {nullptr, o[i], std::min(end - i, l.inner - i % l.inner)};
}

// The BCE loops, one instance per kind of operand run (VECTOR_W, VECTOR_PW: contiguous values, else
// one value) and of upstream gradient: a loop-invariant "which?" left inside the loop is control
// flow the vectoriser gives up on. An absent weight is the value 1, and v * 1 is v exactly.
template <class T, bool VECTOR_W, bool VECTOR_PW, bool PER_ELEMENT_UPSTREAM>
FASTNN_FORCE_INLINE void bce_grad_loop(const T* x, const T* t, OperandRun<T> w, OperandRun<T> pw, const T* up,
                                      T scale, T* g, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const T e = exp_nonpositive(-std::fabs(x[k]));
    const T v = bce_with_logits_grad(x[k], t[k], VECTOR_PW ? pw.data[k] : pw.value, e) *
                (PER_ELEMENT_UPSTREAM ? up[k] : scale);
    g[k] = v * (VECTOR_W ? w.data[k] : w.value);  // torch weighs the gradient last
  }
}

template <class T, bool VECTOR_W, bool VECTOR_PW>
FASTNN_FORCE_INLINE T bce_element(const T* x, const T* t, const OperandRun<T>& w, const OperandRun<T>& pw,
                                  int64_t k) {
  const T e = exp_nonpositive(-std::fabs(x[k]));
  const T l = bce_with_logits_loss(x[k], t[k], VECTOR_PW ? pw.data[k] : pw.value, log1p_unit(e));
  return (VECTOR_W ? w.data[k] : w.value) * l;  // torch weighs the loss last
}

template <class T, bool VECTOR_W, bool VECTOR_PW>
FASTNN_FORCE_INLINE void bce_loss_loop(const T* x, const T* t, OperandRun<T> w, OperandRun<T> pw, T* out,
                                      int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) out[k] = bce_element<T, VECTOR_W, VECTOR_PW>(x, t, w, pw, k);
}

template <class T, bool VECTOR_W, bool VECTOR_PW>
FASTNN_FORCE_INLINE double bce_sum_loop(const T* x, const T* t, OperandRun<T> w, OperandRun<T> pw, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += static_cast<double>(bce_element<T, VECTOR_W, VECTOR_PW>(x, t, w, pw, k));
  return s;
}

// Elements [i0, i0 + n) of a BCE job, over which its weight runs as w and its pos_weight as pw:
// the sum of the losses for a reduced forward, else 0 (outputs written).
template <class T, bool VECTOR_W, bool VECTOR_PW>
FASTNN_FORCE_INLINE double bce_segment(const ElementwiseJob<T>& j, int64_t i0, int64_t n, OperandRun<T> w,
                                      OperandRun<T> pw) {
  const T* x = j.x + i0;
  const T* t = j.t + i0;
  if (j.grad) {
    if (j.upstream)
      bce_grad_loop<T, VECTOR_W, VECTOR_PW, true>(x, t, w, pw, j.upstream + i0, j.scale, j.grad + i0, n);
    else
      bce_grad_loop<T, VECTOR_W, VECTOR_PW, false>(x, t, w, pw, nullptr, j.scale, j.grad + i0, n);
    return 0.0;
  }
  if (j.loss) {
    bce_loss_loop<T, VECTOR_W, VECTOR_PW>(x, t, w, pw, j.loss + i0, n);
    return 0.0;
  }
  return bce_sum_loop<T, VECTOR_W, VECTOR_PW>(x, t, w, pw, n);
}

// Operand runs shorter than kMinOperandRun make the loops short, so they are read from a buffer
// kGatherElements at a time: one value per label of a few labels (a (C,) pos_weight) from a tile
// of its values repeated, built once per call and valid from any phase; others (one weight per
// sample of a few labels) gathered into it a run at a time. A 2^20-element (N, 5) float32 forward
// with a (5,) pos_weight, one thread, took 20.9 ns an element in runs of 5 (torch 6.0; 1.7
// unweighted), 2.8 gathered element by element; a 2^16-element one in L2 3.1-3.6 gathered, 1.7
// from the tile; with an (N, 1) weight 3.6-4.2 -> 2.4-2.6 (runs filled whole).
constexpr int64_t kMinOperandRun = 64;
constexpr int64_t kGatherElements = 512;
constexpr int64_t kOperandBuffer = kGatherElements + kMinOperandRun;

// True, with tile[k] = o[k] for k < kOperandBuffer, when o is a short cycle of values, one per
// element (inner 1): its values from element i are then tile + i % period, for kGatherElements.
template <class T>
bool tile_operand(const Broadcast<T>& o, T* tile) {
  const int64_t period = o.layout.period;
  if (!o.data || o.layout.inner != 1 || period == 1 || period >= kMinOperandRun) return false;
  for (int64_t k = 0; k < kOperandBuffer; ++k) tile[k] = o.data[k % period];
  return true;
}

// o's values of elements [i, i + n): runs of `inner` equal values, the first begun before i.
template <class T>
void gather_operand(const Broadcast<T>& o, int64_t i, int64_t n, T* out) {
  const int64_t inner = o.layout.inner, period = o.layout.period;
  int64_t at = i / inner % period;
  for (int64_t k = 0, run = inner - i % inner; k < n; run = inner) {
    const T v = o.data[at];
    const int64_t len = std::min(n - k, run);
    for (int64_t r = 0; r < len; ++r) out[k + r] = v;
    k += len;
    if (++at == period) at = 0;
  }
}

// `run` (of o from element i) cut to [i, i + n), or o's values there: from its tile, or gathered
// into buf.
template <class T>
OperandRun<T> run_or_gathered(const Broadcast<T>& o, OperandRun<T> run, bool tiled, int64_t i, int64_t n, T* buf) {
  if (run.len >= n) return {run.data, run.value, n};
  if (tiled) return {buf + i % o.layout.period, T(0), n};
  gather_operand(o, i, n, buf);
  return {buf, T(0), n};
}

// Elements [b, e) of a BCE job, in runs over which each operand is contiguous or constant: the
// losses' sum for a reduced forward, else 0 (outputs written).
template <class T>
FASTNN_FORCE_INLINE double run_bce(const ElementwiseJob<T>& j, int64_t b, int64_t e) {
  alignas(64) T w_buf[kOperandBuffer], pw_buf[kOperandBuffer];
  const bool w_tiled = tile_operand(j.weight, w_buf), pw_tiled = tile_operand(j.pos_weight, pw_buf);
  double s = 0;
  for (int64_t i = b; i < e;) {
    OperandRun<T> w = operand_run(j.weight, i, e), pw = operand_run(j.pos_weight, i, e);
    if (std::min(w.len, pw.len) < kMinOperandRun) {
      const int64_t len = std::min(e - i, kGatherElements);
      w = run_or_gathered(j.weight, w, w_tiled, i, len, w_buf);
      pw = run_or_gathered(j.pos_weight, pw, pw_tiled, i, len, pw_buf);
    }
    const int64_t n = std::min(w.len, pw.len);
    if (w.data && pw.data) s += bce_segment<T, true, true>(j, i, n, w, pw);
    else if (w.data) s += bce_segment<T, true, false>(j, i, n, w, pw);
    else if (pw.data) s += bce_segment<T, false, true>(j, i, n, w, pw);
    else s += bce_segment<T, false, false>(j, i, n, w, pw);
    i += n;
  }
  return s;
}

template <class T>
FASTNN_FORCE_INLINE double run_mse(const ElementwiseJob<T>& j, int64_t b, int64_t e) {
  const T* x = j.x;
  const T* t = j.t;
  if (j.grad) {
    T* g = j.grad;
    const T* up = j.upstream;
    if (up) {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) g[i] = mse_grad(x[i], t[i], up[i]);
    } else {
      const T scale = j.scale;
#pragma omp simd
      for (int64_t i = b; i < e; ++i) g[i] = mse_grad(x[i], t[i], scale);
    }
    return 0.0;
  }
  if (j.loss) {
    T* out = j.loss;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) out[i] = mse_loss(x[i], t[i]);
    return 0.0;
  }
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = b; i < e; ++i) s += static_cast<double>(mse_loss(x[i], t[i]));
  return s;
}

// ---- Per-ISA instances -------------------------------------------------------------------------

template <class T>
struct BceJob : ElementwiseJob<T> {};
template <class T>
struct MseJob : ElementwiseJob<T> {};

template <class T, class I>
FASTNN_FORCE_INLINE double run_job(const CrossEntropyJob<T, I>& j, int64_t b, int64_t e) {
  return j.classes < kFewClasses ? run_rows_tiled(j, b, e) : run_rows(j, b, e);
}
template <class T>
FASTNN_FORCE_INLINE double run_job(const BceJob<T>& j, int64_t b, int64_t e) { return run_bce(j, b, e); }
template <class T>
FASTNN_FORCE_INLINE double run_job(const MseJob<T>& j, int64_t b, int64_t e) { return run_mse(j, b, e); }

template <class Job>
double run_baseline(const Job& j, int64_t b, int64_t e) { return run_job(j, b, e); }
#ifdef FASTNN_LOSS_X86
template <class Job>
FASTNN_TARGET_AVX2 double run_avx2(const Job& j, int64_t b, int64_t e) { return run_job(j, b, e); }
template <class Job>
FASTNN_TARGET_AVX512 double run_avx512(const Job& j, int64_t b, int64_t e) { return run_job(j, b, e); }
#endif

template <class Job>
using RunFn = double (*)(const Job&, int64_t, int64_t);

template <class Job>
RunFn<Job> pick_kernel() {
#ifdef FASTNN_LOSS_X86
  return isa_variant(run_avx512<Job>, run_avx2<Job>, run_baseline<Job>);
#else
  return &run_baseline<Job>;
#endif
}

// Runs `job` over [0, n) in parallel: returns the sum of what its blocks return (deterministic),
// or 0 when `reduce` is false (each chunk only writes its outputs).
template <class Job>
double run(const Job& job, int64_t n, int64_t block, int64_t grain, bool reduce) {
  const RunFn<Job> fn = pick_kernel<Job>();
  if (reduce) return blocked_reduce(n, block, grain, [&](int64_t b, int64_t e) { return fn(job, b, e); });
  parallel_for(n, grain, [&](int64_t b, int64_t e) { fn(job, b, e); }, 1);
  return 0.0;
}

// ---- Helpers of the entry points ---------------------------------------------------------------

template <class T>
double scalar_of(const Tensor& t) { return static_cast<double>(t.data<T>()[0]); }

template <class T, class I>
CrossEntropyJob<T, I> cross_entropy_job(const Tensor& logits, const Tensor& target,
                                        const Tensor& weight, int64_t ignore_index) {
  CrossEntropyJob<T, I> j;
  j.logits = logits.data<T>();
  j.labels = target.data<I>();
  j.weight = weight.defined() ? weight.data<T>() : nullptr;
  j.classes = logits.size(1);
  j.ignore_index = ignore_index;
  return j;
}

// sum over the rows not ignored of weight[label]: the denominator of the "mean" reduction. It
// depends on the labels only, so the fused kernel knows it before reading a logit.
template <class T, class I>
double total_weight(const CrossEntropyJob<T, I>& j, int64_t rows) {
  return blocked_reduce(rows, kReduceBlock, kParallelGrain, [&](int64_t b, int64_t e) {
    double w = 0;
    for (int64_t r = b; r < e; ++r)
      if (!j.ignored(r)) w += static_cast<double>(j.class_weight(static_cast<int64_t>(j.labels[r])));
    return w;
  });
}

// Raises on the first label outside [0, classes) that is not ignore_index, before any output is
// written.
void check_labels(const Tensor& target, int64_t classes, int64_t ignore_index) {
  dispatch_index(target.dtype(), "target", [&](auto tag) {
    using I = decltype(tag);
    const I* y = target.data<I>();
    const int64_t n = target.numel();
    for (int64_t r = 0; r < n; ++r) {
      const int64_t v = static_cast<int64_t>(y[r]);
      if (v != ignore_index && (v < 0 || v >= classes)) throw_bad_label(BadLabel{r, v}, classes, ignore_index);
    }
  });
}

template <class F>
void dispatch_cross_entropy(const Tensor& logits, const Tensor& target, F&& f) {
  dispatch_floating(logits.dtype(), "logits", [&](auto ftag) {
    dispatch_index(target.dtype(), "target", [&](auto itag) { f(ftag, itag); });
  });
}

template <class T>
BceJob<T> bce_job(const Tensor& input, const Tensor& target, const Tensor& weight,
                  const Tensor& pos_weight) {
  BceJob<T> j;
  j.x = input.data<T>();
  j.t = target.data<T>();
  j.weight = broadcast_of<T>(weight, input);
  j.pos_weight = broadcast_of<T>(pos_weight, input);
  return j;
}

// The upstream gradient of every element of a reduced elementwise loss.
template <class T>
T reduced_scale(const Tensor& dloss, Reduction reduction, int64_t n) {
  const double g = scalar_of<T>(dloss);
  return static_cast<T>(reduction == Reduction::mean ? g / static_cast<double>(n) : g);
}

template <class T>
double reduced_value(double total, Reduction reduction, int64_t n) {
  return reduction == Reduction::mean ? total / static_cast<double>(n) : total;
}

}  // namespace

// ---- Entry points ------------------------------------------------------------------------------

void cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                           Reduction reduction, int64_t ignore_index, Tensor& loss) {
  check_labels(target, logits.size(1), ignore_index);
  const int64_t rows = logits.size(0);
  dispatch_cross_entropy(logits, target, [&](auto ftag, auto itag) {
    using T = decltype(ftag);
    auto j = cross_entropy_job<T, decltype(itag)>(logits, target, weight, ignore_index);
    if (reduction == Reduction::none) {
      j.row_loss = loss.data<T>();
      run(j, rows, j.block_rows(), j.grain_rows(), false);
      return;
    }
    const double total = run(j, rows, j.block_rows(), j.grain_rows(), true);
    loss.data<T>()[0] = static_cast<T>(reduction == Reduction::mean ? total / total_weight(j, rows) : total);
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& dloss,
                            const Tensor& weight, Reduction reduction, int64_t ignore_index,
                            Tensor& dlogits) {
  check_labels(target, logits.size(1), ignore_index);
  const int64_t rows = logits.size(0);
  if (rows == 0) return;
  dispatch_cross_entropy(logits, target, [&](auto ftag, auto itag) {
    using T = decltype(ftag);
    auto j = cross_entropy_job<T, decltype(itag)>(logits, target, weight, ignore_index);
    j.dlogits = dlogits.data<T>();
    if (reduction == Reduction::none) j.row_upstream = dloss.data<T>();
    else if (reduction == Reduction::sum) j.scale = scalar_of<T>(dloss);
    else j.scale = scalar_of<T>(dloss) / total_weight(j, rows);
    run(j, rows, j.block_rows(), j.grain_rows(), false);
  });
}

void cross_entropy_fused(const Tensor& logits, const Tensor& target, const Tensor& weight,
                         Reduction reduction, int64_t ignore_index, Tensor& loss, Tensor& dlogits) {
  check_labels(target, logits.size(1), ignore_index);
  const int64_t rows = logits.size(0);
  dispatch_cross_entropy(logits, target, [&](auto ftag, auto itag) {
    using T = decltype(ftag);
    auto j = cross_entropy_job<T, decltype(itag)>(logits, target, weight, ignore_index);
    j.dlogits = dlogits.data<T>();
    const double denominator = reduction == Reduction::mean ? total_weight(j, rows) : 1.0;
    j.scale = 1.0 / denominator;
    const double total = run(j, rows, j.block_rows(), j.grain_rows(), true);
    loss.data<T>()[0] = static_cast<T>(reduction == Reduction::mean ? total / denominator : total);
  });
}

void mse_forward(const Tensor& input, const Tensor& target, Reduction reduction, Tensor& loss) {
  const int64_t n = input.numel();
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    MseJob<T> j;
    j.x = input.data<T>();
    j.t = target.data<T>();
    if (reduction == Reduction::none) {
      j.loss = loss.data<T>();
      run(j, n, kReduceBlock, kParallelGrain, false);
      return;
    }
    const double total = run(j, n, kReduceBlock, kParallelGrain, true);
    loss.data<T>()[0] = static_cast<T>(reduced_value<T>(total, reduction, n));
  });
}

void mse_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                  Reduction reduction, Tensor& dinput) {
  const int64_t n = input.numel();
  if (n == 0) return;
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    MseJob<T> j;
    j.x = input.data<T>();
    j.t = target.data<T>();
    j.grad = dinput.data<T>();
    if (reduction == Reduction::none) j.upstream = dloss.data<T>();
    else j.scale = reduced_scale<T>(dloss, reduction, n);
    run(j, n, kReduceBlock, kParallelGrain, false);
  });
}

void bce_with_logits_forward(const Tensor& input, const Tensor& target, const Tensor& weight,
                             const Tensor& pos_weight, Reduction reduction, Tensor& loss) {
  const int64_t n = input.numel();
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    BceJob<T> j = bce_job<T>(input, target, weight, pos_weight);
    if (reduction == Reduction::none) {
      j.loss = loss.data<T>();
      run(j, n, kReduceBlock, kTranscendentalGrain, false);
      return;
    }
    const double total = run(j, n, kReduceBlock, kTranscendentalGrain, true);
    loss.data<T>()[0] = static_cast<T>(reduced_value<T>(total, reduction, n));
  });
}

void bce_with_logits_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                              const Tensor& weight, const Tensor& pos_weight, Reduction reduction,
                              Tensor& dinput) {
  const int64_t n = input.numel();
  if (n == 0) return;
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    BceJob<T> j = bce_job<T>(input, target, weight, pos_weight);
    j.grad = dinput.data<T>();
    if (reduction == Reduction::none) j.upstream = dloss.data<T>();
    else j.scale = reduced_scale<T>(dloss, reduction, n);
    run(j, n, kReduceBlock, kTranscendentalGrain, false);
  });
}

}  // namespace fastnn::cpu
