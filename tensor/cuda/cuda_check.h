// Checks of CUDA calls: every runtime, cuBLAS and NCCL call, and every kernel launch, goes through
// one of these, so a failure throws forge::Error naming the call, its error and where it was made.
//
//   FORGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, stream));
//   my_kernel<<<grid, block, 0, stream>>>(...);
//   FORGE_CUDA_CHECK_LAUNCH();                    // launch errors (bad configuration, ...)
//
// For host code (.cpp files built with the CUDA headers). Kernels (.cu) return their launch
// status to host code, which checks it here: the .cu files stay free of the library headers.
#pragma once

#include <cuda_runtime.h>

#include "tensor/error.h"

#define FORGE_CUDA_CHECK(call)                                                             \
  do {                                                                                     \
    cudaError_t forge_err_ = (call);                                                       \
    if (forge_err_ != cudaSuccess)                                                         \
      ::forge::throw_error(                                                                \
          ::fmt::format("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(forge_err_), \
                        cudaGetErrorString(forge_err_), #call, __FILE__, __LINE__));       \
  } while (0)

#define FORGE_CUDA_CHECK_LAUNCH() FORGE_CUDA_CHECK(cudaGetLastError())
