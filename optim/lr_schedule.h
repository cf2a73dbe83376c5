// Learning-rate schedules: a pure function of the step, so resuming at step k needs only k.
//
//   WarmupCosine s{.max_lr = 1e-3, .min_lr = 1e-4, .warmup_steps = 100, .decay_steps = 2000};
//   opt.set_lr(s.lr(step));
#pragma once

#include <cstdint>

namespace forge {

struct LrSchedule {
  virtual ~LrSchedule() = default;
  virtual double lr(int64_t step) const = 0;
};

struct ConstantLr : LrSchedule {
  double value = 1e-3;
  explicit ConstantLr(double v) : value(v) {}
  double lr(int64_t) const override { return value; }
};

// nanoGPT's get_lr: linear warm-up over warmup_steps, then cosine from max_lr down to min_lr at
// decay_steps, min_lr after that.
struct WarmupCosine : LrSchedule {
  double max_lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup_steps = 0;
  int64_t decay_steps = 1;
  WarmupCosine(double max_lr_, double min_lr_, int64_t warmup, int64_t decay)
      : max_lr(max_lr_), min_lr(min_lr_), warmup_steps(warmup), decay_steps(decay) {}
  double lr(int64_t step) const override;
};

}  // namespace forge
