// The AVX2 int4 kernels (int4_avx2.cpp, compiled with -mavx2 -mfma): plain pointers only, so no
// library code is built with those flags. int4.cpp calls them when cpu_isa() allows AVX2 and keeps
// portable loops with the same contracts beside them.
//
// Layout (quant/int4.h): packed (N, K/2) bytes, element 2i of a row in the low nibble of byte i,
// 2i+1 in the high one; scales f32 and zeros u8, (N, K/group); w_hat = (q - zero) * scale.
#pragma once

#include <cstdint>

namespace forge::cpu {

// The order the GEMV kernel wants x in: each block of 32 values stored evens first, then odds,
//   x_perm[32b + i] = x[32b + 2i],  x_perm[32b + 16 + i] = x[32b + 2i + 1]   (i < 16),
// since the 16 low nibbles of 16 bytes are elements 0, 2, .., 30 and the high ones 1, 3, .., 31.
// (int4.cpp builds it; no inline code lives here, so nothing compiled with AVX2 flags can be
// picked by the linker for a caller on another processor.)

// y[n] = sum_k x[k] w_hat[n, k] for rows n in [n0, n1) (y indexed by n). x_perm as above,
// x_group_sum[g] = sum of x over group g. k a multiple of group, group a multiple of 32.
void int4_gemv_avx2(const uint8_t* packed, const float* scales, const uint8_t* zeros, int64_t k,
                    int64_t group, const float* x_perm, const float* x_group_sum, int64_t n0,
                    int64_t n1, float* y);

// out[(n - n0) * k + j] = w_hat[n, j] for rows n in [n0, n1).
void int4_dequantize_rows_avx2(const uint8_t* packed, const float* scales, const uint8_t* zeros,
                               int64_t k, int64_t group, int64_t n0, int64_t n1, float* out);

}  // namespace forge::cpu
