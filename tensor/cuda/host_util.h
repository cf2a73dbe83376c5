// What the host side of every CUDA op does first (tensor/cuda/cuda_*.cpp; not a public header):
// check that operands are device tensors the kernels can describe, describe their strides, and
// find the stream to launch on.
#pragma once

#include <vector>

#include "tensor/cuda/kernels.h"
#include "tensor/tensor.h"

namespace forge::cuda {

// Throws, naming `op`, unless t is a defined cuda tensor.
void check_cuda(const Tensor& t, const char* op);
// Throws, naming `op`, when t has more dimensions than the kernels take (kernels::kMaxDims).
void check_dims(const Tensor& t, const char* op);
// The output's sizes and each operand's strides over the output's shape (operands already
// expanded to it; an undefined one is a slot the kernel does not read); contiguous when all of
// them are contiguous with that shape.
kernels::Strided strided(const Tensor& out, const std::vector<Tensor>& operands, const char* op);
// The stream of t's device, that device made current for the launch.
void* stream_of(const Tensor& t);

}  // namespace forge::cuda
