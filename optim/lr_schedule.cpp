#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace forge {

double WarmupCosine::lr(int64_t step) const {
  if (step < warmup_steps) return max_lr * double(step + 1) / double(warmup_steps + 1);
  if (step > decay_steps) return min_lr;
  double span = double(std::max<int64_t>(1, decay_steps - warmup_steps));
  double ratio = double(step - warmup_steps) / span;
  double coeff = 0.5 * (1.0 + std::cos(M_PI * ratio));
  return min_lr + coeff * (max_lr - min_lr);
}

}  // namespace forge
