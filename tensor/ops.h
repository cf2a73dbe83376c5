// The op surface of the tensor library: every computation on tensors goes through here.
//
//   Tensor y = add(matmul(x, w, false, true), b);   // x @ w^T + b, b broadcast over rows
//   Tensor p = softmax(y, -1);
//   Tensor l = cross_entropy(y, targets).loss;       // mean over rows, targets i64
//
// Each op checks its arguments (shape, dtype, device) and throws forge::Error naming the op and
// the shapes it got, then dispatches on device, then on dtype. Ops return fresh tensors; those
// ending in `_` write into their first argument. Kernels behind an op may change (Eigen today, our
// own packed kernels tomorrow) without any caller noticing.
//
// Backward kernels of the fused ops (softmax, layer norm, cross-entropy, GELU...) sit next to their
// forwards here: the autograd layer pairs them into differentiable ops.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace forge {

namespace cpu {
class PackedB;
}

// ============================================================================================
// Elementwise, broadcasting (numpy rules). Floating dtypes compute in f32 (bf16, f16 too) or f64;
// add, sub, mul work on integers too.

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double s);
Tensor mul(const Tensor& a, double s);

// Comparisons give u8 masks (1 where true).
Tensor eq(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);

Tensor neg(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor tanh(const Tensor& a);
Tensor sigmoid(const Tensor& a);
Tensor relu(const Tensor& a);
Tensor abs(const Tensor& a);
Tensor pow(const Tensor& a, double exponent);

enum class GeluApprox { none, tanh };  // erf form (exact) or the tanh approximation
Tensor gelu(const Tensor& a, GeluApprox approx);

// cond (any integer dtype, nonzero = true) ? a : b, all three broadcast together.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& a, const Tensor& mask, double value);

// In place: a += alpha * b (b broadcast to a's shape); a *= s.
Tensor& add_(Tensor& a, const Tensor& b, double alpha = 1.0);
Tensor& mul_(Tensor& a, double s);

// Backward kernels of the unary activations: grad_in = grad_out * f'(x).
Tensor relu_backward(const Tensor& grad, const Tensor& x);
Tensor gelu_backward(const Tensor& grad, const Tensor& x, GeluApprox approx);
Tensor tanh_backward(const Tensor& grad, const Tensor& y);     // y = tanh(x)
Tensor sigmoid_backward(const Tensor& grad, const Tensor& y);  // y = sigmoid(x)

// Dropout: keeps each element with probability 1-p (mask 1, u8) and scales kept ones by 1/(1-p).
struct DropoutResult {
  Tensor y, mask;
};
DropoutResult dropout(const Tensor& x, double p, Generator& gen);
// The keep-mask (u8) that dropout draws for a tensor of shape `whole`, of which only the slice
// [start, start + length) of dimension `dim` is made (length -1: to the end). The generator
// advances by the whole draw, and element i of `whole` keeps when the i-th uniform is >= p, so
// ranks that each hold a slice of a split activation draw their parts of the one mask
// (tensor-parallel attention), and dropout_mask(x.shape(), p, gen) is dropout's own mask.
Tensor dropout_mask(const Shape& whole, double p, Generator& gen, int dim = 0, int64_t start = 0,
                    int64_t length = -1);
Tensor dropout_backward(const Tensor& grad, const Tensor& mask, double p);

// ============================================================================================
// Reductions. Floating sums accumulate in the dtype's compute type with a fixed summation order,
// so results never depend on the thread count. Integer sums are i64.

Tensor sum(const Tensor& a);  // over all elements: a 0-d tensor
Tensor sum(const Tensor& a, const std::vector<int>& dims, bool keepdim = false);
// sum(mul(a, a)), bit for bit, without the squared copy (f32 and f64 on the CPU: one pass).
Tensor sum_of_squares(const Tensor& a);
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, const std::vector<int>& dims, bool keepdim = false);
Tensor max(const Tensor& a);  // over all elements
struct MaxResult {
  Tensor values, indices;  // indices i64
};
MaxResult max(const Tensor& a, int dim, bool keepdim = false);
Tensor argmax(const Tensor& a, int dim, bool keepdim = false);
// Sums `a` down to `shape` (the reverse of broadcasting `shape` up to a.shape()).
Tensor sum_to(const Tensor& a, const Shape& shape);

// ============================================================================================
// Matrix products (f32, f64; bf16 and f16 inputs accumulate in f32).

// a (m, k) @ b (k, n) with optional transposes of the operands: op(a) @ op(b).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// Batched: a (B, m, k) @ b (B, k, n), with transposes per flag. A batch size of 1 broadcasts.
Tensor bmm(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// out = beta * out + alpha * op(a) @ op(b); out (m, n) must be contiguous or have unit col stride.
void gemm_(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
           double alpha = 1.0, double beta = 0.0);
// x (..., in) @ w (out, in)^T + bias (out): the Linear layer in one op.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias);
// The same with the output in `out_dtype`: f32 from bf16/f16 x and w keeps the f32 accumulation
// (mixed precision); the bias is added in the output dtype.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, DType out_dtype);
// A Linear weight (out, in) whose matrix-product panels are packed once, for inference on the
// CPU (cpu::PackedB): linear(x, packed, bias) is bit for bit linear(x, weight, bias), without
// repacking the weight at every call, which costs as much as the product when x has a few rows
// (decoding). Other devices, dtypes or kernels fall back to linear(x, weight, bias). The panels
// are a copy: pack again after the weight changes.
struct PackedWeight {
  Tensor weight;                               // what was packed
  std::shared_ptr<const cpu::PackedB> panels;  // null when the weight is not f32 on the CPU
  // Whether these are panels of `w` as it is now (the same tensor: not replaced since packing).
  bool packs(const Tensor& w) const {
    return panels && w.defined() && weight.raw_data() == w.raw_data() &&
           weight.shape() == w.shape();
  }
};
PackedWeight pack_weight(const Tensor& w);
Tensor linear(const Tensor& x, const PackedWeight& w, const Tensor& bias);

// ============================================================================================
// Neural-network ops with their backward kernels.

Tensor softmax(const Tensor& a, int dim);
Tensor log_softmax(const Tensor& a, int dim);
Tensor softmax_backward(const Tensor& grad, const Tensor& y, int dim);      // y = softmax
Tensor log_softmax_backward(const Tensor& grad, const Tensor& y, int dim);  // y = log_softmax

// Layer norm over the last dim: y = (x - mean) * rstd * weight + bias.
struct LayerNormResult {
  Tensor y, mean, rstd;  // mean, rstd: f32 (f64 for f64 x), shape of x without its last dim
};
LayerNormResult layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
struct LayerNormGrads {
  Tensor dx, dweight, dbias;
};
LayerNormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                   const Tensor& mean, const Tensor& rstd, bool need_dx = true,
                                   bool need_dweight = true);

// Rows of `weight` (V, C) picked by `indices` (any shape, integer): (..., C).
Tensor embedding(const Tensor& weight, const Tensor& indices);
// Scatter-adds grad (..., C) into a (V, C) gradient; deterministic whatever the thread count.
Tensor embedding_backward(const Tensor& grad, const Tensor& indices, int64_t num_weights);

// Cross-entropy of logits (N, C) against integer targets (N); rows whose target equals
// ignore_index count neither in the loss nor in the mean. Mean over counted rows.
struct CrossEntropyResult {
  Tensor loss;  // 0-d f32 (f64 for f64 logits)
  Tensor lse;   // (N) log-sum-exp of each row, saved for the backward
  int64_t count = 0;
};
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets,
                                 int64_t ignore_index = -100);
// d loss / d logits = (softmax - onehot(target)) * grad / count, zero on ignored rows.
Tensor cross_entropy_backward(const Tensor& grad_loss, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, int64_t count, int64_t ignore_index = -100);

// Causal multi-head self-attention (tensor/ops_attention.cpp). qkv (B, T, 3C) holds q, k, v side
// by side, each split into n_head heads of C / n_head columns; out (B, T, C). probs (B, NH, T, T)
// are the attention weights before dropout (zero above the diagonal), saved for the backward with
// the dropout mask (u8, undefined when dropout_p is 0).
// On cuda the forward is fused (flash-attention style: no T x T matrix in memory) and `probs` holds
// instead the log-sum-exp of each row's scores, (B, NH, T) in qkv's dtype (f32 for bf16/f16 qkv,
// which cuda also takes: tensor cores), from which the backward recomputes the weights; dropout
// draws the CPU's mask there.
struct AttentionResult {
  Tensor out, probs, mask;
};
// `probs_dtype` bf16 or f16 (with f32 qkv) stores the probabilities in 16 bits for backward
// (mixed precision); the forward itself computes in f32 throughout.
// Which heads of a larger attention these are, when tensor parallelism splits the heads across
// ranks: heads [first, first + n_head) of `total` (0: these are all the heads). The dropout mask is
// then that slice of the mask of all `total` heads, so the ranks together draw the unsplit mask.
struct HeadSlice {
  int64_t first = 0, total = 0;
};
AttentionResult causal_attention(const Tensor& qkv, int n_head, double dropout_p = 0.0,
                                 Generator* gen = nullptr,
                                 std::optional<DType> probs_dtype = std::nullopt,
                                 HeadSlice heads = {});
// d loss / d qkv (B, T, 3C) from d loss / d out.
Tensor causal_attention_backward(const Tensor& dout, const Tensor& qkv, const Tensor& probs,
                                 const Tensor& mask, int n_head, double dropout_p);
// Inference against a key/value cache: q (B, Tq, C) for positions offset .. offset+Tq-1, k and v
// (B, offset+Tq, C) holding every position so far (views with unit column stride); query i sees
// keys 0 .. offset+i. Returns (B, Tq, C). No backward.
Tensor cached_attention(const Tensor& q, const Tensor& k, const Tensor& v, int n_head,
                        int64_t offset);
// A server's step over independent sequences (its slots) of different lengths: each span is
// `count` consecutive new positions of the sequence in slot `slot`, starting at `offset` (a
// prompt, a refilled window, or the one next token). Their keys and values are already in the
// caches, so span i attends to keys 0 .. offset+count-1 of its slot, causally.
struct SlotSpan {
  int64_t slot = 0, offset = 0, count = 1;
};
// q (1, N, C) holds the spans' query rows one span after another (N = the sum of the counts);
// k, v (S, L, C) are the caches of S slots. Returns (1, N, C). Each span is computed exactly as
// cached_attention computes those queries of its sequence alone (bit for bit), so a span's result
// never depends on the others in the step.
Tensor slot_attention(const Tensor& q, const Tensor& k, const Tensor& v, int n_head,
                      const std::vector<SlotSpan>& spans);

// ============================================================================================
// Joining, splitting, gathering.

// Rows of `a` picked by integer `indices` (1-d): (len(indices), ...). Any dtype.
Tensor index_select(const Tensor& a, const Tensor& indices);

Tensor concat(const std::vector<Tensor>& parts, int dim);
// Views of `a` along dim, with the given sizes (they must add up to a.size(dim)).
std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int dim);

// ============================================================================================
// Helpers for tests and checks.

bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8);
double max_abs_diff(const Tensor& a, const Tensor& b);
// True when every element is finite (no inf, no NaN).
bool all_finite(const Tensor& a);

}  // namespace forge
