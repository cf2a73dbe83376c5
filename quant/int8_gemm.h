// Integer matrix products for int8 inference: u8 activations times s8 weights, exact in s32.
//
//   PackedInt8Weight pw = pack_int8_weight(w, N, K);        // s8 (N, K) row-major, packed once
//   int8_gemm(a, M, K, pw, acc, N);                         // acc (M, N) s32 = a (M, K) u8 @ w^T
//   int8_linear_f32(a, M, K, a_scale, a_zero, pw, w_scale, bias, y, N);   // dequantized, fused
//
// The kernel family is chosen at run time, like the f32 GEMM's (tensor/cpu/cpu_features.h):
//   avx512_vnni  vpdpbusd on 512-bit registers (u8 x s8 pairs of four summed into s32)
//   avx_vnni     vpdpbusd on 256-bit registers (VEX encoding, Alder Lake and later)
//   avx2         vpmaddubsw (u8 x s8 pairs summed into saturating s16) + vpmaddwd into s32
//   portable     plain loops
// FORGE_INT8_KERNEL=avx2 (or set_int8_kernel) forces one, so tests reach every path this machine
// runs. Every family gives the same s32 accumulators bit for bit, equal to int8_gemm_reference's
// exact sums, for every u8 and s8 input (vpmaddubsw's saturation is handled, not assumed away).
//
// s8 x s8 products (symmetric activations) go through the same kernels: a symmetric s8 activation
// q equals the u8 value q + 128 with zero point 128, exactly.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

namespace forge {

enum class Int8Kernel { portable, avx2, avx_vnni, avx512_vnni };

const char* int8_kernel_name(Int8Kernel k);
Int8Kernel parse_int8_kernel(std::string_view name);  // throws naming the text
bool int8_kernel_supported(Int8Kernel k);             // by this processor and build
Int8Kernel best_int8_kernel();
Int8Kernel int8_kernel();            // in use: FORGE_INT8_KERNEL if set, else best_int8_kernel()
void set_int8_kernel(Int8Kernel k);  // throws when this processor cannot run it

// Weights s8 (N, K), packed into the kernels' panel layout, with each row's sum (for the
// activations' zero point: sum_k (a - z) w = sum_k a w - z * row_sum).
struct PackedInt8Weight {
  int64_t n = 0, k = 0;
  std::shared_ptr<int8_t[]> panels;  // the kernels' layout (see int8_gemm.cpp)
  std::shared_ptr<int32_t[]> row_sums;
  int64_t panel_bytes = 0;
};
PackedInt8Weight pack_int8_weight(const int8_t* w, int64_t n, int64_t k);

// acc (M, N) s32, row stride ldc = a (M, K) u8 (row stride lda) @ w^T, exact.
void int8_gemm(const uint8_t* a, int64_t m, int64_t lda, const PackedInt8Weight& w, int32_t* acc,
               int64_t ldc, Int8Kernel kernel = int8_kernel());
// The same product by plain loops over the unpacked weights: the reference every kernel must equal.
void int8_gemm_reference(const uint8_t* a, int64_t m, int64_t k, int64_t lda, const int8_t* w,
                         int64_t n, int32_t* acc, int64_t ldc);

// y (M, N) f32 = a_scale * w_scale[j] * (acc[i, j] - a_zero * row_sum[j]) + bias[j]  (bias may be
// null), computed tile by tile without materialising acc. Every kernel family rounds the same way:
// float(acc - a_zero * row_sum) * (a_scale * w_scale[j]), then + bias[j], no fused multiply-add.
void int8_linear_f32(const uint8_t* a, int64_t m, int64_t lda, float a_scale, int32_t a_zero,
                     const PackedInt8Weight& w, const float* w_scale, const float* bias, float* y,
                     int64_t ldy, Int8Kernel kernel = int8_kernel());

// Quantizes n floats to u8: q = clamp(round_half_even(x * inv_scale) + zero, qmin, qmax).
void quantize_u8(const float* x, int64_t n, float inv_scale, int32_t zero, int32_t qmin,
                 int32_t qmax, uint8_t* q);
// min and max of n floats (n > 0), vectorised; NaNs are skipped (all NaN: lo = +inf, hi = -inf),
// in every kernel alike.
void min_max(const float* x, int64_t n, float& lo, float& hi);

}  // namespace forge
