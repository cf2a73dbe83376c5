// Host side of the ops in tensor/cuda/cuda_misc.h: outputs on the operands' device, strides as
// kernels::Strided, then the launcher on the device's stream.
//
// Arguments are validated at the op surface (tensor/ops_*.cpp, tensor/tensor.cpp) before dispatch;
// only CUDA-specific limits are checked here. Exceptions, being entry points of their own:
// dropout_mask (also called by attention and the tests) and check_finite_and_scale_ (called by
// the grad scaler) keep their checks.
#include "tensor/cuda/cuda_misc.h"

#include "tensor/cuda/cuda.h"
#include "tensor/cuda/host_util.h"

namespace forge::cuda {

namespace {

// The generator block reservation and geometry of dropout_mask, with the CPU op's checks.
struct MaskPlan {
  kernels::DropoutGeometry geometry;
  int64_t total = 0;
  Shape shape;
};
MaskPlan plan_mask(const Shape& whole, double p, int dim, int64_t start, int64_t length) {
  FORGE_CHECK(p >= 0.0 && p < 1.0, "dropout: probability must be in [0, 1), got {}", p);
  const int nd = int(whole.size());
  FORGE_CHECK(nd == 0 || (dim >= 0 && dim < nd), "dropout_mask: dim {} of a {}-d shape", dim, nd);
  const int64_t n_dim = nd == 0 ? 1 : whole[dim];
  if (length < 0) length = n_dim - start;
  FORGE_CHECK(start >= 0 && start + length <= n_dim,
              "dropout_mask: slice [{}, {}) of dim {} (size {}) of {}", start, start + length, dim,
              n_dim, whole);
  MaskPlan plan;
  kernels::DropoutGeometry& g = plan.geometry;
  for (int d = 0; d < dim; ++d) g.outer *= whole[d];
  for (int d = dim + 1; d < nd; ++d) g.inner *= whole[d];
  g.n_dim = n_dim;
  g.start = start;
  g.length = length;
  plan.total = g.outer * n_dim * g.inner;
  plan.shape = whole;
  if (nd > 0) plan.shape[dim] = length;
  return plan;
}

}  // namespace

void copy_into(const Tensor& dst, const Tensor& src) {
  Tensor s = src.shape() == dst.shape() ? src : src.expand(dst.shape());
  check_status(kernels::copy_cast(int(dst.dtype()), int(s.dtype()), strided(dst, {s}, "copy_"),
                                  dst.raw_data(), s.raw_data(), stream_of(dst)),
               "copy_");
}

Tensor compare(kernels::Compare op, const Tensor& a, const Tensor& b, const char* name) {
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(shape, DType::u8, a.device());
  kernels::Strided s = strided(out, {a.expand(shape), b.expand(shape)}, name);
  check_status(kernels::compare(op, int(a.dtype()), s, out.raw_data(), a.raw_data(), b.raw_data(),
                                stream_of(a)),
               name);
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  Shape shape =
      broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  // Any nonzero value is true: compare, do not convert (a cast to u8 would wrap 256 to 0).
  Tensor c8 = cond.dtype() == DType::u8 ? cond
                                        : compare(kernels::Compare::ne, cond,
                                                  zeros({}, cond.dtype(), cond.device()), "where");
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  check_dims(out, "where");
  const Tensor ops[4] = {out, c8.expand(shape), a.expand(shape), b.expand(shape)};
  kernels::Strided4 s;
  s.dims = out.dim();
  s.numel = out.numel();
  for (int d = 0; d < s.dims; ++d) {
    s.sizes[d] = out.size(d);
    for (int k = 0; k < 4; ++k) s.strides[k][d] = ops[k].stride(d);
  }
  check_status(kernels::where(int(a.dtype()), s, out.raw_data(), ops[1].raw_data(),
                              ops[2].raw_data(), ops[3].raw_data(), stream_of(out)),
               "where");
  return out;
}

Tensor activation_backward(kernels::ActivationBackward op, const Tensor& grad, const Tensor& x,
                           const char* name) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  check_status(
      kernels::activation_backward(op, int(x.dtype()), strided(out, {grad, x}, name),
                                   out.raw_data(), grad.raw_data(), x.raw_data(), stream_of(out)),
      name);
  return out;
}

Tensor dropout_mask(const Shape& whole, double p, Generator& gen, int dim, int64_t start,
                    int64_t length, Device device) {
  MaskPlan plan = plan_mask(whole, p, dim, start, length);
  Tensor mask = Tensor::empty(plan.shape, DType::u8, device);
  check_cuda(mask, "dropout_mask");
  const uint64_t first = gen.advance(uint64_t((plan.total + 3) / 4));
  check_status(kernels::dropout_mask(plan.geometry, gen.seed(), first, float(p),
                                     static_cast<uint8_t*>(mask.raw_data()), stream_of(mask)),
               "dropout_mask");
  return mask;
}

Tensor dropout_apply(const Tensor& grad, const Tensor& mask, double p) {
  Tensor g = grad.contiguous(), mk = mask.contiguous();
  Tensor out = Tensor::empty(g.shape(), g.dtype(), g.device());
  check_status(kernels::dropout_apply(int(g.dtype()), g.numel(), out.raw_data(), g.raw_data(),
                                      static_cast<const uint8_t*>(mk.raw_data()), 1.0 / (1.0 - p),
                                      stream_of(out)),
               "dropout");
  return out;
}

void add_(Tensor& a, const Tensor& b, double alpha) {
  Tensor eb = b.shape() == a.shape() ? b : b.expand(a.shape());
  check_status(kernels::add_scaled_(int(a.dtype()), strided(a, {Tensor(), eb}, "add_"),
                                    a.raw_data(), eb.raw_data(), alpha, stream_of(a)),
               "add_");
}

void mul_(Tensor& a, double s) {
  check_status(
      kernels::scale_(int(a.dtype()), strided(a, {}, "mul_"), a.raw_data(), s, stream_of(a)),
      "mul_");
}

void check_finite_and_scale_(Tensor& t, double s, Tensor& found_inf) {
  check_cuda(t, "unscale");
  check_same_device(t, found_inf, "unscale");
  FORGE_CHECK(t.is_contiguous() && is_floating(t.dtype()),
              "unscale: expected a contiguous floating tensor, got {} {}", t.dtype(), t.shape());
  FORGE_CHECK(found_inf.dtype() == DType::i32 && found_inf.numel() == 1,
              "unscale: the inf flag must be one i32, got {} {}", found_inf.dtype(),
              found_inf.shape());
  check_status(
      kernels::check_finite_and_scale_(int(t.dtype()), t.numel(), t.raw_data(), s, s != 1.0,
                                       static_cast<int*>(found_inf.raw_data()), stream_of(t)),
      "unscale");
}

Tensor index_select(const Tensor& a, const Tensor& indices) {
  Tensor x = a.contiguous();
  const int64_t rows = x.size(0), n = indices.numel();
  // Checked on the host, as the CPU op does, so a bad index is an error naming it rather than a
  // fault on the device. The indices are small next to the rows they pick.
  std::vector<int64_t> idx = indices.contiguous().to(Device::cpu()).to_vector<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    FORGE_CHECK(idx[size_t(i)] >= 0 && idx[size_t(i)] < rows,
                "index_select: index {} at position {} is out of range for {} rows", idx[size_t(i)],
                i, rows);
  Shape out_shape = x.shape();
  out_shape[0] = n;
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  if (n == 0) return out;
  Tensor index = from_vector<int64_t>(idx, Shape{n}).to(x.device());
  check_status(kernels::gather_rows(int64_t(x.itemsize()), rows ? x.numel() / rows : 0, n,
                                    out.raw_data(), x.raw_data(),
                                    static_cast<const int64_t*>(index.raw_data()), stream_of(out)),
               "index_select");
  return out;
}

Tensor concat(const std::vector<Tensor>& parts, int d) {
  const Tensor& first = parts.at(0);
  Shape shape = first.shape();
  shape[d] = 0;
  for (const Tensor& p : parts) {
    check_same_device(first, p, "concat");
    shape[d] += p.size(d);
  }
  Tensor out = Tensor::empty(shape, first.dtype(), first.device());
  int64_t at = 0;
  for (const Tensor& p : parts) {
    copy_into(out.narrow(d, at, p.size(d)), p);
    at += p.size(d);
  }
  return out;
}

}  // namespace forge::cuda
