// The autograd engine: accumulation, graph shapes, retain_graph, grad mode, hooks, graph freeing.
// References are the derivatives written out by hand and evaluated in double.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "testing.h"

using namespace forge;
using forge::testing::bitwise_equal;
using forge::testing::Contains;

namespace {

Variable leaf(const std::vector<float>& v) {
  return Variable(from_vector<float>(v), true);
}
Variable constant(const std::vector<float>& v) {
  return Variable(from_vector<float>(v));
}

std::vector<double> as_doubles(const Tensor& t) {
  return t.to_vector<double>();
}

// Largest |t[i] - ref[i]|; infinity when the sizes differ or t is undefined.
double max_err(const Tensor& t, const std::vector<double>& ref) {
  if (!t.defined() || t.numel() != int64_t(ref.size())) return INFINITY;
  std::vector<double> v = as_doubles(t);
  double e = 0;
  for (size_t i = 0; i < ref.size(); ++i) e = std::max(e, std::abs(v[i] - ref[i]));
  return e;
}

constexpr double kTol = 1e-5;  // f32 arithmetic on O(1) values

}  // namespace

TEST_CASE("gradients accumulate across backward calls until zero_grad") {
  // loss = sum(w * c)  =>  d loss / d w = c.
  Variable w = leaf({1, 2, 3});
  Variable c = constant({0.5f, -1, 4});
  sum(mul(w, c)).backward();
  CHECK(max_err(w.grad(), {0.5, -1, 4}) < kTol);
  sum(mul(w, c)).backward();
  CHECK(max_err(w.grad(), {1.0, -2, 8}) < kTol);
  w.zero_grad();
  CHECK_FALSE(w.grad().defined());
  sum(mul(w, c)).backward();
  CHECK(max_err(w.grad(), {0.5, -1, 4}) < kTol);
}

TEST_CASE("a leaf used twice by one op gets both operands' gradients: d sum(x*x)/dx = 2x") {
  Variable x = leaf({1.5f, -2, 0.25f});
  sum(mul(x, x)).backward();
  CHECK(max_err(x.grad(), {3.0, -4.0, 0.5}) < kTol);
}

TEST_CASE("a variable feeding two paths (diamond) gets the sum of both paths' gradients") {
  // h = tanh(x); loss = sum(3h + h*h)  =>  d loss/dx = (3 + 2h)(1 - h^2).
  std::vector<float> xs{0.3f, -0.7f, 1.2f};
  Variable x = leaf(xs);
  Variable h = tanh(x);
  Variable loss = sum(add(mul(h, 3.0), mul(h, h)));
  loss.backward();
  std::vector<double> ref;
  for (float xi : xs) {
    double t = std::tanh(double(xi));
    ref.push_back((3 + 2 * t) * (1 - t * t));
  }
  CHECK(max_err(x.grad(), ref) < kTol);
  // Only one path would give 3(1-h^2) or 2h(1-h^2); make sure those differ from the sum.
  CHECK(std::abs(ref[0] - 3 * (1 - std::tanh(0.3) * std::tanh(0.3))) > 0.1);
}

TEST_CASE("a gradient handed to two inputs is not summed into in place by a third") {
  // add(a, b) hands its gradient (2, from mul(s, 2): a contiguous buffer) to a and b as one tensor;
  // a's other gradient, from mul(a, 3), arrives later and must be summed into a new buffer
  // (run_backward sums in place only into a buffer nothing else holds), or b's would change too.
  // The nodes run latest first, so the order of creation sets that order. dx = 5 (1 - a^2) + 2 e^x.
  std::vector<float> xs{0.3f, -0.7f, 1.2f};
  Variable x = leaf(xs);
  Variable a = tanh(x), b = exp(x);
  Variable m = mul(a, 3.0);
  Variable s = add(a, b);
  Variable l1 = sum(mul(s, 2.0));
  Variable l0 = sum(m);
  add(l0, l1).backward();
  std::vector<double> ref;
  for (float xi : xs) {
    double t = std::tanh(double(xi));
    ref.push_back(5 * (1 - t * t) + 2 * std::exp(double(xi)));
  }
  CHECK(max_err(x.grad(), ref) < kTol);
}

TEST_CASE("a second backward without retain_graph throws naming retain_graph") {
  Variable x = leaf({1, 2});
  Variable loss = sum(mul(x, x));
  loss.backward();
  REQUIRE_THROWS_WITH(loss.backward(), Contains("retain_graph"));
}

TEST_CASE("with retain_graph a second backward accumulates the same gradient again") {
  Variable x = leaf({1, -2});
  Variable loss = sum(mul(exp(x), x));  // d/dx = e^x (1 + x)
  loss.backward({}, /*retain_graph=*/true);
  loss.backward();
  CHECK(max_err(x.grad(), {2 * std::exp(1.0) * 2, 2 * std::exp(-2.0) * -1}) < kTol);
}

TEST_CASE("NoGradGuard records nothing and restores grad mode on exit") {
  Variable x = leaf({1, 2});
  REQUIRE(grad_enabled());
  {
    NoGradGuard g;
    CHECK_FALSE(grad_enabled());
    Variable y = mul(x, x);
    CHECK_FALSE(y.requires_grad());
    CHECK(y.is_leaf());
    CHECK(y.grad_fn() == nullptr);
    CHECK(max_err(y.data(), {1, 4}) == 0);  // the forward still computes
    { NoGradGuard nested; }
    CHECK_FALSE(grad_enabled());  // the nested guard restores "off", not "on"
  }
  CHECK(grad_enabled());
  CHECK(mul(x, x).requires_grad());
}

TEST_CASE("requires_grad propagates from any input and the constant input gets no gradient") {
  Variable x = leaf({1, 2});
  Variable c = constant({3, 4});
  CHECK_FALSE(c.requires_grad());
  CHECK_FALSE(add(c, c).requires_grad());
  CHECK(add(c, c).grad_fn() == nullptr);
  Variable y = mul(c, x);
  CHECK(y.requires_grad());
  CHECK_FALSE(y.is_leaf());
  CHECK(y.grad_fn() != nullptr);
  Variable z = add(c, y);  // requires grad through y, two ops away from x
  CHECK(z.requires_grad());
  sum(z).backward();
  CHECK(max_err(x.grad(), {3, 4}) < kTol);
  CHECK_FALSE(c.grad().defined());
}

TEST_CASE("detach cuts the graph: gradient flows only through the attached path") {
  // d = detach(2x); loss = sum(d * x)  =>  d loss/dx = d = 2x (not 4x, as without detach).
  Variable x = leaf({1, -3});
  Variable d = mul(x, 2.0).detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.is_leaf());
  CHECK(max_err(d.data(), {2, -6}) == 0);
  sum(mul(d, x)).backward();
  CHECK(max_err(x.grad(), {2, -6}) < kTol);
  CHECK_FALSE(d.grad().defined());
}

TEST_CASE("retain_grad keeps an intermediate's gradient; other intermediates keep none") {
  // h = 2x; g = h + 1; loss = sum(h*h)  => d loss/dh = 2h = 4x.
  Variable x = leaf({1, 0.5f});
  Variable h = mul(x, 2.0);
  Variable other = add(x, 1.0);
  h.retain_grad();
  sum(add(mul(h, h), other)).backward();
  CHECK(max_err(h.grad(), {4, 2}) < kTol);
  CHECK_FALSE(other.grad().defined());
  CHECK(max_err(x.grad(), {8 + 1, 4 + 1}) < kTol);
}

TEST_CASE("a grad-ready hook fires once per backward with the leaf's final gradient") {
  // w feeds an early op (w * a) and a late one (w * w after exp): the hook must wait for both.
  // loss = sum(w*a) + sum(exp(b) * (w*w))  =>  d/dw = a + 2 w e^b.
  Variable w = leaf({0.5f, -1});
  Variable a = constant({2, 3});
  Variable b = constant({0.1f, -0.2f});
  int calls = 0;
  std::vector<Tensor> seen;
  w.register_grad_ready_hook([&](Variable& v) {
    ++calls;
    seen.push_back(v.grad().clone());
  });
  auto run = [&] {
    Variable early = sum(mul(w, a));
    Variable late = sum(mul(exp(b), mul(w, w)));
    add(early, late).backward();
  };
  std::vector<double> once{2 + 2 * 0.5 * std::exp(0.1), 3 + 2 * -1 * std::exp(-0.2)};
  run();
  REQUIRE(calls == 1);
  CHECK(max_err(w.grad(), once) < kTol);
  CHECK(bitwise_equal(seen[0], w.grad()));
  run();  // accumulates: the second hook sees the sum of both backwards
  REQUIRE(calls == 2);
  CHECK(max_err(w.grad(), {2 * once[0], 2 * once[1]}) < kTol);
  CHECK(bitwise_equal(seen[1], w.grad()));
}

TEST_CASE("grad-ready hooks of a later layer fire before those of an earlier layer") {
  // x -> linear(w1, b1) -> relu -> linear(w2, b2) -> sum: layer 2's gradients are final first.
  Generator gen(7);
  Variable x(randn({4, 3}, gen));
  Variable w1(randn({5, 3}, gen), true), b1(randn({5}, gen), true);
  Variable w2(randn({2, 5}, gen), true), b2(randn({2}, gen), true);
  std::vector<std::string> order;
  std::vector<std::pair<std::string, Tensor>> seen;
  for (auto [name, v] : {std::pair{"w1", w1}, {"b1", b1}, {"w2", w2}, {"b2", b2}}) {
    std::string n = name;
    v.register_grad_ready_hook([&order, &seen, n](Variable& p) {
      order.push_back(n);
      seen.emplace_back(n, p.grad().clone());
    });
  }
  sum(linear(relu(linear(x, w1, b1)), w2, b2)).backward();
  REQUIRE(order.size() == 4);
  auto pos = [&](const std::string& n) {
    return std::find(order.begin(), order.end(), n) - order.begin();
  };
  CHECK(pos("w2") < pos("w1"));
  CHECK(pos("w2") < pos("b1"));
  CHECK(pos("b2") < pos("w1"));
  CHECK(pos("b2") < pos("b1"));
  // Each hook saw the gradient backward left in place.
  for (auto& [n, g] : seen) {
    const Variable& v = n == "w1" ? w1 : n == "b1" ? b1 : n == "w2" ? w2 : b2;
    CHECK(bitwise_equal(g, v.grad()));
  }
  // b2's gradient of sum(out) is the row count, 4, in each entry.
  CHECK(max_err(b2.grad(), {4, 4}) < kTol);
}

TEST_CASE("backward frees the graph: saved tensors are released and nodes expire") {
  testing::ThreadCount one(1);
  const int64_t n = 1 << 16;  // 256 KiB per f32 tensor
  Variable x(full({n}, 0.5), true);
  std::weak_ptr<Node> exp_node, loss_node;
  int64_t before = memory_stats(Device::cpu()).live_bytes;
  {
    Variable loss;
    {
      Variable y = exp(x);  // exp's backward saves its output y (256 KiB)
      exp_node = y.grad_fn();
      loss = sum(mul(y, 2.0));
    }
    loss_node = loss.grad_fn();
    REQUIRE_FALSE(exp_node.expired());  // held by the graph while it can still be walked
    int64_t with_graph = memory_stats(Device::cpu()).live_bytes - before;
    CHECK(with_graph >= n * 4);  // y is alive
    loss.backward();
    // With loss still alive, the nodes below it are gone, and with them y.
    CHECK(exp_node.expired());
    int64_t after = memory_stats(Device::cpu()).live_bytes - before;
    int64_t grad_bytes = n * 4;
    CHECK(after - grad_bytes < 4096);  // the gradient plus the 0-d loss, not y
    CHECK(max_err(x.grad().narrow(0, 0, 2), {2 * std::exp(0.5), 2 * std::exp(0.5)}) < kTol);
  }
  CHECK(loss_node.expired());
}

TEST_CASE("with retain_graph the graph and its saved tensors stay until the output goes") {
  Variable x(full({8}, 1.0), true);
  std::weak_ptr<Node> exp_node;
  {
    Variable loss;
    {
      Variable y = exp(x);
      exp_node = y.grad_fn();
      loss = sum(y);
    }
    loss.backward({}, true);
    CHECK_FALSE(exp_node.expired());
  }
  CHECK(exp_node.expired());
}

TEST_CASE("backward of a non-scalar needs a gradient of its shape") {
  Variable x = Variable(from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}), true);
  Variable y = mul(x, 3.0);
  REQUIRE_THROWS_AS(y.backward(), Error);
  REQUIRE_THROWS_WITH(y.backward(), Contains("[2, 3]"));
  REQUIRE_THROWS_AS(y.backward(ones({3, 2})), Error);  // wrong shape
  y.backward(from_vector<float>({1, 0, -1, 2, 0.5f, 0}, {2, 3}));
  CHECK(max_err(x.grad(), {3, 0, -3, 6, 1.5, 0}) < kTol);
}

TEST_CASE("run_backward from two roots that share a node sums their gradients") {
  // h = 2x; r1 = sum(h*h) (scalar, no gradient given); r2 = h with gradient g.
  // d/dx = d r1/dx + 2 g = 8x + 2g.
  Variable x = leaf({1, -0.5f, 2});
  Variable h = mul(x, 2.0);
  Variable r1 = sum(mul(h, h));
  Tensor g = from_vector<float>({1, 10, -1});
  run_backward({r1, h}, {Tensor(), g});
  CHECK(max_err(x.grad(), {8 + 2, -4 + 20, 16 - 2}) < kTol);
}

TEST_CASE("run_backward from two independent roots reaches both leaves") {
  Variable a = leaf({1, 2});
  Variable b = leaf({3});
  run_backward({sum(mul(a, a)), mul(b, 5.0)}, {Tensor(), from_vector<float>({2})});
  CHECK(max_err(a.grad(), {2, 4}) < kTol);
  CHECK(max_err(b.grad(), {10}) < kTol);
}

TEST_CASE("integer data cannot require gradients") {
  Variable v(from_vector<int64_t>({1, 2, 3}));
  REQUIRE_THROWS_AS(v.set_requires_grad(true), Error);
  CHECK_FALSE(v.requires_grad());
  REQUIRE_THROWS_AS(Variable(from_vector<int32_t>({1}), true), Error);
  // A floating variable can turn it on, and then it records.
  Variable f(from_vector<float>({2}));
  f.set_requires_grad(true);
  sum(mul(f, f)).backward();
  CHECK(max_err(f.grad(), {4}) < kTol);
}
