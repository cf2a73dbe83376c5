// The fused AdamW update (optim/adamw_cuda.h): a grid-stride loop, one element per step, the
// arithmetic of optim/optimizer.cpp's adamw_update line for line. This file is compiled with
// -fmad=false (optim/meson.build) so no multiply-add is fused and the results equal the CPU's.
#include <cuda_runtime.h>

#include "optim/adamw_cuda.h"

namespace forge::cuda::kernels {

namespace {

template <class T>
__global__ void adamw_kernel(int64_t n, T* __restrict__ p, const T* __restrict__ g,
                             T* __restrict__ m, T* __restrict__ v, T lr, T wd, T b1, T b2, T eps,
                             T step_size, T bc2_sqrt) {
  const T decay = T(1) - lr * wd, one_b1 = T(1) - b1, one_b2 = T(1) - b2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const T gi = g[i];
    const T mi = m[i] * b1 + gi * one_b1;
    const T vi = v[i] * b2 + gi * gi * one_b2;
    const T denom = sqrt(vi) / bc2_sqrt + eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * (mi / denom);
  }
}

template <class T>
void launch(int64_t n, void* p, const void* g, void* m, void* v, double lr, double wd, double b1,
            double b2, double eps, double step_size, double bc2_sqrt, cudaStream_t stream) {
  int64_t blocks = (n + 255) / 256;
  blocks = blocks > 65535 * 8 ? 65535 * 8 : blocks;
  adamw_kernel<T><<<unsigned(blocks), 256, 0, stream>>>(
      n, static_cast<T*>(p), static_cast<const T*>(g), static_cast<T*>(m), static_cast<T*>(v),
      T(lr), T(wd), T(b1), T(b2), T(eps), T(step_size), T(bc2_sqrt));
}

}  // namespace

int adamw_update(int dtype, int64_t n, void* p, const void* g, void* m, void* v, double lr,
                 double wd, double b1, double b2, double eps, double step_size, double bc2_sqrt,
                 void* stream) {
  if (n == 0) return 0;
  constexpr int kF32 = 0, kF64 = 1;  // DType codes of tensor/dtype.h
  if (dtype == kF32)
    launch<float>(n, p, g, m, v, lr, wd, b1, b2, eps, step_size, bc2_sqrt, cudaStream_t(stream));
  else if (dtype == kF64)
    launch<double>(n, p, g, m, v, lr, wd, b1, b2, eps, step_size, bc2_sqrt, cudaStream_t(stream));
  else
    return int(cudaErrorInvalidValue);
  return int(cudaGetLastError());
}

}  // namespace forge::cuda::kernels
