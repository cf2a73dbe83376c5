// Modules: parameter naming and counting, checkpoints (state_dict), train/eval, initialisation and
// the memory tag of parameters.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "models/mlp.h"
#include "testing.h"

using namespace forge;
using forge::testing::bitwise_equal;
using forge::testing::Contains;

namespace {

NamedTensors without(NamedTensors s, const std::string& name) {
  std::erase_if(s, [&](const auto& e) { return e.first == name; });
  return s;
}

NamedTensors replaced(NamedTensors s, const std::string& name, Tensor t) {
  for (auto& [n, v] : s)
    if (n == name) v = std::move(t);
  return s;
}

}  // namespace

TEST_CASE("MLP({784, 256, 256, 10}) names its parameters layers.{0,2,4}.{weight,bias} in order") {
  Generator gen(0);
  MLP net({784, 256, 256, 10}, gen);
  auto params = net.named_parameters();
  struct Expected {
    const char* name;
    Shape shape;
  };
  std::vector<Expected> expected{{"layers.0.weight", {256, 784}}, {"layers.0.bias", {256}},
                                 {"layers.2.weight", {256, 256}}, {"layers.2.bias", {256}},
                                 {"layers.4.weight", {10, 256}},  {"layers.4.bias", {10}}};
  REQUIRE(params.size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    INFO("parameter " << i);
    CHECK(params[i].first == expected[i].name);
    CHECK(params[i].second.shape() == expected[i].shape);
    CHECK(params[i].second.dtype() == DType::f32);
    CHECK(params[i].second.requires_grad());
    CHECK(params[i].second.is_leaf());
  }
  // parameters() is the same variables (shared, not copies), in the same order.
  auto plain = net.parameters();
  REQUIRE(plain.size() == params.size());
  for (size_t i = 0; i < plain.size(); ++i) CHECK(plain[i].impl() == params[i].second.impl());
}

TEST_CASE("MLP({784, 256, 256, 10}) has 269322 parameters") {
  // 784*256 + 256 + 256*256 + 256 + 256*10 + 10
  Generator gen(0);
  MLP net({784, 256, 256, 10}, gen);
  CHECK(net.num_parameters() == 269322);
  MLP small({3, 2}, gen);
  CHECK(small.num_parameters() == 3 * 2 + 2);
}

TEST_CASE("state_dict loaded into a differently seeded model gives identical outputs") {
  Generator g1(1), g2(2), gx(3);
  MLP a({20, 16, 4}, g1), b({20, 16, 4}, g2);
  Variable x(randn({5, 20}, gx));
  Tensor ya = a.forward(x).data().clone();
  REQUIRE(max_abs_diff(ya, b.forward(x).data()) > 1e-3);  // really different to begin with
  b.load_state_dict(a.state_dict());
  CHECK(bitwise_equal(b.forward(x).data(), ya));
  auto pa = a.named_parameters(), pb = b.named_parameters();
  for (size_t i = 0; i < pa.size(); ++i)
    CHECK(bitwise_equal(pa[i].second.data(), pb[i].second.data()));
  // Loading copies: changing a afterwards leaves b alone.
  for (Variable& p : a.parameters()) p.data().fill_(0);
  CHECK(bitwise_equal(b.forward(x).data(), ya));
}

TEST_CASE("load_state_dict names a missing parameter") {
  Generator gen(0);
  MLP net({6, 4, 2}, gen);
  REQUIRE_THROWS_AS(net.load_state_dict(without(net.state_dict(), "layers.2.bias")), Error);
  REQUIRE_THROWS_WITH(net.load_state_dict(without(net.state_dict(), "layers.2.bias")),
                      Contains("layers.2.bias"));
}

TEST_CASE("load_state_dict names an unexpected parameter") {
  Generator gen(0);
  MLP net({6, 4, 2}, gen);
  NamedTensors s = net.state_dict();
  s.emplace_back("layers.9.weight", zeros({2, 2}));
  REQUIRE_THROWS_AS(net.load_state_dict(s), Error);
  REQUIRE_THROWS_WITH(net.load_state_dict(s), Contains("layers.9.weight"));
}

TEST_CASE("load_state_dict names a parameter of the wrong shape or dtype") {
  Generator gen(0);
  MLP net({6, 4, 2}, gen);
  NamedTensors bad_shape = replaced(net.state_dict(), "layers.0.weight", zeros({4, 5}));
  REQUIRE_THROWS_AS(net.load_state_dict(bad_shape), Error);
  REQUIRE_THROWS_WITH(net.load_state_dict(bad_shape), Contains("layers.0.weight"));
  NamedTensors bad_dtype = replaced(net.state_dict(), "layers.0.bias", zeros({4}, DType::f64));
  REQUIRE_THROWS_WITH(net.load_state_dict(bad_dtype), Contains("layers.0.bias"));
}

TEST_CASE("train() and eval() reach every submodule") {
  Generator gen(0);
  MLP net({4, 3, 3, 2}, gen);
  std::function<void(const Module&, bool)> all = [&](const Module& m, bool on) {
    CHECK(m.is_training() == on);
    for (auto& [n, c] : m.children()) all(*c, on);
  };
  all(net, true);
  net.eval();
  all(net, false);
  net.train();
  all(net, true);
  // Depth: net -> layers -> 5 modules.
  REQUIRE(net.children().size() == 1);
  CHECK(net.children()[0].second->children().size() == 5);
}

TEST_CASE("Dropout is the identity in eval mode and masks with scale 1/(1-p) in train mode") {
  Generator gen(11), gx(12);
  auto net = std::make_shared<Sequential>();
  net->add("drop", std::make_shared<Dropout>(0.25, gen));
  Tensor x = add(rand({4000}, gx), 0.5);  // values in [0.5, 1.5): never 0 themselves
  Variable vx(x);

  net->eval();
  CHECK(bitwise_equal(net->forward(vx).data(), x));

  net->train();
  std::vector<float> y = net->forward(vx).data().to_vector<float>();
  std::vector<float> xs = x.to_vector<float>();
  int64_t zeros_seen = 0, bad = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (y[i] == 0)
      ++zeros_seen;
    else if (std::abs(y[i] - xs[i] / 0.75f) > 1e-6f * std::abs(y[i]))
      ++bad;
  }
  CHECK(bad == 0);
  // Binomial(4000, 0.25): mean 1000, sd ~27; 6 sd either side.
  CHECK(zeros_seen > 1000 - 165);
  CHECK(zeros_seen < 1000 + 165);
}

TEST_CASE("Module::zero_grad drops every parameter's gradient") {
  Generator gen(0), gx(1);
  MLP net({5, 4, 3}, gen);
  Variable x(randn({2, 5}, gx));
  sum(net.forward(x)).backward();
  for (auto& [n, p] : net.named_parameters()) {
    INFO(n);
    CHECK(p.grad().defined());
  }
  net.zero_grad();
  for (auto& [n, p] : net.named_parameters()) {
    INFO(n);
    CHECK_FALSE(p.grad().defined());
  }
}

TEST_CASE("Linear initialises weight and bias uniformly within 1/sqrt(in_features)") {
  // in = 400: bound 0.05; U(-b, b) has mean 0 and variance b^2 / 3.
  Generator gen(5);
  Linear lin(400, 300, true, gen);
  const double bound = 0.05;
  std::vector<float> w = lin.weight.data().to_vector<float>();
  REQUIRE(w.size() == 120000);
  double mx = 0, s = 0, s2 = 0;
  for (float v : w) {
    mx = std::max(mx, std::abs(double(v)));
    s += v;
    s2 += double(v) * v;
  }
  double mean = s / w.size(), var = s2 / w.size() - mean * mean;
  CHECK(mx <= bound);
  // The whole range is used, not a narrower one; sd of the mean: 0.05/sqrt(3*120000) ~ 8e-5.
  CHECK(mx > 0.999 * bound);
  CHECK(std::abs(mean) < 1e-3);
  CHECK(std::abs(var / (bound * bound / 3) - 1) < 0.02);
  std::vector<float> b = lin.bias.data().to_vector<float>();
  REQUIRE(b.size() == 300);
  double bmx = 0;
  for (float v : b) bmx = std::max(bmx, std::abs(double(v)));
  CHECK(bmx <= bound);
  CHECK(bmx > 0.9 * bound);  // P(max of 300 draws < 0.9 b) = 0.9^300 ~ 2e-14

  Linear nobias(400, 3, false, gen);
  CHECK_FALSE(nobias.bias.defined());
  CHECK(nobias.named_parameters().size() == 1);
}

TEST_CASE("parameters are counted under MemoryTag::parameters") {
  auto tagged = [] {
    return memory_stats(Device::cpu()).live_by_tag[size_t(MemoryTag::parameters)];
  };
  int64_t before = tagged();
  int64_t other_before = memory_stats(Device::cpu()).live_by_tag[size_t(MemoryTag::other)];
  {
    Generator gen(0);
    MLP net({784, 256, 256, 10}, gen);
    int64_t grew = tagged() - before;
    // 269322 f32 values in 6 tensors, each rounded up to 64 bytes at most.
    CHECK(grew >= 269322 * 4);
    CHECK(grew <= 269322 * 4 + 6 * 64);
    // None of it counted as untagged memory.
    CHECK(memory_stats(Device::cpu()).live_by_tag[size_t(MemoryTag::other)] - other_before <
          64 * 6);
  }
  CHECK(tagged() == before);
}

TEST_CASE(
    "a prepacked Linear gives the same bits without gradients, and the plain product with "
    "them or after its weight was replaced") {
  Generator gen(12);
  MLP mlp({70, 33, 5}, gen);
  Tensor x = randn({3, 70}, gen);
  Tensor plain;
  {
    NoGradGuard no_grad;
    plain = mlp.forward(Variable(x)).data();
  }
  CHECK(set_prepacked(mlp, true) == 2);
  {
    NoGradGuard no_grad;
    CHECK(bitwise_equal(mlp.forward(Variable(x)).data(), plain));
  }
  // With gradients on, the autograd product: the gradients reach the weights.
  Variable y = mlp.forward(Variable(x));
  sum(y).backward();
  for (auto& [name, p] : mlp.named_parameters()) CHECK(p.grad().defined());
  // A new weight tensor: the stale panels are not used.
  std::shared_ptr<Linear> first;
  for (auto& [name, m] : mlp.named_modules())
    if (!first) first = std::dynamic_pointer_cast<Linear>(m);
  REQUIRE(first);
  first->weight = Variable(randn({33, 70}, gen), true);
  NoGradGuard no_grad;
  Tensor after = mlp.forward(Variable(x)).data();
  set_prepacked(mlp, false);
  CHECK_FALSE(first->prepacked());
  CHECK(bitwise_equal(after, mlp.forward(Variable(x)).data()));
  CHECK_FALSE(bitwise_equal(after, plain));
}
