// Observers: they watch the values a tensor takes and choose its quantization parameters.
//
//   Observer obs(ObserverConfig{.kind = ObserverKind::moving_average, .range = QuantRange::u8()});
//   obs.observe(x);                       // every training step (x: any float tensor)
//   QuantParams q = obs.qparams();        // scale and zero point for x
//   Tensor y = fake_quantize(x, q);       // quant/fake_quant.h
//
// Per tensor (axis -1) one (min, max) covers every element; per channel (axis a) each index of
// dimension a gets its own, e.g. axis 0 of a Linear weight (out, in): one scale per output row.
//
// The formulas are PyTorch's (torch.ao.quantization.observer), so its scales can be compared:
//   min' = min(min, 0), max' = max(max, 0)               (zero must be exactly representable)
//   affine:    scale = (max' - min') / (qmax - qmin),  zero = qmin - round(min' / scale), clamped
//   symmetric: scale = max(-min', max') / ((qmax - qmin) / 2),  zero = 0 for s8 (128 for u8)
//   scale = max(scale, f32 epsilon); an observer that saw nothing gives scale 1, zero 0.
// min-max keeps the running extremes; moving average updates them as
//   min = min + c (batch_min - min)   (c = averaging_constant, 0.01 as PyTorch), first batch as is.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace forge {

// The integer grid: [qmin, qmax] and the storage type.
struct QuantRange {
  int32_t qmin = 0, qmax = 255;
  DType dtype = DType::u8;
  static QuantRange u8() { return {0, 255, DType::u8}; }
  static QuantRange s8() { return {-128, 127, DType::i8}; }
  // Weights: s8 restricted to [-127, 127], so the grid is symmetric around 0 (as fbgemm).
  static QuantRange s8_symmetric() { return {-127, 127, DType::i8}; }
  // 7-bit activations [0, 127] (PyTorch's reduce_range on x86).
  static QuantRange u7() { return {0, 127, DType::u8}; }
  friend bool operator==(const QuantRange&, const QuantRange&) = default;
};

enum class QScheme { affine, symmetric };

struct QuantParams {
  Tensor scale;       // f32: 0-d per tensor, (C) per channel
  Tensor zero_point;  // i32, same shape
  int axis = -1;      // channel dimension, -1 per tensor
  QuantRange range;
  bool per_channel() const { return axis >= 0; }
};

// Chooses scale and zero point from observed extremes (0-d or (C) f32 tensors), formulas above.
QuantParams choose_qparams(const Tensor& min, const Tensor& max, QuantRange range, QScheme scheme,
                           int axis = -1);

enum class ObserverKind { min_max, moving_average };

struct ObserverConfig {
  ObserverKind kind = ObserverKind::min_max;
  QuantRange range = QuantRange::u8();
  QScheme scheme = QScheme::affine;
  int axis = -1;  // -1: per tensor; otherwise per channel along this dimension
  double averaging_constant = 0.01;
};

class Observer {
 public:
  explicit Observer(ObserverConfig config = {});
  // Folds x's extremes (along config.axis when per channel) into the running min and max.
  void observe(const Tensor& x);
  QuantParams qparams() const;
  bool observed() const { return min_.defined(); }
  const Tensor& min() const { return min_; }  // undefined before the first observe()
  const Tensor& max() const { return max_; }
  const ObserverConfig& config() const { return config_; }

 private:
  ObserverConfig config_;
  Tensor min_, max_;
};

}  // namespace forge
