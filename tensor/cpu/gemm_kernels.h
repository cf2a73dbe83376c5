// The f32 GEMM inner kernels available to the packed driver (gemm.cpp), one per instruction set.
#pragma once

namespace forge::cpu {

// C[mr x nr] (row stride ldc) = alpha * A_packed (kc x mr) . B_packed (kc x nr) + beta * C.
using GemmMicrokernel = void (*)(long kc, const float* a, const float* b, float* c, long ldc,
                                 float alpha, float beta);

struct GemmKernelInfo {
  const char* name;
  int mr, nr;
  GemmMicrokernel kernel;
};

// Defined in gemm_avx2.cpp / gemm_avx512.cpp (compiled with those instruction sets); they return
// nullptr when the build left them out.
const GemmKernelInfo* gemm_kernel_avx2();
const GemmKernelInfo* gemm_kernel_avx512();

}  // namespace forge::cpu
