// Host side of the CUDA ops: shapes, broadcasting and strides become a kernels::Strided, then the
// launcher runs on the device's stream and its status is checked.
//
// Arguments are validated at the op surface (tensor/ops_*.cpp) before dispatch; only CUDA-specific
// limits are checked here (the kernels' dimension limit, contiguity where a kernel needs it).
#include "tensor/cuda/cuda_ops.h"

#include "tensor/cuda/cuda.h"
#include "tensor/cuda/host_util.h"

namespace forge::cuda {

void check_cuda(const Tensor& t, const char* op) {
  FORGE_CHECK(t.defined(), "{}: undefined tensor", op);
  FORGE_CHECK(t.device().is_cuda(), "{}: expected a cuda tensor, got one on {}", op,
              t.device().str());
}

void check_dims(const Tensor& t, const char* op) {
  FORGE_CHECK(t.dim() <= kernels::kMaxDims, "{}: {} dimensions on cuda (at most {}), shape {}", op,
              t.dim(), kernels::kMaxDims, t.shape());
}

kernels::Strided strided(const Tensor& out, const std::vector<Tensor>& operands, const char* op) {
  check_dims(out, op);
  kernels::Strided s;
  s.dims = out.dim();
  s.numel = out.numel();
  s.contiguous = out.is_contiguous();
  for (int d = 0; d < s.dims; ++d) {
    s.sizes[d] = out.size(d);
    s.strides[0][d] = out.stride(d);
  }
  for (size_t k = 0; k < operands.size(); ++k) {
    const Tensor& t = operands[k];
    if (!t.defined()) continue;
    s.contiguous = s.contiguous && t.shape() == out.shape() && t.is_contiguous();
    for (int d = 0; d < s.dims; ++d) s.strides[k + 1][d] = t.stride(d);
  }
  return s;
}

void* stream_of(const Tensor& t) {
  return stream_handle(t.device().index);
}

void check_device(Device device, const std::string& where) {
  if (device.is_cpu()) return;
  const int n = device_count();
  FORGE_CHECK(n > 0, "{}: {} asked for, but there is no GPU here ({})", where, device.str(),
              unavailable_reason());
  FORGE_CHECK(device.index >= 0 && device.index < n,
              "{}: {} asked for, but this machine has {} GPU{}", where, device.str(), n,
              n == 1 ? "" : "s");
}

Tensor binary(kernels::Binary op, const Tensor& a, const Tensor& b, const char* name) {
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  kernels::Strided s = strided(out, {a.expand(shape), b.expand(shape)}, name);
  check_status(kernels::binary(op, int(a.dtype()), s, out.raw_data(), a.raw_data(), b.raw_data(),
                               stream_of(a)),
               name);
  return out;
}

Tensor unary(kernels::Unary op, const Tensor& a, const char* name) {
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  kernels::Strided s = strided(out, {a}, name);
  check_status(kernels::unary(op, int(a.dtype()), s, out.raw_data(), a.raw_data(), stream_of(a)),
               name);
  return out;
}

Tensor affine(const Tensor& a, double scale, double shift, const char* name) {
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  kernels::Strided s = strided(out, {a}, name);
  check_status(
      kernels::affine(int(a.dtype()), s, out.raw_data(), a.raw_data(), scale, shift, stream_of(a)),
      name);
  return out;
}

Tensor pow_scalar(const Tensor& a, double exponent, const char* name) {
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  kernels::Strided s = strided(out, {a}, name);
  check_status(
      kernels::pow_scalar(int(a.dtype()), s, out.raw_data(), a.raw_data(), exponent, stream_of(a)),
      name);
  return out;
}

void fill_(Tensor& t, double value) {
  FORGE_CHECK(t.is_contiguous(), "fill_: a strided view on cuda is not supported yet ({})",
              t.shape());
  check_status(kernels::fill(int(t.dtype()), t.numel(), t.raw_data(), value, stream_of(t)),
               "fill_");
}

}  // namespace forge::cuda
