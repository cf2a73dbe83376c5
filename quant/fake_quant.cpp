// Fake quantization: the forward kernel (value and gradient mask in one pass), its backward, the
// differentiable op, and the FakeQuantize module.
#include "quant/fake_quant.h"

#include <cmath>

#include "quant/quant_cuda_kernels.h"
#include "tensor/cuda/cuda.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace forge {

// ---------------------------------------------------------------------------------------------
// Kernel. For one run of n elements sharing (scale s, zero z):
//   r = round(x * (1 / s)) + z          round half to even (nearbyint in the default mode)
//   y = (clamp(r, qmin, qmax) - z) * s
//   mask = qmin <= r <= qmax            where the straight-through gradient passes
// f32 and f64 compute in their own type; bf16 and f16 through f32. Selects instead of branches,
// so the loop vectorises (nearbyint is one instruction with -fno-math-errno and SSE4.1 / AVX).

namespace {

template <class T>
void fake_quantize_run(const T* x, T* y, uint8_t* mask, int64_t n, float scale, int32_t zero,
                       int32_t qmin, int32_t qmax) {
  using C = compute_t<T>;
  const C s = C(scale), inv = C(1) / C(scale), z = C(zero), lo = C(qmin), hi = C(qmax);
  for (int64_t i = 0; i < n; ++i) {
    C r = std::nearbyint(load(x + i) * inv) + z;
    C c = r < lo ? lo : (r > hi ? hi : r);
    store(y + i, (c - z) * s);
    mask[i] = uint8_t((r >= lo) & (r <= hi));
  }
}

// Checks q against x and returns the channel count (1 per tensor).
int64_t check_qparams(const Tensor& x, const QuantParams& q, const char* op) {
  FORGE_CHECK(x.defined() && is_floating(x.dtype()), "{}: expected a floating x, got {}", op,
              x.defined() ? dtype_name(x.dtype()) : "an undefined tensor");
  FORGE_CHECK(q.scale.defined() && q.zero_point.defined(),
              "{}: quantization parameters have no scale or zero point", op);
  FORGE_CHECK(q.scale.dtype() == DType::f32 && q.zero_point.dtype() == DType::i32,
              "{}: expected f32 scale and i32 zero point, got {} and {}", op, q.scale.dtype(),
              q.zero_point.dtype());
  FORGE_CHECK(q.scale.shape() == q.zero_point.shape(),
              "{}: scale {} and zero point {} differ in shape", op, q.scale.shape(),
              q.zero_point.shape());
  FORGE_CHECK(q.range.qmin < q.range.qmax, "{}: empty range [{}, {}]", op, q.range.qmin,
              q.range.qmax);
  if (!q.per_channel()) {
    FORGE_CHECK(q.scale.numel() == 1, "{}: per-tensor parameters with scale of shape {}", op,
                q.scale.shape());
    return 1;
  }
  FORGE_CHECK(q.axis < x.dim(), "{}: channel axis {} but x has shape {}", op, q.axis, x.shape());
  FORGE_CHECK(q.scale.dim() == 1 && q.scale.numel() == x.size(q.axis),
              "{}: {} scales for axis {} of x {} (expected {})", op, q.scale.numel(), q.axis,
              x.shape(), x.size(q.axis));
  return x.size(q.axis);
}

// Every scale positive and finite; scale is a contiguous f32 cpu tensor.
void check_scales(const Tensor& scale, int64_t channels) {
  const float* ps = scale.data<float>();
  for (int64_t c = 0; c < channels; ++c)
    FORGE_CHECK(ps[c] > 0 && std::isfinite(ps[c]), "fake_quantize: scale {} of channel {}", ps[c],
                c);
}

// x seen as (outer, C, inner): each row of `inner` elements shares one channel's parameters.
int64_t inner_size(const Tensor& x, const QuantParams& q, int64_t channels) {
  if (!q.per_channel()) return x.numel();
  int64_t outer = 1;
  for (int d = 0; d < q.axis; ++d) outer *= x.size(d);
  return x.numel() / std::max<int64_t>(outer * channels, 1);
}

// The same on a GPU: one thread per element, the CPU's arithmetic (quant/quant_cuda.cu). The
// parameters are checked on the host, then go to x's device.
FakeQuantResult fake_quantize_cuda(const Tensor& x_in, const QuantParams& q, int64_t channels) {
  Tensor x = x_in.contiguous();
  Tensor scale = q.scale.contiguous().to(Device::cpu());
  Tensor zero = q.zero_point.contiguous().to(Device::cpu());
  check_scales(scale, channels);
  FakeQuantResult out{Tensor::empty(x.shape(), x.dtype(), x.device()),
                      Tensor::empty(x.shape(), DType::u8, x.device())};
  if (x.numel() == 0) return out;
  Tensor ds = scale.to(x.device()), dz = zero.to(x.device());
  cuda::check_status(
      cuda::kernels::fake_quantize(
          int(x.dtype()), x.numel(), inner_size(x, q, channels), channels, x.raw_data(),
          out.y.raw_data(), static_cast<uint8_t*>(out.mask.raw_data()),
          static_cast<const float*>(ds.raw_data()), static_cast<const int32_t*>(dz.raw_data()),
          q.range.qmin, q.range.qmax, cuda::stream_handle(x.device().index)),
      "fake_quantize");
  return out;
}

}  // namespace

FakeQuantResult fake_quantize_with_mask(const Tensor& x_in, const QuantParams& q) {
  const int64_t channels = check_qparams(x_in, q, "fake_quantize");
  if (x_in.device().is_cuda()) return fake_quantize_cuda(x_in, q, channels);
  Tensor x = x_in.contiguous();
  Tensor scale = q.scale.contiguous(), zero = q.zero_point.contiguous();
  check_scales(scale, channels);
  const float* ps = scale.data<float>();
  const int32_t* pz = zero.data<int32_t>();

  // x seen as (outer, C, inner): each row of `inner` elements shares one channel's parameters.
  const int64_t inner = inner_size(x, q, channels);
  const int64_t outer = x.numel() / std::max<int64_t>(inner * channels, 1);
  FakeQuantResult out{Tensor::empty(x.shape(), x.dtype()), Tensor::empty(x.shape(), DType::u8)};
  if (x.numel() == 0) return out;
  uint8_t* mask = out.mask.data<uint8_t>();
  const int32_t qmin = q.range.qmin, qmax = q.range.qmax;
  dispatch_float(x.dtype(), "fake_quantize", [&]<class T>() {
    const T* px = x.data<T>();
    T* py = out.y.data<T>();
    constexpr int64_t kGrain = 1 << 14;  // elements per task: enough to pay for a thread
    if (channels == 1 && outer == 1) {   // per tensor: split the one run
      parallel_for(0, inner, kGrain, [&](int64_t b, int64_t e) {
        fake_quantize_run(px + b, py + b, mask + b, e - b, ps[0], pz[0], qmin, qmax);
      });
      return;
    }
    parallel_for(0, outer * channels, std::max<int64_t>(kGrain / std::max<int64_t>(inner, 1), 1),
                 [&](int64_t b, int64_t e) {
                   for (int64_t row = b; row < e; ++row) {
                     int64_t c = row % channels, at = row * inner;
                     fake_quantize_run(px + at, py + at, mask + at, inner, ps[c], pz[c], qmin,
                                       qmax);
                   }
                 });
  });
  return out;
}

Tensor fake_quantize(const Tensor& x, const QuantParams& q) {
  return fake_quantize_with_mask(x, q).y;
}

// dx = dy where the mask is 1, 0 elsewhere.
Tensor fake_quantize_backward(const Tensor& grad, const Tensor& mask) {
  FORGE_CHECK(grad.shape() == mask.shape() && mask.dtype() == DType::u8,
              "fake_quantize_backward: grad {} and mask {} ({}) do not match", grad.shape(),
              mask.shape(), mask.dtype());
  return where(mask, grad, zeros({}, grad.dtype(), grad.device()));
}

// The straight-through estimator: rounding counts as the identity, so only the clamp's gradient
// is left. Only the mask is saved for backward.
Variable fake_quantize(const Variable& x, const QuantParams& q) {
  FakeQuantResult r = fake_quantize_with_mask(x.data(), q);
  Tensor mask = x.requires_grad() ? r.mask : Tensor();
  return make_variable(r.y, "fake_quantize", {&x}, [mask](const Tensor& g) {
    return std::vector<Tensor>{fake_quantize_backward(g, mask)};
  });
}

// ---------------------------------------------------------------------------------------------
// FakeQuantize module

FakeQuantize::FakeQuantize(FakeQuantizeConfig config)
    : config_(config), observer_(config.observer) {
  FORGE_CHECK(config_.freeze_after >= -1,
              "FakeQuantize: freeze_after {} (expected -1 for never, or a step count >= 0)",
              config_.freeze_after);
}

bool FakeQuantize::frozen() const {
  return frozen_ || (config_.freeze_after >= 0 && steps_ >= config_.freeze_after);
}

Variable FakeQuantize::forward(const Variable& x) {
  if (is_training() && !frozen()) {
    observer_.observe(x.data());
    ++steps_;
  }
  if (!observer_.observed()) return x;  // nothing seen yet: no parameters to quantize with
  return fake_quantize(x, observer_.qparams());
}

}  // namespace forge
