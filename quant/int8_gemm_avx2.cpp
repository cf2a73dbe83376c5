// AVX2 int8 kernels: u8 x s8 products by vpmaddubsw + vpmaddwd, exact for every input; and the
// vectorised quantize_u8 / min_max. Compiled with -mavx2 -mfma -mf16c; called only after
// int8_gemm.cpp found AVX2. No library code here (see int8_gemm_kernels.h).
//
// Products. For one output column, four activation bytes a0..a3 (broadcast to every s32 lane) and
// the column's four weights w0..w3 (one s32 lane of the packed panel):
//   vpmaddubsw:  s16 pairs  sat(a0 w0 + a1 w1), sat(a2 w2 + a3 w3)     (u8 x s8, saturating)
//   vpmaddwd 1:  s32        the two pairs summed                        (exact)
//   vpaddd:      accumulate
// one vpmaddubsw + one vpmaddwd per 32 products.
//
// Saturation. A pair sum a0 w0 + a1 w1 lies in [-2 * 255 * 128, 2 * 255 * 127] = [-65280, 64770],
// beyond s16, so vpmaddubsw may clip. With activations a <= 127 (7-bit, "reduce range", what our
// quantizer gives) it lies in [-32512, 32258] and never clips: the fast path above is exact.
// The driver checks every block of A while packing it; when some byte exceeds 127 it splits the
// block as a = lo + 128 hi with lo = a & 0x7f in [0, 127] and hi = a >> 7 in {0, 1}, and the
// kernel takes the exact path:
//   sum a w = sum lo w  +  128 * sum hi w
//   lo pairs: |lo0 w0 + lo1 w1| <= 32512     vpmaddubsw exact, vpmaddwd by 1
//   hi pairs: |hi0 w0 + hi1 w1| <= 256       vpmaddubsw exact, vpmaddwd by 128 (exact in s32)
// twice the work, for inputs the quantizer does not usually produce.
#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "quant/int8_gemm_ymm.h"

namespace forge::int8_detail {
namespace {

// Rows [i0, i0 + MR) x panels [p, p + NP) (16 NP columns): MR x 2 NP ymm accumulators.
template <int MR, int NP, bool SPLIT>
void tile(const Int8Block& blk, int64_t i0, int64_t p) {
  constexpr int NV = 2 * NP;
  const int64_t kp = blk.kp, panel = kp * kPanelCols;
  const int8_t* w = blk.panels + p * panel;
  const uint8_t* a = blk.a + i0 * kp;
  const uint8_t* a_hi = SPLIT ? blk.a_hi + i0 * kp : nullptr;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i c128 = _mm256_set1_epi16(128);
  __m256i c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = _mm256_setzero_si256();
  for (int64_t g = 0; g < kp; g += 4) {
    __m256i b[NV];
    for (int v = 0; v < NV; ++v)
      b[v] = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(w + (v / 2) * panel + g * kPanelCols + (v % 2) * 32));
    for (int r = 0; r < MR; ++r) {
      const __m256i av = broadcast4(a + r * kp + g);
      for (int v = 0; v < NV; ++v)
        c[r][v] =
            _mm256_add_epi32(c[r][v], _mm256_madd_epi16(_mm256_maddubs_epi16(av, b[v]), ones));
      if constexpr (SPLIT) {
        const __m256i ah = broadcast4(a_hi + r * kp + g);
        for (int v = 0; v < NV; ++v)
          c[r][v] =
              _mm256_add_epi32(c[r][v], _mm256_madd_epi16(_mm256_maddubs_epi16(ah, b[v]), c128));
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      const int64_t j = p * kPanelCols + v * 8;
      if (j < blk.n) store8(blk, i0 + r, j, c[r][v], min64(8, blk.n - j));
    }
}

// All rows of the block against panels [p, p + NP).
template <int NP, bool SPLIT>
void rows(const Int8Block& blk, int64_t p) {
  // 3 x 16 (6 accumulators) measured fastest on Zen 3: 4 x 16 spills one accumulator once the
  // compiler hoists the products, 3 x 32 spills many. 2 x 32 (8) for GEMV-like blocks.
  constexpr int MR = NP == 1 ? 3 : 2;
  static_assert(MR <= 4, "the switch below covers tails of up to 3 rows");
  int64_t i = 0;
  for (; i + MR <= blk.m; i += MR) tile<MR, NP, SPLIT>(blk, i, p);
  switch (blk.m - i) {
    case 3:
      return tile<3, NP, SPLIT>(blk, i, p);
    case 2:
      return tile<2, NP, SPLIT>(blk, i, p);
    case 1:
      return tile<1, NP, SPLIT>(blk, i, p);
  }
}

template <bool SPLIT>
void block(const Int8Block& blk, int64_t p0, int64_t p1) {
  int64_t p = p0;
  // One or two rows (GEMV, memory bound): 32 columns at a time, more loads in flight.
  if (blk.m <= 2)
    for (; p + 2 <= p1; p += 2) rows<2, SPLIT>(blk, p);
  for (; p < p1; ++p) rows<1, SPLIT>(blk, p);
}

}  // namespace

void int8_block_avx2(const Int8Block& blk, int64_t p0, int64_t p1) {
  if (blk.a_hi)
    block<true>(blk, p0, p1);
  else
    block<false>(blk, p0, p1);
}

// ---------------------------------------------------------------------------------------------
// quantize_u8 and min_max

// vcvtps2dq rounds by MXCSR: to nearest, ties to even by default (std::nearbyint's rounding).
void quantize_u8_avx2(const float* x, int64_t n, float inv_scale, int32_t zero, float lo, float hi,
                      uint8_t* q) {
  const __m256 vinv = _mm256_set1_ps(inv_scale), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  const __m256i vzero = _mm256_set1_epi32(zero);
  // Puts the dwords of packus(packs(r0, r1), packs(r2, r3)) back in element order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  auto convert = [&](const float* p) {
    __m256 t = _mm256_mul_ps(_mm256_loadu_ps(p), vinv);
    t = _mm256_min_ps(_mm256_max_ps(t, vlo), vhi);  // max(NaN, lo) is lo
    return _mm256_add_epi32(_mm256_cvtps_epi32(t), vzero);
  };
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i r0 = convert(x + i), r1 = convert(x + i + 8);
    const __m256i r2 = convert(x + i + 16), r3 = convert(x + i + 24);
    const __m256i bytes =
        _mm256_packus_epi16(_mm256_packs_epi32(r0, r1), _mm256_packs_epi32(r2, r3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i),
                        _mm256_permutevar8x32_epi32(bytes, order));
  }
  for (; i < n; ++i) {
    __m128 t = _mm_mul_ss(_mm_set_ss(x[i]), _mm_set_ss(inv_scale));
    t = _mm_min_ss(_mm_max_ss(t, _mm_set_ss(lo)), _mm_set_ss(hi));
    q[i] = uint8_t(_mm_cvtss_si32(t) + zero);
  }
}

void min_max_avx2(const float* x, int64_t n, float& lo, float& hi) {
  int64_t i = 0;
  // minps/maxps return their second operand when either is NaN: x goes first, so NaNs are skipped.
  __m256 mn0 = _mm256_set1_ps(std::numeric_limits<float>::infinity()),
         mx0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), mn1 = mn0, mx1 = mx0;
  for (; i + 16 <= n; i += 16) {
    const __m256 u = _mm256_loadu_ps(x + i), v = _mm256_loadu_ps(x + i + 8);
    mn0 = _mm256_min_ps(u, mn0);
    mx0 = _mm256_max_ps(u, mx0);
    mn1 = _mm256_min_ps(v, mn1);
    mx1 = _mm256_max_ps(v, mx1);
  }
  alignas(32) float a[8], b[8];
  _mm256_store_ps(a, _mm256_min_ps(mn0, mn1));
  _mm256_store_ps(b, _mm256_max_ps(mx0, mx1));
  float l = a[0], h = b[0];
  for (int j = 1; j < 8; ++j) {
    l = a[j] < l ? a[j] : l;
    h = b[j] > h ? b[j] : h;
  }
  for (; i < n; ++i) {
    l = x[i] < l ? x[i] : l;
    h = x[i] > h ? x[i] : h;
  }
  lo = l;
  hi = h;
}

}  // namespace forge::int8_detail
