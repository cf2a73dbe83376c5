// Launchers of the quantization kernels on a GPU (quant/quant_cuda.cu), plain C++ signatures:
// pointers are device memory, stream a cudaStream_t as void*; each returns the launch status (a
// cudaError_t as int, 0 for success). A build without CUDA links stubs that return 1.
#pragma once

#include <cstdint>

namespace forge::cuda::kernels {

// Fake quantization of n contiguous elements of dtype (DType code, floating) seen as rows of
// `inner` elements, row r using channel r % channels' scale (f32) and zero point (i32):
//   r = rint(x * (1 / s)) + z;  y = (clamp(r, qmin, qmax) - z) * s;  mask = qmin <= r <= qmax
// in f32 (f64 for f64), the CPU kernel's operations, so the results are the CPU's bit for bit.
int fake_quantize(int dtype, int64_t n, int64_t inner, int64_t channels, const void* x, void* y,
                  uint8_t* mask, const float* scale, const int32_t* zero, int32_t qmin,
                  int32_t qmax, void* stream);

// acc (m, n) s32 (row stride ldc) = a (m, k) u8 (row stride lda) @ w (n, k) s8 (row stride ldw)^T,
// exact. With y non-null, the dequantizing epilogue instead of acc (quant/int8_gemm.h
// int8_linear_f32): y[i, j] = float(acc - a_zero * row_sum[j]) * (a_scale * w_scale[j]) (+ bias[j]
// when bias is non-null), row_sum[j] = sum_k w[j, k]; acc may then be null. m at most 1048560.
int int8_gemm(const uint8_t* a, int64_t m, int64_t k, int64_t lda, const int8_t* w, int64_t n,
              int64_t ldw, int32_t* acc, int64_t ldc, float* y, int64_t ldy, float a_scale,
              int32_t a_zero, const float* w_scale, const float* bias, void* stream);

// q[i] = clamp(round_half_even(x[i] * inv_scale) + zero, qmin, qmax) for n contiguous f32, with
// lo = qmin - zero and hi = qmax - zero (exact floats): q = rint(clamp(x * inv_scale, lo, hi)) +
// zero, quant/int8_gemm.h quantize_u8's operations, so the bytes are the CPU's. NaN gives qmin.
int quantize_u8(int64_t n, const float* x, float inv_scale, int32_t zero, float lo, float hi,
                uint8_t* q, void* stream);

}  // namespace forge::cuda::kernels
