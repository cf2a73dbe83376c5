// Builds for processors other than x86-64 have no AVX kernels: the portable one runs.
#include "tensor/cpu/gemm_kernels.h"

namespace forge::cpu {
const GemmKernelInfo* gemm_kernel_avx2() {
  return nullptr;
}
const GemmKernelInfo* gemm_kernel_avx512() {
  return nullptr;
}
void gemm_pack_a_avx2(GemmElem, bool, const void*, int64_t, int64_t, int64_t, int64_t, int64_t, int,
                      float*) {}
void gemm_pack_b_avx2(GemmElem, bool, const void*, int64_t, int64_t, int64_t, int64_t, int64_t, int,
                      float*) {}
}  // namespace forge::cpu
