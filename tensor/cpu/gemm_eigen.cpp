#define EIGEN_DONT_PARALLELIZE  // threads come from our pool, in fixed blocks (see gemm.h)
#include <Eigen/Core>

#include "tensor/cpu/gemm.h"
#include "tensor/parallel.h"

namespace forge::cpu {

namespace {

template <class T>
using RowMat = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                          0, Eigen::OuterStride<>>;
template <class T>
using RowMatOut = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0,
                             Eigen::OuterStride<>>;

// One single-threaded product on a block: C[m, n] (+)= alpha op(A)[m, k] op(B)[k, n].
template <class T>
void gemm_block(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda,
                const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  RowMatOut<T> c(C, m, n, Eigen::OuterStride<>(ldc));
  if (k == 0) {
    if (beta == T(0))
      c.setZero();
    else
      c *= beta;
    return;
  }
  auto run = [&](const auto& a, const auto& b) {
    if (beta == T(0))
      c.noalias() = alpha * (a * b);
    else {
      if (beta != T(1)) c *= beta;
      c.noalias() += alpha * (a * b);
    }
  };
  RowMat<T> a(A, ta ? k : m, ta ? m : k, Eigen::OuterStride<>(lda));
  RowMat<T> b(B, tb ? n : k, tb ? k : n, Eigen::OuterStride<>(ldb));
  if (!ta && !tb)
    run(a, b);
  else if (!ta && tb)
    run(a, b.transpose());
  else if (ta && !tb)
    run(a.transpose(), b);
  else
    run(a.transpose(), b.transpose());
}

}  // namespace

template <class T>
void gemm_eigen(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda,
                const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  // Fixed blocks along the longer output side; the block size never depends on the thread count.
  constexpr int64_t kBlock = 64;
  bool split_cols = n >= m;
  int64_t extent = split_cols ? n : m;
  int64_t blocks = fixed_chunks(extent, kBlock);
  // Tiny products are not worth waking threads for: at least ~1M multiply-adds per thread.
  int64_t work_per_block = (split_cols ? m : n) * kBlock * k;
  int64_t min_blocks =
      std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(1, work_per_block));
  parallel_for(0, blocks, min_blocks, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      int64_t s = blk * kBlock, len = std::min(kBlock, extent - s);
      if (split_cols) {
        const T* Bs = tb ? B + s * ldb : B + s;
        gemm_block(ta, tb, m, len, k, alpha, A, lda, Bs, ldb, beta, C + s, ldc);
      } else {
        const T* As = ta ? A + s : A + s * lda;
        gemm_block(ta, tb, len, n, k, alpha, As, lda, B, ldb, beta, C + s * ldc, ldc);
      }
    }
  });
}

template void gemm_eigen<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                                const float*, int64_t, float, float*, int64_t);
template void gemm_eigen<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                                 int64_t, const double*, int64_t, double, double*, int64_t);

}  // namespace forge::cpu
