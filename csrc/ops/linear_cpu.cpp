#include <algorithm>

#include "core/parallel.h"
#include "ops/gemm.h"
#include "ops/linear.h"

namespace fastnn::cpu {
namespace {

// One pass over dy (and y): dz = act'(y) * dy, and the bias gradient db += column sums of dz.
// Threads split the columns, each summing its columns over all rows in row order, so db is
// deterministic. dz == null: only db (act none, where dz is dy itself); db == null: only dz.
template <class T, Activation A>
void grad_columns(const T* y, const T* dy, T* dz, T* db, int64_t rows, int64_t cols, int64_t c0,
                  int64_t c1) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = dy + r * cols;
    const T* yr = y ? y + r * cols : nullptr;
    T* zr = dz ? dz + r * cols : nullptr;
    if (A == Activation::none) {
      for (int64_t c = c0; c < c1; ++c) db[c] += gr[c];
    } else if (db) {
      for (int64_t c = c0; c < c1; ++c) {
        const T g = activation_grad(A, yr[c], gr[c]);
        zr[c] = g;
        db[c] += g;
      }
    } else {
      for (int64_t c = c0; c < c1; ++c) zr[c] = activation_grad(A, yr[c], gr[c]);
    }
  }
}

template <class T>
void grad_pass(Activation act, const T* y, const T* dy, T* dz, T* db, bool accumulate, int64_t rows,
               int64_t cols) {
  parallel_for(cols, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(rows, 1)), [&](int64_t c0, int64_t c1) {
    if (db && !accumulate) std::fill(db + c0, db + c1, T(0));
    switch (act) {
      case Activation::relu: grad_columns<T, Activation::relu>(y, dy, dz, db, rows, cols, c0, c1); break;
      case Activation::tanh: grad_columns<T, Activation::tanh>(y, dy, dz, db, rows, cols, c0, c1); break;
      case Activation::sigmoid: grad_columns<T, Activation::sigmoid>(y, dy, dz, db, rows, cols, c0, c1); break;
      default: grad_columns<T, Activation::none>(y, dy, dz, db, rows, cols, c0, c1); break;
    }
  });
}

}  // namespace

void linear_forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Activation act,
                    Tensor& y) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    gemm(linear_forward_problem<T>(x, weight, bias, act, y));
  });
}

namespace {

// The optimizer update of the rows of a weight block just finished by the weight-gradient GEMM.
template <class T>
struct FusedUpdate {
  UpdateLoop<T> loop;
  int64_t ld;

  static void run(const void* context, int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
    const FusedUpdate& f = *static_cast<const FusedUpdate*>(context);
    for (int64_t r = row0; r < row0 + rows; ++r) f.loop.run(r * f.ld + col0, r * f.ld + col0 + cols);
  }
};

}  // namespace

void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, const Tensor* y,
                     Activation act, Tensor* dx, Tensor& dweight, Tensor* dbias, bool accumulate,
                     const ParamUpdate* update) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = x.size(0), out = weight.size(0);
    T* db = dbias ? dbias->data<T>() : nullptr;

    // dz: dy itself for a plain linear layer; otherwise the one temporary of the backward pass.
    Tensor dz_buffer;
    const T* dz = dy.data<T>();
    if (act != Activation::none && n > 0) {
      dz_buffer = Tensor::empty({n, out}, x.dtype(), x.device());
      grad_pass<T>(act, y->data<T>(), dy.data<T>(), dz_buffer.data<T>(), db, accumulate, n, out);
      dz = dz_buffer.data<T>();
    } else if (db) {
      grad_pass<T>(Activation::none, nullptr, dy.data<T>(), nullptr, db, accumulate, n, out);
    }

    if (dx) {  // dx (N, in) = dz @ weight; before a fused update changes the weight
      gemm(linear_dx_problem<T>(dz, weight, *dx));
    }

    GemmProblem<T> dw = linear_dweight_problem<T>(dz, x, dweight, accumulate);
    if (!update) {
      gemm(dw);
      return;
    }
    const FusedUpdate<T> fused{UpdateLoop<T>(*update, dweight.data<T>()), dweight.size(1)};
    FinishedBlocks<T> finished;
    finished.run = FusedUpdate<T>::run;
    finished.context = &fused;
    dw.finished = &finished;
    gemm(dw);
  });
}

}  // namespace fastnn::cpu
