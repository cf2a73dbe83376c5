// Builds for processors other than x86-64 have no AVX kernels or F16C runs: the portable code runs.
#include "tensor/cpu/activations.h"
#include "tensor/cpu/convert.h"
#include "tensor/cpu/gemm_kernels.h"

namespace forge::cpu {
const GemmKernelInfo* gemm_kernel_avx2() {
  return nullptr;
}
const GemmKernelInfo* gemm_kernel_avx512() {
  return nullptr;
}
const GemmKernelInfo* gemm_kernel_avx512_bf16() {
  return nullptr;
}
void gemm_pack_a_avx2(GemmElem, bool, const void*, int64_t, int64_t, int64_t, int64_t, int64_t, int,
                      float*) {}
void gemm_pack_b_avx2(GemmElem, bool, const void*, int64_t, int64_t, int64_t, int64_t, int64_t, int,
                      float*) {}
void f32_to_f16_run_f16c(const float*, uint16_t*, int64_t) {}
void f16_to_f32_run_f16c(const uint16_t*, float*, int64_t) {}
void f32_to_bf16_run_avx2(const float*, uint16_t*, int64_t) {}
void bf16_to_f32_run_avx2(const uint16_t*, float*, int64_t) {}
void gelu_tanh_run_avx512(const float*, float*, int64_t) {}
void gelu_tanh_backward_run_avx512(const float*, const float*, float*, int64_t) {}
}  // namespace forge::cpu
