// Optimizers, gradient clipping and learning-rate schedules against PyTorch's formulas written out
// in double (torch.optim.SGD, torch.optim.AdamW, torch.nn.utils.clip_grad_norm_, nanoGPT get_lr).
#include <cmath>
#include <string>
#include <vector>

#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "testing.h"

using namespace forge;
using forge::testing::bitwise_equal;
using forge::testing::Contains;

namespace {

using Vec = std::vector<double>;

Variable param(const Vec& v) {
  return Variable(from_vector<float>(std::vector<float>(v.begin(), v.end())), true);
}
void set_grad(Variable& p, const Vec& g) {
  p.set_grad(from_vector<float>(std::vector<float>(g.begin(), g.end())));
}
double max_err(const Variable& p, const Vec& ref) {
  Vec v = p.data().to_vector<double>();
  REQUIRE(v.size() == ref.size());
  double e = 0;
  for (size_t i = 0; i < v.size(); ++i) e = std::max(e, std::abs(v[i] - ref[i]));
  return e;
}
bool has_entry(const std::vector<std::pair<std::string, Tensor>>& s, const std::string& name) {
  for (auto& [n, t] : s)
    if (n == name) return true;
  return false;
}

// torch.optim.SGD, one parameter over several steps, in double.
Vec sgd_reference(Vec p, const std::vector<Vec>& grads, double lr, double momentum,
                  double dampening, bool nesterov, double wd) {
  Vec buf(p.size());
  for (size_t t = 0; t < grads.size(); ++t)
    for (size_t i = 0; i < p.size(); ++i) {
      double g = grads[t][i] + wd * p[i];
      if (momentum != 0) {
        buf[i] = t == 0 ? g : momentum * buf[i] + (1 - dampening) * g;
        g = nesterov ? g + momentum * buf[i] : buf[i];
      }
      p[i] -= lr * g;
    }
  return p;
}

// torch.optim.AdamW (single-tensor path), one parameter over several steps, in double.
Vec adamw_reference(Vec p, const std::vector<Vec>& grads, double lr, double b1, double b2,
                    double eps, double wd) {
  Vec m(p.size()), v(p.size());
  for (size_t t = 1; t <= grads.size(); ++t) {
    double bc1 = 1 - std::pow(b1, double(t)), bc2 = 1 - std::pow(b2, double(t));
    for (size_t i = 0; i < p.size(); ++i) {
      double g = grads[t - 1][i];
      p[i] *= 1 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      p[i] -= lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
    }
  }
  return p;
}

const Vec kP0{1.0, -2.0, 0.5, 3.0};
const std::vector<Vec> kGrads{
    {0.1, -0.4, 1.0, 0.25}, {-0.3, 0.2, 0.5, -1.0}, {0.7, 0.1, -0.2, 0.4}};

// Runs SGD over kGrads from kP0 and compares with the reference after every step.
void check_sgd(SGDOptions o, double wd) {
  Variable p = param(kP0);
  SGD opt({{{p}, wd}}, o);
  for (size_t t = 0; t < kGrads.size(); ++t) {
    set_grad(p, kGrads[t]);
    opt.step();
    std::vector<Vec> so_far(kGrads.begin(), kGrads.begin() + t + 1);
    INFO("step " << t + 1);
    CHECK(max_err(p, sgd_reference(kP0, so_far, o.lr, o.momentum, o.dampening, o.nesterov, wd)) <
          1e-6);
  }
}

}  // namespace

// ---- SGD: hand-computed values (p = 1, g = 1 every step, lr 0.1), then the general formula ----

TEST_CASE("SGD without momentum steps p -= lr g") {
  Variable p = param({1.0, -2.0});
  SGD opt({{{p}}}, {.lr = 0.1});
  set_grad(p, {0.5, -1.0});
  opt.step();
  CHECK(max_err(p, {0.95, -1.9}) < 1e-7);
  check_sgd({.lr = 0.1}, 0.0);
}

TEST_CASE("SGD momentum: buf = g on the first step, then momentum buf + g") {
  // buf 1, 1.9, 2.71  =>  p 0.9, 0.71, 0.439
  Variable p = param({1.0});
  SGD opt({{{p}}}, {.lr = 0.1, .momentum = 0.9});
  Vec expected{0.9, 0.71, 0.439};
  for (double e : expected) {
    set_grad(p, {1.0});
    opt.step();
    CHECK(max_err(p, {e}) < 1e-6);
  }
  check_sgd({.lr = 0.1, .momentum = 0.9}, 0.0);
}

TEST_CASE("SGD dampening scales the new gradient from the second step on, not the first") {
  // buf 1 (undamped), 0.9 + 0.5 = 1.4, 1.26 + 0.5 = 1.76  =>  p 0.9, 0.76, 0.584
  Variable p = param({1.0});
  SGD opt({{{p}}}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.5});
  for (double e : {0.9, 0.76, 0.584}) {
    set_grad(p, {1.0});
    opt.step();
    CHECK(max_err(p, {e}) < 1e-6);
  }
  check_sgd({.lr = 0.1, .momentum = 0.9, .dampening = 0.5}, 0.0);
}

TEST_CASE("SGD nesterov steps along g + momentum buf") {
  // step 1: buf 1, g 1.9 => 0.81;  step 2: buf 1.9, g 2.71 => 0.539
  Variable p = param({1.0});
  SGD opt({{{p}}}, {.lr = 0.1, .momentum = 0.9, .nesterov = true});
  for (double e : {0.81, 0.539}) {
    set_grad(p, {1.0});
    opt.step();
    CHECK(max_err(p, {e}) < 1e-6);
  }
  check_sgd({.lr = 0.1, .momentum = 0.9, .nesterov = true}, 0.0);
  REQUIRE_THROWS_AS(SGD({{{param({1.0})}}}, {.lr = 0.1, .nesterov = true}), Error);
}

TEST_CASE("SGD weight decay adds wd p to the gradient (coupled, per group)") {
  // g = 1 + 0.1 * 1 = 1.1 => 0.89;  g = 1 + 0.089 => 0.7811
  Variable p = param({1.0});
  SGD opt({{{p}, 0.1}}, {.lr = 0.1});
  for (double e : {0.89, 0.7811}) {
    set_grad(p, {1.0});
    opt.step();
    CHECK(max_err(p, {e}) < 1e-6);
  }
  check_sgd({.lr = 0.1}, 0.01);
  check_sgd({.lr = 0.05, .momentum = 0.8, .dampening = 0.3}, 0.02);
  check_sgd({.lr = 0.05, .momentum = 0.8, .nesterov = true}, 0.02);
}

TEST_CASE("set_lr changes the step size of the next step") {
  Variable p = param({1.0});
  SGD opt({{{p}}}, {.lr = 0.1});
  opt.set_lr(0.5);
  CHECK(opt.lr() == 0.5);
  set_grad(p, {1.0});
  opt.step();
  CHECK(max_err(p, {0.5}) < 1e-7);
}

// ---- AdamW ----

TEST_CASE("AdamW's first step moves each weight by lr against its gradient's sign") {
  // Bias correction makes m/sqrt(v) = g/|g| on step 1: p = p (1 - lr wd) - lr g / (|g| + eps).
  Variable a = param({1.0, -1.0}), b = param({1.0});
  AdamW opt({{{a}, 0.0}, {{b}, 0.1}}, {.lr = 0.01});
  set_grad(a, {0.5, 2.0});
  set_grad(b, {-3.0});
  opt.step();
  CHECK(opt.steps() == 1);
  CHECK(max_err(a, {0.99, -1.01}) < 1e-6);
  CHECK(max_err(b, {1.0 * (1 - 0.01 * 0.1) + 0.01}) < 1e-6);  // 1.009
}

TEST_CASE("AdamW over 3 steps with two groups of different weight decay matches PyTorch") {
  AdamWOptions o{.lr = 0.05, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6};
  Vec b0{0.25, -0.75, 2.0};
  std::vector<Vec> b_grads{{0.01, 1.5, -0.2}, {0.02, -0.5, -0.3}, {-0.05, 0.25, 0.1}};
  Variable a = param(kP0), b = param(b0);
  AdamW opt({{{a}, 0.1}, {{b}, 0.0}}, o);
  for (size_t t = 0; t < 3; ++t) {
    set_grad(a, kGrads[t]);
    set_grad(b, b_grads[t]);
    opt.step();
    INFO("step " << t + 1);
    std::vector<Vec> ga(kGrads.begin(), kGrads.begin() + t + 1);
    std::vector<Vec> gb(b_grads.begin(), b_grads.begin() + t + 1);
    CHECK(max_err(a, adamw_reference(kP0, ga, o.lr, o.beta1, o.beta2, o.eps, 0.1)) < 1e-6);
    CHECK(max_err(b, adamw_reference(b0, gb, o.lr, o.beta1, o.beta2, o.eps, 0.0)) < 1e-6);
  }
  // The decay made a difference the tolerance can see: a without decay ends elsewhere.
  CHECK(max_err(a, adamw_reference(kP0, kGrads, o.lr, o.beta1, o.beta2, o.eps, 0.0)) > 1e-4);
}

TEST_CASE("AdamW with default options matches PyTorch over 3 steps") {
  AdamWOptions o;  // lr 1e-3, betas (0.9, 0.999), eps 1e-8
  Variable a = param(kP0);
  AdamW opt({{{a}, 0.01}}, o);
  for (const Vec& g : kGrads) {
    set_grad(a, g);
    opt.step();
  }
  CHECK(max_err(a, adamw_reference(kP0, kGrads, 1e-3, 0.9, 0.999, 1e-8, 0.01)) < 1e-6);
}

TEST_CASE("optimizers skip parameters without a gradient and create no state for them") {
  Variable a = param({1.0, 2.0}), b = param({3.0, 4.0});
  Tensor b_before = b.data().clone();
  AdamW adam({{{a, b}, 0.5}}, {.lr = 0.1});  // weight decay must not touch b either
  set_grad(a, {1.0, 1.0});
  adam.step();
  CHECK(bitwise_equal(b.data(), b_before));
  CHECK(max_err(a, {1.0 * 0.95 - 0.1, 2.0 * 0.95 - 0.1}) < 1e-6);
  auto s = adam.state();
  CHECK(has_entry(s, "adamw.m.0.0"));
  CHECK(has_entry(s, "adamw.v.0.0"));
  CHECK_FALSE(has_entry(s, "adamw.m.0.1"));
  CHECK_FALSE(has_entry(s, "adamw.v.0.1"));

  Variable c = param({1.0}), d = param({5.0});
  SGD sgd({{{c, d}, 0.5}}, {.lr = 0.1, .momentum = 0.9});
  set_grad(c, {1.0});
  sgd.step();
  CHECK(max_err(d, {5.0}) == 0);
  CHECK(has_entry(sgd.state(), "sgd.momentum.0.0"));
  CHECK_FALSE(has_entry(sgd.state(), "sgd.momentum.0.1"));
}

TEST_CASE("AdamW bias-corrects a parameter that first gets a gradient late by its own step count") {
  // PyTorch keeps state['step'] per parameter, created with the state: a parameter skipped on
  // step 1 takes a first step (t = 1) on step 2, moving by lr g/|g| like any first step.
  Variable a = param({1.0}), b = param({1.0});
  AdamW opt({{{a, b}, 0.0}}, {.lr = 0.01});
  set_grad(a, {1.0});
  opt.step();
  set_grad(a, {1.0});
  set_grad(b, {0.5});
  opt.step();
  CHECK(max_err(b, adamw_reference({1.0}, {{0.5}}, 0.01, 0.9, 0.999, 1e-8, 0.0)) < 1e-6);
}

TEST_CASE("AdamW state loaded into a fresh optimizer continues bitwise identically") {
  AdamWOptions o{.lr = 0.02};
  Variable a1 = param(kP0), b1 = param({0.5, -0.5});
  AdamW opt1({{{a1}, 0.1}, {{b1}, 0.0}}, o);
  auto step = [](AdamW& opt, Variable& a, Variable& b, size_t t) {
    set_grad(a, kGrads[t % 3]);
    set_grad(b, {0.3 * double(t + 1), -0.1});
    opt.step();
  };
  for (size_t t = 0; t < 3; ++t) step(opt1, a1, b1, t);

  // A "resumed" copy: parameters and optimizer state restored from opt1's checkpoint.
  Variable a2(a1.data().clone(), true), b2(b1.data().clone(), true);
  AdamW opt2({{{a2}, 0.1}, {{b2}, 0.0}}, o);
  opt2.load_state(opt1.state());
  CHECK(opt2.steps() == 3);
  for (size_t t = 3; t < 6; ++t) {
    step(opt1, a1, b1, t);
    step(opt2, a2, b2, t);
  }
  CHECK(bitwise_equal(a1.data(), a2.data()));
  CHECK(bitwise_equal(b1.data(), b2.data()));
}

TEST_CASE("AdamW merge_state loads the entries given one parameter at a time, keeping the rest") {
  AdamWOptions o{.lr = 0.02};
  Variable a1 = param(kP0), b1 = param({0.5, -0.5});
  AdamW opt1({{{a1}, 0.1}, {{b1}, 0.0}}, o);
  for (size_t t = 0; t < 3; ++t) {
    set_grad(a1, kGrads[t]);
    set_grad(b1, {0.3 * double(t + 1), -0.1});
    opt1.step();
  }
  const NamedTensors full = opt1.state();
  auto only = [&](const std::string& suffix) {
    NamedTensors part;
    for (const auto& [key, t] : full)
      if (key.size() > suffix.size() && key.ends_with(suffix) && key != "adamw.step")
        part.emplace_back(key, t);
    return part;
  };
  Variable a2(a1.data().clone(), true), b2(b1.data().clone(), true);
  AdamW opt2({{{a2}, 0.1}, {{b2}, 0.0}}, o);
  opt2.load_state({{"adamw.step", from_vector<int64_t>({3})}});
  opt2.merge_state(only(".0.0"));   // a's moments
  CHECK(opt2.state().size() == 4);  // the step, a's m, v and t
  opt2.merge_state(only(".1.0"));   // b's: a's stay
  CHECK(opt2.steps() == 3);
  const NamedTensors got = opt2.state();
  REQUIRE(got.size() == full.size());
  for (size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i].first == full[i].first);
    CHECK(bitwise_equal(got[i].second, full[i].second));
  }
  // load_state replaces everything: what it does not name is gone.
  opt2.load_state({{"adamw.step", from_vector<int64_t>({3})}});
  CHECK(opt2.state().size() == 1);
}

TEST_CASE("AdamW resumed without its state diverges from the original run") {
  // The counterpart of the test above: it shows restoring the state is what keeps runs equal.
  Variable a1 = param(kP0), a2 = param(kP0);
  AdamW opt1({{{a1}, 0.0}}, {.lr = 0.02}), opt2({{{a2}, 0.0}}, {.lr = 0.02});
  for (size_t t = 0; t < 3; ++t) {
    set_grad(a1, kGrads[t]);
    opt1.step();
  }
  a2.data().copy_(a1.data());
  set_grad(a1, kGrads[0]);
  set_grad(a2, kGrads[0]);
  opt1.step();
  opt2.step();
  CHECK(max_abs_diff(a1.data(), a2.data()) > 1e-4);
}

TEST_CASE("load_state names the entry whose shape does not match its parameter") {
  Variable a = param(kP0);
  AdamW opt({{{a}, 0.0}}, {});
  set_grad(a, kGrads[0]);
  opt.step();
  auto s = opt.state();
  for (auto& [n, t] : s)
    if (n == "adamw.v.0.0") t = zeros({3});
  AdamW fresh({{{param(kP0)}, 0.0}}, {});
  REQUIRE_THROWS_AS(fresh.load_state(s), Error);
  REQUIRE_THROWS_WITH(fresh.load_state(s), Contains("adamw.v.0.0"));

  Variable c = param({1.0, 2.0});
  SGD sgd({{{c}}}, {.momentum = 0.9});
  REQUIRE_THROWS_WITH(sgd.load_state({{"sgd.momentum.0.0", zeros({2, 1})}}),
                      Contains("sgd.momentum.0.0"));
}

// ---- Gradient clipping ----

TEST_CASE("clip_grad_norm returns the pre-clip norm and scales gradients to max_norm") {
  // Gradients (3, 4) and (12): global norm sqrt(9 + 16 + 144) = 13.
  Variable a = param({0, 0}), b = param({0}), no_grad = param({7});
  set_grad(a, {3, 4});
  set_grad(b, {12});
  std::vector<Variable> all{a, b, no_grad};
  CHECK(grad_norm(all) == Approx(13.0).epsilon(1e-12));
  double norm = clip_grad_norm(all, 6.5);
  CHECK(norm == Approx(13.0).epsilon(1e-12));
  double coef = 6.5 / (13.0 + 1e-6);
  CHECK(std::abs(a.grad().to_vector<double>()[0] - 3 * coef) < 1e-6);
  CHECK(std::abs(a.grad().to_vector<double>()[1] - 4 * coef) < 1e-6);
  CHECK(std::abs(b.grad().to_vector<double>()[0] - 12 * coef) < 1e-6);
  CHECK(grad_norm(all) == Approx(6.5).epsilon(1e-6));
  CHECK_FALSE(no_grad.grad().defined());
}

TEST_CASE("clip_grad_norm leaves gradients alone when their norm is below max_norm") {
  Variable a = param({0, 0}), b = param({0});
  set_grad(a, {3, 4});
  set_grad(b, {12});
  Tensor ga = a.grad().clone(), gb = b.grad().clone();
  CHECK(clip_grad_norm({a, b}, 20.0) == Approx(13.0).epsilon(1e-12));
  CHECK(bitwise_equal(a.grad(), ga));
  CHECK(bitwise_equal(b.grad(), gb));
}

// ---- Learning-rate schedules ----

namespace {
// nanoGPT's get_lr, verbatim in double.
double nanogpt_lr(int64_t it, double lr, double min_lr, int64_t warmup, int64_t decay) {
  if (it < warmup) return lr * double(it + 1) / double(warmup + 1);
  if (it > decay) return min_lr;
  double ratio = double(it - warmup) / double(decay - warmup);
  double coeff = 0.5 * (1.0 + std::cos(M_PI * ratio));
  return min_lr + coeff * (lr - min_lr);
}
}  // namespace

TEST_CASE("WarmupCosine follows nanoGPT's get_lr through warm-up, decay and after") {
  WarmupCosine s(1e-3, 1e-4, 10, 110);
  auto near = [](double x) { return Approx(x).epsilon(1e-12).margin(0); };
  // Hand-computed points: the first warm-up step is not 0; the end of warm-up is the peak; a
  // quarter into the decay, cos(pi/4); half-way, the mid-point of max and min; min from
  // decay_steps on.
  CHECK(s.lr(0) == near(1e-3 / 11));
  CHECK(s.lr(4) == near(1e-3 * 5 / 11));
  CHECK(s.lr(9) == near(1e-3 * 10 / 11));
  CHECK(s.lr(10) == near(1e-3));
  CHECK(s.lr(35) == near(1e-4 + 0.5 * (1 + std::sqrt(0.5)) * 9e-4));
  CHECK(s.lr(60) == near(5.5e-4));
  CHECK(s.lr(110) == near(1e-4));
  CHECK(s.lr(111) == near(1e-4));
  CHECK(s.lr(1000000) == near(1e-4));
  for (int64_t it = 0; it <= 130; ++it) {
    INFO("step " << it);
    CHECK(s.lr(it) == near(nanogpt_lr(it, 1e-3, 1e-4, 10, 110)));
  }
  WarmupCosine no_warmup(2e-3, 0.0, 0, 100);
  CHECK(no_warmup.lr(0) == near(2e-3));
  CHECK(no_warmup.lr(50) == near(1e-3));
}

TEST_CASE("ConstantLr returns its value at every step") {
  ConstantLr c(3e-4);
  for (int64_t step : {0, 1, 999, 1000000}) CHECK(c.lr(step) == 3e-4);
}
