// More tensor ops on CUDA tensors (kernels in tensor/cuda/misc.cu): what tensor.cpp and the ops
// call when their operands live on a GPU, after they have checked them (so the messages are the
// CPU's); dropout_mask and check_finite_and_scale_ check their own. Same results as the CPU ops.
//
//   cuda::copy_into(dst, src);            // dst (a cuda view) = src broadcast and converted
//   Tensor m = cuda::dropout_mask(x.shape(), p, gen, 0, 0, -1, x.device());   // the CPU's bits
#pragma once

#include <vector>

#include "tensor/cuda/kernels_misc.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace forge::cuda {

// dst = src, src broadcast to dst's shape and converted to dst's dtype; both on the same GPU, dst
// any strided view that does not overlap itself. Tensor::contiguous(), to(DType) and copies
// within a GPU go through it.
void copy_into(const Tensor& dst, const Tensor& src);

// a op b with broadcasting -> u8 mask (1 where true).
Tensor compare(kernels::Compare op, const Tensor& a, const Tensor& b, const char* name);
// cond (any integer dtype, nonzero = true) ? a : b, broadcast together.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
// grad * f'(x) (tanh and sigmoid: of their outputs).
Tensor activation_backward(kernels::ActivationBackward op, const Tensor& grad, const Tensor& x,
                           const char* name);

// dropout_mask (tensor/ops.h) drawn on `device`: the same arguments, checks, generator advance
// and bits as the CPU's.
Tensor dropout_mask(const Shape& whole, double p, Generator& gen, int dim, int64_t start,
                    int64_t length, Device device);
// grad * mask / (1 - p) (dropout's forward and backward).
Tensor dropout_apply(const Tensor& grad, const Tensor& mask, double p);

// a += alpha * b (b broadcast to a's shape); a *= s.
void add_(Tensor& a, const Tensor& b, double alpha);
void mul_(Tensor& a, double s);

// The grad scaler's unscale of one contiguous floating tensor: sets found_inf (a one-element i32
// cuda tensor) to 1 when any element is inf or NaN, and multiplies every element by s, in one
// pass. found_inf is read back once for all tensors (no synchronisation per tensor).
void check_finite_and_scale_(Tensor& t, double s, Tensor& found_inf);

// Rows of a picked by 1-d integer indices (checked on the host: the error names the bad index).
Tensor index_select(const Tensor& a, const Tensor& indices);
// Parts joined along dim d (already wrapped and checked by the caller); all on one GPU.
Tensor concat(const std::vector<Tensor>& parts, int d);

}  // namespace forge::cuda
