// AVX2 + FMA instance of the f32 GEMM microkernel: 6 x 16 (12 ymm accumulators).
// Compiled with -mavx2 -mfma; called only after cpu_features says the processor has them.
#include <immintrin.h>

#include "tensor/cpu/gemm_kernels.h"
#include "tensor/cpu/gemm_microkernel.h"

namespace {
struct Avx2 {
  using reg = __m256;
  static constexpr int W = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg broadcast(float x) { return _mm256_set1_ps(x); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
};

void kernel_6x16(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
                 float beta) {
  microkernel<Avx2, 6, 2>(kc, a, b, c, ldc, alpha, beta);
}

const forge::cpu::GemmKernelInfo kInfo{"avx2 6x16", 6, 16, kernel_6x16};
}  // namespace

namespace forge::cpu {
const GemmKernelInfo* gemm_kernel_avx2() { return &kInfo; }
}  // namespace forge::cpu
