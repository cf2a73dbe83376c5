// AVX-512 VNNI int8 kernel (Cascade Lake and later, Zen 4): vpdpbusd on zmm. One zmm is one panel's
// k-group: s32 lane j adds the four products of four broadcast activation bytes (u8) with column
// j's four weights (s8), without intermediate saturation: exact for every input, so no split path.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma; called only after
// int8_gemm.cpp found them. No library code here (see int8_gemm_kernels.h).
#include <immintrin.h>

#include <cstdint>

#include "quant/int8_gemm_kernels.h"

namespace forge::int8_detail {
namespace {

inline __m512i broadcast4(const uint8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// Row i, columns [j, j + 16), `cols` (1..16) of them valid (a store mask): s32 out, or the f32
// epilogue. The column arrays are padded to whole panels, so their loads need no mask.
inline void store16(const Int8Block& blk, int64_t i, int64_t j, __m512i v, int64_t cols) {
  const __mmask16 mask = cols >= 16 ? __mmask16(0xffff) : __mmask16((1u << cols) - 1);
  if (blk.acc) return _mm512_mask_storeu_epi32(blk.acc + i * blk.ldc + j, mask, v);
  // (maskz with all lanes: the unmasked form trips GCC 12's -Wmaybe-uninitialized.)
  __m512 f = _mm512_maskz_cvtepi32_ps(__mmask16(0xffff),
                                      _mm512_sub_epi32(v, _mm512_loadu_si512(blk.col_offset + j)));
  f = _mm512_mul_ps(f, _mm512_loadu_ps(blk.col_scale + j));
  if (blk.bias) f = _mm512_add_ps(f, _mm512_loadu_ps(blk.bias + j));
  _mm512_mask_storeu_ps(blk.y + i * blk.ldy + j, mask, f);
}

// Rows [i0, i0 + MR) x panels [p, p + NP): MR x NP zmm accumulators.
template <int MR, int NP>
void tile(const Int8Block& blk, int64_t i0, int64_t p) {
  const int64_t kp = blk.kp, panel = kp * kPanelCols;
  const int8_t* w = blk.panels + p * panel;
  const uint8_t* a = blk.a + i0 * kp;
  // Every loop over the register arrays is unrolled by pragma, early enough that GCC keeps the
  // arrays in registers (unrolled later, it left them on the stack: a load and store around
  // every vpdpbusd).
  __m512i c[MR][NP];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NP; ++v) c[r][v] = _mm512_setzero_si512();
  for (int64_t g = 0; g < kp; g += 4) {
    __m512i b[NP];
#pragma GCC unroll 4
    for (int v = 0; v < NP; ++v) b[v] = _mm512_loadu_si512(w + v * panel + g * kPanelCols);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i av = broadcast4(a + r * kp + g);
#pragma GCC unroll 4
      for (int v = 0; v < NP; ++v) c[r][v] = _mm512_dpbusd_epi32(c[r][v], av, b[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NP; ++v) {
      const int64_t j = (p + v) * kPanelCols;
      store16(blk, i0 + r, j, c[r][v], blk.n - j);
    }
}

// All rows against panels [p, p + NP): 8 x 32 (16 of the 32 zmm registers accumulate), or
// 2 x 64 for one or two rows (GEMV: memory bound, many loads in flight).
template <int NP>
void rows(const Int8Block& blk, int64_t p) {
  constexpr int MR = NP == 4 ? 2 : 8;
  int64_t i = 0;
  for (; i + MR <= blk.m; i += MR) tile<MR, NP>(blk, i, p);
  switch (blk.m - i) {
    case 7:
      return tile<7, NP>(blk, i, p);
    case 6:
      return tile<6, NP>(blk, i, p);
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

void int8_block_avx512_vnni(const Int8Block& blk, int64_t p0, int64_t p1) {
  int64_t p = p0;
  if (blk.m <= 2)
    for (; p + 4 <= p1; p += 4) rows<4>(blk, p);
  for (; p + 2 <= p1; p += 2) rows<2>(blk, p);
  for (; p < p1; ++p) rows<1>(blk, p);
}

}  // namespace forge::int8_detail
