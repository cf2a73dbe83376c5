// Fake quantization: rounds a float tensor to the integer grid and back, in float, so training
// sees the error int8 inference will make.
//
//   QuantParams q = observer.qparams();
//   Tensor y = fake_quantize(x, q);                 // tensor op
//   Variable v = fake_quantize(Variable(x), q);     // differentiable: straight-through estimator
//
//   forward:  y = (clamp(round(x / s) + z, qmin, qmax) - z) * s      (round half to even; x / s is
//             computed as x * (1 / s), as PyTorch does)
//   backward: dx = dy where qmin <= round(x / s) + z <= qmax, 0 elsewhere
// The straight-through estimator treats rounding as the identity; it is the derivative of the
// clamp alone, clamp(x, (qmin - z) s, (qmax - z) s), which is what gradcheck can compare against.
//
// FakeQuantize is the module QAT puts on a tensor: an observer, then fake quantization with the
// observer's current parameters. Observation stops ("freezes") after `freeze_after` observed steps,
// so the last epochs train against fixed scales, the ones conversion will use.
#pragma once

#include "autograd/variable.h"
#include "models/module.h"
#include "quant/observer.h"

namespace forge {

struct FakeQuantResult {
  Tensor y;
  Tensor mask;  // u8, 1 where the gradient passes (the rounded value lay inside [qmin, qmax])
};
FakeQuantResult fake_quantize_with_mask(const Tensor& x, const QuantParams& q);
Tensor fake_quantize(const Tensor& x, const QuantParams& q);
Variable fake_quantize(const Variable& x, const QuantParams& q);
// The backward kernel: dx = dy where mask is 1, 0 elsewhere (mask from fake_quantize_with_mask).
Tensor fake_quantize_backward(const Tensor& grad, const Tensor& mask);

struct FakeQuantizeConfig {
  ObserverConfig observer;
  int64_t freeze_after = -1;  // observed steps before the observer freezes; -1: never
};

class FakeQuantize : public Module {
 public:
  explicit FakeQuantize(FakeQuantizeConfig config = {});
  // Training (and not frozen): observes x first. Then fake-quantizes with the current parameters;
  // before anything was observed it passes x through unchanged.
  Variable forward(const Variable& x) override;
  QuantParams qparams() const { return observer_.qparams(); }
  const Observer& observer() const { return observer_; }
  bool frozen() const;
  int64_t steps_observed() const { return steps_; }
  void freeze() { frozen_ = true; }

 private:
  FakeQuantizeConfig config_;
  Observer observer_;
  int64_t steps_ = 0;
  bool frozen_ = false;
};

}  // namespace forge
