// AVX-512 instance of the f32 GEMM microkernel: 12 x 32 (24 zmm accumulators).
// Compiled with -mavx512f; called only after cpu_features says the processor has AVX-512.
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
};

void kernel_12x32(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
                  float beta) {
  microkernel<Avx512, 12, 2>(kc, a, b, c, ldc, alpha, beta);
}
void kernel_1x32(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
                 float beta) {
  microkernel<Avx512, 1, 2>(kc, a, b, c, ldc, alpha, beta);
}

// AVX-512 processors have AVX2: the packers are the AVX2 ones.
const forge::cpu::GemmKernelInfo kInfo{"avx512 12x32",
                                       12,
                                       32,
                                       kernel_12x32,
                                       forge::cpu::gemm_pack_a_avx2,
                                       forge::cpu::gemm_pack_b_avx2,
                                       kernel_1x32};
}  // namespace

namespace forge::cpu {
const GemmKernelInfo* gemm_kernel_avx512() {
  return &kInfo;
}
}  // namespace forge::cpu
