// The reductions and neural-network ops on CUDA tensors: what tensor/ops_reduce.cpp and
// tensor/ops_nn.cpp call when their operand lives on a GPU, after they have checked the arguments
// (so the messages are the CPU's). Same results and result shapes as the CPU ops (bf16 and f16
// computed in f32); kernels in reduce.cu and nn.cu.
//
//   if (a.device().is_cuda()) return cuda::softmax(a, dim, /*log=*/false);
//
// Inputs may be strided views (every kernel takes strides); outputs are fresh contiguous tensors.
// Ops whose CPU version validates integer indices (embedding, cross-entropy) check them on the
// device and read back the verdict: one synchronisation per call.
#pragma once

#include <vector>

#include "tensor/ops.h"

namespace forge::cuda {

// Sum over `dims` (sorted, distinct, in range: the caller normalises them); integers give i64,
// except over no dims (a copy, as on the CPU).
Tensor sum(const Tensor& a, const std::vector<int>& dims, bool keepdim);
Tensor max_all(const Tensor& a);
// d in [0, a.dim()) (wrapped by the caller), as for softmax below.
MaxResult max_dim(const Tensor& a, int d, bool keepdim);
// Reads the answer back to the host.
bool all_finite(const Tensor& a);

Tensor softmax(const Tensor& a, int d, bool log);
Tensor softmax_backward(const Tensor& grad, const Tensor& y, int d, bool log);
LayerNormResult layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
LayerNormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                   const Tensor& mean, const Tensor& rstd, bool need_dx,
                                   bool need_dweight);
Tensor embedding(const Tensor& weight, const Tensor& indices);
Tensor embedding_backward(const Tensor& grad, const Tensor& indices, int64_t num_weights);
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index);
Tensor cross_entropy_backward(const Tensor& grad_loss, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, int64_t count, int64_t ignore_index);

}  // namespace forge::cuda
