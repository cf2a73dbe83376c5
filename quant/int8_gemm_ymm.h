// Helpers of the 256-bit int8 kernels (int8_gemm_avx2.cpp, int8_gemm_avx_vnni.cpp), included only
// by those files. In an anonymous namespace on purpose: each file compiles its own copy with its
// own instruction-set flags, so the linker never has to choose between them.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "quant/int8_gemm_kernels.h"

namespace forge::int8_detail {
namespace {

inline int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

// Four bytes at p in every s32 lane.
inline __m256i broadcast4(const uint8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Writes the s32 accumulators of row i, columns [j, j + 8), of which `cols` (1..8) are valid:
// as they are, or through the dequantizing epilogue when the block wants f32.
inline void store8(const Int8Block& blk, int64_t i, int64_t j, __m256i v, int64_t cols) {
  alignas(32) int32_t ti[8];
  alignas(32) float tf[8];
  if (blk.acc) {
    int32_t* dst = blk.acc + i * blk.ldc + j;
    if (cols == 8) return _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), v);
    _mm256_store_si256(reinterpret_cast<__m256i*>(ti), v);
    for (int64_t c = 0; c < cols; ++c) dst[c] = ti[c];
    return;
  }
  const __m256i off = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.col_offset + j));
  __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(v, off));
  f = _mm256_mul_ps(f, _mm256_loadu_ps(blk.col_scale + j));
  if (blk.bias) f = _mm256_add_ps(f, _mm256_loadu_ps(blk.bias + j));
  float* dst = blk.y + i * blk.ldy + j;
  if (cols == 8) return _mm256_storeu_ps(dst, f);
  _mm256_store_ps(tf, f);
  for (int64_t c = 0; c < cols; ++c) dst[c] = tf[c];
}

}  // namespace
}  // namespace forge::int8_detail
