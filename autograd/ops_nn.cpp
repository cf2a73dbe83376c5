// Matrix products and neural-network ops as differentiable ops.
#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace forge {

// ---------------------------------------------------------------------------------------------
// Matrix products. With C = op(A) op(B) and G = dL/dC:
//   C = A B      : dA = G B^T      dB = A^T G
//   C = A B^T    : dA = G B        dB = G^T A
//   C = A^T B    : dA = B G^T      dB = A G
//   C = A^T B^T  : dA = B^T G^T    dB = G^T A^T
// Every case is one more product with transpose flags; nothing is transposed in memory.

namespace {
template <class Mm>
std::vector<Tensor> matmul_grads(const Tensor& g, const Tensor& a, const Tensor& b, bool ta,
                                 bool tb, bool ga, bool gb, Mm mm) {
  Tensor da, db;
  if (!ta && !tb) {
    if (ga) da = mm(g, b, false, true);
    if (gb) db = mm(a, g, true, false);
  } else if (!ta && tb) {
    if (ga) da = mm(g, b, false, false);
    if (gb) db = mm(g, a, true, false);
  } else if (ta && !tb) {
    if (ga) da = mm(b, g, false, true);
    if (gb) db = mm(a, g, false, false);
  } else {
    if (ga) da = mm(b, g, true, true);
    if (gb) db = mm(g, a, true, true);
  }
  return {da, db};
}
}  // namespace

Variable matmul(const Variable& a, const Variable& b, bool ta, bool tb) {
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Tensor sa = gb ? a.data() : Tensor(), sb = ga ? b.data() : Tensor();
  return make_variable(matmul(a.data(), b.data(), ta, tb), "matmul", {&a, &b},
                       [=](const Tensor& g) {
                         return matmul_grads(g, sa, sb, ta, tb, ga, gb,
                                             [](const Tensor& x, const Tensor& y, bool t1,
                                                bool t2) { return matmul(x, y, t1, t2); });
                       });
}

Variable bmm(const Variable& a, const Variable& b, bool ta, bool tb) {
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Tensor sa = gb ? a.data() : Tensor(), sb = ga ? b.data() : Tensor();
  Shape shape_a = a.shape(), shape_b = b.shape();
  return make_variable(bmm(a.data(), b.data(), ta, tb), "bmm", {&a, &b}, [=](const Tensor& g) {
    std::vector<Tensor> grads = matmul_grads(
        g, sa, sb, ta, tb, ga, gb,
        [](const Tensor& x, const Tensor& y, bool t1, bool t2) { return bmm(x, y, t1, t2); });
    // An operand broadcast over the batch (batch size 1) gets the sum over the batch.
    if (grads[0].defined()) grads[0] = sum_to(grads[0], shape_a);
    if (grads[1].defined()) grads[1] = sum_to(grads[1], shape_b);
    return grads;
  });
}

namespace {

// op(a) @ op(b) with the result in `out` dtype: f32 from 16-bit inputs under autocast.
Tensor matmul_to(const Tensor& a, const Tensor& b, bool ta, bool tb, DType out) {
  Tensor c =
      Tensor::empty({ta ? a.size(1) : a.size(0), tb ? b.size(0) : b.size(1)}, out, a.device());
  gemm_(c, a, b, ta, tb);
  return c;
}

}  // namespace

// Under autocast (autograd/autocast.h) the products take 16-bit copies of x, w and the output
// gradient and accumulate in f32; the output and the gradients stay in x's dtype, and backward
// keeps the 16-bit copies.
Variable linear(const Variable& x, const Variable& w, const Variable& bias) {
  std::optional<DType> dt = autocast_dtype_for(x.data());
  if (w.data().dtype() != DType::f32) dt.reset();
  bool gx = x.requires_grad(), gw = w.requires_grad();
  bool gbias = bias.defined() && bias.requires_grad();
  const DType out_dtype = x.data().dtype();
  Tensor xl = dt ? x.data().to(*dt) : x.data(), wl = dt ? autocast_weight(w, *dt) : w.data();
  Tensor xs = gw ? xl : Tensor(), ws = gx ? wl : Tensor();
  Shape x_shape = x.shape();
  Tensor out = linear(xl, wl, bias.defined() ? bias.data() : Tensor(), out_dtype);
  return make_variable(out, "linear", {&x, &w, &bias}, [=](const Tensor& g) -> std::vector<Tensor> {
    Tensor g2 = g.reshape({-1, g.size(-1)});  // (M, out)
    Tensor gl = dt ? g2.to(*dt) : g2;
    Tensor dx, dw, db;
    if (gx) dx = matmul_to(gl, ws, false, false, out_dtype).view(x_shape);  // (M, out) @ (out, in)
    if (gw) dw = matmul_to(gl, xs.reshape({-1, xs.size(-1)}), true, false, out_dtype);
    if (gbias) db = sum(g2, {0});
    return {dx, dw, db};
  });
}

// ---------------------------------------------------------------------------------------------
// softmax, log_softmax

Variable softmax(const Variable& a, int dim) {
  Tensor y = softmax(a.data(), dim);
  return make_variable(y, "softmax", {&a}, [y, dim](const Tensor& g) -> std::vector<Tensor> {
    return {softmax_backward(g, y, dim)};
  });
}

Variable log_softmax(const Variable& a, int dim) {
  Tensor y = log_softmax(a.data(), dim);
  return make_variable(y, "log_softmax", {&a}, [y, dim](const Tensor& g) -> std::vector<Tensor> {
    return {log_softmax_backward(g, y, dim)};
  });
}

// ---------------------------------------------------------------------------------------------
// layer norm

Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, double eps) {
  Tensor w = weight.defined() ? weight.data() : Tensor();
  LayerNormResult r = layer_norm(x.data(), w, bias.defined() ? bias.data() : Tensor(), eps);
  bool gx = x.requires_grad();
  bool gw =
      (weight.defined() && weight.requires_grad()) || (bias.defined() && bias.requires_grad());
  Tensor xs = x.data(), mean = r.mean, rstd = r.rstd;
  return make_variable(r.y, "layer_norm", {&x, &weight, &bias},
                       [=](const Tensor& g) -> std::vector<Tensor> {
                         LayerNormGrads d = layer_norm_backward(g, xs, w, mean, rstd, gx, gw);
                         return {d.dx, d.dweight, d.dbias};
                       });
}

// ---------------------------------------------------------------------------------------------
// embedding

Variable embedding(const Variable& weight, const Tensor& indices) {
  int64_t V = weight.size(0);
  return make_variable(embedding(weight.data(), indices), "embedding", {&weight},
                       [indices, V](const Tensor& g) -> std::vector<Tensor> {
                         return {embedding_backward(g, indices, V)};
                       });
}

// ---------------------------------------------------------------------------------------------
// cross-entropy

Variable cross_entropy(const Variable& logits, const Tensor& targets, int64_t ignore_index) {
  CrossEntropyResult r = cross_entropy(logits.data(), targets, ignore_index);
  Tensor x = logits.data(), lse = r.lse;
  int64_t count = r.count;
  return make_variable(r.loss, "cross_entropy", {&logits},
                       [=](const Tensor& g) -> std::vector<Tensor> {
                         return {cross_entropy_backward(g, x, targets, lse, count, ignore_index)};
                       });
}

// ---------------------------------------------------------------------------------------------
// causal attention

Variable causal_attention(const Variable& qkv, int n_head, double dropout_p, bool training,
                          Generator* gen, HeadSlice heads) {
  double p = training ? dropout_p : 0.0;
  // Under autocast the products take qkv rounded to 16 bits (computed in f32 from there), and
  // the 16-bit qkv is what backward keeps.
  std::optional<DType> dt = autocast_dtype_for(qkv.data());
  Tensor x = dt ? qkv.data().to(*dt) : qkv.data();
  if (dt && x.device().is_cuda()) {
    // On cuda the attention runs on the 16-bit qkv itself (tensor cores, softmax in f32; `probs`
    // is the f32 log-sum-exp), forward and backward; out and dqkv come back in qkv's dtype.
    const DType wide = qkv.data().dtype();
    AttentionResult r = causal_attention(x, n_head, p, gen, std::nullopt, heads);
    Tensor lse = r.probs, mask = r.mask;
    return make_variable(
        r.out.to(wide), "causal_attention", {&qkv}, [=](const Tensor& g) -> std::vector<Tensor> {
          return {causal_attention_backward(g.to(x.dtype()), x, lse, mask, n_head, p).to(wide)};
        });
  }
  // The probabilities (B, H, T, T) are kept in 16 bits too: at long contexts they are the largest
  // saved activation (PyTorch's autocast keeps a 16-bit copy of them for the product with v).
  AttentionResult r = causal_attention(x.to(qkv.data().dtype()), n_head, p, gen, dt, heads);
  Tensor probs = r.probs, mask = r.mask;
  return make_variable(
      r.out, "causal_attention", {&qkv}, [=](const Tensor& g) -> std::vector<Tensor> {
        return {causal_attention_backward(g, x.to(g.dtype()), probs, mask, n_head, p)};
      });
}

// ---------------------------------------------------------------------------------------------
// dropout

Variable dropout(const Variable& x, double p, bool training, Generator& gen) {
  if (!training || p == 0.0) return x;
  DropoutResult r = dropout(x.data(), p, gen);
  Tensor mask = r.mask;
  return make_variable(r.y, "dropout", {&x}, [mask, p](const Tensor& g) -> std::vector<Tensor> {
    return {dropout_backward(g, mask, p)};
  });
}

}  // namespace forge
