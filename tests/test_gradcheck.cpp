// Every differentiable op in autograd/functions.h against central finite differences (f64), and
// gradcheck itself catching a wrong backward.
//
// gradcheck's defaults: eps 1e-6, |numerical - analytic| <= 1e-6 + 1e-4 |numerical|. Inputs stay
// small (a few dozen elements) since each element costs two forward passes, and the suite also
// runs under AddressSanitizer.
#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "testing.h"

using namespace forge;
using namespace forge::testing;

namespace {

using Vars = std::vector<Variable>;

// Runs gradcheck and requires it to pass having compared every element of every
// non-constant input (so a check that silently compared nothing cannot pass).
void require_gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs,
                       GradcheckOptions options = {}) {
  int64_t expected = 0;
  for (size_t i = 0; i < inputs.size(); ++i)
    if (!(i < options.constant.size() && options.constant[i])) expected += inputs[i].numel();
  GradcheckResult r = gradcheck(fn, inputs, options);
  INFO(r.report);
  CHECK(r.ok);
  CHECK(r.checked == expected);
}

Tensor normal(const Shape& shape, Generator& gen) {
  return randn(shape, gen, DType::f64);
}

// Values in [lo, hi).
Tensor uniform(const Shape& shape, double lo, double hi, Generator& gen) {
  Tensor t = Tensor::empty(shape, DType::f64);
  uniform_(t, lo, hi, gen);
  return t;
}

// Values at least `margin` away from 0, of random sign.
Tensor away_from_zero(const Shape& shape, double margin, Generator& gen) {
  Tensor magnitude = uniform(shape, margin, margin + 1.0, gen);
  Tensor sign = where(gt(rand(shape, gen, DType::f64), full({}, 0.5, DType::f64)),
                      ones({}, DType::f64), full({}, -1.0, DType::f64));
  return mul(magnitude, sign);
}

// Distinct values spaced 0.05 apart in random order, so no finite-difference nudge changes a max.
Tensor distinct(const Shape& shape, Generator& gen) {
  Tensor perm = randperm(shape.numel(), gen).to(DType::f64);
  return add(mul(perm, 0.05), -0.5).reshape(shape);
}

}  // namespace

// ============================================================================================
// Elementwise

TEST_CASE("gradcheck: add, sub, mul and div with broadcasting") {
  Generator gen(1);
  // (a shape, b shape): equal, b scalar, b a row, b a column, both broadcast, a leading dim.
  const std::pair<Shape, Shape> cases[] = {{{3, 4}, {3, 4}}, {{3, 4}, {}},     {{3, 4}, {4}},
                                           {{3, 4}, {3, 1}}, {{3, 1}, {1, 4}}, {{2, 3, 4}, {3, 1}},
                                           {{}, {2, 3}}};
  for (const auto& [sa, sb] : cases) {
    INFO(fmt::format("a {} b {}", sa, sb));
    Tensor a = normal(sa, gen), b = normal(sb, gen), b_nonzero = away_from_zero(sb, 0.5, gen);
    require_gradcheck([](const Vars& v) { return add(v[0], v[1]); }, {a, b});
    require_gradcheck([](const Vars& v) { return sub(v[0], v[1]); }, {a, b});
    require_gradcheck([](const Vars& v) { return mul(v[0], v[1]); }, {a, b});
    require_gradcheck([](const Vars& v) { return div(v[0], v[1]); }, {a, b_nonzero});
    // Operand order swapped, so the broadcast side is the first operand.
    require_gradcheck([](const Vars& v) { return div(v[1], v[0]); },
                      {away_from_zero(sa, 0.5, gen), b});
    require_gradcheck([](const Vars& v) { return sub(v[1], v[0]); }, {a, b});
  }
}

TEST_CASE("gradcheck: the operator forms and an input used twice") {
  Generator gen(2);
  Tensor a = normal({3, 4}, gen), b = away_from_zero({4}, 0.5, gen);
  require_gradcheck(
      [](const Vars& v) { return (v[0] + v[1]) * v[0] - v[0] / v[1] + (-v[1]) * 2.0 + 1.0; },
      {a, b});
}

TEST_CASE("gradcheck: mul with one operand held constant gives only the other's gradient") {
  Generator gen(3);
  GradcheckOptions opt;
  opt.constant = {false, true};
  require_gradcheck([](const Vars& v) { return mul(v[0], v[1]); },
                    {normal({3, 4}, gen), normal({4}, gen)}, opt);
  opt.constant = {true, false};
  require_gradcheck([](const Vars& v) { return mul(v[0], v[1]); },
                    {normal({3, 4}, gen), normal({4}, gen)}, opt);
}

TEST_CASE("gradcheck: scalar add and mul, neg") {
  Generator gen(4);
  Tensor a = normal({2, 5}, gen);
  require_gradcheck([](const Vars& v) { return add(v[0], 2.5); }, {a});
  require_gradcheck([](const Vars& v) { return mul(v[0], -1.5); }, {a});
  require_gradcheck([](const Vars& v) { return neg(v[0]); }, {a});
}

TEST_CASE("gradcheck: exp, log, sqrt, tanh, sigmoid") {
  Generator gen(5);
  Tensor a = normal({3, 4}, gen), positive = uniform({3, 4}, 0.2, 2.0, gen);
  require_gradcheck([](const Vars& v) { return exp(v[0]); }, {a});
  require_gradcheck([](const Vars& v) { return log(v[0]); }, {positive});
  require_gradcheck([](const Vars& v) { return sqrt(v[0]); }, {positive});
  require_gradcheck([](const Vars& v) { return tanh(v[0]); }, {mul(a, 2.0)});
  require_gradcheck([](const Vars& v) { return sigmoid(v[0]); }, {mul(a, 2.0)});
}

TEST_CASE("gradcheck: relu away from 0 and gelu in both forms") {
  Generator gen(6);
  require_gradcheck([](const Vars& v) { return relu(v[0]); }, {away_from_zero({3, 4}, 0.1, gen)});
  Tensor a = mul(normal({3, 5}, gen), 2.0);
  require_gradcheck([](const Vars& v) { return gelu(v[0], GeluApprox::none); }, {a});
  require_gradcheck([](const Vars& v) { return gelu(v[0], GeluApprox::tanh); }, {a});
  require_gradcheck([](const Vars& v) { return gelu(v[0]); }, {a});  // the default form
}

TEST_CASE("gradcheck: pow with integer, fractional and negative exponents") {
  Generator gen(7);
  Tensor a = normal({3, 4}, gen), positive = uniform({3, 4}, 0.3, 2.0, gen);
  require_gradcheck([](const Vars& v) { return pow(v[0], 2.0); }, {a});
  require_gradcheck([](const Vars& v) { return pow(v[0], 3.0); }, {a});
  require_gradcheck([](const Vars& v) { return pow(v[0], 0.5); }, {positive});
  require_gradcheck([](const Vars& v) { return pow(v[0], -1.5); }, {positive});
}

TEST_CASE("gradcheck: where and masked_fill, with broadcasting") {
  Generator gen(8);
  Tensor cond = from_vector<uint8_t>({1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1}, {3, 4});
  Tensor a = normal({3, 4}, gen), b_row = normal({4}, gen), a_col = normal({3, 1}, gen);
  require_gradcheck([cond](const Vars& v) { return where(cond, v[0], v[1]); }, {a, b_row});
  require_gradcheck([cond](const Vars& v) { return where(cond, v[0], v[1]); }, {a_col, b_row});
  // A condition that broadcasts too: one row for all.
  Tensor cond_row = from_vector<uint8_t>({0, 1, 1, 0}, {4});
  require_gradcheck([cond_row](const Vars& v) { return where(cond_row, v[0], v[1]); },
                    {a, normal({3, 4}, gen)});
  require_gradcheck([cond](const Vars& v) { return masked_fill(v[0], cond, -7.0); }, {a});
  require_gradcheck([cond_row](const Vars& v) { return masked_fill(v[0], cond_row, 3.0); }, {a});
}

// ============================================================================================
// Reductions

TEST_CASE("gradcheck: sum and mean over all elements and over dims, with and without keepdim") {
  Generator gen(9);
  Tensor a = normal({2, 3, 4}, gen);
  require_gradcheck([](const Vars& v) { return sum(v[0]); }, {a});
  require_gradcheck([](const Vars& v) { return mean(v[0]); }, {a});
  const std::vector<int> dim_sets[] = {{0}, {1}, {-1}, {0, 2}, {1, 2}};
  for (const std::vector<int>& dims : dim_sets) {
    for (bool keepdim : {false, true}) {
      INFO(fmt::format("dims {} keepdim {}", dims, keepdim));
      require_gradcheck([dims, keepdim](const Vars& v) { return sum(v[0], dims, keepdim); }, {a});
      require_gradcheck([dims, keepdim](const Vars& v) { return mean(v[0], dims, keepdim); }, {a});
    }
  }
}

TEST_CASE("gradcheck: max over all elements and over a dim with distinct values") {
  Generator gen(10);
  Tensor a = distinct({3, 4, 2}, gen);
  require_gradcheck([](const Vars& v) { return max(v[0]); }, {a});
  for (int dim : {0, 1, -1}) {
    for (bool keepdim : {false, true}) {
      INFO(fmt::format("dim {} keepdim {}", dim, keepdim));
      require_gradcheck([dim, keepdim](const Vars& v) { return max(v[0], dim, keepdim); }, {a});
    }
  }
}

// ============================================================================================
// Views and copies

TEST_CASE("gradcheck: reshape, flatten, permute, transpose, contiguous") {
  Generator gen(11);
  Tensor a = normal({2, 3, 4}, gen);
  require_gradcheck([](const Vars& v) { return reshape(v[0], {4, -1}); }, {a});
  require_gradcheck([](const Vars& v) { return flatten(v[0]); }, {a});
  require_gradcheck([](const Vars& v) { return flatten(v[0], 1, 2); }, {a});
  require_gradcheck([](const Vars& v) { return permute(v[0], {2, 0, 1}); }, {a});
  require_gradcheck([](const Vars& v) { return transpose(v[0], 0, -1); }, {a});
  require_gradcheck([](const Vars& v) { return contiguous(transpose(v[0], 1, 2)); }, {a});
  // A view of a view, then a nonlinear op so the gradient depends on where each element went.
  require_gradcheck(
      [](const Vars& v) {
        return mul(reshape(permute(v[0], {1, 2, 0}), {3, 8}), v[1]);
      },
      {a, normal({3, 8}, gen)});
}

TEST_CASE("gradcheck: narrow, select, expand, unsqueeze, squeeze") {
  Generator gen(12);
  Tensor a = normal({3, 4, 2}, gen);
  require_gradcheck([](const Vars& v) { return narrow(v[0], 1, 1, 2); }, {a});
  require_gradcheck([](const Vars& v) { return narrow(v[0], -1, 1, 1); }, {a});
  require_gradcheck([](const Vars& v) { return select(v[0], 1, 2); }, {a});
  require_gradcheck([](const Vars& v) { return select(v[0], 0, 0); }, {a});
  require_gradcheck([](const Vars& v) { return expand(v[0], {2, 3, 4}); }, {normal({3, 1}, gen)});
  require_gradcheck([](const Vars& v) { return expand(v[0], {3, 4, 2}); }, {a});  // no-op expand
  require_gradcheck([](const Vars& v) { return unsqueeze(v[0], 1); }, {a});
  require_gradcheck([](const Vars& v) { return unsqueeze(v[0], -1); }, {a});
  require_gradcheck([](const Vars& v) { return squeeze(v[0], 1); }, {normal({3, 1, 4}, gen)});
  // The same element picked by two views adds both gradients.
  require_gradcheck([](const Vars& v) { return mul(narrow(v[0], 0, 0, 2), narrow(v[0], 0, 1, 2)); },
                    {a});
}

TEST_CASE("gradcheck: to another dtype and back") {
  Generator gen(13);
  // Through f32 the function is only piecewise constant at the scale of f32 rounding: a larger
  // eps keeps the rounding error of the differences near 1e-7 / 1e-2, well inside atol.
  GradcheckOptions opt;
  opt.eps = 1e-2;
  opt.atol = 1e-4;
  require_gradcheck([](const Vars& v) { return to(to(mul(v[0], v[0]), DType::f32), DType::f64); },
                    {normal({2, 3}, gen)}, opt);
  require_gradcheck([](const Vars& v) { return to(v[0], DType::f64); }, {normal({2, 3}, gen)});
}

// ============================================================================================
// Matrix products

TEST_CASE("gradcheck: matmul for all four transpose combinations") {
  Generator gen(14);
  const int64_t m = 3, k = 4, n = 2;
  for (int combo = 0; combo < 4; ++combo) {
    bool ta = combo & 1, tb = combo & 2;
    INFO(fmt::format("trans_a={} trans_b={}", ta, tb));
    Tensor a = ta ? normal({k, m}, gen) : normal({m, k}, gen);
    Tensor b = tb ? normal({n, k}, gen) : normal({k, n}, gen);
    require_gradcheck([ta, tb](const Vars& v) { return matmul(v[0], v[1], ta, tb); }, {a, b});
    GradcheckOptions only_b;
    only_b.constant = {true, false};
    require_gradcheck([ta, tb](const Vars& v) { return matmul(v[0], v[1], ta, tb); }, {a, b},
                      only_b);
  }
}

TEST_CASE("gradcheck: bmm for all transposes, with and without batch broadcast") {
  Generator gen(15);
  const int64_t m = 2, k = 3, n = 2;
  for (auto [ba, bb] : {std::pair<int64_t, int64_t>{2, 2}, {1, 3}, {3, 1}}) {
    for (int combo = 0; combo < 4; ++combo) {
      bool ta = combo & 1, tb = combo & 2;
      INFO(fmt::format("batches {} {} trans_a={} trans_b={}", ba, bb, ta, tb));
      Tensor a = ta ? normal({ba, k, m}, gen) : normal({ba, m, k}, gen);
      Tensor b = tb ? normal({bb, n, k}, gen) : normal({bb, k, n}, gen);
      require_gradcheck([ta, tb](const Vars& v) { return bmm(v[0], v[1], ta, tb); }, {a, b});
    }
  }
}

TEST_CASE("gradcheck: linear with 2-D and 3-D input, with and without bias") {
  Generator gen(16);
  Tensor w = normal({3, 4}, gen), bias = normal({3}, gen);
  for (const Tensor& x : {normal({5, 4}, gen), normal({2, 3, 4}, gen)}) {
    INFO(fmt::format("input {}", x.shape()));
    require_gradcheck([](const Vars& v) { return linear(v[0], v[1], v[2]); }, {x, w, bias});
    require_gradcheck([](const Vars& v) { return linear(v[0], v[1], Variable()); }, {x, w});
    GradcheckOptions only_x;
    only_x.constant = {false, true, true};
    require_gradcheck([](const Vars& v) { return linear(v[0], v[1], v[2]); }, {x, w, bias}, only_x);
  }
}

// ============================================================================================
// Neural-network ops

TEST_CASE("gradcheck: softmax and log_softmax over the last and other dims") {
  Generator gen(17);
  Tensor a = mul(normal({2, 3, 4}, gen), 2.0);
  for (int dim : {-1, 1, 0}) {
    INFO(fmt::format("dim {}", dim));
    require_gradcheck([dim](const Vars& v) { return softmax(v[0], dim); }, {a});
    require_gradcheck([dim](const Vars& v) { return log_softmax(v[0], dim); }, {a});
  }
}

TEST_CASE("gradcheck: layer_norm with and without weight and bias") {
  Generator gen(18);
  Tensor x = normal({2, 3, 5}, gen), w = normal({5}, gen), b = normal({5}, gen);
  const double eps = 1e-5;
  require_gradcheck([eps](const Vars& v) { return layer_norm(v[0], v[1], v[2], eps); }, {x, w, b});
  require_gradcheck([eps](const Vars& v) { return layer_norm(v[0], v[1], Variable(), eps); },
                    {x, w});
  require_gradcheck([eps](const Vars& v) { return layer_norm(v[0], Variable(), v[1], eps); },
                    {x, b});
  require_gradcheck([eps](const Vars& v) { return layer_norm(v[0], Variable(), Variable(), eps); },
                    {x});
  GradcheckOptions params_only;
  params_only.constant = {true, false, false};
  require_gradcheck([eps](const Vars& v) { return layer_norm(v[0], v[1], v[2], eps); }, {x, w, b},
                    params_only);
}

TEST_CASE("gradcheck: embedding with respect to the weight, with repeated indices") {
  Generator gen(19);
  Tensor indices = from_vector<int64_t>({1, 3, 1, 0, 1, 3}, {2, 3});  // row 2 never used
  require_gradcheck([indices](const Vars& v) { return embedding(v[0], indices); },
                    {normal({4, 3}, gen)});
  // Through a nonlinearity, so repeated rows must add gradients that differ per position.
  Tensor scale = normal({2, 3, 3}, gen);
  require_gradcheck([indices](const Vars& v) { return tanh(mul(embedding(v[0], indices), v[1])); },
                    {normal({4, 3}, gen), scale});
}

TEST_CASE("gradcheck: cross_entropy, with ignored rows and with every row ignored") {
  Generator gen(20);
  Tensor logits = mul(normal({5, 4}, gen), 2.0);
  Tensor t = from_vector<int64_t>({0, 3, 1, 1, 2});
  require_gradcheck([t](const Vars& v) { return cross_entropy(v[0], t); }, {logits});
  Tensor t_ignored = from_vector<int64_t>({0, -100, 1, -100, 2});
  require_gradcheck([t_ignored](const Vars& v) { return cross_entropy(v[0], t_ignored); },
                    {logits});
  Tensor t_custom = from_vector<int64_t>({3, 0, 3, 1, 2});
  require_gradcheck([t_custom](const Vars& v) { return cross_entropy(v[0], t_custom, 3); },
                    {logits});
  Tensor t_all = from_vector<int64_t>({-100, -100, -100, -100, -100});
  require_gradcheck([t_all](const Vars& v) { return cross_entropy(v[0], t_all); }, {logits});
}

TEST_CASE("gradcheck: dropout with the same mask on every evaluation, and in eval mode") {
  Generator gen(21);
  Tensor x = normal({4, 5}, gen);
  // Check first that this seed drops some elements and keeps others, so the test has teeth.
  {
    Generator g(77);
    std::vector<uint8_t> mask = dropout(x, 0.4, g).mask.to_vector<uint8_t>();
    int kept = 0;
    for (uint8_t k : mask) kept += k;
    REQUIRE(kept > 0);
    REQUIRE(kept < 20);
  }
  require_gradcheck(
      [](const Vars& v) {
        Generator g(77);  // fresh each evaluation: the same mask every time
        return dropout(v[0], 0.4, true, g);
      },
      {x});
  require_gradcheck(
      [](const Vars& v) {
        Generator g(77);
        return dropout(mul(v[0], v[0]), 0.4, false, g);
      },
      {x});
}

// ============================================================================================
// Joining and splitting

TEST_CASE("gradcheck: concat along a dim and split into parts") {
  Generator gen(22);
  Tensor a = normal({2, 3}, gen), b = normal({2, 1}, gen), c = normal({2, 2}, gen);
  require_gradcheck([](const Vars& v) { return concat({v[0], v[1], v[2]}, 1); }, {a, b, c});
  require_gradcheck(
      [](const Vars& v) {
        return concat({v[0], v[1]}, 0);
      },
      {normal({1, 3}, gen), normal({3, 3}, gen)});
  // Parts reordered and one squared; the middle part is unused and gets a zero gradient.
  require_gradcheck(
      [](const Vars& v) {
        std::vector<Variable> p = split(v[0], {1, 3, 2}, 1);
        return concat({mul(p[2], p[2]), p[0]}, -1);
      },
      {normal({3, 6}, gen)});
}

// ============================================================================================
// A composition of many ops: a tiny two-layer network with a loss.

TEST_CASE("gradcheck: a small network of linear, layer_norm, gelu, softmax and cross_entropy") {
  Generator gen(23);
  Tensor x = normal({4, 3}, gen), w1 = normal({5, 3}, gen), b1 = normal({5}, gen);
  Tensor ln_w = normal({5}, gen), w2 = normal({3, 5}, gen);
  Tensor t = from_vector<int64_t>({0, 2, -100, 1});
  require_gradcheck(
      [t](const Vars& v) {
        Variable h = gelu(layer_norm(linear(v[0], v[1], v[2]), v[3], Variable(), 1e-5));
        Variable logits = linear(h, v[4], Variable());
        Variable attn = softmax(logits, -1);
        return add(cross_entropy(logits, t), mean(mul(attn, attn)));
      },
      {x, w1, b1, ln_w, w2});
}

// ============================================================================================
// gradcheck itself

namespace {
// x^2 with a backward that forgets the factor 2.
Variable square_with_wrong_backward(const Variable& a) {
  Tensor x = a.data();
  return make_variable(mul(x, x), "square_with_wrong_backward", {&a},
                       [x](const Tensor& g) -> std::vector<Tensor> { return {mul(g, x)}; });
}
// x^2 with a backward that returns no gradient at all.
Variable square_with_missing_backward(const Variable& a) {
  Tensor x = a.data();
  return make_variable(mul(x, x), "square_with_missing_backward", {&a},
                       [](const Tensor&) -> std::vector<Tensor> { return {Tensor()}; });
}
}  // namespace

TEST_CASE("gradcheck reports a failure for a deliberately wrong backward") {
  Generator gen(24);
  Tensor a = uniform({2, 3}, 0.5, 1.5, gen);
  GradcheckResult r =
      gradcheck([](const Vars& v) { return square_with_wrong_backward(v[0]); }, {a});
  CHECK_FALSE(r.ok);
  CHECK_FALSE(r.report.empty());
  CHECK_THAT(r.report, Contains("input 0"));
  CHECK(r.checked == 6);
  // The analytic gradient is half the true one, x r instead of 2 x r: the error is |x r| >= 0.5|r|.
  CHECK(r.max_abs_error > 1e-3);

  GradcheckResult missing =
      gradcheck([](const Vars& v) { return square_with_missing_backward(v[0]); }, {a});
  CHECK_FALSE(missing.ok);
  CHECK_FALSE(missing.report.empty());

  // The same function with the right backward passes.
  GradcheckResult right = gradcheck([](const Vars& v) { return mul(v[0], v[0]); }, {a});
  CHECK(right.ok);
  CHECK(right.report.empty());
  CHECK(right.max_abs_error < 1e-6);
}

TEST_CASE("gradcheck rejects inputs that are not f64") {
  REQUIRE_THROWS_WITH(gradcheck([](const Vars& v) { return v[0]; }, {zeros({2}, DType::f32)}),
                      Contains("gradcheck") && Contains("f32"));
}
