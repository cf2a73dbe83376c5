#include "optim/grad_scaler.h"

#include "autograd/functions.h"
#include "tensor/cuda/cuda_misc.h"
#include "tensor/error.h"
#include "tensor/ops.h"

namespace forge {

GradScaler::GradScaler(GradScalerOptions o) : o_(o), enabled_(o.enabled), scale_(o.init_scale) {
  FORGE_CHECK(o.init_scale > 0 && o.growth_factor > 1 && o.backoff_factor > 0 &&
                  o.backoff_factor < 1 && o.growth_interval > 0,
              "GradScaler: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 and "
              "growth_interval > 0 (got {}, {}, {}, {})",
              o.init_scale, o.growth_factor, o.backoff_factor, o.growth_interval);
}

Variable GradScaler::scale(const Variable& loss) const {
  return enabled_ ? mul(loss, scale_) : loss;
}

void GradScaler::unscale(const std::vector<Variable>& params) {
  if (!enabled_) return;
  FORGE_CHECK(!unscaled_, "GradScaler::unscale: already called since the last update()");
  unscaled_ = true;
  const double inv = 1.0 / scale_;
  // Gradients on a GPU: one pass each checks and unscales, raising a flag on the device that is
  // read once at the end (one flag per device), instead of a round trip per gradient.
  std::vector<Tensor> device_flags;
  for (const Variable& p : params) {
    if (!p.grad().defined()) continue;
    Tensor g = p.grad();
    if (g.device().is_cuda() && g.is_contiguous() && is_floating(g.dtype())) {
      Tensor* flag = nullptr;
      for (Tensor& f : device_flags)
        if (f.device() == g.device()) flag = &f;
      if (!flag) flag = &device_flags.emplace_back(zeros({1}, DType::i32, g.device()));
      cuda::check_finite_and_scale_(g, inv, *flag);
      continue;
    }
    // Checked on the scaled values: an overflow there is what the scale must react to.
    if (!all_finite(g)) found_inf_ = true;
    mul_(g, inv);
  }
  for (const Tensor& f : device_flags)
    if (f.item() != 0) found_inf_ = true;
}

bool GradScaler::step(Optimizer& opt, const std::vector<Variable>& params) {
  if (!enabled_) {
    opt.step();
    return true;
  }
  if (!unscaled_) unscale(params);
  if (found_inf_) {
    ++skipped_steps_;
    return false;
  }
  opt.step();
  return true;
}

void GradScaler::update() {
  if (!enabled_) return;
  if (found_inf_) {
    scale_ *= o_.backoff_factor;
    growth_tracker_ = 0;
  } else if (++growth_tracker_ >= o_.growth_interval) {  // >=: the interval may shrink on resume
    scale_ *= o_.growth_factor;
    growth_tracker_ = 0;
  }
  found_inf_ = false;
  unscaled_ = false;
}

std::vector<std::pair<std::string, Tensor>> GradScaler::state() const {
  return {{"scaler.scale", scalar_tensor(scale_, DType::f64)},
          {"scaler.growth_tracker", scalar_tensor(double(growth_tracker_), DType::f64)},
          {"scaler.skipped_steps", scalar_tensor(double(skipped_steps_), DType::f64)}};
}

void GradScaler::load_state(const std::vector<std::pair<std::string, Tensor>>& state) {
  auto find = [&](const char* name) -> double {
    for (const auto& [n, t] : state)
      if (n == name) {
        FORGE_CHECK(t.numel() == 1, "GradScaler::load_state: '{}' has shape {}, expected one value",
                    name, t.shape());
        return t.item();
      }
    throw_error(fmt::format("GradScaler::load_state: '{}' is missing", name));
  };
  double s = find("scaler.scale");
  FORGE_CHECK(s > 0 && std::isfinite(s),
              "GradScaler::load_state: scale {} is not a positive number", s);
  scale_ = s;
  double tracker = find("scaler.growth_tracker"), skipped = find("scaler.skipped_steps");
  FORGE_CHECK(tracker >= 0 && tracker < 9e18 && skipped >= 0 && skipped < 9e18,
              "GradScaler::load_state: growth_tracker {} and skipped_steps {} must be counts",
              tracker, skipped);
  growth_tracker_ = int64_t(tracker);
  skipped_steps_ = int64_t(skipped);
  found_inf_ = false;
  unscaled_ = false;
}

}  // namespace forge
