// Matrix products on the GPU through cuBLASLt: one call for matmul, bmm, gemm_ and linear.
//
//   cuda::Gemm g;                       // D (m, n) = alpha * A (m, k) @ B^T (n, k) + bias (n)
//   g.device = 0;  g.m = m;  g.n = n;  g.k = k;
//   g.a = x;  g.lda = k;  g.b = w;  g.ldb = k;  g.trans_b = true;
//   g.d = out;  g.ldd = n;  g.bias = b;
//   g.in_dtype = DType::bf16;  g.out_dtype = DType::f32;
//   cuda::matmul(g);                    // queued on the device's stream
//
// Operands are row-major, as the tensors are: row i of A starts at a + i * lda. cuBLASLt is
// column-major, and a row-major (m, n) matrix is the column-major (n, m) matrix of its transpose,
// so D^T = op(B)^T op(A)^T is what runs: B first, A second, m and n swapped (blaslt.cpp).
//
// Element types: f32, f64, bf16, f16 in; out = in, or f32 for bf16/f16 in. Products accumulate in
// f32 (f64 for f64). f32 inputs use TF32 tensor cores only when set_allow_tf32(true) says so (off
// by default, so f32 results match the CPU's to ~1e-6).
//
// This header needs no CUDA headers; in a build without CUDA the functions are stubs that throw
// (tensor/cuda/attention_stub.cpp), never reached since no device tensor can exist.
#pragma once

#include <cstdint>

#include "tensor/dtype.h"
#include "tensor/error.h"

// Checks a cuBLAS(Lt) call where <cublasLt.h> is included: a failure throws forge::Error naming
// the call, the status and where it was made.
#define FORGE_CUBLAS_CHECK(call)                                                                \
  do {                                                                                          \
    cublasStatus_t forge_st_ = (call);                                                          \
    if (forge_st_ != CUBLAS_STATUS_SUCCESS)                                                     \
      ::forge::throw_error(::fmt::format("cuBLAS error {} ({}) in {} at {}:{}", int(forge_st_), \
                                         cublasLtGetStatusString(forge_st_), #call, __FILE__,   \
                                         __LINE__));                                            \
  } while (0)

namespace forge::cuda {

// One (batched) product D = alpha * op(A) op(B) + beta * D (+ bias) (then GELU), row-major.
// Batch i reads a + i * stride_a, b + i * stride_b and writes d + i * stride_d (strides in
// elements; 0 repeats one matrix across the batch).
struct Gemm {
  int device = 0;
  int64_t m = 0, n = 0, k = 0, batch = 1;
  const void* a = nullptr;  // op(A) is (m, k): A is (m, k), or (k, m) with trans_a
  int64_t lda = 0, stride_a = 0;
  bool trans_a = false;
  const void* b = nullptr;  // op(B) is (k, n): B is (k, n), or (n, k) with trans_b
  int64_t ldb = 0, stride_b = 0;
  bool trans_b = false;
  void* d = nullptr;  // (m, n), unit column stride
  int64_t ldd = 0, stride_d = 0;
  DType in_dtype = DType::f32, out_dtype = DType::f32;
  const void* bias = nullptr;  // (n) of out_dtype, contiguous, added to every row; or none
  bool gelu = false;           // GELU (tanh form) applied last, after the bias
  double alpha = 1.0, beta = 0.0;
};

// Queues the product on the device's stream. Shapes must be valid (the ops check them); m, n > 0.
void matmul(const Gemm& g);

// Whether f32 products may use TF32 tensor cores (10-bit mantissa inputs); process-wide, off by
// default.
void set_allow_tf32(bool allow);
bool allow_tf32();

// The GPU's measured matrix throughput: `iters` (n, n) x (n, n) products of `dtype` on cuda:0,
// timed with events after a warm-up; returns TFLOP/s (2 n^3 per product). For MFU figures.
double measure_matmul_tflops(DType dtype, int64_t n, int iters);

}  // namespace forge::cuda
