// The tensor ops on CUDA tensors: what tensor/ops.h calls when its operands live on a GPU, after
// it has checked them (so the messages are the CPU's). Same results as the CPU ops (bf16 and f16
// computed in f32), kernels in the .cu files.
#pragma once

#include "tensor/cuda/kernels.h"
#include "tensor/tensor.h"

namespace forge::cuda {

Tensor binary(kernels::Binary op, const Tensor& a, const Tensor& b, const char* name);
Tensor unary(kernels::Unary op, const Tensor& a, const char* name);
// a * scale + shift (mul and add by a scalar).
Tensor affine(const Tensor& a, double scale, double shift, const char* name);
void fill_(Tensor& t, double value);
// a ^ exponent elementwise, floating dtypes (tensor/ops.h pow).
Tensor pow_scalar(const Tensor& a, double exponent, const char* name);

}  // namespace forge::cuda
