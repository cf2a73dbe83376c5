// int4 weight-only quantization, group-wise: the weights of a Linear layer in 4 bits, the
// activations left in f32 (or bf16); the product dequantizes each group as it goes.
//
//   Int4Weight q = quantize_int4(w, 64);                 // w (N, K) f32, K a multiple of 64
//   Tensor y = int4_linear(x, q, bias);                  // x (..., K) f32 or bf16 -> (..., N) f32
//   Tensor w_hat = dequantize_int4(q);                   // (N, K) f32, what the product uses
//
// Each row's K weights are cut into groups of `group` (32, 64 or 128) consecutive values; a group
// with extremes lo, hi (widened to include 0) gets
//   scale = (hi - lo) / 15,  zero = clamp(round(-lo / scale), 0, 15),  q = clamp(round(w / scale) +
//   zero, 0, 15) w_hat = (q - zero) * scale
// (asymmetric, as GPTQ/AWQ's min-max baseline). Two weights per byte: element 2i in the low
// nibble, 2i+1 in the high one.
// round is half to even (as torch.round); a group of zeros gets scale 1 (its codes are then the
// zero point, so w_hat is exactly 0). w may be any float dtype (converted to f32 first).
//
// int4_linear runs a GEMV per row of x for M < 4 (streaming the nibbles once) and, from M = 4 on,
// dequantizes blocks of rows into an f32 buffer for the packed GEMM (tensor/cpu/gemm.h).
#pragma once

#include "tensor/tensor.h"

namespace forge {

struct Int4Weight {
  int64_t n = 0, k = 0, group = 0;
  Tensor packed;  // u8 (N, K / 2)
  Tensor scales;  // f32 (N, K / group)
  Tensor zeros;   // u8 (N, K / group), each in [0, 15]
};

Int4Weight quantize_int4(const Tensor& w, int64_t group);
Tensor dequantize_int4(const Int4Weight& q);
// y = x @ dequantize_int4(q)^T + bias (bias (N) f32 or undefined). x f32 or bf16, any leading dims.
// Computes in f32; dequantizes a few rows of groups at a time into a small buffer (never the whole
// matrix), vectorised with AVX2 where the processor has it.
Tensor int4_linear(const Tensor& x, const Int4Weight& q, const Tensor& bias);
// Checks an Int4Weight read from a file: shapes, dtypes, group, zeros in range; throws naming
// `what`.
void validate_int4(const Int4Weight& q, const std::string& what);

}  // namespace forge
