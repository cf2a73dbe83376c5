// F16C instances of the f32 <-> f16 runs (convert.h). Compiled with -mavx2 -mf16c; called only
// when cpu_features says the processor has them. No library code here (see gemm_microkernel.h).
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

}  // namespace

namespace forge::cpu {

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
