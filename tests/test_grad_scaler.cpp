// The loss scaler: PyTorch's GradScaler semantics. An inf/NaN in any gradient skips the step
// (weights and AdamW state untouched) and halves the scale; the scale doubles after
// growth_interval good steps in a row; unscaled gradients are the unscaled run's; the state
// survives a save/load; misuse is an error.
#include <cmath>
#include <limits>

#include "autograd/functions.h"
#include "models/layers.h"
#include "optim/grad_scaler.h"
#include "testing.h"

using namespace forge;
using forge::testing::bitwise_equal;
using forge::testing::Contains;

namespace {

struct Net {
  Generator gen{7};
  std::shared_ptr<Linear> l1 = std::make_shared<Linear>(6, 5, true, gen);
  std::shared_ptr<Linear> l2 = std::make_shared<Linear>(5, 3, true, gen);
  Tensor x = randn({4, 6}, gen);
  Tensor y = from_vector<int64_t>({0, 2, 1, 2});
  std::vector<Variable> params() const {
    std::vector<Variable> p = l1->parameters();
    for (const Variable& v : l2->parameters()) p.push_back(v);
    return p;
  }
  Variable loss() const { return cross_entropy(l2->forward(tanh(l1->forward(Variable(x)))), y); }
};

std::vector<Tensor> grads_of(const std::vector<Variable>& ps) {
  std::vector<Tensor> out;
  for (const Variable& p : ps) out.push_back(p.grad().clone());
  return out;
}
std::vector<Tensor> data_of(const std::vector<Variable>& ps) {
  std::vector<Tensor> out;
  for (const Variable& p : ps) out.push_back(p.data().clone());
  return out;
}

}  // namespace

TEST_CASE("GradScaler defaults are PyTorch's: 2^16, x2 after 2000 good steps, x0.5 on inf") {
  GradScalerOptions o;
  CHECK(o.init_scale == 65536.0);
  CHECK(o.growth_factor == 2.0);
  CHECK(o.backoff_factor == 0.5);
  CHECK(o.growth_interval == 2000);
  GradScaler s;
  CHECK(s.scale_value() == 65536.0);
}

TEST_CASE("scaled backward, then unscale, gives the unscaled gradients bit for bit") {
  // The scale is a power of two: multiplying by it and by its inverse is exact in f32 (no
  // gradient here is near the overflow or subnormal range).
  Net a, b;
  a.loss().backward();
  std::vector<Tensor> want = grads_of(a.params());
  GradScaler scaler;
  scaler.scale(b.loss()).backward();
  std::vector<Variable> ps = b.params();
  CHECK_FALSE(bitwise_equal(ps[0].grad(), want[0]));  // scaled
  scaler.unscale(ps);
  CHECK_FALSE(scaler.found_inf());
  for (size_t i = 0; i < ps.size(); ++i) CHECK(bitwise_equal(ps[i].grad(), want[i]));
}

TEST_CASE(
    "an inf or NaN in one gradient skips the step, leaves weights and AdamW state, halves "
    "the scale") {
  for (double bad : {std::numeric_limits<double>::infinity(), std::nan("")}) {
    INFO("injected " << bad);
    Net n;
    std::vector<Variable> ps = n.params();
    AdamW opt({{ps, 0.1}}, {.lr = 1e-2});
    GradScaler scaler;
    // One good step first, so the AdamW state is not empty.
    scaler.scale(n.loss()).backward();
    REQUIRE(scaler.step(opt, ps));
    scaler.update();
    opt.zero_grad();
    std::vector<Tensor> weights = data_of(ps);
    auto state = opt.state();

    scaler.scale(n.loss()).backward();
    Tensor g = ps[2].grad();  // l2.weight
    g.select(0, 1).narrow(0, 3, 1).fill_(bad);
    scaler.unscale(ps);
    CHECK(scaler.found_inf());
    CHECK_FALSE(scaler.step(opt, ps));
    scaler.update();
    CHECK(scaler.scale_value() == 32768.0);
    CHECK(scaler.skipped_steps() == 1);
    CHECK(scaler.growth_tracker() == 0);
    for (size_t i = 0; i < ps.size(); ++i) CHECK(bitwise_equal(ps[i].data(), weights[i]));
    auto after = opt.state();
    REQUIRE(after.size() == state.size());
    for (size_t i = 0; i < state.size(); ++i) {
      INFO(state[i].first);
      CHECK(bitwise_equal(after[i].second, state[i].second));
    }
    CHECK(opt.steps() == 1);

    // The next good step goes through.
    opt.zero_grad();
    scaler.scale(n.loss()).backward();
    CHECK(scaler.step(opt, ps));
    scaler.update();
    CHECK(opt.steps() == 2);
    CHECK(scaler.scale_value() == 32768.0);
  }
}

TEST_CASE(
    "the scale grows after growth_interval good steps in a row, and a skip restarts the count") {
  Net n;
  std::vector<Variable> ps = n.params();
  SGD opt({{ps, 0.0}}, {.lr = 1e-3});
  GradScaler scaler({.init_scale = 1024.0, .growth_interval = 3});
  auto good_step = [&] {
    opt.zero_grad();
    scaler.scale(n.loss()).backward();
    REQUIRE(scaler.step(opt, ps));
    scaler.update();
  };
  good_step();
  good_step();
  CHECK(scaler.scale_value() == 1024.0);
  CHECK(scaler.growth_tracker() == 2);
  good_step();
  CHECK(scaler.scale_value() == 2048.0);
  CHECK(scaler.growth_tracker() == 0);
  good_step();
  good_step();
  // An overflow: back off, the run restarts.
  opt.zero_grad();
  scaler.scale(n.loss()).backward();
  ps[0].grad().select(0, 0).narrow(0, 0, 1).fill_(std::numeric_limits<double>::infinity());
  CHECK_FALSE(scaler.step(opt, ps));
  scaler.update();
  CHECK(scaler.scale_value() == 1024.0);
  good_step();
  good_step();
  CHECK(scaler.scale_value() == 1024.0);
  good_step();
  CHECK(scaler.scale_value() == 2048.0);
}

TEST_CASE("a real overflow: a scale too large for the gradients backs off until steps go through") {
  // f32 overflows near 3.4e38 = 2^128: a scale of 2^135 turns every gradient into inf.
  Net n;
  std::vector<Variable> ps = n.params();
  SGD opt({{ps, 0.0}}, {.lr = 1e-3});
  GradScaler scaler({.init_scale = std::ldexp(1.0, 135)});
  int skipped = 0;
  for (int i = 0; i < 20; ++i) {
    opt.zero_grad();
    scaler.scale(n.loss()).backward();
    if (!scaler.step(opt, ps)) ++skipped;
    scaler.update();
  }
  CHECK(skipped >= 1);
  CHECK(skipped < 20);
  CHECK(scaler.skipped_steps() == skipped);
  CHECK(scaler.scale_value() == std::ldexp(1.0, 135 - skipped));
  WARN("from 2^135 the scale backed off " << skipped << " times");
}

TEST_CASE("GradScaler state round-trips and is checked") {
  GradScaler a({.init_scale = 256.0, .growth_interval = 5});
  Net n;
  std::vector<Variable> ps = n.params();
  SGD opt({{ps, 0.0}}, {.lr = 1e-3});
  for (int i = 0; i < 3; ++i) {
    opt.zero_grad();
    a.scale(n.loss()).backward();
    a.step(opt, ps);
    a.update();
  }
  GradScaler b({.growth_interval = 5});
  b.load_state(a.state());
  CHECK(b.scale_value() == 256.0);
  CHECK(b.growth_tracker() == 3);
  CHECK(b.skipped_steps() == 0);
  auto st = a.state();
  st.pop_back();
  CHECK_THROWS_WITH(b.load_state(st), Contains("scaler.skipped_steps") && Contains("missing"));
}

TEST_CASE("GradScaler misuse and a disabled scaler") {
  Net n;
  std::vector<Variable> ps = n.params();
  GradScaler s;
  s.scale(n.loss()).backward();
  s.unscale(ps);
  CHECK_THROWS_WITH(s.unscale(ps), Contains("unscale") && Contains("already"));
  CHECK_THROWS_WITH(GradScaler({.backoff_factor = 1.5}), Contains("GradScaler"));

  GradScaler off({.enabled = false});
  Net a, b;
  off.scale(a.loss()).backward();
  b.loss().backward();
  CHECK(off.scale_value() == 1.0);
  std::vector<Variable> pa = a.params(), pb = b.params();
  for (size_t i = 0; i < pa.size(); ++i) CHECK(bitwise_equal(pa[i].grad(), pb[i].grad()));
  SGD opt({{pa, 0.0}}, {.lr = 1e-3});
  CHECK(off.step(opt, pa));
}

TEST_CASE("a resumed scaler with a shorter growth interval still grows") {
  GradScaler a({.init_scale = 8.0, .growth_interval = 10});
  Net n;
  std::vector<Variable> ps = n.params();
  SGD opt({{ps, 0.0}}, {.lr = 1e-3});
  for (int i = 0; i < 5; ++i) {
    opt.zero_grad();
    a.scale(n.loss()).backward();
    a.step(opt, ps);
    a.update();
  }
  GradScaler b({.growth_interval = 3});
  b.load_state(a.state());
  CHECK(b.growth_tracker() == 5);
  opt.zero_grad();
  b.scale(n.loss()).backward();
  b.step(opt, ps);
  b.update();
  CHECK(b.scale_value() == 16.0);
  CHECK(b.growth_tracker() == 0);
}
