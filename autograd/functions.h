// Differentiable ops on Variables: each records its backward beside its forward.
//
//   Variable h = relu(linear(x, w1, b1));
//   Variable loss = cross_entropy(linear(h, w2, b2), targets);
//   loss.backward();
//
// The names mirror the tensor ops (tensor/ops.h) they wrap. A backward skips the inputs that need
// no gradient, and saves only what it needs: the output where the derivative is written in it
// (exp, tanh, sigmoid, softmax), the input otherwise.
#pragma once

#include <vector>

#include "autograd/variable.h"
#include "tensor/ops.h"
#include "tensor/random.h"

namespace forge {

// ---- Elementwise (broadcasting) ----
Variable add(const Variable& a, const Variable& b);
Variable sub(const Variable& a, const Variable& b);
Variable mul(const Variable& a, const Variable& b);
Variable div(const Variable& a, const Variable& b);
Variable add(const Variable& a, double s);
Variable mul(const Variable& a, double s);
Variable neg(const Variable& a);
Variable exp(const Variable& a);
Variable log(const Variable& a);
Variable sqrt(const Variable& a);
Variable tanh(const Variable& a);
Variable sigmoid(const Variable& a);
Variable relu(const Variable& a);
Variable gelu(const Variable& a, GeluApprox approx = GeluApprox::tanh);
Variable pow(const Variable& a, double exponent);
Variable where(const Tensor& cond, const Variable& a, const Variable& b);
Variable masked_fill(const Variable& a, const Tensor& mask, double value);

inline Variable operator+(const Variable& a, const Variable& b) {
  return add(a, b);
}
inline Variable operator-(const Variable& a, const Variable& b) {
  return sub(a, b);
}
inline Variable operator*(const Variable& a, const Variable& b) {
  return mul(a, b);
}
inline Variable operator/(const Variable& a, const Variable& b) {
  return div(a, b);
}
inline Variable operator-(const Variable& a) {
  return neg(a);
}
inline Variable operator+(const Variable& a, double s) {
  return add(a, s);
}
inline Variable operator*(const Variable& a, double s) {
  return mul(a, s);
}

// ---- Reductions ----
Variable sum(const Variable& a);
Variable sum(const Variable& a, const std::vector<int>& dims, bool keepdim = false);
Variable mean(const Variable& a);
Variable mean(const Variable& a, const std::vector<int>& dims, bool keepdim = false);
Variable max(const Variable& a);                                 // gradient to the first maximum
Variable max(const Variable& a, int dim, bool keepdim = false);  // values; gradient to argmax

// ---- Views and copies ----
Variable reshape(const Variable& a, const Shape& shape);
Variable flatten(const Variable& a, int start_dim = 0, int end_dim = -1);
Variable permute(const Variable& a, const std::vector<int>& order);
Variable transpose(const Variable& a, int d0, int d1);
Variable narrow(const Variable& a, int dim, int64_t start, int64_t length);
Variable select(const Variable& a, int dim, int64_t index);
Variable expand(const Variable& a, const Shape& shape);
Variable unsqueeze(const Variable& a, int dim);
Variable squeeze(const Variable& a, int dim);
Variable contiguous(const Variable& a);
Variable to(const Variable& a, DType dtype);  // gradient converted back to a's dtype

// ---- Matrix products ----
Variable matmul(const Variable& a, const Variable& b, bool trans_a = false, bool trans_b = false);
Variable bmm(const Variable& a, const Variable& b, bool trans_a = false, bool trans_b = false);
// x (..., in) @ w (out, in)^T + bias (out); bias may be undefined.
Variable linear(const Variable& x, const Variable& w, const Variable& bias);

// ---- Neural-network ops ----
Variable softmax(const Variable& a, int dim);
Variable log_softmax(const Variable& a, int dim);
Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, double eps);
Variable embedding(const Variable& weight, const Tensor& indices);
Variable cross_entropy(const Variable& logits, const Tensor& targets, int64_t ignore_index = -100);
// Causal multi-head self-attention of qkv (B, T, 3C) -> (B, T, C), with dropout p on the attention
// weights in training (masks drawn from gen; `heads` places these heads among those of an unsplit
// layer, see HeadSlice). Forward and backward: tensor/ops_attention.cpp.
Variable causal_attention(const Variable& qkv, int n_head, double dropout_p = 0.0,
                          bool training = false, Generator* gen = nullptr, HeadSlice heads = {});
// Zeroes each element with probability p and scales the rest by 1/(1-p); identity when !training.
Variable dropout(const Variable& x, double p, bool training, Generator& gen);

// ---- Joining and splitting ----
Variable concat(const std::vector<Variable>& parts, int dim);
std::vector<Variable> split(const Variable& a, const std::vector<int64_t>& sizes, int dim);

}  // namespace forge
