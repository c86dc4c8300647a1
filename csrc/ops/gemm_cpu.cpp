// The GEMM driver (blocking, packing decisions, thread split) and the portable scalar
// micro-kernel. The SIMD micro-kernels live in gemm_kernels_avx512.cpp / gemm_kernels_avx2.cpp.

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/cpu_features.h"
#include "core/host_memory.h"
#include "core/parallel.h"
#include "ops/gemm.h"

namespace fastnn::cpu {
namespace gemm_detail {

// ---------------------------------------------------------------------------------------------
// Portable scalar micro-kernel: the reference every SIMD variant must agree with, and the one
// used where no SIMD variant is available or FASTNN_ISA=scalar asks for it.

constexpr int kScalarMR = 4, kScalarNR = 8;

// FULL: a whole MR x NR tile, with compile-time bounds the compiler vectorises (SSE2 / NEON).
template <class T, bool A_ROWS, bool FULL>
void micro_scalar_tile(const MicroTile<T>& t) {
  T acc[kScalarMR][kScalarNR] = {};
  const int rows = FULL ? kScalarMR : t.rows, cols = FULL ? kScalarNR : t.cols;
  for (int64_t k = 0; k < t.kc; ++k) {
    const T* bk = t.b + k * t.b_rs;
    T bv[kScalarNR];
    for (int j = 0; j < kScalarNR; ++j) bv[j] = FULL || j < cols ? bk[j] : T(0);
    for (int i = 0; i < rows; ++i) {
      const T a = A_ROWS ? t.a[i * t.a_rs + k] : t.a[k * t.a_cs + i];
      for (int j = 0; j < kScalarNR; ++j) acc[i][j] += a * bv[j];
    }
  }
  for (int i = 0; i < rows; ++i) {
    T* ci = t.c + i * t.ldc;
    for (int j = 0; j < cols; ++j) {
      T v = t.alpha * acc[i][j];
      if (t.beta != T(0)) v += t.beta * ci[j];
      if (t.bias) v += t.bias[j];
      ci[j] = v;
    }
  }
  activate_tile(t.act, t.c, t.ldc, rows, cols);
}

template <class T>
void micro_scalar(const MicroTile<T>& t) {
  const bool full = t.rows == kScalarMR && t.cols == kScalarNR;
  if (t.a_rs == 1)
    full ? micro_scalar_tile<T, false, true>(t) : micro_scalar_tile<T, false, false>(t);
  else
    full ? micro_scalar_tile<T, true, true>(t) : micro_scalar_tile<T, true, false>(t);
}

template <class T>
void pack_b_generic(bool trans_b, const T* b, int64_t ldb, int64_t pc, int64_t jc, int64_t kc,
                    int64_t nc, int nr, int vec, T* dst) {
  if (!trans_b) {
    // Row k of the block at once, into every panel: B is read front to back (panel by panel, each
    // 4 KB-strided row fragment was a new stream: half of a 1024 x 1024 weight took 69 us, now 49).
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = b + (pc + k) * ldb + jc;
      for (int64_t jr = 0; jr < nc; jr += nr) {
        const int cols = static_cast<int>(std::min<int64_t>(nr, nc - jr));
        const int w = packed_width(cols, nr, vec);
        T* row = dst + (jr / nr) * kc * nr + k * w;
        std::memcpy(row, src + jr, sizeof(T) * cols);
        for (int j = cols; j < w; ++j) row[j] = T(0);
      }
    }
    return;
  }
  for (int64_t jr = 0; jr < nc; jr += nr) {
    const int cols = static_cast<int>(std::min<int64_t>(nr, nc - jr));
    const int w = packed_width(cols, nr, vec);
    T* panel = dst + (jr / nr) * kc * nr;
    // op(B)(k, j) = b[j * ldb + k]. Blocks of 16 k keep the 16 panel rows being written in L1
    // while each source row is read one cache line at a time.
    constexpr int64_t kb = 16;
    for (int64_t k0 = 0; k0 < kc; k0 += kb) {
      const int64_t k1 = std::min(kc, k0 + kb);
      for (int j = 0; j < cols; ++j) {
        const T* src = b + (jc + jr + j) * ldb + pc;
        for (int64_t k = k0; k < k1; ++k) panel[k * w + j] = src[k];
      }
      for (int64_t k = k0; k < k1; ++k)
        for (int j = cols; j < w; ++j) panel[k * w + j] = T(0);
    }
  }
}

template <class T>
KernelSet<T> kernels_scalar() {
  KernelSet<T> ks;
  ks.name = "scalar";
  ks.mr = kScalarMR;
  ks.nr = kScalarNR;
  ks.vec = 1;
  ks.micro = micro_scalar<T>;
  ks.pack_b = pack_b_generic<T>;
  return ks;
}

template <class T>
const KernelSet<T>& active_kernels() {
  static const KernelSet<T> ks = [] {
    switch (cpu_isa()) {
      case CpuIsa::avx512: return kernels_avx512<T>();
      case CpuIsa::avx2: return kernels_avx2<T>();
      default: return kernels_scalar<T>();
    }
  }();
  return ks;
}

template KernelSet<float> kernels_scalar<float>();
template KernelSet<double> kernels_scalar<double>();
template void pack_b_generic<float>(bool, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, float*);
template void pack_b_generic<double>(bool, const double*, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, double*);

// ---------------------------------------------------------------------------------------------
// Per-thread packing buffers. They live as long as the pool's (persistent) worker threads and
// only grow, so after the first call of a given size a GEMM allocates nothing.

class PackBuffer {
 public:
  PackBuffer() = default;
  PackBuffer(const PackBuffer&) = delete;
  PackBuffer& operator=(const PackBuffer&) = delete;
  ~PackBuffer() { std::free(data_); }
  template <class T>
  T* get(size_t count) {
    const size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
    if (bytes > capacity_) {
      std::free(data_);
      data_ = nullptr;  // empty, not dangling, should host_allocate throw
      capacity_ = 0;
      data_ = host_allocate(bytes);
      capacity_ = bytes;
    }
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

thread_local PackBuffer tl_pack_b, tl_pack_a, tl_shared_b;

// ---------------------------------------------------------------------------------------------
// The driver.

// A is read in place: the micro-kernel broadcasts its elements straight from op(A), whether rows
// (6 row streams) or columns (A^T: 6 adjacent values per k). Packing the whole of A measured 2-15%
// slower at batch 128 and no faster at 1024 (each packed element is used by only one micro-panel
// row). The exception is pack_a, one A^T micro-panel copied before its row of kernel calls, below.
struct Plan {
  int64_t kc = 0, nc = 0;
  bool pack_b = false, pack_a = false;
  bool finish_blocks = false;  // run p.finished on each row panel as it is done (else on all of C after)
};

// The source of the next B block, fetched towards L2 a few cache lines after each micro-kernel
// call of the current block, so that packing it reads the caches instead of DRAM: the pack is a
// phase of its own, and at batch 128 a cold 1024 x 1024 W (4 MB, ~90 us from DRAM on 2 cores) is
// a sixth of a forward GEMM's time.
template <class T>
class NextBlockPrefetch {
 public:
  // B's source for block (jc, pc) of nc x kc: rows of W (trans_b: nc rows, kc values each) or of B.
  void start(const GemmProblem<T>& p, int64_t jc, int64_t pc, int64_t nc, int64_t kc, int64_t calls) {
    const T* first = p.trans_b ? p.b + jc * p.ldb + pc : p.b + pc * p.ldb + jc;
    base_ = reinterpret_cast<const char*>(first);
    rows_ = p.trans_b ? nc : kc;
    lines_ = (static_cast<int64_t>((p.trans_b ? kc : nc) * sizeof(T)) + 63) / 64;
    stride_ = p.ldb * static_cast<int64_t>(sizeof(T));
    per_call_ = (rows_ * lines_ + calls - 1) / std::max<int64_t>(calls, 1);
    row_ = line_ = 0;
  }
  void step() {
    for (int64_t i = 0; i < per_call_ && row_ < rows_; ++i) {
      __builtin_prefetch(base_ + row_ * stride_ + line_ * 64, 0, 2);
      if (++line_ == lines_) line_ = 0, ++row_;
    }
  }

 private:
  const char* base_ = nullptr;
  int64_t rows_ = 0, lines_ = 0, stride_ = 0, per_call_ = 0, row_ = 0, line_ = 0;
};

// The columns a packed block of `cols` columns takes: whole nr-wide panels, the last narrowed.
inline int64_t packed_cols(int64_t cols, int nr, int vec) {
  return cols / nr * nr + (cols % nr ? packed_width(cols % nr, nr, vec) : 0);
}

// Where block (jc, pc) of nc columns starts in B packed whole (pack_b_shared): the blocks of the
// columns before jc, each plan.nc wide and all of K deep, then the K blocks before pc.
template <class T>
int64_t shared_block_offset(const GemmProblem<T>& p, const KernelSet<T>& ks, const Plan& plan, int64_t jc,
                            int64_t pc, int64_t nc) {
  return jc / plan.nc * packed_cols(plan.nc, ks.nr, ks.vec) * p.k + pc * packed_cols(nc, ks.nr, ks.vec);
}

// The elements of all of B packed: where a block past the last would start.
template <class T>
int64_t shared_b_elements(const GemmProblem<T>& p, const KernelSet<T>& ks, const Plan& plan) {
  const int64_t last_cols = p.n % plan.nc;
  return shared_block_offset(p, ks, plan, p.n - last_cols, 0, 0) + packed_cols(last_cols, ks.nr, ks.vec) * p.k;
}

// C[m0:m1, n0:n1] on the calling thread: BLIS's loops around the micro-kernel (which runs the
// innermost one, over k). Order jc -> pc -> ir -> jr: one micro-panel of A (mr x kc, a few KB)
// is reused across the whole width of the B block, which streams from L2.
template <class T>
void gemm_block(const GemmProblem<T>& p, const KernelSet<T>& ks, const Plan& plan, int64_t m0,
                int64_t m1, int64_t n0, int64_t n1, const T* shared_b = nullptr) {
  const int mr = ks.mr, nr = ks.nr;
  T* bpack = plan.pack_b && !shared_b
                 ? tl_pack_b.get<T>(static_cast<size_t>(plan.kc) * ((plan.nc + nr - 1) / nr * nr))
                 : nullptr;

  // Rows in micro-panels of near-equal height (128 = 18 x 6 + 4 x 5, not 21 x 6 + 2): a panel of
  // 3-5 rows runs at the full rate per row, one of 2 rows at 3/4 of it, and every panel streams the
  // whole B block from L2 (with the faster transposing pack: forward at batch 128 +5-8%).
  const int64_t row_panels = (m1 - m0 + mr - 1) / mr, panel_rows = (m1 - m0) / row_panels,
                longer_panels = (m1 - m0) % row_panels;
  T* apack = plan.pack_a ? tl_pack_a.get<T>(static_cast<size_t>(plan.kc) * mr) : nullptr;
  NextBlockPrefetch<T> prefetch;
  MicroTile<T> t{};
  t.alpha = p.alpha;
  t.ldc = p.ldc;
  for (int64_t jc = n0; jc < n1; jc += plan.nc) {
    const int64_t nc = std::min(plan.nc, n1 - jc);
    for (int64_t pc = 0; pc < p.k; pc += plan.kc) {
      const int64_t kc = std::min(plan.kc, p.k - pc);
      const bool last_k = pc + kc == p.k;
      t.kc = kc;
      t.beta = pc == 0 ? p.beta : T(1);
      t.act = last_k ? p.act : Activation::none;
      const T* bias = last_k && p.bias ? p.bias + jc : nullptr;

      const T* bsrc;
      int64_t panel_stride;
      bool prefetching = false;
      if (shared_b) {
        bsrc = shared_b + shared_block_offset(p, ks, plan, jc, pc, nc);
        panel_stride = kc * nr;
      } else if (plan.pack_b) {
        ks.pack_b(p.trans_b, p.b, p.ldb, pc, jc, kc, nc, nr, ks.vec, bpack);
        bsrc = bpack;
        panel_stride = kc * nr;
        // The next block (further along K, else the next columns) of a transposed B: W in X W^T.
        // With W cold, the forward at batch 128 ran 321-337 -> 363-373 GFLOP/s (+9-13%), 1024 rows
        // equal. Not for B read as stored (dY W): there, rows 4 KB apart compete for the same cache
        // sets and the prefetches cost 4% at 128 x 1024 -> 1024.
        const int64_t next_pc = pc + kc < p.k ? pc + kc : 0, next_jc = pc + kc < p.k ? jc : jc + plan.nc;
        if (p.trans_b && next_jc < n1) {
          const int64_t calls = row_panels * ((nc + nr - 1) / nr);
          prefetch.start(p, next_jc, next_pc, std::min(plan.nc, n1 - next_jc), std::min(plan.kc, p.k - next_pc), calls);
          prefetching = true;
        }
      } else {  // only when !trans_b
        bsrc = p.b + pc * p.ldb + jc;
        panel_stride = nr;
      }

      const FinishedBlocks<T>* finished = last_k && plan.finish_blocks ? p.finished : nullptr;
      for (int64_t panel = 0, ir = m0; panel < row_panels; ++panel, ir += t.rows) {
        t.rows = static_cast<int>(panel_rows + (panel < longer_panels));
        if (plan.pack_a) {
          const T* src = p.a + pc * p.lda + ir;
          for (int64_t k = 0; k < kc; ++k)
            for (int i = 0; i < t.rows; ++i) apack[k * t.rows + i] = src[k * p.lda + i];
          t.a = apack;
          t.a_rs = 1;
          t.a_cs = t.rows;
        } else if (p.trans_a) {
          t.a = p.a + pc * p.lda + ir;
          t.a_rs = 1;
          t.a_cs = p.lda;
        } else {
          t.a = p.a + ir * p.lda + pc;
          t.a_rs = p.lda;
          t.a_cs = 1;
        }
        T* crow = p.c + ir * p.ldc + jc;
        for (int64_t jr = 0; jr < nc; jr += nr) {
          t.cols = static_cast<int>(std::min<int64_t>(nr, nc - jr));
          t.b = bsrc + (jr / nr) * panel_stride;
          t.b_rs = plan.pack_b ? packed_width(t.cols, nr, ks.vec) : p.ldb;
          t.c = crow + jr;
          t.bias = bias ? bias + jr : nullptr;
          ks.micro(t);
          if (prefetching) prefetch.step();
        }
        if (finished) finished->run(finished->context, ir, t.rows, jc, nc);
      }
    }
  }
}

// K == 0: no product, only C = act(beta * C + bias).
template <class T>
void scale_only(const GemmProblem<T>& p) {
  parallel_for(p.m, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(p.n, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T* ci = p.c + i * p.ldc;
      for (int64_t j = 0; j < p.n; ++j) {
        T v = p.beta == T(0) ? T(0) : p.beta * ci[j];
        if (p.bias) v += p.bias[j];
        ci[j] = activation_apply(p.act, v);
      }
    }
  }, 1);
}

// FinishedBlocks on the whole of C, for the paths that do not run it block by block: rows split
// between the threads as the kernel that wrote them did (or near enough: C is in L2 or beyond).
template <class T>
void finish_whole(const GemmProblem<T>& p, int threads) {
  if (!p.finished) return;
  const FinishedBlocks<T>& f = *p.finished;
  parallel_for(p.m, std::max<int64_t>(1, p.m / std::max(threads, 1)),
               [&](int64_t b, int64_t e) { f.run(f.context, b, e - b, 0, p.n); });
}

// X W^T with fewer columns than this runs as dot products (KernelSet::dot_nt): a tile would be
// mostly masked lanes, and packing W^T would cost as much as the product. 10 columns (the output
// layer) at batch 32-1024: float32 AVX2 1.4-1.6x faster than its 16-wide tile, float64 1.2-1.5x
// under AVX-512 and AVX2 (float32 AVX-512 took this path before: fewer than its 16 lanes).
constexpr int64_t kDotMaxCols = 16;

// X W^T with at most this many rows runs as dot products (KernelSet::dot_nt), W read once in place
// rather than packed: 784/1024 -> 1024 at 1 row 3x faster (31 -> 92 GFLOP/s), 4 rows 2.6x, 16 rows
// 1.2-1.5x, 32 rows 1.07-1.13x; at 48 rows packing was 0-10% faster.
constexpr int64_t kDotMaxRows = 32;

// Pieces of C per thread in gemm_blocked's split, and the shortest K that takes them (see there).
constexpr int64_t kPiecesPerThread = 4;
constexpr int64_t kMinPiecesK = 64;

// B packed whole for a row split stays allocated with the calling thread, so it is bounded (the
// MLP's batch-128 layers take 0.4-0.5 MB); a larger B is packed block by block by each thread.
constexpr int64_t kSharedBMaxBytes = int64_t{4} << 20;

// A larger than this is not split by columns when C has at least twice as many rows as columns
// (gemm_blocked): beyond a laptop's last-level cache, and this VM's share of one. Zen 3, 2
// threads, X W^T, interleaved: 20000 x 784 -> 100 float32 90 -> 133 GFLOP/s, float64 41 -> 62;
// 4000 x 784 -> 100 (12.5 MB) 131 -> 158; 3000 x 784 -> 128 (9.4 MB) 139 -> 146; dY W at 20000 x
// 100 -> 784 128 -> 137. With A in cache the column split stays ahead (2048 x 784 -> 128, 6.4 MB:
// 159 against 147; 200 x 784 -> 100: 132 against 122).
constexpr int64_t kColumnSplitMaxABytes = int64_t{8} << 20;

// Inner dimensions up to this count as short in gemm_blocked (C's writes bound the time), whose B
// blocks then span up to kShortKBlockBytes of packed B: within L2 beside the rows being written.
constexpr int64_t kShortK = 64;
constexpr int64_t kShortKBlockBytes = int64_t{256} << 10;

// B packed whole, once, all threads taking part, for a row split in pieces: every piece then reads
// the same packed blocks, where packing per piece would pack all of B once per piece.
template <class T>
const T* pack_b_shared(const GemmProblem<T>& p, const KernelSet<T>& ks, const Plan& plan, int threads) {
  const int nr = ks.nr;
  T* packed = tl_shared_b.get<T>(static_cast<size_t>(shared_b_elements(p, ks, plan)));
  for (int64_t jc = 0; jc < p.n; jc += plan.nc) {
    const int64_t nc = std::min(plan.nc, p.n - jc), panels = (nc + nr - 1) / nr;
    for (int64_t pc = 0; pc < p.k; pc += plan.kc) {
      const int64_t kc = std::min(plan.kc, p.k - pc);
      T* block = packed + shared_block_offset(p, ks, plan, jc, pc, nc);
      parallel_for(panels, std::max<int64_t>(1, panels / threads), [&](int64_t b, int64_t e) {
        ks.pack_b(p.trans_b, p.b, p.ldb, pc, jc + b * nr, kc, std::min(nc, e * nr) - b * nr, nr, ks.vec,
                  block + b * kc * nr);
      }, 1);
    }
  }
  return packed;
}

// The blocked GEMM of gemm_block on `threads` threads, each owning a slice of C. split_rows: split
// C's rows even where its columns would do.
template <class T>
void gemm_blocked(const GemmProblem<T>& p, const KernelSet<T>& ks, int threads, bool split_rows) {
  Plan plan;
  // 2 KB of K per micro-panel row (KC = 512 floats): long enough to amortise the C tile's load
  // and store, short enough that an A micro-panel stays in L1 beside the B stream.
  plan.kc = 2048 / sizeof(T);
  // A^T read in place (dY^T X) takes one cache line per k for 6 of its 16 values; the next two
  // micro-panels use the rest of those lines if kc of them still fit in L1 beside the B stream
  // (kc = 256 floats: +2-7% on dW at batch 1024).
  if (p.trans_a) plan.kc = 1024 / sizeof(T);
  // Columns per B block: a packed kc x nc block is streamed from L2 once per micro-panel of A, so
  // it must stay in L2 (1 MB per core on Zen 4 and 5) beside A's panels. 256 floats (512 KB at
  // kc = 512) against 512 (1 MB) on Zen 5, where the FMAs are twice as wide as on the Zen 4 that
  // measured no difference: +3-8% at K = 1024 (128x1024->1024 forward 403-411 -> 436-444 GFLOP/s,
  // 1024^3 +3-4%), equal at K = 784 (a 784 KB block); the lecture step 2.5% faster at batch 128
  // and 1024 (4 alternating rounds).
  plan.nc = 1024 / sizeof(T);

  // Each thread owns a slice of C; split the columns unless C is too narrow to give every thread
  // whole vectors while it has rows to spare.
  bool split_n = !split_rows && threads > 1 && (p.n >= int64_t(threads) * ks.nr || p.m < int64_t(threads) * ks.mr * 2);
  // A column piece reads all of A, so a tall C (many samples, a narrow layer: scikit-learn's
  // default 100 hidden units, its lbfgs solver's whole-data batches) whose A has outgrown the
  // caches streamed A from DRAM once per piece and per K block, which bound the time; its rows
  // split instead (each thread reads its rows of A once, B packed once for both).
  if (split_n && p.m >= 2 * p.n && !p.trans_a && p.m * p.k * int64_t(sizeof(T)) > kColumnSplitMaxABytes)
    split_n = false;
  // A^T read in place (dY^T X) takes kc lines lda apart per micro-panel. When lda is a multiple of
  // 512 bytes those lines share at most 8 of L1's 64 sets, so they cannot stay in L1 between the
  // kernel calls across the B block, and each call fetches them again from L2. With AVX2's 16-wide
  // tiles that is 16 calls per panel: copying the panel first made the weight gradient 1.2-1.25x
  // faster (dY with 1024 features; 128 and 1024 rows). AVX-512's 64-wide tiles make 4 calls, where
  // the copy's own misses, not overlapped with FMAs as inside the kernel, cost 12-14%.
  if (p.trans_a) {
    const int64_t cols_per_thread = split_n ? (p.n + threads - 1) / threads : p.n;
    const int64_t calls_per_panel = (std::min(plan.nc, cols_per_thread) + ks.nr - 1) / ks.nr;
    plan.pack_a = calls_per_panel >= 8 && (p.lda * int64_t(sizeof(T))) % 512 == 0;
    // Where A^T stays in place, a weight gradient with many output features splits its rows
    // instead: each thread then reads half of dY^T's strided columns rather than all of them, and
    // packs all of X, read front to back. AVX-512: +6-7% with 784 input features, +1-2% with
    // 1024 (batch 128 and 1024, 6 alternating processes); with AVX2's panel copies it cost 1-5%.
    if (split_n && !plan.pack_a && p.m >= 256) split_n = false;
  }
  // Equal K blocks (784 = 2 x 392, not 512 + 272): the short block would pay the same C-tile
  // load and store for fewer flops.
  const int64_t k_blocks = (p.k + plan.kc - 1) / plan.kc;
  plan.kc = (p.k + k_blocks - 1) / k_blocks;
  // A fused update (p.finished) reads and writes arrays laid out like C, from DRAM, on each block
  // of C the moment it is final. Row panels of C's whole width make those reads one sequential
  // stream per thread, which the hardware prefetchers follow: Adam fused into the weight gradient
  // at 128 x 1024 -> 1024 took 0.93-0.95x the time of the GEMM then adam_step, against 1.08x in
  // the 256-column blocks of a column split, 1.08x in 512-column blocks of a row split, and 1.15x
  // / 0.98x with software prefetches of the next block into L1 / L2 (bursts of DRAM misses stall
  // the kernel's B stream); with 784 inputs 0.93-0.97x (Zen 3, 2 threads, 70 interleaved rounds).
  // Where C's whole width makes a B block over 512 KB (a Zen 3 core's L2; at batch 1024, K blocks
  // of 512 leave 256 columns, and the lecture step ran 3% slower), the update runs on all of C
  // after the product.
  plan.finish_blocks = p.finished && p.n * plan.kc * int64_t(sizeof(T)) <= (int64_t{512} << 10);
  if (plan.finish_blocks) {
    plan.nc = std::max(plan.nc, p.n);
    if (p.m >= int64_t(threads) * ks.mr) split_n = false;
  }
  // With K this short, writing C bounds the time, and C written in long runs writes fastest: each
  // thread takes whole rows, and a B block as wide as C (or as fits kShortKBlockBytes) makes a
  // panel of mr rows one contiguous run of C. The column split it replaces wrote each row in
  // 1 KB segments 4 KB apart. Zen 4, 2 threads, dY W (medians of 20 calls, 8-15 interleaved
  // rounds): 1024 x 10 -> 1024 (dX of the output layer at batch 1024) 0.150-0.155 -> 0.116-0.118
  // ms (torch 0.21), 4096 x 10 -> 1024 1.68 -> 0.46 ms (torch 0.83), 128 x 10 -> 1024 0.076 ->
  // 0.017 ms, 1024 x 32 -> 784 0.50 -> 0.24 ms, 1024 x 64 -> 1024 1.00 -> 0.70 ms (torch 0.83);
  // 128-512 rows at K = 32-64 1.07-1.3x faster; the forward X W^T at 1024 x 16 -> 512 0.149 ->
  // 0.095 ms, 1024 x 32 / 64 -> 1024 1.14x faster. At K = 96-256 it won nothing or lost up to 12%.
  if (p.k <= kShortK && !p.trans_a && !p.finished && p.m >= int64_t(threads) * ks.mr * 2) {
    const int64_t widest = kShortKBlockBytes / (p.k * int64_t(sizeof(T))) / ks.nr * ks.nr;
    plan.nc = std::max(plan.nc, std::min(p.n, widest));
    split_n = false;
  }
  const int64_t rows_per_thread = split_n ? p.m : (p.m + threads - 1) / threads;
  // Packing B pays when B is transposed (the micro-kernel needs its columns contiguous) or when
  // each packed panel is reused by many rows. A 16-wide (AVX2) tile reads B as stored one line
  // per row of its kc x nr panel: with rows a multiple of 4 KB apart (dY W with 1024 features)
  // those lines map to a few cache sets, so a panel read in place has left L1 and L2 before the
  // next row panel reads it again, and packing pays from two row panels: +25-35% at 48-128 rows;
  // Zen 3, 2 threads, 30-60 interleaved rounds: the output layer's weight gradient 10 x 1024 x
  // 1024 (batch 1024) 1.24-1.25x, at batch 4096 1.31x, 24 rows 1.28x, dY W at 16 x 1024 -> 1024
  // 1.38x, 24 rows 1.13x, 8-10 rows 1.04-1.06x. With other widths packing pays from 64 rows (dY W
  // with 784 features, Zen 3, 20-40 interleaved rounds: +7-20% at 128 rows, +9% at 96, -7% and
  // +7% in two runs at 64; before the AVX2 packer copied rows with vector moves it lost 15% at
  // 128; the output layer's weight gradient with 784 inputs lost 16% packed). A 64-wide (AVX-512)
  // tile reads four adjacent lines per row, which the prefetchers stream: in place is faster
  // below 256 rows (dX at 32 x 1024 -> 1024 +8%, at 128 +6%; the lecture step at batch 32 +5%,
  // at 128 equal).
  const bool narrow_tiles = ks.nr * int64_t(sizeof(T)) < 256;
  const bool b_rows_alias = (p.ldb * int64_t(sizeof(T))) % 4096 == 0;
  plan.pack_b = p.trans_b || rows_per_thread >= 256 || (narrow_tiles && rows_per_thread >= (b_rows_alias ? ks.mr + 1 : 64));
  // The threads claim pieces of C as they go (parallel_pieces), about kPiecesPerThread each, not
  // one fixed share each: on this shared machine one core often runs slower than the other for a
  // while (another tenant), and a fixed split leaves the faster thread waiting at the end. The
  // lecture step at batch 128, in-process against one share per thread, 60 alternating rounds on
  // Zen 3: quiet 0.98-0.99x, host disturbed 0.95-0.96x (its X W^T at 1024 -> 1024 0.84-0.88x),
  // a process busy on one core 0.93-0.95x; batch 1024 disturbed 0.94x. A column piece is at most
  // one B block wide and reads all of A (128-wide pieces at 128 x 1024 -> 1024 read A's 512 KB
  // twice as often as 256-wide ones and ran as fast); row pieces read B packed once for all
  // (pack_b_shared). With a short K, writing C bounds the time, and one long stripe of C per thread
  // writes it fastest: 1024 x 10 -> 1024 (dX of the output layer at batch 1024) ran 1.10x slower
  // in 128-column pieces.
  auto round_up = [](int64_t x, int64_t to) { return (x + to - 1) / to * to; };
  const int64_t pieces = int64_t(threads) * kPiecesPerThread;
  // The fixed split instead: with a short K, or rows whose B packed once would pass kSharedBMaxBytes.
  const bool claim_pieces =
      p.k >= kMinPiecesK &&
      (split_n || !plan.pack_b || shared_b_elements(p, ks, plan) * int64_t(sizeof(T)) <= kSharedBMaxBytes);
  if (threads <= 1) {
    gemm_block(p, ks, plan, 0, p.m, 0, p.n);
  } else if (!claim_pieces && split_n) {
    parallel_for(p.n, std::max<int64_t>(1, p.n / threads),
                 [&](int64_t b, int64_t e) { gemm_block(p, ks, plan, 0, p.m, b, e); }, ks.vec);
  } else if (!claim_pieces) {
    parallel_for(p.m, std::max<int64_t>(1, p.m / threads),
                 [&](int64_t b, int64_t e) { gemm_block(p, ks, plan, b, e, 0, p.n); }, ks.mr);
  } else if (split_n) {
    const int64_t count = std::max(pieces, (p.n + plan.nc - 1) / plan.nc);
    parallel_pieces(p.n, round_up((p.n + count - 1) / count, ks.nr),
                    [&](int64_t b, int64_t e) { gemm_block(p, ks, plan, 0, p.m, b, e); });
  } else {
    const T* shared_b = plan.pack_b ? pack_b_shared(p, ks, plan, threads) : nullptr;
    parallel_pieces(p.m, round_up((p.m + pieces - 1) / pieces, ks.mr),
                    [&](int64_t b, int64_t e) { gemm_block(p, ks, plan, b, e, 0, p.n, shared_b); });
  }
  if (!plan.finish_blocks) finish_whole(p, threads);  // a no-op without p.finished
}

// X W^T with more rows than kDotMaxRows and at most this many, and many more columns, runs as
// C^T = W X^T into a scratch buffer, then transposed into C: the packed operand is then X (a few
// hundred KB) instead of W (MBs), and W's rows are read in place, split between the threads so
// that each reads half of W (a column split read all of it twice: 5-11% slower with W cold).
// 784/1024 -> 1024, 2 threads, transpose included: 48 rows +12-19%, 64 rows +8-14%, 128 rows
// +3-7% with W in cache; with the caches flushed before each call 64 rows +12-16%, 128 rows
// +3-5%. 160 rows lost 4-10%.
constexpr int64_t kTransposedMaxRows = 128;

// The scratch buffer for S stays allocated with its thread, so it is bounded (the MLP's 128 x 1024
// takes 512 KB); a wider layer takes the packed-W^T path.
constexpr int64_t kTransposedMaxScratch = int64_t{4} << 20;
thread_local PackBuffer tl_scratch;

// S = C^T = op(B)^T op(A)^T without bias or activation, written to s (p.n x p.m, row-major): the
// product of the paths that then transpose S into C (transposed_epilogue).
template <class T>
GemmProblem<T> transposed_problem(const GemmProblem<T>& p, T* s) {
  GemmProblem<T> q;
  q.trans_a = !p.trans_b, q.trans_b = !p.trans_a;
  q.m = p.n, q.n = p.m, q.k = p.k;
  q.alpha = p.alpha;
  q.a = p.b, q.lda = p.ldb;
  q.b = p.a, q.ldb = p.lda;
  q.c = s, q.ldc = p.m;
  return q;
}

// C = act(S^T + beta C + bias) for S, p.n x p.m (row-major), the product op(A) op(B) transposed:
// whole vec x vec blocks through the kernel set's transpose (beta = 0, where C is never read), the
// rest elementwise; then bias and activation on C's rows.
template <class T>
void transposed_epilogue(const GemmProblem<T>& p, const KernelSet<T>& ks, const T* s, int threads) {
  const int64_t w = ks.vec, m = p.m, n = p.n;
  const T beta = p.beta;
  parallel_for((m + w - 1) / w, std::max<int64_t>(1, (m + w - 1) / w / threads), [&](int64_t b0, int64_t b1) {
    for (int64_t i0 = b0 * w; i0 < std::min(m, b1 * w); i0 += w) {
      const int64_t rows = std::min(w, m - i0);
      T* c = p.c + i0 * p.ldc;
      for (int64_t j0 = 0; j0 < n; j0 += w) {
        const int64_t cols = std::min(w, n - j0);
        if (rows == w && cols == w && beta == T(0)) {
          ks.transpose_block(s + j0 * m + i0, m, c + j0, p.ldc);
        } else {
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) {
              const T sji = s[(j0 + j) * m + i0 + i];
              T& cij = c[i * p.ldc + j0 + j];
              cij = beta == T(0) ? sji : sji + beta * cij;
            }
        }
      }
      if (p.bias)
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < n; ++j) c[i * p.ldc + j] += p.bias[j];
      if (p.act != Activation::none) activate_tile(p.act, c, p.ldc, static_cast<int>(rows), static_cast<int>(n));
    }
  });
}

// A^T read in place (dY^T X) on AVX2: its micro-panels broadcast 6 adjacent values per k from rows
// lda apart (or are copied first: pack_a), and the weight gradient ran 0.7-0.9x MKL on Zen 3. A
// whole transposed copy of A (M x K, through the kernel set's vec x vec transpose), then the
// product on its rows, as the forward's: Zen 3, 2 threads, interleaved with the in-place path and
// torch, dW at batch 1024 75-85 -> 104-111 GFLOP/s (torch 103-106), at batch 128 89 -> 94-98
// (torch 108-113), 784 and 1024 input features. The copy is bounded like the transposed forward's
// scratch (it stays allocated with its thread): a larger A stays in place.
constexpr int64_t kTransposedAMaxScratch = int64_t{8} << 20;
thread_local PackBuffer tl_transposed_a;

// Past that bound, a weight gradient with fewer output features than input ones (M < N: a long K
// of samples, scikit-learn's lbfgs batches or a large-batch layer) runs as C^T = X^T dY into the
// transposed forward's scratch, then transposed into C: the packed operand is then dY (K x M)
// instead of X (K x N), and X^T is read in place by rows split between the threads. Zen 3, 2
// threads, the same calls alternated in one process (9 rounds), transpose included: float64 20000
// x 784 -> 100 54 -> 65 GFLOP/s (torch 61), 60000 x 784 -> 128 43 -> 60 (torch 56), 4096 x 784 ->
// 512 49 -> 58; float32 60000 x 784 -> 128 102 -> 141 (torch 132), 20000 x 784 -> 256 92 -> 122,
// 30000 x 784 -> 300 96 -> 115. Where dY^T fits the copy the two forms ran even (0.89-1.12x).
// Accumulated gradients (beta != 0) take it too: C += S^T costs M x N, against K x M x N flops.

// dst (m x k, row-major) = src^T for src k x m with row stride lds; threads take row blocks of dst.
template <class T>
void transpose_into(const KernelSet<T>& ks, const T* src, int64_t lds, int64_t k, int64_t m, T* dst, int threads) {
  const int64_t w = ks.vec;
  const int64_t blocks = (m + w - 1) / w;
  parallel_for(blocks, std::max<int64_t>(1, blocks / std::max(threads, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t i0 = b0 * w; i0 < std::min(m, b1 * w); i0 += w) {
      const int64_t rows = std::min(w, m - i0);
      for (int64_t k0 = 0; k0 < k; k0 += w) {
        const int64_t cols = std::min(w, k - k0);
        if (rows == w && cols == w) {
          ks.transpose_block(src + k0 * lds + i0, lds, dst + i0 * k + k0, k);
        } else {
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) dst[(i0 + i) * k + k0 + j] = src[(k0 + j) * lds + i0 + i];
        }
      }
    }
  });
}

// Below this many flops a second thread costs more (waking it: ~1-2 us) than it saves.
constexpr double kMinFlopsForThreads = 4e5;

}  // namespace gemm_detail

template <class T>
void gemm(const GemmProblem<T>& p) {
  using namespace gemm_detail;
  if (p.m <= 0 || p.n <= 0) return;
  if (p.k <= 0) {
    scale_only(p);
    finish_whole(p, num_threads());
    return;
  }
  const KernelSet<T>& ks = active_kernels<T>();
  const int max_threads = in_parallel() ? 1 : num_threads();
  const double flops = 2.0 * p.m * p.n * p.k;
  const int threads = flops < kMinFlopsForThreads ? 1 : max_threads;

  // The paths below that write C in other orders (through a transposed scratch, or by dot
  // products) do not run p.finished; the blocked GEMM serves any shape.
  const bool special_paths = !p.finished;
  if (special_paths && ks.transpose_block && !p.trans_a && p.trans_b && p.beta == T(0) && p.m > kDotMaxRows &&
      p.m <= kTransposedMaxRows && p.n > kTransposedMaxRows && p.n >= 4 * p.m &&
      p.m * p.n * static_cast<int64_t>(sizeof(T)) <= kTransposedMaxScratch) {
    T* s = tl_scratch.get<T>(static_cast<size_t>(p.n * p.m));
    gemm_blocked(transposed_problem(p, s), ks, threads, /*split_rows=*/true);  // S = W X^T
    transposed_epilogue(p, ks, s, threads);
    return;
  }
  const bool a_copy_fits = p.m * p.k * static_cast<int64_t>(sizeof(T)) <= kTransposedAMaxScratch;
  if (special_paths && ks.transpose_block && p.trans_a && !p.trans_b && !a_copy_fits &&
      p.m < p.n && p.m * p.n * static_cast<int64_t>(sizeof(T)) <= kTransposedMaxScratch) {
    T* s = tl_scratch.get<T>(static_cast<size_t>(p.n * p.m));
    gemm(transposed_problem(p, s));  // S = X^T dY: another path than this one, as S is wider than tall
    transposed_epilogue(p, ks, s, threads);
    return;
  }
  if (p.trans_a && ks.transpose_a_first && ks.transpose_block && p.m >= 2 * ks.mr && a_copy_fits) {
    T* a = tl_transposed_a.get<T>(static_cast<size_t>(p.m * p.k));
    transpose_into(ks, p.a, p.lda, p.k, p.m, a, threads);
    GemmProblem<T> q = p;
    q.trans_a = false;
    q.a = a, q.lda = p.k;
    gemm_blocked(q, ks, threads, /*split_rows=*/false);
    return;
  }
  if (special_paths && ks.dot_nt && !p.trans_a && p.trans_b && p.k >= 4 * ks.vec) {
    if (p.n < kDotMaxCols) {
      parallel_for(p.m, std::max<int64_t>(1, p.m / threads),
                   [&](int64_t b, int64_t e) { ks.dot_nt(p, b, e, 0, p.n); }, 4);
      return;
    }
    if (p.m <= kDotMaxRows) {
      parallel_for(p.n, std::max<int64_t>(1, p.n / threads),
                   [&](int64_t b, int64_t e) { ks.dot_nt(p, 0, p.m, b, e); }, ks.vec);
      return;
    }
  }

  gemm_blocked(p, ks, threads, /*split_rows=*/false);
}

template void gemm<float>(const GemmProblem<float>&);
template void gemm<double>(const GemmProblem<double>&);

void gemm(const Tensor& a, const Tensor& b, Tensor& c, double alpha, double beta, bool trans_a,
          bool trans_b, const Tensor* bias, Activation act) {
  dispatch_floating(c.dtype(), "c", [&](auto tag) {
    using T = decltype(tag);
    gemm(gemm_problem<T>(a, b, c, alpha, beta, trans_a, trans_b, bias, act));
  });
}

}  // namespace fastnn::cpu
