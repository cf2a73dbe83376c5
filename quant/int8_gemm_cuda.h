// The int8 matrix product on a GPU, on device tensors:
//
//   Tensor a = quantize_u8_cuda(x, 1 / a_scale, a_zero, 0, 127);   // f32 -> u8, same shape
//   Tensor acc = int8_gemm_cuda(a, w);              // a (M, K) u8, w (N, K) s8 -> (M, N) s32
//   Tensor y = int8_linear_cuda(a, a_scale, a_zero, w, w_scale, bias);   // (M, N) f32
//
// quantize_u8_cuda gives quant/int8_gemm.h quantize_u8's bytes (the same operations:
// clamp(rint(x * inv_scale) + zero, qmin, qmax), NaN to qmin).
// The same exact s32 sums as quant/int8_gemm.h's kernels (int8_gemm_reference), and the same
// dequantizing epilogue, rounded the same way: float(acc - a_zero * row_sum[j]) *
// (a_scale * w_scale[j]) + bias[j]. Weights stay unpacked (N, K) row-major on the device.
#pragma once

#include "tensor/tensor.h"

namespace forge {

// x f32 on a GPU, any shape and strides; qmin, qmax and zero checked as quantize_u8 checks them.
Tensor quantize_u8_cuda(const Tensor& x, float inv_scale, int32_t zero, int32_t qmin, int32_t qmax);
Tensor int8_gemm_cuda(const Tensor& a, const Tensor& w);
// w_scale (N) f32 on the device; bias (N) f32 or undefined.
Tensor int8_linear_cuda(const Tensor& a, float a_scale, int32_t a_zero, const Tensor& w,
                        const Tensor& w_scale, const Tensor& bias);

}  // namespace forge
