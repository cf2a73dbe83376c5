// AVX2 int4 kernels (contracts in int4_kernels.h). Compiled with -mavx2 -mfma; no library code.
//
// Unpacking 16 bytes (32 weights): lo = b & 0xf holds elements 0, 2, .., 30, hi = (b >> 4) & 0xf
// elements 1, 3, .., 31; vpmovzxbd widens 8 of them to i32 lanes and vcvtdq2ps to f32.
#include <immintrin.h>

#include <cstdint>

#include "quant/int4_kernels.h"

namespace forge::cpu {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The four groups of 8 nibbles of 16 bytes, as f32: evens 0-7, evens 8-15, odds 0-7, odds 8-15.
inline void unpack32(const uint8_t* p, __m256& q0, __m256& q1, __m256& q2, __m256& q3) {
  const __m128i low4 = _mm_set1_epi8(0x0f);
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m128i lo = _mm_and_si128(b, low4);
  __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
  q0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
  q1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
  q2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
  q3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

// R rows at a time, sharing the loads of x. Per row and group g (scale s, zero z):
//   sum_k x_k (q_k - z) s = s * dot(x_g, q_g) - s * z * sum(x_g)
// so the inner loop is only widen + FMA; the zero point costs one scalar term per group. Each row
// is summed in the same order whatever R is, so results do not depend on how rows are split.
template <int R>
void gemv_rows(const uint8_t* packed, const float* scales, const uint8_t* zeros, int64_t k,
               int64_t group, const float* xp, const float* xs, int64_t n, float* y) {
  const int64_t groups = k / group, row_bytes = k / 2;
  __m256 acc[R];
  float corr[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    corr[r] = 0.0f;
  }
  for (int64_t g = 0; g < groups; ++g) {
    __m256 da[R], db[R];  // two chains per row, so FMA latency overlaps
    for (int r = 0; r < R; ++r) da[r] = db[r] = _mm256_setzero_ps();
    for (int64_t j = g * group; j < (g + 1) * group; j += 32) {
      __m256 x0 = _mm256_loadu_ps(xp + j), x1 = _mm256_loadu_ps(xp + j + 8);
      __m256 x2 = _mm256_loadu_ps(xp + j + 16), x3 = _mm256_loadu_ps(xp + j + 24);
      for (int r = 0; r < R; ++r) {
        __m256 q0, q1, q2, q3;
        unpack32(packed + (n + r) * row_bytes + j / 2, q0, q1, q2, q3);
        da[r] = _mm256_fmadd_ps(q0, x0, da[r]);
        db[r] = _mm256_fmadd_ps(q1, x1, db[r]);
        da[r] = _mm256_fmadd_ps(q2, x2, da[r]);
        db[r] = _mm256_fmadd_ps(q3, x3, db[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      float s = scales[(n + r) * groups + g];
      acc[r] = _mm256_fmadd_ps(_mm256_add_ps(da[r], db[r]), _mm256_set1_ps(s), acc[r]);
      corr[r] += s * float(zeros[(n + r) * groups + g]) * xs[g];
    }
  }
  for (int r = 0; r < R; ++r) y[n + r] = hsum(acc[r]) - corr[r];
}

}  // namespace

void int4_gemv_avx2(const uint8_t* packed, const float* scales, const uint8_t* zeros, int64_t k,
                    int64_t group, const float* x_perm, const float* x_group_sum, int64_t n0,
                    int64_t n1, float* y) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    gemv_rows<4>(packed, scales, zeros, k, group, x_perm, x_group_sum, n, y);
  for (; n < n1; ++n) gemv_rows<1>(packed, scales, zeros, k, group, x_perm, x_group_sum, n, y);
}

// w_hat = (q - z) * s in natural order: interleaving lo and hi bytes (punpcklbw / punpckhbw)
// restores elements 0..15 and 16..31.
void int4_dequantize_rows_avx2(const uint8_t* packed, const float* scales, const uint8_t* zeros,
                               int64_t k, int64_t group, int64_t n0, int64_t n1, float* out) {
  const int64_t groups = k / group, row_bytes = k / 2;
  const __m128i low4 = _mm_set1_epi8(0x0f);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = packed + n * row_bytes;
    float* o = out + (n - n0) * k;
    for (int64_t g = 0; g < groups; ++g) {
      __m256 s = _mm256_set1_ps(scales[n * groups + g]);
      __m256 z = _mm256_set1_ps(float(zeros[n * groups + g]));
      for (int64_t j = g * group; j < (g + 1) * group; j += 32) {
        __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + j / 2));
        __m128i lo = _mm_and_si128(b, low4);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
        __m128i e0 = _mm_unpacklo_epi8(lo, hi), e1 = _mm_unpackhi_epi8(lo, hi);
        __m128i parts[4] = {e0, _mm_srli_si128(e0, 8), e1, _mm_srli_si128(e1, 8)};
        for (int p = 0; p < 4; ++p) {
          __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[p]));
          _mm256_storeu_ps(o + j + 8 * p, _mm256_mul_ps(_mm256_sub_ps(q, z), s));
        }
      }
    }
  }
}

}  // namespace forge::cpu
