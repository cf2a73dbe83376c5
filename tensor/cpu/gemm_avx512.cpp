// AVX-512 instance of the f32 GEMM microkernel: 12 x 32 (24 zmm accumulators).
// Compiled with -mavx512f; called only after cpu_features says the processor has AVX-512.
// GCC 12's unpack and shuffle intrinsics start from _mm512_undefined_ps() (`__m512 __Y = __Y`),
// which -Wmaybe-uninitialized reports once inlined (the transpose); nothing reads an undefined
// value.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "tensor/cpu/gemm_kernels.h"
#include "tensor/cpu/gemm_microkernel.h"

namespace {
struct Avx512 {
  using reg = __m512;
  static constexpr int W = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static reg broadcast(float x) { return _mm512_set1_ps(x); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  // r[i] holds 16 floats of row i; afterwards r[q] holds column q: (row0[q], ..., row15[q]).
  static void transpose(reg r[16]) {
    reg t[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);  // within each 128-bit lane: 2 x 2 blocks
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // 4 x 4 blocks within each 128-bit lane
      r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {  // then the 128-bit lanes: 4 x 4 of them
      t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
      t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
      t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
      t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
      r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
      r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
      r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
    }
  }
};

void kernel_12x32(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
                  float beta) {
  microkernel<Avx512, 12, 2>(kc, a, b, c, ldc, alpha, beta);
}
void kernel_1x32(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
                 float beta) {
  microkernel<Avx512, 1, 2>(kc, a, b, c, ldc, alpha, beta);
}

void kernel_1x32_in_place(long kc, const float* a, const float* b, long ldb, bool trans_b, float* c,
                          float alpha, float beta) {
  row_kernel_in_place<Avx512, 2>(kc, a, b, ldb, trans_b, c, alpha, beta);
}

// AVX-512 processors have AVX2: the packers are the AVX2 ones.
const forge::cpu::GemmKernelInfo kInfo{"avx512 12x32",
                                       12,
                                       32,
                                       kernel_12x32,
                                       forge::cpu::gemm_pack_a_avx2,
                                       forge::cpu::gemm_pack_b_avx2,
                                       kernel_1x32,
                                       kernel_1x32_in_place};
}  // namespace

namespace forge::cpu {
const GemmKernelInfo* gemm_kernel_avx512() {
  return &kInfo;
}
}  // namespace forge::cpu
