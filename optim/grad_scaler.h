// Dynamic loss scaling for half-precision training, with PyTorch's GradScaler semantics.
//
//   GradScaler scaler;                       // scale 2^16, x2 after 2000 good steps, x0.5 on
//   inf/NaN scaler.scale(loss).backward();           // gradients come out multiplied by the scale
//   scaler.unscale(params);                  // divide them back (once per step), look for inf/NaN
//   clip_grad_norm(params, 1.0);             // clipping sees the true gradients
//   bool stepped = scaler.step(opt, params); // skipped when any gradient is inf/NaN
//   scaler.update();                         // back off or grow the scale
//
// A skipped step leaves the weights and the optimizer state untouched (the optimizer is not
// called). unscale() is optional: step() unscales if it was not called. With several ranks, the
// inf/NaN verdict must be the same everywhere: reduce found_inf() (max) and hand it back with
// set_found_inf() before step(). Disabled, every call is a pass-through and the scale is 1.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "autograd/variable.h"
#include "optim/optimizer.h"

namespace forge {

struct GradScalerOptions {
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;  // consecutive steps without inf/NaN before the scale grows
  bool enabled = true;
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions o = {});

  // loss * scale (a pass-through when disabled).
  Variable scale(const Variable& loss) const;
  // Multiplies every defined gradient by 1/scale and records whether any element is inf or NaN.
  // Once per step; a second call before update() is an error (as in PyTorch).
  void unscale(const std::vector<Variable>& params);
  // Calls opt.step() unless an inf/NaN was found; returns whether it did.
  bool step(Optimizer& opt, const std::vector<Variable>& params);
  // Ends the step: on inf/NaN the scale backs off and the run of good steps restarts; after
  // growth_interval good steps in a row it grows.
  void update();

  double scale_value() const { return enabled_ ? scale_ : 1.0; }
  bool enabled() const { return enabled_; }
  bool found_inf() const { return found_inf_; }
  void set_found_inf(bool f) { found_inf_ = f; }
  int64_t growth_tracker() const { return growth_tracker_; }
  int64_t skipped_steps() const { return skipped_steps_; }

  // The scale, growth tracker and skipped-step count as named f64 tensors, for the training-state
  // file; load_state() checks the names.
  std::vector<std::pair<std::string, Tensor>> state() const;
  void load_state(const std::vector<std::pair<std::string, Tensor>>& state);

 private:
  GradScalerOptions o_;
  bool enabled_;
  double scale_;
  int64_t growth_tracker_ = 0;
  int64_t skipped_steps_ = 0;
  bool unscaled_ = false;  // unscale() ran in this step
  bool found_inf_ = false;
};

}  // namespace forge
