// AVX-VNNI int8 kernel (Alder Lake and later, Zen 5): vpdpbusd on ymm, VEX encoded. Each s32 lane
// adds the four products of four broadcast activation bytes (u8) with one column's four weights
// (s8), without intermediate saturation: exact for every input, so no split path. Compiled with
// -mavx2 -mfma -mavxvnni; called only after int8_gemm.cpp found AVX-VNNI. No library code here
// (see int8_gemm_kernels.h).
#include <immintrin.h>

#include <cstdint>

#include "quant/int8_gemm_ymm.h"

namespace forge::int8_detail {
namespace {

// Rows [i0, i0 + MR) x panels [p, p + NP): MR x 2 NP ymm accumulators.
template <int MR, int NP>
void tile(const Int8Block& blk, int64_t i0, int64_t p) {
  constexpr int NV = 2 * NP;
  const int64_t kp = blk.kp, panel = kp * kPanelCols;
  const int8_t* w = blk.panels + p * panel;
  const uint8_t* a = blk.a + i0 * kp;
  // Unrolled by pragma so that the arrays stay in registers (see int8_gemm_avx512_vnni.cpp).
  __m256i c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v] = _mm256_setzero_si256();
  for (int64_t g = 0; g < kp; g += 4) {
    __m256i b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      b[v] = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(w + (v / 2) * panel + g * kPanelCols + (v % 2) * 32));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256i av = broadcast4(a + r * kp + g);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = _mm256_dpbusd_avx_epi32(c[r][v], av, b[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t j = p * kPanelCols + v * 8;
      if (j < blk.n) store8(blk, i0 + r, j, c[r][v], min64(8, blk.n - j));
    }
}

// All rows against panels [p, p + NP): 6 x 16 (12 accumulators, 2 weights, 1 broadcast of the
// 16 ymm registers), or 2 x 32 for one or two rows.
template <int NP>
void rows(const Int8Block& blk, int64_t p) {
  constexpr int MR = NP == 1 ? 6 : 2;
  int64_t i = 0;
  for (; i + MR <= blk.m; i += MR) tile<MR, NP>(blk, i, p);
  switch (blk.m - i) {
    case 5:
      return tile<5, NP>(blk, i, p);
    case 4:
      return tile<4, NP>(blk, i, p);
    case 3:
      return tile<3, NP>(blk, i, p);
    case 2:
      return tile<2, NP>(blk, i, p);
    case 1:
      return tile<1, NP>(blk, i, p);
  }
}

}  // namespace

void int8_block_avx_vnni(const Int8Block& blk, int64_t p0, int64_t p1) {
  int64_t p = p0;
  if (blk.m <= 2)
    for (; p + 2 <= p1; p += 2) rows<2>(blk, p);
  for (; p < p1; ++p) rows<1>(blk, p);
}

}  // namespace forge::int8_detail
