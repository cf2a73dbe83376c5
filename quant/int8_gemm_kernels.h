// The int8 GEMM building blocks per instruction set, behind the driver in int8_gemm.cpp.
//
// Included by the files compiled with wide-vector flags (int8_gemm_avx2.cpp, ...), so it holds
// declarations and plain structs only: no library code that could be instantiated there with
// AVX-512 instructions and then picked by the linker for callers on other processors.
//
// Layouts (see int8_gemm.cpp for the why):
//   packed weights  panels of 16 output columns; panel p holds columns [16p, 16p + 16) for every
//                   k-group of 4: byte (p * kp + 4 g) * 16 + 4 j + t = w[16 p + j, 4 g + t]
//                   (zero past n and past k). kp = k rounded up to 4.
//   packed A        row i at a + i * kp, zero past k (so a 4-byte load of any group is valid).
#pragma once

#include <cstdint>

namespace forge::int8_detail {

constexpr int kPanelCols = 16;

struct Int8Block {
  const uint8_t* a = nullptr;     // packed A (m, kp)
  const uint8_t* a_hi = nullptr;  // AVX2 exact path: a = a_lo + 128 a_hi, a_lo in `a`; else null
  int64_t m = 0, kp = 0;
  const int8_t* panels = nullptr;  // packed weights
  int64_t n = 0;                   // valid output columns
  // Output, one of the two: s32 accumulators, or f32 with the dequantizing epilogue
  //   y = float(acc - col_offset[j]) * col_scale[j] (+ bias[j])
  // where the column arrays are padded to a whole number of panels.
  int32_t* acc = nullptr;
  int64_t ldc = 0;
  float* y = nullptr;
  int64_t ldy = 0;
  const int32_t* col_offset = nullptr;  // a_zero * row_sum[j] (mod 2^32)
  const float* col_scale = nullptr;     // a_scale * w_scale[j]
  const float* bias = nullptr;          // or null
};

// Computes output columns of panels [p0, p1) for all m rows of the block.
using Int8BlockKernel = void (*)(const Int8Block& blk, int64_t p0, int64_t p1);

void int8_block_avx2(const Int8Block& blk, int64_t p0, int64_t p1);
void int8_block_avx_vnni(const Int8Block& blk, int64_t p0, int64_t p1);
void int8_block_avx512_vnni(const Int8Block& blk, int64_t p0, int64_t p1);

// AVX2 helpers for every family but portable (each of them implies AVX2).
// q[i] = nearbyint(clamp(x[i] * inv_scale, lo, hi)) + zero with lo = qmin - zero and
// hi = qmax - zero (exact floats): see quantize_u8.
void quantize_u8_avx2(const float* x, int64_t n, float inv_scale, int32_t zero, float lo, float hi,
                      uint8_t* q);
void min_max_avx2(const float* x, int64_t n, float& lo, float& hi);

}  // namespace forge::int8_detail
