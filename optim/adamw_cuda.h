// The fused AdamW update on a GPU (optim/adamw_cuda.cu): one kernel per parameter tensor does the
// whole step of optim/optimizer.cpp's adamw_update (weight decay, both moments, bias correction,
// lr) in the parameter's own type, f32 or f64, with the CPU loop's operations in the CPU loop's
// order (and no fused multiply-adds), so it gives the CPU's values.
#pragma once

#include <cstdint>

namespace forge::cuda::kernels {

// For n contiguous elements of dtype (a DType code: f32 or f64) on the device:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p (1 - lr wd) - step_size * m / (sqrt(v) / bc2_sqrt + eps)
// with step_size = lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t). Returns the launch status
// (a cudaError_t as int); a build without CUDA returns 1.
int adamw_update(int dtype, int64_t n, void* p, const void* g, void* m, void* v, double lr,
                 double wd, double b1, double b2, double eps, double step_size, double bc2_sqrt,
                 void* stream);

}  // namespace forge::cuda::kernels
