// F16C instances of the f32 <-> f16 runs and AVX2 instances of the f32 <-> bf16 runs (convert.h).
// Compiled with -mavx2 -mf16c; called only when cpu_features says the processor has them. No
// library code here (see gemm_microkernel.h).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "tensor/cpu/convert.h"

namespace {

// Eight floats to f16 with round-to-nearest-even (overflow to inf, gradual underflow: what the
// scalar recipe does), then every NaN made the scalar code's canonical sign | 0x7e00.
__m128i narrow8(__m256 x) {
  __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m128i magnitude = _mm_and_si128(h, _mm_set1_epi16(0x7fff));
  __m128i nan = _mm_cmpgt_epi16(magnitude, _mm_set1_epi16(0x7c00));
  __m128i canonical =
      _mm_or_si128(_mm_and_si128(h, _mm_set1_epi16(int16_t(0x8000))), _mm_set1_epi16(0x7e00));
  return _mm_blendv_epi8(h, canonical, nan);
}

// Eight floats to bf16 bits in the low half of each 32-bit lane: dtype.h's f32_to_bf16_bits.
__m256i narrow_bf16(__m256i u) {
  const __m256i one = _mm256_set1_epi32(1);
  __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
  __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd)), 16);
  __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  __m256i magnitude = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  __m256i nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f800000));
  return _mm256_blendv_epi8(rounded, quiet_nan, nan);
}

// Sixteen floats to sixteen bf16 (packus works per 128-bit lane; the permute restores order).
__m256i narrow_bf16_16(const float* x) {
  __m256i lo = narrow_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
  __m256i hi = narrow_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 8)));
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8);
}

}  // namespace

namespace forge::cpu {

void f32_to_bf16_run_avx2(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), narrow_bf16_16(x + i));
  if (i < n) {
    float in[16] = {};
    uint16_t out[16];
    std::memcpy(in, x + i, size_t(n - i) * sizeof(float));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), narrow_bf16_16(in));
    std::memcpy(y + i, out, size_t(n - i) * sizeof(uint16_t));
  }
}

void bf16_to_f32_run_avx2(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm256_slli_epi32(w, 16));
  }
  for (; i < n; ++i) {
    uint32_t u = uint32_t(x[i]) << 16;
    std::memcpy(y + i, &u, 4);
  }
}

void f32_to_f16_run_f16c(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), narrow8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    float in[8] = {};
    uint16_t out[8];
    std::memcpy(in, x + i, size_t(n - i) * sizeof(float));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), narrow8(_mm256_loadu_ps(in)));
    std::memcpy(y + i, out, size_t(n - i) * sizeof(uint16_t));
  }
}

void f16_to_f32_run_f16c(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  if (i < n) {
    uint16_t in[8] = {};
    float out[8];
    std::memcpy(in, x + i, size_t(n - i) * sizeof(uint16_t));
    _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in))));
    std::memcpy(y + i, out, size_t(n - i) * sizeof(float));
  }
}

}  // namespace forge::cpu
