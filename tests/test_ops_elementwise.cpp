// Elementwise ops against double references computed here: naive loops that read inputs straight
// from memory through their strides and apply numpy broadcasting by hand.
//
// Tolerances: f32 results are the f32 op on exact f32 inputs, so within 1 ulp (2^-23 relative) of
// the double reference for correctly rounded ops, a few ulp for the polynomial exp/tanh; bf16 and
// f16 add half an ulp of their own format when the f32 result is rounded: 2^-8 and 2^-11 relative.
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "tensor/cpu/activations.h"
#include "tensor/cpu/cpu_features.h"
#include "tensor/cpu/vec_math.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;

namespace {

// The index into `t` of output index `out_idx` under numpy broadcasting (right-aligned dims).
std::vector<int64_t> source_index(const Tensor& t, const std::vector<int64_t>& out_idx) {
  std::vector<int64_t> idx(size_t(t.dim()));
  size_t lead = out_idx.size() - size_t(t.dim());
  for (int d = 0; d < t.dim(); ++d) idx[size_t(d)] = t.size(d) == 1 ? 0 : out_idx[lead + size_t(d)];
  return idx;
}

Shape broadcast_reference(const Shape& a, const Shape& b) {
  int n = std::max(a.size(), b.size());
  Shape out;
  for (int i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    out.push_back(da == 1 ? db : da);
  }
  return out;
}

using Fn1 = std::function<double(double)>;
using Fn2 = std::function<double(double, double)>;

std::vector<double> reference_unary(const Tensor& a, const Fn1& f) {
  std::vector<double> out;
  for (int64_t i = 0; i < a.numel(); ++i)
    out.push_back(f(testing::read_element(a, testing::unravel(i, a.shape()))));
  return out;
}

std::vector<double> reference_binary(const Tensor& a, const Tensor& b, const Fn2& f) {
  Shape s = broadcast_reference(a.shape(), b.shape());
  std::vector<double> out;
  for (int64_t i = 0; i < s.numel(); ++i) {
    auto idx = testing::unravel(i, s);
    out.push_back(f(testing::read_element(a, source_index(a, idx)),
                    testing::read_element(b, source_index(b, idx))));
  }
  return out;
}

// Checks |got - want| <= rtol |want| + atol elementwise (NaN matches NaN); reports the count of
// elements off and the worst one, and carries on.
void check_close(const Tensor& got, const std::vector<double>& want, double rtol, double atol) {
  REQUIRE(got.numel() == int64_t(want.size()));
  int64_t bad = 0;
  double worst_excess = -1;
  std::string worst;
  for (int64_t i = 0; i < got.numel(); ++i) {
    double g = testing::read_element(got, testing::unravel(i, got.shape())), w = want[size_t(i)];
    if ((std::isnan(w) && std::isnan(g)) || g == w) continue;
    double err = std::abs(g - w), tol = rtol * std::abs(w) + atol;
    if (!(err <= tol)) {
      ++bad;
      if (!(err - tol <= worst_excess)) {
        worst_excess = err - tol;
        worst = fmt::format("#{}: got {}, want {}", i, g, w);
      }
    }
  }
  INFO(bad << " of " << got.numel() << " elements off; worst " << worst);
  CHECK(bad == 0);
}

// Uniform values in [lo, hi) made with std::mt19937, stored as `dtype` (so inputs are exact values
// of that dtype and the reference reads them back as they are).
Tensor uniform_tensor(const Shape& shape, double lo, double hi, uint32_t seed,
                      DType dtype = DType::f32) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(size_t(shape.numel()));
  for (double& x : v) x = is_integral(dtype) ? std::floor(dist(rng)) : dist(rng);
  return from_vector(v, shape).to(dtype);
}

// The relative rounding error a result in `dtype` may add: half an ulp of the format.
double storage_rtol(DType t) {
  return t == DType::bf16 ? std::ldexp(1.0, -8) : t == DType::f16 ? std::ldexp(1.0, -11) : 0.0;
}

double gelu_erf_ref(double x) {
  return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
}
double gelu_tanh_ref(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}
double sigmoid_ref(double x) {
  return 1 / (1 + std::exp(-x));
}

struct UnaryCase {
  const char* name;
  std::function<Tensor(const Tensor&)> op;
  Fn1 ref;
  double lo, hi, rtol, atol;  // input range; f32 tolerance
};

const std::vector<UnaryCase>& unary_cases() {
  static const std::vector<UnaryCase> cases = {
      {"neg", [](const Tensor& a) { return neg(a); }, [](double x) { return -x; }, -5, 5, 0, 0},
      {"abs", [](const Tensor& a) { return abs(a); }, [](double x) { return std::abs(x); }, -5, 5,
       0, 0},
      {"relu", [](const Tensor& a) { return relu(a); }, [](double x) { return x > 0 ? x : 0.0; },
       -5, 5, 0, 0},
      {"exp", [](const Tensor& a) { return exp(a); }, [](double x) { return std::exp(x); }, -10, 10,
       2.4e-7, 0},
      {"log", [](const Tensor& a) { return log(a); }, [](double x) { return std::log(x); }, 0.01,
       100, 1.2e-7, 1e-7},
      {"sqrt", [](const Tensor& a) { return sqrt(a); }, [](double x) { return std::sqrt(x); }, 0,
       100, 1.2e-7, 0},
      {"tanh", [](const Tensor& a) { return tanh(a); }, [](double x) { return std::tanh(x); }, -6,
       6, 0, 3e-7},
      {"sigmoid", [](const Tensor& a) { return sigmoid(a); }, sigmoid_ref, -12, 12, 5e-7, 1e-9},
      {"gelu erf", [](const Tensor& a) { return gelu(a, GeluApprox::none); }, gelu_erf_ref, -5, 5,
       1e-6, 1e-6},
      {"gelu tanh", [](const Tensor& a) { return gelu(a, GeluApprox::tanh); }, gelu_tanh_ref, -5, 5,
       1e-6, 2e-6},
      {"pow 2", [](const Tensor& a) { return pow(a, 2.0); }, [](double x) { return x * x; }, -5, 5,
       1.2e-7, 0},
      {"pow 1", [](const Tensor& a) { return pow(a, 1.0); }, [](double x) { return x; }, -5, 5, 0,
       0},
      {"pow 3", [](const Tensor& a) { return pow(a, 3.0); }, [](double x) { return x * x * x; }, -5,
       5, 3e-7, 0},
      {"pow 0.5", [](const Tensor& a) { return pow(a, 0.5); },
       [](double x) { return std::sqrt(x); }, 0, 10, 2.4e-7, 0},
      {"pow -1.5", [](const Tensor& a) { return pow(a, -1.5); },
       [](double x) { return std::pow(x, -1.5); }, 0.1, 10, 3e-7, 0},
  };
  return cases;
}

}  // namespace

TEST_CASE("unary ops match a double reference in f32 and f64, on contiguous and strided inputs") {
  uint32_t seed = 1;
  for (const UnaryCase& c : unary_cases()) {
    for (DType t : {DType::f32, DType::f64}) {
      INFO(c.name << " " << dtype_name(t));
      double rtol = t == DType::f64 ? 1e-14 : c.rtol, atol = t == DType::f64 ? 1e-15 : c.atol;
      Tensor a = uniform_tensor({37, 29}, c.lo, c.hi, seed++, t);
      Tensor y = c.op(a);
      CHECK(y.shape() == a.shape());
      CHECK(y.dtype() == t);
      check_close(y, reference_unary(a, c.ref), rtol, atol);
      Tensor strided = a.t().narrow(0, 3, 20);  // (20, 37), strides (1, 29)
      Tensor ys = c.op(strided);
      CHECK(ys.shape() == Shape{20, 37});
      check_close(ys, reference_unary(strided, c.ref), rtol, atol);
    }
  }
}

TEST_CASE("unary ops on bf16 and f16 inputs are within half an ulp of the format plus f32 error") {
  uint32_t seed = 100;
  for (const UnaryCase& c : unary_cases()) {
    for (DType t : {DType::bf16, DType::f16}) {
      INFO(c.name << " " << dtype_name(t));
      Tensor a = uniform_tensor({64, 33}, c.lo, c.hi, seed++, t);
      Tensor y = c.op(a);
      CHECK(y.dtype() == t);
      // exp(-10) is an f16 subnormal: absolute spacing 2^-24 there.
      double atol = c.atol * 1.01 + (t == DType::f16 ? std::ldexp(1.0, -25) : 0.0);
      check_close(y, reference_unary(a, c.ref), c.rtol + storage_rtol(t), atol);
    }
  }
}

TEST_CASE("binary float ops broadcast by numpy rules and match a double reference") {
  struct Op {
    const char* name;
    Tensor (*op)(const Tensor&, const Tensor&);
    Fn2 ref;
  };
  const Op ops[] = {
      {"add", add, [](double x, double y) { return x + y; }},
      {"sub", sub, [](double x, double y) { return x - y; }},
      {"mul", mul, [](double x, double y) { return x * y; }},
      {"div", div, [](double x, double y) { return x / y; }},
      {"maximum", maximum, [](double x, double y) { return std::max(x, y); }},
  };
  const std::pair<Shape, Shape> shapes[] = {
      {{3, 4}, {}},     {{}, {3, 4}},     {{3, 4}, {4}},       {{3, 4}, {3, 1}},
      {{3, 1}, {1, 4}}, {{2, 3, 4}, {4}}, {{5, 1, 4}, {3, 1}}, {{2, 1, 3, 1}, {1, 4, 1, 5}},
      {{}, {}},         {{1}, {7}},       {{0, 4}, {4}},       {{300, 257}, {257}},
  };
  uint32_t seed = 7;
  for (const Op& o : ops) {
    for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
      for (const auto& [sa, sb] : shapes) {
        INFO(o.name << " " << dtype_name(t) << " " << fmt::format("{} and {}", sa, sb));
        Tensor a = uniform_tensor(sa, -4, 4, seed++, t);
        Tensor b = uniform_tensor(sb, 0.5, 2, seed++, t);  // away from 0, for div
        if (seed % 3 == 0) b = neg(b);
        Tensor y = o.op(a, b);
        CHECK(y.shape() == broadcast_reference(sa, sb));
        CHECK(y.dtype() == t);
        double rtol = t == DType::f64 ? 2.3e-16 : 1.2e-7 + storage_rtol(t);
        // Small products are f16 subnormals: absolute spacing 2^-24 there.
        double atol = t == DType::f16 ? std::ldexp(1.0, -25) : 1e-30;
        check_close(y, reference_binary(a, b, o.ref), rtol, atol);
      }
    }
  }
}

TEST_CASE("binary ops read transposed, narrowed and expanded inputs through their strides") {
  Tensor a = uniform_tensor({4, 6}, -3, 3, 11).t();               // (6, 4), strides (1, 6)
  Tensor b = uniform_tensor({6, 10}, -3, 3, 12).narrow(1, 3, 4);  // (6, 4), strides (10, 1)
  Tensor c = uniform_tensor({6, 1}, -3, 3, 13).expand({6, 4});    // (6, 4), strides (1, 0)
  Tensor d = uniform_tensor({1, 4}, 1, 3, 14).expand({6, 4});     // (6, 4), strides (0, 1)
  auto add_ref = [](double x, double y) { return x + y; };
  check_close(add(a, b), reference_binary(a, b, add_ref), 1.2e-7, 0);
  check_close(mul(b, a), reference_binary(b, a, [](double x, double y) { return x * y; }), 1.2e-7,
              0);
  check_close(sub(c, a), reference_binary(c, a, [](double x, double y) { return x - y; }), 1.2e-7,
              0);
  check_close(div(a, d), reference_binary(a, d, [](double x, double y) { return x / y; }), 1.2e-7,
              0);
  check_close(add(c, d), reference_binary(c, d, add_ref), 1.2e-7, 0);
  check_close(add(a.narrow(0, 1, 3), b.select(0, 5)),
              reference_binary(a.narrow(0, 1, 3), b.select(0, 5), add_ref), 1.2e-7, 0);
}

TEST_CASE("add, sub, mul and maximum on integers are exact, with broadcasting") {
  struct Range {
    DType t;
    double lo_a, hi_a, lo_b, hi_b;  // chosen so no result leaves the dtype's range
  };
  const Range ranges[] = {{DType::i8, -11, 12, -11, 12},
                          {DType::u8, 16, 32, 0, 8},
                          {DType::i32, -40000, 40000, -40000, 40000},
                          {DType::i64, -3e9, 3e9, -3e9, 3e9}};
  uint32_t seed = 50;
  for (const Range& r : ranges) {
    INFO(dtype_name(r.t));
    Tensor a = uniform_tensor({5, 1, 7}, r.lo_a, r.hi_a, seed++, r.t);
    Tensor b = uniform_tensor({3, 7}, r.lo_b, r.hi_b, seed++, r.t);
    Tensor s = add(a, b), d = sub(a, b), m = mul(a, b), mx = maximum(a, b);
    CHECK(s.dtype() == r.t);
    CHECK(s.shape() == Shape{5, 3, 7});
    check_close(s, reference_binary(a, b, [](double x, double y) { return x + y; }), 0, 0);
    check_close(d, reference_binary(a, b, [](double x, double y) { return x - y; }), 0, 0);
    check_close(m, reference_binary(a, b, [](double x, double y) { return x * y; }), 0, 0);
    check_close(mx, reference_binary(a, b, [](double x, double y) { return std::max(x, y); }), 0,
                0);
  }
  // i64 beyond 2^53, where a double path would round.
  Tensor big = from_vector(std::vector<int64_t>{(int64_t(1) << 62) + 1, -(int64_t(1) << 60) - 3});
  Tensor one = from_vector(std::vector<int64_t>{2});
  CHECK(add(big, one).to_vector<int64_t>() ==
        std::vector<int64_t>{(int64_t(1) << 62) + 3, -(int64_t(1) << 60) - 1});
  CHECK(mul(from_vector(std::vector<int64_t>{(int64_t(1) << 31) + 1}), one).to_vector<int64_t>() ==
        std::vector<int64_t>{(int64_t(1) << 32) + 2});
}

TEST_CASE("add and mul with a scalar match the reference in float and integer dtypes") {
  Tensor a = uniform_tensor({9, 5}, -3, 3, 21).t();
  check_close(add(a, 2.5), reference_unary(a, [](double x) { return x + 2.5; }), 1.2e-7, 0);
  check_close(mul(a, -0.375), reference_unary(a, [](double x) { return x * -0.375; }), 6e-8, 0);
  Tensor h = uniform_tensor({40}, -3, 3, 22, DType::bf16);
  check_close(mul(h, 3.0), reference_unary(h, [](double x) { return 3 * x; }),
              1.2e-7 + storage_rtol(DType::bf16), 0);
  Tensor i = from_vector(std::vector<int32_t>{-5, 0, 7, 1000000});
  CHECK(add(i, 3).to_vector<int32_t>() == std::vector<int32_t>{-2, 3, 10, 1000003});
  CHECK(mul(i, -2).to_vector<int32_t>() == std::vector<int32_t>{10, 0, -14, -2000000});
}

TEST_CASE("eq, gt and lt give u8 masks with broadcasting; NaN compares false") {
  for (DType t : {DType::f32, DType::bf16, DType::i64}) {
    INFO(dtype_name(t));
    // Integer values in [-3, 3]: many ties, so eq is exercised on both outcomes.
    Tensor a = uniform_tensor({6, 5}, -3, 4, 31, DType::i64).to(t);
    Tensor b = uniform_tensor({5}, -3, 4, 32, DType::i64).to(t);
    Tensor e = eq(a, b), g = gt(a, b), l = lt(b, a.t().contiguous().t());
    CHECK(e.dtype() == DType::u8);
    CHECK(e.shape() == Shape{6, 5});
    check_close(e, reference_binary(a, b, [](double x, double y) { return double(x == y); }), 0, 0);
    check_close(g, reference_binary(a, b, [](double x, double y) { return double(x > y); }), 0, 0);
    check_close(l, reference_binary(b, a, [](double x, double y) { return double(x < y); }), 0, 0);
  }
  Tensor n = from_vector(std::vector<float>{NAN, 1, NAN});
  Tensor m = from_vector(std::vector<float>{NAN, NAN, 0});
  CHECK(eq(n, m).to_vector<uint8_t>() == std::vector<uint8_t>{0, 0, 0});
  CHECK(gt(n, m).to_vector<uint8_t>() == std::vector<uint8_t>{0, 0, 0});
  CHECK(lt(n, m).to_vector<uint8_t>() == std::vector<uint8_t>{0, 0, 0});
  CHECK(eq(n, n).to_vector<uint8_t>() == std::vector<uint8_t>{0, 1, 0});
}

TEST_CASE("where picks a where cond is nonzero and b elsewhere, broadcasting all three") {
  Tensor cond = from_vector(std::vector<uint8_t>{1, 0, 1}, {3, 1});
  Tensor a = uniform_tensor({3, 4}, -1, 1, 41);
  Tensor b = scalar_tensor(9.0);
  Tensor y = where(cond, a, b);
  CHECK(y.shape() == Shape{3, 4});
  std::vector<double> want;
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 4; ++j) want.push_back(i == 1 ? 9.0 : testing::read_element(a, {i, j}));
  check_close(y, want, 0, 0);
  // Any integer dtype; any nonzero value counts as true.
  Tensor c64 = from_vector(std::vector<int64_t>{0, 5, -1, 0});
  Tensor x = from_vector(std::vector<double>{1, 2, 3, 4}), z = zeros({4}, DType::f64);
  CHECK(where(c64, x, z).to_vector<double>() == std::vector<double>{0, 2, 3, 0});
  Tensor ci = from_vector(std::vector<int32_t>{0, 1, 0, 1}, {4, 1});
  CHECK(where(ci, from_vector(std::vector<int32_t>{7, 8}), from_vector(std::vector<int32_t>{-1}))
            .to_vector<int32_t>() == std::vector<int32_t>{-1, -1, 7, 8, -1, -1, 7, 8});
  REQUIRE_THROWS_WITH(where(x, x, z), Contains("where") && Contains("f64"));
  REQUIRE_THROWS_WITH(where(c64, x, zeros({4})), Contains("where"));
}

TEST_CASE("where treats integer conditions that are multiples of 256 as true") {
  // 256 is nonzero; a narrowing to u8 would read it as 0.
  Tensor c = from_vector(std::vector<int32_t>{256, 0, 512, 1});
  Tensor a = ones({4}), b = zeros({4});
  CHECK(where(c, a, b).to_vector<float>() == std::vector<float>{1, 0, 1, 1});
}

TEST_CASE("masked_fill writes the value where the broadcast mask is set") {
  Tensor a = uniform_tensor({3, 4}, -1, 1, 51);
  Tensor mask = from_vector(std::vector<uint8_t>{0, 1, 0, 2});
  Tensor y = masked_fill(a, mask, -INFINITY);
  CHECK(y.shape() == Shape{3, 4});
  CHECK(y.dtype() == DType::f32);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 4; ++j) {
      if (j % 2)
        CHECK(testing::read_element(y, {i, j}) == -INFINITY);
      else
        CHECK(testing::read_element(y, {i, j}) == testing::read_element(a, {i, j}));
    }
  Tensor hb = masked_fill(a.to(DType::bf16), mask, 0.5);
  CHECK(hb.dtype() == DType::bf16);
  CHECK(testing::read_element(hb, {2, 3}) == 0.5);
}

TEST_CASE("add_ adds alpha times a broadcast b in place, also through a view") {
  Tensor a = uniform_tensor({3, 4}, -2, 2, 61);
  Tensor b = uniform_tensor({4}, -2, 2, 62);
  std::vector<double> want = reference_binary(a, b, [](double x, double y) { return x - 0.5 * y; });
  void* before = a.raw_data();
  Tensor& r = add_(a, b, -0.5);
  CHECK(&r == &a);
  CHECK(a.raw_data() == before);
  check_close(a, want, 2.4e-7, 1e-7);
  std::vector<double> want1 = reference_binary(a, b, [](double x, double y) { return x + y; });
  add_(a, b);
  check_close(a, want1, 1.2e-7, 0);
  // Into a transposed view: the base tensor changes in the viewed positions.
  Tensor base = zeros({4, 3});
  Tensor v = base.t();
  Tensor col = uniform_tensor({3, 1}, 1, 2, 63);
  add_(v, col, 2.0);  // b (3, 1) broadcast over v (3, 4)
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 4; ++j)
      CHECK(testing::read_element(base, {j, i}) == 2 * testing::read_element(col, {i, 0}));
  Tensor ai = from_vector(std::vector<int64_t>{1, 2, 3});
  add_(ai, from_vector(std::vector<int64_t>{10}), 3.0);
  CHECK(ai.to_vector<int64_t>() == std::vector<int64_t>{31, 32, 33});
}

TEST_CASE("add_ rejects a b that does not broadcast to a, naming add_ and both shapes") {
  Tensor a = zeros({4});
  CHECK_THROWS_WITH(add_(a, zeros({4}, DType::f64)), Contains("add_") && Contains("f64"));
  CHECK_THROWS_WITH(add_(a, zeros({3, 4})),
                    Contains("add_") && Contains("[4]") && Contains("[3, 4]"));
  CHECK_THROWS_WITH(add_(a, zeros({5})), Contains("add_") && Contains("[4]") && Contains("[5]"));
}

TEST_CASE("mul_ scales in place, through views and in integer dtypes") {
  Tensor base = uniform_tensor({5, 6}, -2, 2, 71);
  Tensor keep = base.clone();
  Tensor v = base.narrow(1, 2, 3);
  mul_(v, -1.5);
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = 0; j < 6; ++j) {
      double want = testing::read_element(keep, {i, j}) * (j >= 2 && j < 5 ? -1.5 : 1.0);
      CHECK(testing::read_element(base, {i, j}) ==
            double(float(want)));  // both are the correctly rounded product
    }
  Tensor i = from_vector(std::vector<int32_t>{-4, 7});
  mul_(i, 3);
  CHECK(i.to_vector<int32_t>() == std::vector<int32_t>{-12, 21});
}

TEST_CASE("activation backward kernels equal grad times the analytic derivative") {
  Tensor x = uniform_tensor({17, 23}, -5, 5, 81);
  Tensor g = uniform_tensor({23, 17}, -2, 2, 82).t();  // a strided grad
  // The reference derivatives, checked against central differences of the forward references.
  auto d_gelu_erf = [](double v) {
    return 0.5 * (1 + std::erf(v / std::sqrt(2.0))) +
           v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
  };
  auto d_gelu_tanh = [](double v) {
    double k = std::sqrt(2 / M_PI), u = k * (v + 0.044715 * v * v * v);
    double t = std::tanh(u);
    return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v);
  };
  for (double v : {-3.0, -0.7, 0.0, 0.4, 2.5}) {
    double h = 1e-5;
    CHECK(std::abs(d_gelu_erf(v) - (gelu_erf_ref(v + h) - gelu_erf_ref(v - h)) / (2 * h)) < 1e-8);
    CHECK(std::abs(d_gelu_tanh(v) - (gelu_tanh_ref(v + h) - gelu_tanh_ref(v - h)) / (2 * h)) <
          1e-8);
  }
  auto times = [](std::function<double(double)> d) {
    return [d](double gv, double xv) { return gv * d(xv); };
  };
  Tensor xr = x.clone();
  xr.select(0, 0).fill_(0.0);  // relu'(0) = 0
  check_close(relu_backward(g, xr),
              reference_binary(g, xr, times([](double v) { return v > 0 ? 1.0 : 0.0; })), 0, 0);
  check_close(gelu_backward(g, x, GeluApprox::none), reference_binary(g, x, times(d_gelu_erf)),
              1e-6, 2e-6);
  check_close(gelu_backward(g, x, GeluApprox::tanh), reference_binary(g, x, times(d_gelu_tanh)),
              1e-6, 2e-6);
  // The tails, where e^-2u overflows f32 (below x = -10) and s -> 1 above: finite and exact.
  for (DType t : {DType::f32, DType::f64}) {
    INFO("dtype " << dtype_name(t));
    Tensor xt = from_vector<double>({-1e4, -300, -30, -12, -10.5, -9, 9, 10.5, 12, 30, 300, 1e4})
                    .to(t),
           gt = ones({12}, t);
    check_close(gelu_backward(gt, xt, GeluApprox::tanh).to(DType::f64),
                reference_binary(ones({12}, DType::f64), xt.to(DType::f64), times(d_gelu_tanh)),
                1e-6, 1e-6);
    check_close(gelu_backward(gt, xt, GeluApprox::none).to(DType::f64),
                reference_binary(ones({12}, DType::f64), xt.to(DType::f64), times(d_gelu_erf)),
                1e-6, 1e-6);
  }
  // tanh and sigmoid backwards take the forward output y; the derivative is in terms of x.
  Tensor yt = tanh(x), ys = sigmoid(x);
  check_close(tanh_backward(g, yt),
              reference_binary(g, x, times([](double v) { return 1 / std::pow(std::cosh(v), 2); })),
              1e-6, 2e-6);
  auto d_sigmoid = [](double v) { return sigmoid_ref(v) * (1 - sigmoid_ref(v)); };
  check_close(sigmoid_backward(g, ys), reference_binary(g, x, times(d_sigmoid)), 1e-6, 2e-6);
  REQUIRE_THROWS_WITH(relu_backward(zeros({3}), zeros({4})),
                      Contains("relu_backward") && Contains("[3]") && Contains("[4]"));
  REQUIRE_THROWS_WITH(gelu_backward(zeros({2}), zeros({2}, DType::f64), GeluApprox::none),
                      Contains("gelu_backward"));
}

TEST_CASE("GELU's AVX-512 runs: as close to f64 GELU as the portable formulas, same specials") {
  if (!cpu::isa_supported(cpu::Isa::avx512)) {
    std::printf(
        "SKIPPED: GELU's AVX-512 runs: this processor lacks AVX-512 (the portable "
        "per-element formulas run)\n");
    return;
  }
  // [-12, 12] in steps of 1/256 (e^-2u from ~1e-37 to ~1e37), the tails where e^-2u overflows or
  // vanishes, zeros, a denormal; then the specials.
  std::vector<float> xs;
  for (int i = -12 * 256; i <= 12 * 256; ++i) xs.push_back(float(i) / 256);
  for (float v :
       {-1e4f, -300.0f, -30.0f, -10.5f, 10.5f, 30.0f, 300.0f, 1e4f, -0.0f, 1e-30f, -1e-30f, 1e-40f})
    xs.push_back(v);
  const size_t finite = xs.size();
  for (float v : {INFINITY, -INFINITY, NAN}) xs.push_back(v);
  std::vector<float> gs(xs.size());
  for (size_t i = 0; i < gs.size(); ++i) gs[i] = (i % 2 ? -0.5f : 1.25f) * float(1 + i % 5);
  Tensor x = from_vector(xs), g = from_vector(gs);

  auto d_gelu_tanh = [](double v) {
    double k = std::sqrt(2 / M_PI), u = k * (v + 0.044715 * v * v * v), t = std::tanh(u);
    return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v);
  };
  struct Run {
    std::vector<float> y, dx;
  };
  auto run = [&](cpu::Isa isa) {
    testing::IsaScope scope(isa);
    return Run{gelu(x, GeluApprox::tanh).to_vector<float>(),
               gelu_backward(g, x, GeluApprox::tanh).to_vector<float>()};
  };
  Run fast = run(cpu::Isa::avx512), portable = run(cpu::Isa::portable);
  // Largest error relative to the f64 value (the forward's at least 1e-3; the backward's at least
  // |g|, as g times a derivative of order 1 that crosses 0 near x = -0.75 by cancellation).
  auto worst = [&](const Run& r) {
    double fwd = 0, bwd = 0;
    for (size_t i = 0; i < finite; ++i) {
      double ry = gelu_tanh_ref(xs[i]), rd = double(gs[i]) * d_gelu_tanh(xs[i]);
      fwd = std::max(fwd, std::abs(r.y[i] - ry) / std::max(std::abs(ry), 1e-3));
      bwd = std::max(bwd, std::abs(r.dx[i] - rd) / std::max(std::abs(rd), double(std::abs(gs[i]))));
    }
    return std::pair{fwd, bwd};
  };
  auto [fast_fwd, fast_bwd] = worst(fast);
  auto [port_fwd, port_bwd] = worst(portable);
  INFO("worst relative error, forward: avx512 " << fast_fwd << ", portable " << port_fwd
                                                << "; backward: avx512 " << fast_bwd
                                                << ", portable " << port_bwd);
  CHECK(fast_fwd < 1e-6);
  CHECK(fast_bwd < 5e-7);
  CHECK(fast_fwd <= 1.5 * port_fwd);
  CHECK(fast_bwd <= 1.5 * port_bwd);
  // Specials: the portable formulas' (a NaN where they give one, else the same value).
  for (size_t i = finite; i < xs.size(); ++i) {
    INFO("x " << xs[i]);
    CHECK(std::isnan(fast.y[i]) == std::isnan(portable.y[i]));
    if (!std::isnan(portable.y[i])) CHECK(fast.y[i] == portable.y[i]);
    CHECK(std::isnan(fast.dx[i]) == std::isnan(portable.dx[i]));
    if (!std::isnan(portable.dx[i])) CHECK(fast.dx[i] == portable.dx[i]);
  }
  CHECK(fast.y[finite] == INFINITY);

  // The runs themselves: every length's masked tail gives each element the bits of a whole vector
  // and writes nothing past its end; the op, split across threads, the bits of one run.
  for (int64_t n = 1; n <= 40; ++n) {
    INFO("n " << n);
    std::vector<float> y(size_t(n) + 1, -7.0f), dx(size_t(n) + 1, -7.0f);
    cpu::gelu_tanh_run_avx512(xs.data() + 5, y.data(), n);
    cpu::gelu_tanh_backward_run_avx512(gs.data() + 5, xs.data() + 5, dx.data(), n);
    int bad = 0;
    for (int64_t i = 0; i < n; ++i)
      bad += y[size_t(i)] != fast.y[size_t(i) + 5] || dx[size_t(i)] != fast.dx[size_t(i) + 5];
    CHECK(bad == 0);
    CHECK(y[size_t(n)] == -7.0f);
    CHECK(dx[size_t(n)] == -7.0f);
  }
  testing::IsaScope scope(cpu::Isa::avx512);
  testing::ThreadCount threads(2);
  Tensor big = uniform_tensor({300, 331}, -8, 8, 93), gbig = uniform_tensor({300, 331}, -2, 2, 94);
  std::vector<float> yb(size_t(big.numel())), db(size_t(big.numel()));
  cpu::gelu_tanh_run_avx512(big.data<float>(), yb.data(), big.numel());
  cpu::gelu_tanh_backward_run_avx512(gbig.data<float>(), big.data<float>(), db.data(), big.numel());
  CHECK(gelu(big, GeluApprox::tanh).to_vector<float>() == yb);
  CHECK(gelu_backward(gbig, big, GeluApprox::tanh).to_vector<float>() == db);
}

TEST_CASE("dropout keeps about 1-p of the elements and scales them by 1/(1-p)") {
  const double p = 0.3;
  const int64_t n = 256 * 256;
  Tensor x = uniform_tensor({256, 256}, -2, 2, 91);
  Generator gen(4);
  Generator::State s0 = gen.state();
  DropoutResult r = dropout(x, p, gen);
  CHECK(r.mask.dtype() == DType::u8);
  CHECK(r.mask.shape() == x.shape());
  CHECK(r.y.shape() == x.shape());
  std::vector<uint8_t> mask = r.mask.to_vector<uint8_t>();
  double kept = 0;
  for (uint8_t m : mask) {
    REQUIRE(m <= 1);
    kept += m;
  }
  // Binomial: standard error sqrt(p (1-p) / n) = 1.8e-3.
  CHECK(std::abs(kept / n - (1 - p)) < 5 * std::sqrt(p * (1 - p) / n));
  std::vector<double> want;
  for (int64_t i = 0; i < n; ++i)
    want.push_back(
        mask[size_t(i)] ? testing::read_element(x, testing::unravel(i, x.shape())) / (1 - p) : 0.0);
  check_close(r.y, want, 2.4e-7, 0);
  // The same generator state gives the same mask; the next draw gives another.
  Generator again(0);
  again.set_state(s0);
  CHECK(testing::bitwise_equal(dropout(x, p, again).mask, r.mask));
  CHECK_FALSE(testing::bitwise_equal(dropout(x, p, gen).mask, r.mask));
  // Backward: grad * mask / (1 - p).
  Tensor g = uniform_tensor({256, 256}, -1, 1, 92);
  std::vector<double> want_g;
  for (int64_t i = 0; i < n; ++i)
    want_g.push_back(
        mask[size_t(i)] ? testing::read_element(g, testing::unravel(i, g.shape())) / (1 - p) : 0.0);
  check_close(dropout_backward(g, r.mask, p), want_g, 2.4e-7, 0);
  // p = 0 keeps everything unchanged.
  DropoutResult none = dropout(x, 0.0, gen);
  CHECK(testing::bitwise_equal(none.y, x));
  CHECK(none.mask.to_vector<uint8_t>() == std::vector<uint8_t>(size_t(n), 1));
  REQUIRE_THROWS_WITH(dropout(x, 1.0, gen), Contains("dropout"));
  REQUIRE_THROWS_WITH(dropout(x, -0.1, gen), Contains("dropout"));
  REQUIRE_THROWS_WITH(dropout_backward(g, zeros({3}, DType::u8), p),
                      Contains("dropout_backward") && Contains("[3]") && Contains("[256, 256]"));
}

TEST_CASE("dropout_mask keeps element i when the i-th uniform of its draw is >= p") {
  // The definition, element by element: word i % 4 of block i / 4 of the reservation, as a
  // uniform, against p as a float. p = 0.5 and 0.25 put the threshold on a uniform exactly.
  for (double p : {0.1, 0.2, 0.25, 1.0 / 3.0, 0.5, 0.9}) {
    for (int64_t n : {int64_t(1), int64_t(5), int64_t(1023), int64_t(1025), int64_t(70001)}) {
      INFO("p " << p << " n " << n);
      Generator gen(21), ref(21);
      const std::vector<uint8_t> mask = dropout_mask({n}, p, gen).to_vector<uint8_t>();
      const uint64_t first = ref.advance(uint64_t((n + 3) / 4));
      int64_t differ = 0;
      for (int64_t i = 0; i < n; ++i) {
        const float u = uniform_from_bits(ref.block(first, uint64_t(i / 4))[size_t(i % 4)]);
        differ += mask[size_t(i)] != (u >= float(p) ? 1 : 0);
      }
      CHECK(differ == 0);
      CHECK(gen.state() == ref.state());
    }
  }
  // On the threshold: p equal to an element's uniform keeps it, the next float above drops it.
  Generator probe(22);
  const std::array<uint32_t, 4> w = probe.block(probe.advance(1), 0);
  for (int k = 0; k < 4; ++k) {
    const float u = uniform_from_bits(w[size_t(k)]);
    if (u == 0.0f) continue;
    for (float p : {u, std::nextafter(u, 1.0f)}) {
      INFO("word " << k << " uniform " << u << " p " << p);
      Generator gen(22);
      CHECK(dropout_mask({4}, double(p), gen).to_vector<uint8_t>()[size_t(k)] == (p == u ? 1 : 0));
    }
  }
}

TEST_CASE("dropout_mask of a slice is that slice of the whole mask, drawn with the same advance") {
  const Shape whole{3, 5, 6, 7};
  Generator ref(12);
  Tensor mask = dropout(zeros(whole), 0.5, ref).mask;
  for (int dim = 0; dim < 4; ++dim) {
    for (auto [start, length] : {std::pair<int64_t, int64_t>{0, 1}, {1, 2}, {2, -1}}) {
      INFO("dim " << dim << " start " << start << " length " << length);
      Generator g(12);
      Tensor part = dropout_mask(whole, 0.5, g, dim, start, length);
      int64_t len = length < 0 ? whole[dim] - start : length;
      CHECK(testing::bitwise_equal(part, mask.narrow(dim, start, len).contiguous()));
      CHECK(g.state() == ref.state());
    }
  }
  // Long runs split across threads give the same bits.
  Generator a(13), b(13);
  Tensor big = dropout(zeros({4, 1 << 16}), 0.1, a).mask;
  for (int threads : {1, 2}) {
    testing::ThreadCount tc(threads);
    Generator c(13);
    CHECK(testing::bitwise_equal(dropout_mask({4, 1 << 16}, 0.1, c, 0, 1, 2),
                                 big.narrow(0, 1, 2).contiguous()));
  }
  REQUIRE_THROWS_WITH(dropout_mask(whole, 0.5, b, 1, 3, 3),
                      Contains("dropout_mask") && Contains("[3, 6)"));
}

TEST_CASE("dropout masks and elementwise results are bitwise the same at 1 and 2 threads") {
  Tensor x = uniform_tensor({1 << 18}, -3, 3, 93);  // 65536 dropout blocks: split across threads
  Tensor x2 = x.view({512, 512});
  Tensor col = uniform_tensor({512, 1}, -1, 1, 94);
  auto run = [&](int threads) {
    testing::ThreadCount tc(threads);
    Generator gen(17);
    DropoutResult r = dropout(x, 0.5, gen);
    return std::vector<Tensor>{r.mask,       r.y,         exp(x), gelu(x, GeluApprox::tanh),
                               add(x2, col), tanh(x2.t())};
  };
  std::vector<Tensor> one = run(1), two = run(2);
  for (size_t i = 0; i < one.size(); ++i) {
    INFO("result " << i);
    CHECK(testing::bitwise_equal(one[i], two[i]));
  }
}

TEST_CASE("exp_f32 is within 2 ulp of exp on [-87, 88], underflows to 0, overflows to inf") {
  double worst_ulp = 0, worst_x = 0;
  auto check_x = [&](float x) {
    double want = std::exp(double(x));
    double ulp = std::ldexp(1.0, std::ilogb(want) - 23);
    double e = std::abs(double(cpu::exp_f32(x)) - want) / ulp;
    if (e > worst_ulp) worst_ulp = e, worst_x = x;
  };
  for (int64_t i = 0; i <= 1750000; ++i) check_x(float(-87.0 + double(i) * 1e-4));
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-87.0f, 88.0f);
  for (int i = 0; i < 200000; ++i) check_x(dist(rng));
  for (float x : {0.0f, -0.0f, 1e-30f, -1e-30f, 1.0f, -1.0f, 0.5f, 0.34657359f, 88.0f, -87.0f})
    check_x(x);
  INFO("worst " << worst_ulp << " ulp at x = " << worst_x);
  CHECK(worst_ulp <= 2.0);
  CHECK(cpu::exp_f32(0.0f) == 1.0f);
  for (float x : {-87.5f, -88.0f, -100.0f, -1e30f, -INFINITY}) CHECK(cpu::exp_f32(x) == 0.0f);
  for (float x : {88.8f, 89.0f, 100.0f, 1e30f, INFINITY}) CHECK(std::isinf(cpu::exp_f32(x)));
  CHECK(std::isnan(cpu::exp_f32(NAN)));
  CHECK(std::isnan(cpu::exp_f32(-NAN)));
  CHECK(std::isfinite(cpu::exp_f32(88.7f)));
}

TEST_CASE("tanh_f32 is within 3e-7 of tanh on [-20, 20] and odd") {
  double worst = 0, worst_x = 0;
  for (int64_t i = 0; i <= 2000000; ++i) {
    float x = float(-20.0 + double(i) * 2e-5);
    double e = std::abs(double(cpu::tanh_f32(x)) - std::tanh(double(x)));
    if (e > worst) worst = e, worst_x = x;
    if (cpu::tanh_f32(-x) != -cpu::tanh_f32(x)) FAIL("tanh_f32 not odd at " << x);
  }
  INFO("worst " << worst << " at x = " << worst_x);
  CHECK(worst <= 3e-7);
  CHECK(cpu::tanh_f32(0.0f) == 0.0f);
  CHECK(cpu::tanh_f32(-0.0f) == 0.0f);
  // Saturation: within the stated accuracy of +-1 (0.99999994 is the nearest float to tanh(9)).
  CHECK(std::abs(cpu::tanh_f32(INFINITY) - 1.0) <= 3e-7);
  CHECK(std::abs(cpu::tanh_f32(-INFINITY) + 1.0) <= 3e-7);
  CHECK(std::abs(cpu::tanh_f32(1e30f) - 1.0) <= 3e-7);
  CHECK(cpu::tanh_f32(1e-20f) == 1e-20f);
}

TEST_CASE("erf_f32 is within 5e-7 of erf on [-6, 6], absolute and relative, and odd") {
  double worst_abs = 0, worst_rel = 0, at_abs = 0, at_rel = 0;
  for (int64_t i = 0; i <= 1200000; ++i) {
    float x = float(-6.0 + double(i) * 1e-5);
    double want = std::erf(double(x)), got = cpu::erf_f32(x), e = std::abs(got - want);
    if (e > worst_abs) worst_abs = e, at_abs = x;
    if (want != 0 && e / std::abs(want) > worst_rel) worst_rel = e / std::abs(want), at_rel = x;
    if (cpu::erf_f32(-x) != -cpu::erf_f32(x)) FAIL("erf_f32 not odd at " << x);
  }
  INFO("worst absolute " << worst_abs << " at x = " << at_abs << ", relative " << worst_rel
                         << " at x = " << at_rel);
  CHECK(worst_abs <= 5e-7);
  CHECK(worst_rel <= 5e-7);
  // Near 0 (erf x ~ 2x / sqrt(pi)) and beyond the clamp.
  for (float x : {1e-30f, 1e-10f, 1e-4f})
    CHECK(std::abs(cpu::erf_f32(x) / std::erf(double(x)) - 1) <= 5e-7);
  CHECK(cpu::erf_f32(0.0f) == 0.0f);
  CHECK(cpu::erf_f32(INFINITY) == 1.0f);
  CHECK(cpu::erf_f32(-1e30f) == -1.0f);
  CHECK(std::isnan(cpu::erf_f32(NAN)));
}

TEST_CASE("tanh and the other f32 activations propagate NaN") {
  Tensor x = from_vector(std::vector<float>{NAN, 1.0f});
  CHECK(std::isnan(tanh(x).to_vector<float>()[0]));
  CHECK(std::isnan(sigmoid(x).to_vector<float>()[0]));
  CHECK(std::isnan(exp(x).to_vector<float>()[0]));
  CHECK(std::isnan(gelu(x, GeluApprox::tanh).to_vector<float>()[0]));
  CHECK(std::isnan(cpu::tanh_f32(NAN)));
}

TEST_CASE("elementwise ops name the op and both shapes or dtypes when given bad arguments") {
  struct Op {
    const char* name;
    Tensor (*op)(const Tensor&, const Tensor&);
  };
  const Op ops[] = {{"add", add},         {"sub", sub}, {"mul", mul}, {"div", div},
                    {"maximum", maximum}, {"eq", eq},   {"gt", gt},   {"lt", lt}};
  for (const Op& o : ops) {
    INFO(o.name);
    REQUIRE_THROWS_AS(o.op(zeros({3, 4}), zeros({5})), Error);
    REQUIRE_THROWS_WITH(o.op(zeros({3, 4}), zeros({5})),
                        Contains(o.name) && Contains("[3, 4]") && Contains("[5]"));
    REQUIRE_THROWS_WITH(
        o.op(zeros({2, 3}), zeros({2, 3}, DType::f64)),
        Contains(o.name) && Contains("f32") && Contains("f64") && Contains("[2, 3]"));
  }
  REQUIRE_THROWS_WITH(div(zeros({2}, DType::i32), zeros({2}, DType::i32)),
                      Contains("div") && Contains("i32"));
  REQUIRE_THROWS_WITH(exp(zeros({2}, DType::i64)), Contains("exp") && Contains("i64"));
  REQUIRE_THROWS_WITH(where(zeros({1}, DType::u8), zeros({3}), zeros({4})),
                      Contains("where") && Contains("[3]") && Contains("[4]"));
}
