// General matrix multiply, row-major: C = act(alpha * op(A) @ op(B) + beta * C + bias), op in
// {identity, transpose}, float32 and float64.
//
// The CPU version is a BLIS/Goto-style GEMM: loops over blocks of C and K around one
// ISA-specific micro-kernel (AVX-512, AVX2 or portable scalar, chosen at run time through
// cpu_isa()). The micro-kernel keeps an MR x NR tile of C in registers while streaming one
// micro-panel of op(A) and one of op(B) (packed when B is transposed or reused by many rows);
// the optional per-column bias and activation are applied to that tile as it is stored, while
// it is still in L1 (the "fused epilogue"). Each thread computes its own slice of C: one fork
// and join per call, and every element of C is summed in the same order whatever the threads.
#pragma once
#include <cstdint>

#include "core/dispatch.h"
#include "core/tensor.h"
#include "ops/activation.h"

namespace fastnn {

// c (M, N) = act(alpha * op(a) @ op(b) + beta * c + bias). op(a) is (M, K), op(b) is (K, N);
// bias is (N,) or null. beta == 0 never reads c (it may hold NaN); K == 0 gives act(beta*c + bias).
void gemm(const Tensor& a, const Tensor& b, Tensor& c, double alpha, double beta, bool trans_a,
          bool trans_b, const Tensor* bias = nullptr, Activation act = Activation::none);

namespace cpu {

void gemm(const Tensor& a, const Tensor& b, Tensor& c, double alpha, double beta, bool trans_a,
          bool trans_b, const Tensor* bias, Activation act);

// Work on blocks of C as soon as they hold their final values, while they are still in L1/L2:
// run(context, row0, rows, col0, cols) once for each block of a partition of C, on the thread
// that computed it (blocks are disjoint; threads run them concurrently). linear_backward's fused
// optimizer step is one: it reads the weight gradient's rows right after the GEMM stores them,
// instead of a separate pass reading them back from DRAM.
template <class T>
struct FinishedBlocks {
  void (*run)(const void* context, int64_t row0, int64_t rows, int64_t col0, int64_t cols) = nullptr;
  const void* context = nullptr;
};

// The same product on raw row-major buffers, for kernels that call GEMM on their own data
// (ops/linear_cpu.cpp). Element (i, j) of a matrix with leading dimension ld is at [i * ld + j].
template <class T>
struct GemmProblem {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  T alpha = 1;
  const T* a = nullptr;  // (m, k) row-major, or (k, m) when trans_a
  int64_t lda = 0;
  const T* b = nullptr;  // (k, n) row-major, or (n, k) when trans_b
  int64_t ldb = 0;
  T beta = 0;
  T* c = nullptr;  // (m, n); must not overlap a or b
  int64_t ldc = 0;
  const T* bias = nullptr;  // n values added per column, or null
  Activation act = Activation::none;
  const FinishedBlocks<T>* finished = nullptr;  // optional, see FinishedBlocks
};

// Defined for float and double in gemm_cpu.cpp.
template <class T>
void gemm(const GemmProblem<T>& p);

// The problems the Tensor-level entry points pose, built in one place for the CPU and CUDA
// launchers alike (shapes were checked in the bindings).

// c = act(alpha * op(a) @ op(b) + beta * c + bias)
template <class T>
GemmProblem<T> gemm_problem(const Tensor& a, const Tensor& b, Tensor& c, double alpha, double beta,
                            bool trans_a, bool trans_b, const Tensor* bias, Activation act) {
  GemmProblem<T> p;
  p.trans_a = trans_a;
  p.trans_b = trans_b;
  p.m = c.size(0);
  p.n = c.size(1);
  p.k = trans_a ? a.size(0) : a.size(1);
  p.alpha = static_cast<T>(alpha);
  p.a = a.data<T>();
  p.lda = a.size(1);
  p.b = b.data<T>();
  p.ldb = b.size(1);
  p.beta = static_cast<T>(beta);
  p.c = c.data<T>();
  p.ldc = c.size(1);
  p.bias = bias ? bias->data<T>() : nullptr;
  p.act = act;
  return p;
}

// Linear forward: y (N, out) = act(x (N, in) @ weight^T + bias), weight (out, in) as in torch.
template <class T>
GemmProblem<T> linear_forward_problem(const Tensor& x, const Tensor& weight, const Tensor* bias,
                                      Activation act, Tensor& y) {
  return gemm_problem<T>(x, weight, y, 1.0, 0.0, false, true, bias, act);
}

// Linear backward: dweight (out, in) = dz^T @ x, added to dweight when accumulating.
template <class T>
GemmProblem<T> linear_dweight_problem(const T* dz, const Tensor& x, Tensor& dweight, bool accumulate) {
  GemmProblem<T> p;
  p.trans_a = true;
  p.m = dweight.size(0);
  p.n = x.size(1);
  p.k = x.size(0);
  p.a = dz;
  p.lda = p.m;
  p.b = x.data<T>();
  p.ldb = p.n;
  p.beta = accumulate ? T(1) : T(0);
  p.c = dweight.data<T>();
  p.ldc = p.n;
  return p;
}

// Linear backward: dx (N, in) = dz (N, out) @ weight (out, in).
template <class T>
GemmProblem<T> linear_dx_problem(const T* dz, const Tensor& weight, Tensor& dx) {
  GemmProblem<T> p;
  p.m = dx.size(0);
  p.n = dx.size(1);
  p.k = weight.size(0);
  p.a = dz;
  p.lda = p.k;
  p.b = weight.data<T>();
  p.ldb = p.n;
  p.c = dx.data<T>();
  p.ldc = p.n;
  return p;
}

namespace gemm_detail {

// Arguments of one micro-kernel call: one tile of C, rows <= MR, cols <= NR.
//   C[i, j] = alpha * sum_{k < kc} A(i, k) * B(k, j) + beta * C[i, j]   (beta == 0: C not read)
//   then, when bias is set, C[i, j] += bias[j]; then C[i, j] = act(C[i, j]).
// A is addressed in one of two layouts:
//   a_rs == 1 ("k-major"): A(i, k) = a[k * a_cs + i]  (op(A) = A^T, read in place)
//   a_cs == 1 ("row-major"): A(i, k) = a[i * a_rs + k]  (op(A) = A, read in place)
// B(k, j) = b[k * b_rs + j]: NR contiguous columns per k (a packed panel, or B read directly;
// columns j >= cols are never read).
template <class T>
struct MicroTile {
  int64_t kc;
  const T* a;
  int64_t a_rs, a_cs;
  const T* b;
  int64_t b_rs;
  T* c;
  int64_t ldc;
  int rows, cols;
  T alpha, beta;
  const T* bias;
  Activation act;
};

template <class T>
using MicroKernel = void (*)(const MicroTile<T>&);

// What one ISA variant provides.
template <class T>
struct KernelSet {
  const char* name = "scalar";
  int mr = 0, nr = 0;  // micro-tile shape
  int vec = 1;         // elements per SIMD register: column splits between threads align to it
  MicroKernel<T> micro = nullptr;
  // Copies op(B)[pc:pc+kc, jc:jc+nc] into k-major panels of nr columns, the last one narrowed to
  // packed_width(its columns) with the padding zeroed; panel p starts at dst + p * kc * nr.
  void (*pack_b)(bool trans_b, const T* b, int64_t ldb, int64_t pc, int64_t jc, int64_t kc,
                 int64_t nc, int nr, int vec, T* dst) = nullptr;
  // Optional: C[m0:m1, n0:n1] for op(A) = A, op(B) = B^T with few columns (the 10-wide output
  // layer's X W^T) or few rows (X W^T at a batch of a few samples): dot products along K with
  // both operands read in place. A tile of a few columns would fill a fraction of each vector, and
  // packing B^T would cost as much as the product (for few rows: reading W three times instead
  // of once); here every lane works and nothing is packed.
  void (*dot_nt)(const GemmProblem<T>& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) = nullptr;
  // Optional: a vec x vec block transposed, dst[j * ldd + i] = src[i * lds + j].
  void (*transpose_block)(const T* src, int64_t lds, T* dst, int64_t ldd) = nullptr;
  // A^T (dY^T X, the weight gradient) is transposed into a scratch copy first, and the product
  // runs on A's rows: see transposed_a in gemm_cpu.cpp.
  bool transpose_a_first = false;
};

// Each returns the scalar set when its ISA was not compiled in (non-x86 builds).
template <class T> KernelSet<T> kernels_scalar();
template <class T> KernelSet<T> kernels_avx2();
template <class T> KernelSet<T> kernels_avx512();

// The variant cpu_isa() selects (FASTNN_ISA=scalar|avx2 caps it).
template <class T> const KernelSet<T>& active_kernels();

// Width of a packed B panel holding `cols` columns: a narrow last panel (a 10-wide layer) is
// padded to whole vectors only, not to nr, so it costs no more to pack and stream than it holds.
inline int packed_width(int64_t cols, int nr, int vec) {
  return cols >= nr ? nr : static_cast<int>((cols + vec - 1) / vec * vec);
}

// Portable B packer, shared by the variants that have no faster one.
template <class T>
void pack_b_generic(bool trans_b, const T* b, int64_t ldb, int64_t pc, int64_t jc, int64_t kc,
                    int64_t nc, int nr, int vec, T* dst);

// The activation part of the epilogue, on a tile just stored (still in L1). One switch per
// tile; the loops call activation_apply with a constant activation, so relu vectorises.
template <class T, Activation A>
inline void activate_rows(T* c, int64_t ldc, int rows, int cols) {
  for (int i = 0; i < rows; ++i) {
    T* ci = c + i * ldc;
    for (int j = 0; j < cols; ++j) ci[j] = activation_apply(A, ci[j]);
  }
}

template <class T>
inline void activate_tile(Activation act, T* c, int64_t ldc, int rows, int cols) {
  switch (act) {
    case Activation::relu: activate_rows<T, Activation::relu>(c, ldc, rows, cols); break;
    case Activation::tanh: activate_rows<T, Activation::tanh>(c, ldc, rows, cols); break;
    case Activation::sigmoid: activate_rows<T, Activation::sigmoid>(c, ldc, rows, cols); break;
    default: break;
  }
}

}  // namespace gemm_detail
}  // namespace cpu

// The CUDA backend (ops/gemm_cuda.cu); same contracts as the cpu:: functions.
namespace cuda {
void gemm(const Tensor& a, const Tensor& b, Tensor& c, double alpha, double beta, bool trans_a,
          bool trans_b, const Tensor* bias, Activation act);
}  // namespace cuda

}  // namespace fastnn
