// Matrix products: matmul, bmm, gemm_, linear. Checks and layout here; kernels in
// tensor/cpu/gemm.h, and cuBLASLt (tensor/cuda/blaslt.h) for operands on a GPU.
#include "tensor/cpu/gemm.h"
#include "tensor/cuda/blaslt.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace forge {

namespace {

// A 2-D operand as the BLAS interface sees it: a row-major buffer with a leading dim, maybe
// transposed. Views with a unit stride in either dim are used in place; others are copied.
struct MatArg {
  Tensor keep;  // holds the buffer (a contiguous copy if one was needed)
  int64_t ld = 0;
  bool trans = false;
};

// Whether the last two dims of t can be handed to the kernel without a copy.
bool matrix_in_place(const Tensor& t) {
  int64_t r = t.size(-2), c = t.size(-1), s0 = t.stride(-2), s1 = t.stride(-1);
  return ((s1 == 1 || c == 1) && s0 >= std::max<int64_t>(c, 1)) ||
         ((s0 == 1 || r == 1) && s1 >= std::max<int64_t>(r, 1));
}

MatArg mat_arg(const Tensor& t, bool trans) {
  int64_t r = t.size(0), c = t.size(1), s0 = t.stride(0), s1 = t.stride(1);
  if ((s1 == 1 || c == 1) && s0 >= std::max<int64_t>(c, 1)) return {t, s0, trans};
  if ((s0 == 1 || r == 1) && s1 >= std::max<int64_t>(r, 1)) return {t, s1, !trans};
  Tensor cpy = t.contiguous();
  return {cpy, std::max<int64_t>(c, 1), trans};
}

void check_matmul_args(const Tensor& a, const Tensor& b, const char* op, int dims) {
  FORGE_CHECK(a.defined() && b.defined(), "{}: undefined tensor", op);
  FORGE_CHECK(a.dim() == dims && b.dim() == dims, "{}: expected {}-d tensors, got {} and {}", op,
              dims, a.shape(), b.shape());
  FORGE_CHECK(a.dtype() == b.dtype(), "{}: dtypes differ ({} and {})", op, a.dtype(), b.dtype());
  FORGE_CHECK(is_floating(a.dtype()), "{}: expected floating tensors, got {}", op, a.dtype());
  check_same_device(a, b, op);
}

// The output dtype a product of `in` inputs may write: the same, or f32 for 16-bit inputs.
bool valid_out_dtype(DType in, DType out) {
  return out == in || (out == DType::f32 && (in == DType::bf16 || in == DType::f16));
}

// ---------------------------------------------------------------------------------------------
// cuda: the same layouts handed to cuBLASLt (one call per product, batches included)

// A (batch of) matrix operand(s) for cuda::Gemm: the last two dims as mat_arg reads them, and the
// batch stride (0 when one matrix serves the whole batch).
struct CudaMat {
  Tensor keep;
  int64_t ld = 0, stride = 0;
  bool trans = false;
};

CudaMat cuda_mat(const Tensor& t, bool trans) {
  Tensor m = matrix_in_place(t) ? t : t.contiguous();
  const int64_t r = m.size(-2), c = m.size(-1), s0 = m.stride(-2), s1 = m.stride(-1);
  const int64_t stride = m.dim() == 3 && m.size(0) > 1 ? m.stride(0) : 0;
  if ((s1 == 1 || c == 1) && s0 >= std::max<int64_t>(c, 1)) return {m, s0, stride, trans};
  FORGE_ASSERT((s0 == 1 || r == 1) && s1 >= std::max<int64_t>(r, 1));
  return {m, s1, stride, !trans};  // a transposed view: the other op on the same buffer
}

// out (batch of (m, n), unit column stride) = alpha op(a) op(b) + beta out (+ bias), on the GPU.
void cuda_gemm(Tensor& out, const Tensor& a, const Tensor& b, bool ta, bool tb, double alpha,
               double beta, const Tensor& bias = {}) {
  const int64_t m = out.size(-2), n = out.size(-1), k = ta ? a.size(-2) : a.size(-1);
  const int64_t batch = out.dim() == 3 ? out.size(0) : 1;
  if (m == 0 || n == 0 || batch == 0) return;
  if (k == 0) {  // an empty sum: beta * out (+ bias)
    FORGE_CHECK(out.is_contiguous(), "matmul: k = 0 into a strided output on cuda ({})",
                out.strides());
    Tensor r = Tensor::empty(out.shape(), out.dtype(), out.device());
    if (beta == 0.0)
      r.fill_(0.0);
    else
      r = mul(out, beta);
    if (bias.defined()) r = add(r, bias.to(out.dtype()));
    out.copy_(r);
    return;
  }
  CudaMat A = cuda_mat(a, ta), B = cuda_mat(b, tb);
  FORGE_ASSERT(out.stride(-1) == 1 || n == 1);
  cuda::Gemm g;
  g.device = out.device().index;
  g.m = m;
  g.n = n;
  g.k = k;
  g.batch = batch;
  g.a = A.keep.raw_data();
  g.lda = A.ld;
  g.stride_a = A.stride;
  g.trans_a = A.trans;
  g.b = B.keep.raw_data();
  g.ldb = B.ld;
  g.stride_b = B.stride;
  g.trans_b = B.trans;
  g.d = out.raw_data();
  g.ldd = std::max<int64_t>(out.stride(-2), n);
  g.stride_d = batch > 1 ? out.stride(0) : 0;
  g.in_dtype = a.dtype();
  g.out_dtype = out.dtype();
  g.alpha = alpha;
  g.beta = beta;
  Tensor bias_keep;
  if (bias.defined()) {
    bias_keep = bias.to(out.dtype()).contiguous();
    g.bias = bias_keep.raw_data();
  }
  cuda::matmul(g);
}

// C = alpha op(A) op(B) + beta C for 2-D views; C must have unit column stride.
void gemm_2d(Tensor& c, const Tensor& a, const Tensor& b, bool ta, bool tb, double alpha,
             double beta) {
  int64_t m = c.size(0), n = c.size(1), k = ta ? a.size(0) : a.size(1);
  if (a.dtype() == DType::bf16 || a.dtype() == DType::f16) {
    // 16-bit inputs: widened to f32 as they are packed, products accumulated in f32. An f32 output
    // takes the result directly; a 16-bit one is rounded once at the end.
    MatArg A = mat_arg(a, ta), B = mat_arg(b, tb);
    const cpu::GemmElem e = a.dtype() == DType::bf16 ? cpu::GemmElem::bf16 : cpu::GemmElem::f16;
    Tensor cf = c.dtype() == DType::f32 ? c
                : beta == 0.0           ? Tensor::empty(c.shape(), DType::f32)
                                        : c.to(DType::f32).contiguous();
    FORGE_ASSERT(cf.stride(1) == 1 || n == 1);
    cpu::gemm_mixed(A.trans, B.trans, m, n, k, float(alpha), A.keep.raw_data(), e, A.ld,
                    B.keep.raw_data(), e, B.ld, float(beta), static_cast<float*>(cf.raw_data()),
                    std::max<int64_t>(cf.stride(0), n));
    if (c.dtype() != DType::f32) c.copy_(cf);
    return;
  }
  MatArg A = mat_arg(a, ta), B = mat_arg(b, tb);
  FORGE_ASSERT(c.stride(1) == 1 || n == 1);
  int64_t ldc = std::max<int64_t>(c.stride(0), n);
  dispatch_float(c.dtype(), "matmul", [&]<class T>() {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      cpu::gemm<T>(A.trans, B.trans, m, n, k, T(alpha), static_cast<const T*>(A.keep.raw_data()),
                   A.ld, static_cast<const T*>(B.keep.raw_data()), B.ld, T(beta),
                   static_cast<T*>(c.raw_data()), ldc);
    }
  });
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_matmul_args(a, b, "matmul", 2);
  int64_t m = trans_a ? a.size(1) : a.size(0), ka = trans_a ? a.size(0) : a.size(1);
  int64_t kb = trans_b ? b.size(1) : b.size(0), n = trans_b ? b.size(0) : b.size(1);
  FORGE_CHECK(
      ka == kb, "matmul: inner dims differ: {}{} @ {}{} (trans_a={}, trans_b={}) gives k={} vs {}",
      a.shape(), trans_a ? "^T" : "", b.shape(), trans_b ? "^T" : "", trans_a, trans_b, ka, kb);
  Tensor c = Tensor::empty({m, n}, a.dtype(), a.device());
  if (a.device().is_cuda())
    cuda_gemm(c, a, b, trans_a, trans_b, 1.0, 0.0);
  else
    gemm_2d(c, a, b, trans_a, trans_b, 1.0, 0.0);
  return c;
}

void gemm_(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double alpha,
           double beta) {
  check_matmul_args(a, b, "gemm_", 2);
  int64_t m = trans_a ? a.size(1) : a.size(0), ka = trans_a ? a.size(0) : a.size(1);
  int64_t kb = trans_b ? b.size(1) : b.size(0), n = trans_b ? b.size(0) : b.size(1);
  FORGE_CHECK(ka == kb, "gemm_: inner dims differ: {} @ {} (trans_a={}, trans_b={})", a.shape(),
              b.shape(), trans_a, trans_b);
  FORGE_CHECK(out.dim() == 2 && out.size(0) == m && out.size(1) == n,
              "gemm_: output {} should be [{}, {}]", out.shape(), m, n);
  check_same_device(out, a, "gemm_");
  FORGE_CHECK(valid_out_dtype(a.dtype(), out.dtype()),
              "gemm_: output dtype {} for {} inputs (expected {}{})", out.dtype(), a.dtype(),
              a.dtype(), a.dtype() == DType::bf16 || a.dtype() == DType::f16 ? " or f32" : "");
  FORGE_CHECK(out.stride(1) == 1 || n == 1, "gemm_: output needs unit column stride, has {}",
              out.strides());
  if (a.device().is_cuda())
    cuda_gemm(out, a, b, trans_a, trans_b, alpha, beta);
  else
    gemm_2d(out, a, b, trans_a, trans_b, alpha, beta);
}

Tensor bmm(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_matmul_args(a, b, "bmm", 3);
  int64_t ba = a.size(0), bb = b.size(0);
  FORGE_CHECK(ba == bb || ba == 1 || bb == 1, "bmm: batch sizes differ: {} and {}", a.shape(),
              b.shape());
  int64_t batch = std::max(ba, bb);
  int64_t m = trans_a ? a.size(2) : a.size(1), ka = trans_a ? a.size(1) : a.size(2);
  int64_t kb = trans_b ? b.size(2) : b.size(1), n = trans_b ? b.size(1) : b.size(2);
  FORGE_CHECK(ka == kb, "bmm: inner dims differ: {} @ {} (trans_a={}, trans_b={})", a.shape(),
              b.shape(), trans_a, trans_b);
  if (a.device().is_cuda()) {  // one batched product; 16-bit inputs accumulate in f32 in it
    Tensor c = Tensor::empty({batch, m, n}, a.dtype(), a.device());
    cuda_gemm(c, a, b, trans_a, trans_b, 1.0, 0.0);
    return c;
  }
  // Copies, if any, happen here and not inside the threads below.
  if (!matrix_in_place(a)) return bmm(a.contiguous(), b, trans_a, trans_b);
  if (!matrix_in_place(b)) return bmm(a, b.contiguous(), trans_a, trans_b);
  // 16-bit inputs go to the kernels as they are (bf16 x bf16: the native kernel where there is
  // one), into an f32 result rounded once at the end.
  const bool half = a.dtype() == DType::bf16 || a.dtype() == DType::f16;
  Tensor c = Tensor::empty({batch, m, n}, half ? DType::f32 : a.dtype());
  // Each batch entry is one product; the batch is split across threads, each product
  // single-threaded inside (omp_in_parallel), so the result is the same whatever the thread count.
  parallel_for(0, batch, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      Tensor ci = c.select(0, i);
      gemm_2d(ci, a.select(0, ba == 1 ? 0 : i), b.select(0, bb == 1 ? 0 : i), trans_a, trans_b, 1.0,
              0.0);
    }
  });
  return half ? c.to(a.dtype()) : c;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  return linear(x, w, bias, x.dtype());
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, DType out_dtype) {
  FORGE_CHECK(x.defined() && w.defined(), "linear: undefined tensor");
  FORGE_CHECK(w.dim() == 2, "linear: weight must be 2-d (out, in), got {}", w.shape());
  FORGE_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1),
              "linear: input {} does not end in the weight's in_features {} (weight {})", x.shape(),
              w.size(1), w.shape());
  Shape out_shape = x.shape();
  out_shape[-1] = w.size(0);
  Tensor x2 = x.reshape({-1, x.size(-1)});
  if (bias.defined()) {
    FORGE_CHECK(bias.dim() == 1 && bias.size(0) == w.size(0),
                "linear: bias {} should be [{}] for weight {}", bias.shape(), w.size(0), w.shape());
    check_same_device(x, bias, "linear");
  }
  // Checked here for both devices, so a mistake is named "linear" and not by the gemm_ below.
  check_matmul_args(x2, w, "linear", 2);
  FORGE_CHECK(valid_out_dtype(x.dtype(), out_dtype), "linear: output dtype {} for {} inputs",
              out_dtype, x.dtype());
  Tensor out = Tensor::empty({x2.size(0), w.size(0)}, out_dtype, x.device());
  if (x.device().is_cuda()) {
    // The bias rides in cuBLASLt's epilogue (f64 has none: added after).
    const bool epilogue_bias = bias.defined() && out_dtype != DType::f64;
    cuda_gemm(out, x2, w, false, true, 1.0, 0.0, epilogue_bias ? bias : Tensor());
    if (bias.defined() && !epilogue_bias) out = add(out, bias.to(out_dtype));
    return out.view(out_shape);
  }
  if (bias.defined()) {
    out.copy_(bias);  // broadcast over rows, then accumulate the product on top
    gemm_(out, x2, w, false, true, 1.0, 1.0);
  } else {
    gemm_(out, x2, w, false, true, 1.0, 0.0);
  }
  return out.view(out_shape);
}

PackedWeight pack_weight(const Tensor& w) {
  FORGE_CHECK(w.defined() && w.dim() == 2, "pack_weight: weight must be 2-d (out, in), got {}",
              w.defined() ? w.shape() : Shape{});
  PackedWeight p{w, nullptr};
  if (!w.device().is_cpu() || w.dtype() != DType::f32) return p;
  Tensor c = w.contiguous();  // (out, in): B = w^T with ldb = in
  p.panels = std::make_shared<const cpu::PackedB>(
      cpu::PackedB::pack(true, c.data<float>(), c.size(1), c.size(1), c.size(0)));
  return p;
}

Tensor linear(const Tensor& x, const PackedWeight& w, const Tensor& bias) {
  const Tensor& weight = w.weight;
  if (!w.panels || !w.panels->current() || !x.defined() || !x.device().is_cpu() ||
      x.dtype() != DType::f32 || x.dim() < 1 || x.size(-1) != weight.size(1) ||
      (bias.defined() && (!bias.device().is_cpu() || bias.dtype() != DType::f32)))
    return linear(x, weight, bias);  // the checks and errors of the plain op
  Shape out_shape = x.shape();
  out_shape[-1] = weight.size(0);
  Tensor x2 = x.reshape({-1, x.size(-1)}).contiguous();
  const int64_t m = x2.size(0), n = weight.size(0), k = weight.size(1);
  Tensor out = Tensor::empty({m, n});
  if (bias.defined()) {
    FORGE_CHECK(bias.dim() == 1 && bias.size(0) == n,
                "linear: bias {} should be [{}] for weight {}", bias.shape(), n, weight.shape());
    out.copy_(bias);  // as linear(): the bias first, the product accumulated on top
  }
  cpu::gemm_prepacked(m, 1.0f, x2.data<float>(), k, *w.panels, bias.defined() ? 1.0f : 0.0f,
                      out.data<float>(), n);
  return out.view(out_shape);
}

}  // namespace forge
