// Observers: running extremes of a tensor, and the scale / zero point they imply.
// The arithmetic is f32 throughout, step for step as torch.ao.quantization.observer does it, so
// the scales agree with PyTorch's to the bit.
#include "quant/observer.h"

#include <cfloat>
#include <cmath>
#include <limits>

namespace forge {

// ---------------------------------------------------------------------------------------------
// choose_qparams: for each channel c (or once, per tensor)
//   lo = min(min_c, 0), hi = max(max_c, 0)
//   affine:    scale = (hi - lo) / (qmax - qmin)
//              zero  = clamp(qmin - round(lo / scale), qmin, qmax)
//   symmetric: scale = max(-lo, hi) / ((qmax - qmin) / 2)
//              zero  = 0, or (qmin + qmax + 1) / 2 on an unsigned grid (128 for u8: 0 in the
//              middle)
//   scale = max(scale, FLT_EPSILON): an all-zero tensor still gets a usable (nonzero) scale.

QuantParams choose_qparams(const Tensor& min, const Tensor& max, QuantRange range, QScheme scheme,
                           int axis) {
  FORGE_CHECK(min.shape() == max.shape(), "choose_qparams: min {} and max {} differ in shape",
              min.shape(), max.shape());
  FORGE_CHECK(min.dim() <= 1, "choose_qparams: expected 0-d or (C) extremes, got {}", min.shape());
  FORGE_CHECK(axis >= 0 || min.dim() == 0,
              "choose_qparams: per-tensor parameters (axis -1) need 0-d extremes, got {}",
              min.shape());
  FORGE_CHECK(range.qmin < range.qmax, "choose_qparams: empty range [{}, {}]", range.qmin,
              range.qmax);
  Tensor mn = min.to(DType::f32).contiguous(), mx = max.to(DType::f32).contiguous();
  const float* pmin = mn.data<float>();
  const float* pmax = mx.data<float>();
  QuantParams q;
  q.axis = axis;
  q.range = range;
  q.scale = Tensor::empty(min.shape(), DType::f32);
  q.zero_point = Tensor::empty(min.shape(), DType::i32);
  float* scale = q.scale.data<float>();
  int32_t* zero = q.zero_point.data<int32_t>();
  const float qmin = float(range.qmin), qmax = float(range.qmax);
  const bool unsigned_grid = range.dtype == DType::u8;
  for (int64_t c = 0; c < min.numel(); ++c) {
    float lo = std::min(pmin[c], 0.0f), hi = std::max(pmax[c], 0.0f);
    float s;
    int32_t z;
    if (scheme == QScheme::symmetric) {
      s = std::max(-lo, hi) / ((qmax - qmin) / 2.0f);
      s = std::max(s, FLT_EPSILON);
      z = unsigned_grid ? (range.qmin + range.qmax + 1) / 2 : 0;
    } else {
      s = (hi - lo) / (qmax - qmin);
      s = std::max(s, FLT_EPSILON);
      float zf = qmin - std::nearbyint(lo / s);  // round half to even, as torch.round
      z = int32_t(std::clamp(zf, qmin, qmax));
    }
    scale[c] = s;
    zero[c] = z;
  }
  return q;
}

// ---------------------------------------------------------------------------------------------
// Observer

Observer::Observer(ObserverConfig config) : config_(config) {
  FORGE_CHECK(config_.axis >= -1, "Observer: axis {} (expected -1 for per tensor, or >= 0)",
              config_.axis);
  FORGE_CHECK(config_.averaging_constant > 0 && config_.averaging_constant <= 1,
              "Observer: averaging_constant {} outside (0, 1]", config_.averaging_constant);
}

namespace {

// Extremes of x (contiguous f32) seen as (outer, C, inner): one (min, max) per channel c.
// Per tensor is the case C = 1. NaNs are skipped (a comparison with NaN is false).
void channel_extremes(const float* x, int64_t outer, int64_t channels, int64_t inner, float* mn,
                      float* mx) {
  for (int64_t c = 0; c < channels; ++c) {
    mn[c] = std::numeric_limits<float>::infinity();
    mx[c] = -std::numeric_limits<float>::infinity();
  }
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < channels; ++c) {
      const float* row = x + (o * channels + c) * inner;
      float lo = mn[c], hi = mx[c];
      for (int64_t i = 0; i < inner; ++i) {
        lo = row[i] < lo ? row[i] : lo;
        hi = row[i] > hi ? row[i] : hi;
      }
      mn[c] = lo;
      mx[c] = hi;
    }
}

}  // namespace

void Observer::observe(const Tensor& x) {
  FORGE_CHECK(x.defined() && is_floating(x.dtype()),
              "Observer::observe: expected a floating tensor, got {}",
              x.defined() ? dtype_name(x.dtype()) : "an undefined tensor");
  if (x.numel() == 0) return;  // nothing to learn (as PyTorch)
  const bool per_channel = config_.axis >= 0;
  int64_t outer = 1, channels = 1, inner = x.numel();
  if (per_channel) {
    FORGE_CHECK(config_.axis < x.dim(), "Observer::observe: channel axis {} but x has shape {}",
                config_.axis, x.shape());
    channels = x.size(config_.axis);
    outer = 1;
    for (int d = 0; d < config_.axis; ++d) outer *= x.size(d);
    inner = x.numel() / (outer * channels);
    if (min_.defined())
      FORGE_CHECK(min_.numel() == channels,
                  "Observer::observe: x has {} channels along axis {} ({}), earlier batches had {}",
                  channels, config_.axis, x.shape(), min_.numel());
  }
  Tensor xf = x.to(DType::f32).contiguous();
  Shape stat_shape = per_channel ? Shape{channels} : Shape{};
  Tensor bmin = Tensor::empty(stat_shape, DType::f32), bmax = Tensor::empty(stat_shape, DType::f32);
  channel_extremes(xf.data<float>(), outer, channels, inner, bmin.data<float>(),
                   bmax.data<float>());

  if (!min_.defined()) {  // the first batch is taken as is, by both kinds
    min_ = bmin;
    max_ = bmax;
    return;
  }
  float* mn = min_.data<float>();
  float* mx = max_.data<float>();
  const float* bn = bmin.data<float>();
  const float* bx = bmax.data<float>();
  if (config_.kind == ObserverKind::min_max) {
    for (int64_t c = 0; c < channels; ++c) {
      mn[c] = std::min(mn[c], bn[c]);
      mx[c] = std::max(mx[c], bx[c]);
    }
  } else {
    // Exponential moving average, in f32 as PyTorch: min += c (batch_min - min).
    const float a = float(config_.averaging_constant);
    for (int64_t c = 0; c < channels; ++c) {
      mn[c] = mn[c] + a * (bn[c] - mn[c]);
      mx[c] = mx[c] + a * (bx[c] - mx[c]);
    }
  }
}

QuantParams Observer::qparams() const {
  if (!min_.defined()) {  // nothing observed: the neutral parameters, scale 1 and zero 0
    QuantParams q;
    q.axis = -1;
    q.range = config_.range;
    q.scale = scalar_tensor(1.0, DType::f32);
    q.zero_point = scalar_tensor(0.0, DType::i32);
    return q;
  }
  return choose_qparams(min_, max_, config_.range, config_.scheme, config_.axis);
}

}  // namespace forge
