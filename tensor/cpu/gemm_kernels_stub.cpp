// Builds for processors other than x86-64 have no AVX kernels: the portable one runs.
#include "tensor/cpu/gemm_kernels.h"

namespace forge::cpu {
const GemmKernelInfo* gemm_kernel_avx2() { return nullptr; }
const GemmKernelInfo* gemm_kernel_avx512() { return nullptr; }
}  // namespace forge::cpu
