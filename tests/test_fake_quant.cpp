// Observers (scale and zero point from observed extremes), fake quantization (forward against the
// scalar formula, the straight-through gradient against the clamp's numerical derivative), and the
// FakeQuantize module (observe, freeze, eval).
//
// Expected scales are written as the f32 expressions the formulas give (e.g. 4.0f / 255.0f), and
// compared exactly: the observer computes in f32 step for step as PyTorch does.
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <optional>
#include <sstream>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "quant/fake_quant.h"
#include "testing.h"

using namespace forge;
using namespace forge::testing;

namespace {

Tensor f32(const std::vector<float>& v, Shape shape = {}) {
  return from_vector<float>(v, shape);
}

float scale_of(const QuantParams& q, int64_t c = 0) {
  return q.scale.contiguous().data<float>()[c];
}
int32_t zero_of(const QuantParams& q, int64_t c = 0) {
  return q.zero_point.contiguous().data<int32_t>()[c];
}

QuantParams per_tensor(float scale, int32_t zero, QuantRange range) {
  QuantParams q;
  q.scale = scalar_tensor(scale, DType::f32);
  q.zero_point = scalar_tensor(zero, DType::i32);
  q.range = range;
  return q;
}

// The forward formula on one value, in f32: (clamp(round(x * (1/s)) + z) - z) * s.
float fake_quant_ref(float x, float s, int32_t z, QuantRange r, bool* inside = nullptr) {
  float v = std::nearbyint(x * (1.0f / s)) + float(z);
  if (inside) *inside = v >= float(r.qmin) && v <= float(r.qmax);
  float c = std::clamp(v, float(r.qmin), float(r.qmax));
  return (c - float(z)) * s;
}

// Within `ulps` units in the last place (for running averages whose last rounding may come from
// an FMA in one place and a multiply-add in the other).
bool near_ulps(float a, float b, int ulps = 1) {
  return std::fabs(a - b) <= ulps * std::fabs(std::nextafter(b, INFINITY) - b);
}

}  // namespace

// ============================================================================================
// choose_qparams and the observers

TEST_CASE("observer: affine u8 from min -1, max 3 gives scale 4/255 and zero point 64") {
  Observer obs({.kind = ObserverKind::min_max, .range = QuantRange::u8()});
  CHECK_FALSE(obs.observed());
  obs.observe(f32({0.5f, -1.0f, 3.0f, 2.0f}, {2, 2}));
  REQUIRE(obs.observed());
  CHECK(obs.min().item() == -1.0);
  CHECK(obs.max().item() == 3.0);
  QuantParams q = obs.qparams();
  CHECK(q.axis == -1);
  CHECK(q.scale.dim() == 0);
  CHECK(q.zero_point.dtype() == DType::i32);
  CHECK(scale_of(q) == 4.0f / 255.0f);
  // zero = 0 - round(-1 / (4/255)) = -round(-63.75) = 64
  CHECK(zero_of(q) == 64);
}

TEST_CASE("observer: extremes are widened to include 0") {
  // All positive: lo becomes 0, so zero = qmin and scale = max / 255.
  QuantParams q =
      choose_qparams(scalar_tensor(0.5), scalar_tensor(2.0), QuantRange::u8(), QScheme::affine);
  CHECK(scale_of(q) == 2.0f / 255.0f);
  CHECK(zero_of(q) == 0);
  // All negative on s8: hi becomes 0, zero = -128 - round(-1.5 / (1.5/255)) = -128 + 255 = 127.
  q = choose_qparams(scalar_tensor(-1.5), scalar_tensor(-0.25), QuantRange::s8(), QScheme::affine);
  CHECK(scale_of(q) == 1.5f / 255.0f);
  CHECK(zero_of(q) == 127);
}

TEST_CASE("observer: symmetric s8 gives zero 0, u8 zero 128, scale max|x| / ((qmax - qmin) / 2)") {
  Tensor x = f32({-2.0f, 0.25f, 1.5f});
  Observer s8({.range = QuantRange::s8(), .scheme = QScheme::symmetric});
  s8.observe(x);
  CHECK(scale_of(s8.qparams()) == 2.0f / 127.5f);
  CHECK(zero_of(s8.qparams()) == 0);

  Observer s8w({.range = QuantRange::s8_symmetric(), .scheme = QScheme::symmetric});
  s8w.observe(x);
  CHECK(scale_of(s8w.qparams()) == 2.0f / 127.0f);
  CHECK(zero_of(s8w.qparams()) == 0);

  Observer u8({.range = QuantRange::u8(), .scheme = QScheme::symmetric});
  u8.observe(x);
  CHECK(scale_of(u8.qparams()) == 2.0f / 127.5f);
  CHECK(zero_of(u8.qparams()) == 128);
}

TEST_CASE("observer: an all-zero input gets scale FLT_EPSILON and zero qmin (affine) or 0") {
  Tensor z = zeros({3, 5});
  Observer u8({.range = QuantRange::u8()});
  u8.observe(z);
  CHECK(scale_of(u8.qparams()) == FLT_EPSILON);
  CHECK(zero_of(u8.qparams()) == 0);
  Observer s8({.range = QuantRange::s8()});
  s8.observe(z);
  CHECK(scale_of(s8.qparams()) == FLT_EPSILON);
  CHECK(zero_of(s8.qparams()) == -128);
  Observer sym({.range = QuantRange::s8(), .scheme = QScheme::symmetric});
  sym.observe(z);
  CHECK(scale_of(sym.qparams()) == FLT_EPSILON);
  CHECK(zero_of(sym.qparams()) == 0);
}

TEST_CASE(
    "observer: a constant input c gives scale |c| / 255, zero 0 for c > 0 and 255 for c < 0") {
  Observer pos({.range = QuantRange::u8()});
  pos.observe(full({4, 4}, 2.5));
  CHECK(scale_of(pos.qparams()) == 2.5f / 255.0f);
  CHECK(zero_of(pos.qparams()) == 0);
  Observer neg({.range = QuantRange::u8()});
  neg.observe(full({4, 4}, -2.5));
  CHECK(scale_of(neg.qparams()) == 2.5f / 255.0f);
  CHECK(zero_of(neg.qparams()) == 255);
}

TEST_CASE("observer: before any observe() the parameters are scale 1, zero 0") {
  Observer obs({.kind = ObserverKind::moving_average});
  QuantParams q = obs.qparams();
  CHECK(scale_of(q) == 1.0f);
  CHECK(zero_of(q) == 0);
  CHECK(q.axis == -1);
}

TEST_CASE("observer: min-max keeps the running extremes over batches") {
  Observer obs({.kind = ObserverKind::min_max});
  obs.observe(f32({-1.0f, 0.5f}));
  obs.observe(f32({-0.5f, 2.0f}));
  obs.observe(f32({0.0f, 1.0f}));
  CHECK(obs.min().item() == -1.0);
  CHECK(obs.max().item() == 2.0);
  CHECK(scale_of(obs.qparams()) == 3.0f / 255.0f);
  CHECK(zero_of(obs.qparams()) == 85);  // -round(-1 / (3/255)) = -round(-85) = 85
}

TEST_CASE("observer: moving average takes the first batch as is, then min += c (batch - min)") {
  Observer obs({.kind = ObserverKind::moving_average, .averaging_constant = 0.01});
  obs.observe(f32({-1.0f, 1.0f, 0.0f}));
  CHECK(obs.min().item() == -1.0);
  CHECK(obs.max().item() == 1.0);
  obs.observe(f32({-3.0f, 5.0f}));
  // -1 + 0.01 (-3 + 1) = -1.02 and 1 + 0.01 (5 - 1) = 1.04, in f32.
  float min2 = -1.0f + 0.01f * (-3.0f - -1.0f), max2 = 1.0f + 0.01f * (5.0f - 1.0f);
  CHECK(near_ulps(float(obs.min().item()), min2));
  CHECK(near_ulps(float(obs.max().item()), max2));
  CHECK(std::fabs(obs.min().item() - -1.02) < 1e-6);
  CHECK(std::fabs(obs.max().item() - 1.04) < 1e-6);
  obs.observe(f32({0.5f, 0.75f}));  // batch min 0.5 > running min: the min still moves up
  float min3 = min2 + 0.01f * (0.5f - min2), max3 = max2 + 0.01f * (0.75f - max2);
  CHECK(near_ulps(float(obs.min().item()), min3));
  CHECK(near_ulps(float(obs.max().item()), max3));
  QuantParams q = obs.qparams();
  float lo = float(obs.min().item()), hi = float(obs.max().item());
  CHECK(scale_of(q) == (hi - lo) / 255.0f);
  CHECK(zero_of(q) == int32_t(-std::nearbyint(lo / ((hi - lo) / 255.0f))));
}

TEST_CASE("observer: per channel along axis 0 and axis 1 gives one (min, max, scale) per index") {
  // (2, 3): rows are channels for axis 0, columns for axis 1.
  Tensor x = f32({-1.0f, 2.0f, 0.5f,  //
                  3.0f, -4.0f, 0.25f},
                 {2, 3});
  Observer rows({.range = QuantRange::s8(), .scheme = QScheme::symmetric, .axis = 0});
  rows.observe(x);
  CHECK(rows.min().to_vector<float>() == std::vector<float>{-1.0f, -4.0f});
  CHECK(rows.max().to_vector<float>() == std::vector<float>{2.0f, 3.0f});
  QuantParams qr = rows.qparams();
  CHECK(qr.axis == 0);
  CHECK(qr.scale.shape() == Shape{2});
  CHECK(scale_of(qr, 0) == 2.0f / 127.5f);
  CHECK(scale_of(qr, 1) == 4.0f / 127.5f);
  CHECK(zero_of(qr, 0) == 0);
  CHECK(zero_of(qr, 1) == 0);

  Observer cols({.range = QuantRange::u8(), .axis = 1});
  cols.observe(x);
  CHECK(cols.min().to_vector<float>() == std::vector<float>{-1.0f, -4.0f, 0.25f});
  CHECK(cols.max().to_vector<float>() == std::vector<float>{3.0f, 2.0f, 0.5f});
  QuantParams qc = cols.qparams();
  CHECK(scale_of(qc, 0) == 4.0f / 255.0f);
  CHECK(zero_of(qc, 0) == 64);  // -round(-63.75)
  CHECK(scale_of(qc, 1) == 6.0f / 255.0f);
  CHECK(zero_of(qc, 1) == 170);  // -round(-4 / (6/255)) = -round(-170)
  CHECK(scale_of(qc, 2) == 0.5f / 255.0f);
  CHECK(zero_of(qc, 2) == 0);
}

TEST_CASE("observer: per channel along a middle axis, moving average per channel") {
  // x (2, 3, 2) = arange(12) - 5; channel c of axis 1 holds flat indices o*6 + c*2 + i.
  Tensor x = add(arange(0, 12, 1, DType::f32), -5.0).reshape({2, 3, 2});
  Observer obs({.kind = ObserverKind::moving_average, .axis = 1});
  obs.observe(x);
  CHECK(obs.min().to_vector<float>() == std::vector<float>{-5.0f, -3.0f, -1.0f});
  CHECK(obs.max().to_vector<float>() == std::vector<float>{2.0f, 4.0f, 6.0f});
  obs.observe(mul(x, 2.0));  // batch extremes doubled
  std::vector<float> mn = obs.min().to_vector<float>(), mx = obs.max().to_vector<float>();
  const float lo1[3] = {-5, -3, -1}, hi1[3] = {2, 4, 6};
  for (int c = 0; c < 3; ++c) {
    INFO("channel " << c);
    CHECK(near_ulps(mn[size_t(c)], lo1[c] + 0.01f * (2 * lo1[c] - lo1[c])));
    CHECK(near_ulps(mx[size_t(c)], hi1[c] + 0.01f * (2 * hi1[c] - hi1[c])));
  }
  CHECK(std::fabs(mn[0] - -5.05f) < 1e-6f);
  CHECK(std::fabs(mx[2] - 6.06f) < 1e-6f);
  QuantParams q = obs.qparams();
  REQUIRE(q.scale.shape() == Shape{3});
  for (int c = 0; c < 3; ++c) {
    float s = (mx[size_t(c)] - mn[size_t(c)]) / 255.0f;
    CHECK(scale_of(q, c) == s);
    CHECK(zero_of(q, c) == int32_t(std::clamp(-std::nearbyint(mn[size_t(c)] / s), 0.0f, 255.0f)));
  }
  // Another channel count in a later batch, or an axis x does not have, is an error.
  REQUIRE_THROWS_WITH(obs.observe(zeros({2, 4, 2})), Contains("4 channels") && Contains("3"));
  Observer far({.axis = 3});
  REQUIRE_THROWS_WITH(far.observe(zeros({2, 3})), Contains("axis 3") && Contains("[2, 3]"));
}

TEST_CASE("observer: bf16 and f64 inputs give the statistics of their f32 values") {
  Tensor x = f32({-0.7f, 1.3f, 2.9f, -2.1f});
  Tensor xb = x.to(DType::bf16);
  Observer of32, obf16, of64;
  of32.observe(xb.to(DType::f32));
  obf16.observe(xb);
  of64.observe(x.to(DType::f64));
  CHECK(scale_of(obf16.qparams()) == scale_of(of32.qparams()));
  CHECK(zero_of(obf16.qparams()) == zero_of(of32.qparams()));
  CHECK(obf16.min().item() == double(float(bf16(-2.1f))));
  CHECK(of64.min().item() == double(-2.1f));
  CHECK(scale_of(of64.qparams()) == (2.9f + 2.1f) / 255.0f);
}

// ============================================================================================
// fake_quantize: forward and mask

TEST_CASE("fake_quantize: hand values with ties to even and clamping at both ends") {
  // s = 0.5, z = 3 on u8: x / s = 2x; the grid covers [(0 - 3) 0.5, (255 - 3) 0.5] = [-1.5, 126].
  QuantParams q = per_tensor(0.5f, 3, QuantRange::u8());
  Tensor x = f32({0.25f, 0.75f, -0.25f, 1.25f, 126.0f, 126.5f, 200.0f, -1.5f, -2.0f, -10.0f, 0.3f});
  FakeQuantResult r = fake_quantize_with_mask(x, q);
  // 0.5 -> 0, 1.5 -> 2, -0.5 -> -0, 2.5 -> 2 (half to even); 252 + 3 = 255 is still inside,
  // 253 + 3 = 256 and beyond clamp to 255 -> 126; -3 + 3 = 0 is inside, -4 + 3 = -1 clamps to
  // 0 -> -1.5; 0.6 -> 1 -> 0.5.
  CHECK(r.y.to_vector<float>() == std::vector<float>{0.0f, 1.0f, 0.0f, 1.0f, 126.0f, 126.0f, 126.0f,
                                                     -1.5f, -1.5f, -1.5f, 0.5f});
  CHECK(r.mask.dtype() == DType::u8);
  CHECK(r.mask.to_vector<uint8_t>() == std::vector<uint8_t>{1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1});
  CHECK(bitwise_equal(fake_quantize(x, q), r.y));
}

TEST_CASE("fake_quantize: per tensor equals the scalar formula on every element") {
  Generator gen(11);
  Tensor x = mul(randn({7, 33, 65}, gen), 3.0);  // several threads' worth, and odd sizes
  for (QuantRange range : {QuantRange::u8(), QuantRange::s8(), QuantRange::u7()}) {
    QuantParams q = per_tensor(0.037f, range.qmin + 40, range);
    FakeQuantResult r = fake_quantize_with_mask(x, q);
    std::vector<float> xs = x.to_vector<float>(), ys = r.y.to_vector<float>();
    std::vector<uint8_t> ms = r.mask.to_vector<uint8_t>();
    int64_t wrong = 0, outside = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      bool inside;
      float ref = fake_quant_ref(xs[i], 0.037f, range.qmin + 40, range, &inside);
      wrong += ys[i] != ref || ms[i] != uint8_t(inside);
      outside += !inside;
    }
    CHECK(wrong == 0);
    CHECK(outside > 100);  // both clamps were exercised (x spans about +-12, the grid less)
  }
}

TEST_CASE("fake_quantize: per channel (axis 1) uses each channel's scale and zero point") {
  Generator gen(12);
  Tensor x = randn({4, 3, 10}, gen);
  QuantParams q;
  q.axis = 1;
  q.range = QuantRange::s8();
  q.scale = f32({0.01f, 0.02f, 0.5f});
  q.zero_point = from_vector<int32_t>({0, -20, 100});
  Tensor y = fake_quantize(x, q);
  const float s[3] = {0.01f, 0.02f, 0.5f};
  const int32_t z[3] = {0, -20, 100};
  std::vector<float> xs = x.to_vector<float>(), ys = y.to_vector<float>();
  for (size_t i = 0; i < xs.size(); ++i) {
    int c = int(i / 10 % 3);
    REQUIRE(ys[i] == fake_quant_ref(xs[i], s[c], z[c], q.range));
  }
  // A non-contiguous x (transposed) gives the values of its contiguous copy.
  QuantParams q0 = q;
  q0.axis = 0;
  Tensor xt = randn({10, 3}, gen).t();  // (3, 10), channels on axis 0
  CHECK(bitwise_equal(fake_quantize(xt, q0), fake_quantize(xt.contiguous(), q0)));
  q0.scale = f32({0.1f, 0.2f});
  q0.zero_point = from_vector<int32_t>({0, 0});
  REQUIRE_THROWS_WITH(fake_quantize(xt, q0), Contains("2 scales") && Contains("axis 0"));
}

TEST_CASE("fake_quantize: bf16 and f64 inputs keep their dtype and round like f32") {
  Generator gen(13);
  Tensor x = randn({50}, gen);
  QuantParams q = per_tensor(0.05f, 128, QuantRange::u8());
  Tensor xb = x.to(DType::bf16);
  Tensor yb = fake_quantize(xb, q);
  REQUIRE(yb.dtype() == DType::bf16);
  CHECK(bitwise_equal(yb, fake_quantize(xb.to(DType::f32), q).to(DType::bf16)));
  Tensor yd = fake_quantize(x.to(DType::f64), q);
  REQUIRE(yd.dtype() == DType::f64);
  // f64 computes in f64; the grid points (q - z) s agree with f32's to f32 precision.
  CHECK(max_abs_diff(yd, fake_quantize(x, q).to(DType::f64)) < 1e-6);
}

// ============================================================================================
// The straight-through gradient

TEST_CASE("fake_quantize backward: the gradient passes where the mask is 1, else 0") {
  QuantParams q = per_tensor(0.5f, 3, QuantRange::u8());
  Variable x(f32({0.25f, 126.0f, 126.5f, 200.0f, -1.5f, -2.0f}), true);
  Variable y = fake_quantize(x, q);
  y.backward(f32({1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f}));
  CHECK(x.grad().to_vector<float>() == std::vector<float>{1.0f, 2.0f, 0.0f, 0.0f, 5.0f, 0.0f});
}

namespace {

// clamp(x, lo, hi) on tensors.
Tensor clamp_tensor(const Tensor& x, double lo, double hi) {
  Tensor l = full({}, lo, x.dtype()), h = full({}, hi, x.dtype());
  return where(lt(x, l), l, where(gt(x, h), h, x));
}

// A function whose value is the surrogate clamp(x, (qmin - z) s, (qmax - z) s) and whose gradient
// is `grad_of`'s: grad_of(x) plus the constant (clamp(x) - grad_of(x)), recomputed at every nudged
// x. gradcheck then compares grad_of's analytic gradient with the clamp's numerical derivative.
GradcheckFn with_clamp_value(QuantParams q, std::function<Variable(const Variable&)> grad_of) {
  return [q, grad_of](const std::vector<Variable>& v) {
    const double s = scale_of(q), z = zero_of(q);
    Variable g = grad_of(v[0]);
    Tensor surrogate = clamp_tensor(v[0].data(), (q.range.qmin - z) * s, (q.range.qmax - z) * s);
    return add(g, Variable(sub(surrogate, g.data())));
  };
}

// f64 values in [-3, 27], at least 0.01 from the clamp edges -1 and 24.5 (s = 0.1, z = 10, u8).
Tensor away_from_edges(int64_t n, Generator& gen) {
  Tensor x = Tensor::empty({n}, DType::f64);
  uniform_(x, -3.0, 27.0, gen);
  double* p = x.data<double>();
  for (int64_t i = 0; i < n; ++i)
    if (std::fabs(p[i] + 1.0) < 0.01 || std::fabs(p[i] - 24.5) < 0.01) p[i] += 0.05;
  return x;
}

}  // namespace

TEST_CASE("fake_quantize gradcheck: the STE gradient is the clamp's numerical derivative (f64)") {
  Generator gen(14);
  QuantParams q = per_tensor(0.1f, 10, QuantRange::u8());
  Tensor x = away_from_edges(60, gen);
  std::vector<double> xs = x.to_vector<double>();
  int64_t below = 0, above = 0;
  for (double v : xs) {
    below += v < -1.0;
    above += v > 24.5;
  }
  REQUIRE(below > 0);  // the zero-gradient sides are in the sample
  REQUIRE(above > 0);
  GradcheckResult r =
      gradcheck(with_clamp_value(q, [q](const Variable& v) { return fake_quantize(v, q); }), {x});
  INFO(r.report);
  CHECK(r.ok);
  CHECK(r.checked == 60);

  // The check has teeth: an identity gradient (no mask) disagrees outside the range.
  GradcheckResult wrong =
      gradcheck(with_clamp_value(q, [](const Variable& v) { return mul(v, 1.0); }), {x});
  CHECK_FALSE(wrong.ok);

  // Outside [(qmin - z) s, (qmax - z) s] the gradient is exactly 0, inside exactly 1.
  Variable xv(x, true);
  fake_quantize(xv, q).backward(ones({60}, DType::f64));
  std::vector<double> g = xv.grad().to_vector<double>();
  for (size_t i = 0; i < xs.size(); ++i) {
    INFO("x = " << xs[i]);
    CHECK(g[i] == ((xs[i] < -1.0 || xs[i] > 24.5) ? 0.0 : 1.0));
  }
}

TEST_CASE("fake_quantize gradcheck: per channel, each channel's own clamp range") {
  Generator gen(15);
  QuantParams q;
  q.axis = 0;
  q.range = QuantRange::s8();
  q.scale = f32({0.05f, 0.2f});
  q.zero_point = from_vector<int32_t>({-100, 20});
  // Channel ranges: [(-128 + 100) 0.05, (127 + 100) 0.05] = [-1.4, 11.35] and [-29.6, 21.4].
  const double lo[2] = {-1.4, -29.6}, hi[2] = {11.35, 21.4};
  Tensor x = Tensor::empty({2, 12}, DType::f64);
  uniform_(x, -35.0, 25.0, gen);
  double* p = x.data<double>();
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 12; ++i) {
      double& v = p[c * 12 + i];
      if (std::fabs(v - lo[c]) < 0.01 || std::fabs(v - hi[c]) < 0.01) v += 0.05;
    }
  p[0] = -5.0;  // channel 0 below its range, inside channel 1's
  p[12] = 15.0;
  GradcheckResult r = gradcheck(
      [q, lo, hi](const std::vector<Variable>& v) {
        Variable g = fake_quantize(v[0], q);
        Tensor surrogate = concat({clamp_tensor(v[0].data().narrow(0, 0, 1), lo[0], hi[0]),
                                   clamp_tensor(v[0].data().narrow(0, 1, 1), lo[1], hi[1])},
                                  0);
        return add(g, Variable(sub(surrogate, g.data())));
      },
      {x});
  INFO(r.report);
  CHECK(r.ok);
  CHECK(r.checked == 24);
}

// ============================================================================================
// FakeQuantize module

TEST_CASE("FakeQuantize: passes x through before anything was observed") {
  FakeQuantize fq;
  fq.eval();
  Variable x(f32({0.123f, -4.56f, 7.89f}));
  CHECK(bitwise_equal(fq.forward(x).data(), x.data()));
  CHECK_FALSE(fq.observer().observed());
  CHECK(fq.steps_observed() == 0);
}

TEST_CASE("FakeQuantize: training observes, then fake-quantizes with the new parameters") {
  FakeQuantize fq({.observer = {.range = QuantRange::u8()}});
  Tensor x = f32({-1.0f, 0.3f, 3.0f, 1.7f});
  Variable y = fq.forward(Variable(x));
  CHECK(fq.steps_observed() == 1);
  CHECK(scale_of(fq.qparams()) == 4.0f / 255.0f);
  CHECK(zero_of(fq.qparams()) == 64);
  std::vector<float> ys = y.data().to_vector<float>();
  const float xs[4] = {-1.0f, 0.3f, 3.0f, 1.7f};
  for (int i = 0; i < 4; ++i)
    CHECK(ys[size_t(i)] == fake_quant_ref(xs[i], 4.0f / 255.0f, 64, QuantRange::u8()));
  CHECK(ys[1] != 0.3f);  // 0.3 is not on the grid: the output really was quantized
}

TEST_CASE("FakeQuantize: freezes after freeze_after observed steps; eval never observes") {
  FakeQuantize fq({.observer = {.kind = ObserverKind::min_max}, .freeze_after = 2});
  fq.forward(Variable(f32({-1.0f, 1.0f})));
  CHECK_FALSE(fq.frozen());
  fq.forward(Variable(f32({-2.0f, 2.0f})));
  CHECK(fq.frozen());
  CHECK(fq.steps_observed() == 2);
  const float frozen_scale = scale_of(fq.qparams());
  CHECK(frozen_scale == 4.0f / 255.0f);
  fq.forward(Variable(f32({-10.0f, 10.0f})));  // would widen the range if observed
  CHECK(scale_of(fq.qparams()) == frozen_scale);
  CHECK(fq.observer().max().item() == 2.0);
  CHECK(fq.steps_observed() == 2);

  FakeQuantize ev({.observer = {.kind = ObserverKind::min_max}});
  ev.forward(Variable(f32({-1.0f, 3.0f})));
  ev.eval();
  Variable y = ev.forward(Variable(f32({-10.0f, 0.5f, 10.0f})));
  CHECK(ev.steps_observed() == 1);
  CHECK(ev.observer().min().item() == -1.0);
  CHECK(scale_of(ev.qparams()) == 4.0f / 255.0f);
  // Out-of-range values clamp to the grid learned in training: [(0 - 64) s, (255 - 64) s].
  std::vector<float> ys = y.data().to_vector<float>();
  CHECK(ys[0] == -64.0f * (4.0f / 255.0f));
  CHECK(ys[2] == 191.0f * (4.0f / 255.0f));
  ev.train();
  ev.freeze();
  ev.forward(Variable(f32({-10.0f, 10.0f})));
  CHECK(ev.steps_observed() == 1);
  CHECK(ev.frozen());
}

TEST_CASE("FakeQuantize: the gradient flows through the module with the STE mask") {
  FakeQuantize fq({.observer = {.range = QuantRange::u8()}});
  fq.forward(Variable(f32({-1.0f, 3.0f})));  // grid [-64 s, 191 s] = [-1.004, 2.996], s = 4/255
  fq.eval();
  Variable x(f32({-2.0f, 0.5f, 0.9f, 3.5f}), true);
  fq.forward(x).backward(ones({4}));
  CHECK(x.grad().to_vector<float>() == std::vector<float>{0.0f, 1.0f, 1.0f, 0.0f});
}

// ============================================================================================
// Cross-check with PyTorch's observers (optional: needs python3 with torch)

namespace {

// Runs `script` with the python that has torch (FORGE_TORCH_PYTHON, else /usr/bin/python3) and
// returns what it printed after its first line, "OK"; nothing when that python cannot import torch
// (skipped, or failed under FORGE_REQUIRE_OPTIONAL=1). Any other failure fails the test.
std::optional<std::string> run_torch(const std::string& script) {
  const char* env = std::getenv("FORGE_TORCH_PYTHON");
  std::string python = env ? env : "/usr/bin/python3";
  testing::Command probe = testing::run_command("timeout 120 " + python + " -c 'import torch'");
  if (probe.status != 0) {
    testing::skip_optional(
        fmt::format("comparison with torch observers: {} cannot import torch: {}", python,
                    probe.err.empty() ? "(no message)" : probe.err));
    return std::nullopt;
  }
  TempDir dir;
  testing::Command r =
      testing::run_command("timeout 300 " + python + " " + dir.write("observers.py", script));
  INFO("the torch script's stderr:\n" << r.err);
  REQUIRE(r.status == 0);
  REQUIRE(r.out.rfind("OK\n", 0) == 0);
  return r.out.substr(3);
}

}  // namespace

TEST_CASE("observer: scales and zero points equal torch.ao.quantization's, bit for bit") {
  Generator gen(16);
  std::vector<Tensor> batches;
  for (int b = 0; b < 3; ++b) batches.push_back(add(mul(randn({4, 6}, gen), 1.0 + b), 0.3 * b));
  std::string data = "batches = [";
  for (const Tensor& t : batches) {
    data += "torch.tensor([";
    for (float v : t.to_vector<float>()) data += fmt::format("float.fromhex('{:a}'),", v);
    data += "], dtype=torch.float32).reshape(4, 6),";
  }
  data += "]\n";
  // One line per observer: the scales (hex) then the zero points.
  std::string script = "import torch\nfrom torch.ao.quantization import observer as o\n" + data +
                       R"(cases = [
  o.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine),
  o.MovingAverageMinMaxObserver(averaging_constant=0.01, dtype=torch.quint8),
  o.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
  o.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric),
  o.PerChannelMinMaxObserver(ch_axis=1, dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
  o.MovingAveragePerChannelMinMaxObserver(ch_axis=0, averaging_constant=0.01, dtype=torch.quint8,
                                          qscheme=torch.per_channel_affine),
]
print("OK")
for obs in cases:
  for b in batches: obs(b)
  s, z = obs.calculate_qparams()
  print(" ".join(float(v).hex() for v in s.reshape(-1).tolist()), "|",
        " ".join(str(int(v)) for v in z.reshape(-1).tolist()))
)";
  std::optional<std::string> out = run_torch(script);
  if (!out) return;  // no torch: skipped, said why
  const ObserverConfig configs[] = {
      {.kind = ObserverKind::min_max, .range = QuantRange::u8()},
      {.kind = ObserverKind::moving_average, .range = QuantRange::u8()},
      {.kind = ObserverKind::min_max, .range = QuantRange::s8(), .scheme = QScheme::symmetric},
      {.kind = ObserverKind::min_max, .range = QuantRange::u8(), .scheme = QScheme::symmetric},
      {.kind = ObserverKind::min_max,
       .range = QuantRange::s8(),
       .scheme = QScheme::symmetric,
       .axis = 1},
      {.kind = ObserverKind::moving_average, .range = QuantRange::u8(), .axis = 0},
  };
  std::istringstream lines(*out);
  for (int c = 0; c < 6; ++c) {
    INFO("observer case " << c);
    Observer obs(configs[c]);
    for (const Tensor& b : batches) obs.observe(b);
    QuantParams q = obs.qparams();
    std::string line;
    REQUIRE(std::getline(lines, line));
    std::istringstream fields(line);
    std::vector<float> torch_scales;
    std::vector<int32_t> torch_zeros;
    for (std::string f; fields >> f && f != "|";)
      torch_scales.push_back(float(std::strtod(f.c_str(), nullptr)));  // hex: exact
    for (int32_t z; fields >> z;) torch_zeros.push_back(z);
    CHECK(q.scale.to_vector<float>() == torch_scales);
    CHECK(q.zero_point.to_vector<int32_t>() == torch_zeros);
  }
}
