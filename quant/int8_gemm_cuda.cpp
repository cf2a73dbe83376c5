// Host side of quant/int8_gemm_cuda.h: checks, outputs on the device, the launchers.
#include "quant/int8_gemm_cuda.h"

#include "quant/quant_cuda_kernels.h"
#include "tensor/cuda/cuda.h"

namespace forge {

namespace {

// Checks a (M, K) u8 and w (N, K) s8 on one GPU, with unit column stride; returns them.
void check_operands(const Tensor& a, const Tensor& w, const char* op) {
  FORGE_CHECK(a.defined() && w.defined(), "{}: undefined tensor", op);
  FORGE_CHECK(a.device().is_cuda(), "{}: expected cuda tensors, got a on {}", op, a.device().str());
  check_same_device(a, w, op);
  FORGE_CHECK(a.dtype() == DType::u8 && w.dtype() == DType::i8 && a.dim() == 2 && w.dim() == 2 &&
                  a.size(1) == w.size(1),
              "{}: expected a (M, K) u8 and w (N, K) i8, got {} {} and {} {}", op, a.dtype(),
              a.shape(), w.dtype(), w.shape());
  FORGE_CHECK(a.size(0) <= 1048560, "{}: {} rows (at most 1048560 on cuda)", op, a.size(0));
}

Tensor rows_contiguous(const Tensor& t) {
  return t.dim() == 2 && (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}

Tensor run(const Tensor& a_in, const Tensor& w_in, float a_scale, int32_t a_zero,
           const Tensor& w_scale, const Tensor& bias, bool dequantize, const char* op) {
  check_operands(a_in, w_in, op);
  Tensor a = rows_contiguous(a_in), w = rows_contiguous(w_in);
  const int64_t m = a.size(0), k = a.size(1), n = w.size(0);
  if (dequantize) {
    check_same_device(a, w_scale, op);
    FORGE_CHECK(w_scale.dtype() == DType::f32 && w_scale.shape() == Shape{n},
                "{}: w_scale must be ({}) f32, got {} {}", op, n, w_scale.dtype(), w_scale.shape());
    if (bias.defined()) {
      check_same_device(a, bias, op);
      FORGE_CHECK(bias.dtype() == DType::f32 && bias.shape() == Shape{n},
                  "{}: bias must be ({}) f32, got {} {}", op, n, bias.dtype(), bias.shape());
    }
  }
  Tensor out = Tensor::empty({m, n}, dequantize ? DType::f32 : DType::i32, a.device());
  Tensor ws = dequantize ? w_scale.contiguous() : Tensor();
  Tensor b = bias.defined() ? bias.contiguous() : Tensor();
  cuda::check_status(
      cuda::kernels::int8_gemm(
          static_cast<const uint8_t*>(a.raw_data()), m, k, a.size(0) > 1 ? a.stride(0) : k,
          static_cast<const int8_t*>(w.raw_data()), n, w.size(0) > 1 ? w.stride(0) : k,
          dequantize ? nullptr : static_cast<int32_t*>(out.raw_data()), n,
          dequantize ? static_cast<float*>(out.raw_data()) : nullptr, n, a_scale, a_zero,
          dequantize ? static_cast<const float*>(ws.raw_data()) : nullptr,
          b.defined() ? static_cast<const float*>(b.raw_data()) : nullptr,
          cuda::stream_handle(a.device().index)),
      op);
  return out;
}

}  // namespace

Tensor quantize_u8_cuda(const Tensor& x_in, float inv_scale, int32_t zero, int32_t qmin,
                        int32_t qmax) {
  const char* op = "quantize_u8_cuda";
  FORGE_CHECK(x_in.defined(), "{}: undefined tensor", op);
  FORGE_CHECK(x_in.device().is_cuda() && x_in.dtype() == DType::f32,
              "{}: expected an f32 cuda tensor, got {} on {}", op, x_in.dtype(),
              x_in.device().str());
  FORGE_CHECK(0 <= qmin && qmin <= qmax && qmax <= 255,
              "{}: need 0 <= qmin <= qmax <= 255, got qmin {} and qmax {}", op, qmin, qmax);
  FORGE_CHECK(zero >= -(1 << 23) && zero <= (1 << 23), "{}: zero point {} out of range", op, zero);
  Tensor x = x_in.contiguous();
  Tensor q = Tensor::empty(x.shape(), DType::u8, x.device());
  cuda::check_status(
      cuda::kernels::quantize_u8(x.numel(), static_cast<const float*>(x.raw_data()), inv_scale,
                                 zero, float(qmin - zero), float(qmax - zero),
                                 static_cast<uint8_t*>(q.raw_data()),
                                 cuda::stream_handle(x.device().index)),
      op);
  return q;
}

Tensor int8_gemm_cuda(const Tensor& a, const Tensor& w) {
  return run(a, w, 0.f, 0, Tensor(), Tensor(), false, "int8_gemm_cuda");
}

Tensor int8_linear_cuda(const Tensor& a, float a_scale, int32_t a_zero, const Tensor& w,
                        const Tensor& w_scale, const Tensor& bias) {
  return run(a, w, a_scale, a_zero, w_scale, bias, true, "int8_linear_cuda");
}

}  // namespace forge
