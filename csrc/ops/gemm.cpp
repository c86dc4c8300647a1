#include "ops/gemm.h"

namespace fastnn {

void gemm(const Tensor& a, const Tensor& b, Tensor& c, double alpha, double beta, bool trans_a,
          bool trans_b, const Tensor* bias, Activation act) {
  FASTNN_ON_DEVICE(c.device(), gemm, a, b, c, alpha, beta, trans_a, trans_b, bias, act);
}

}  // namespace fastnn
