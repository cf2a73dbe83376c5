// CPU matrix products behind the `matmul` op, BLAS-style.
//
//   // C (m, n) = alpha * op(A) @ op(B) + beta * C, all row-major with leading dims lda, ldb, ldc;
//   // op(A) is A (m, k) or, with trans_a, the transpose of a stored (k, m).
//   cpu::gemm<float>(false, true, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
//
// Today the kernel is Eigen's (on our buffers through Eigen::Map, no copies). The work is split into
// fixed blocks of columns (or rows) whatever the thread count, and each block is one single-threaded
// Eigen product, so every output element is computed the same way with 1 thread or 16.
#pragma once

#include <cstdint>

namespace forge::cpu {

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace forge::cpu
