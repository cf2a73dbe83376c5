// Reductions against naive double references that read inputs through their strides; thread-count
// independence; and the comparison helpers the other tests rely on.
//
// Sum tolerances: a float sum of n terms is within (n - 1) u sum|x| of the exact sum (u = 2^-24
// for f32, 2^-53 for f64: the bound for any summation order). bf16 results add half a bf16 ulp.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "tensor/cpu/lanes.h"
#include "testing.h"

using namespace forge;
using forge::testing::bitwise_equal;
using forge::testing::Contains;

namespace {

int64_t ravel(const std::vector<int64_t>& idx, const Shape& s) {
  int64_t i = 0;
  for (int d = 0; d < s.size(); ++d) i = i * s[d] + idx[size_t(d)];
  return i;
}

std::vector<double> all_values(const Tensor& t) {
  std::vector<double> v;
  for (int64_t i = 0; i < t.numel(); ++i)
    v.push_back(testing::read_element(t, testing::unravel(i, t.shape())));
  return v;
}

struct Reduced {
  Shape keep_shape;                  // the input shape with reduced dims set to 1
  std::vector<double> sum, abs_sum;  // per output, in row-major order
  std::vector<int64_t> count;
};

// Sums over `dims` (any order, negative allowed) in double.
Reduced reference_sum(const Tensor& a, const std::vector<int>& dims) {
  Reduced r;
  r.keep_shape = a.shape();
  for (int d : dims) r.keep_shape[d < 0 ? d + a.dim() : d] = 1;
  size_t n = size_t(r.keep_shape.numel());
  r.sum.assign(n, 0);
  r.abs_sum.assign(n, 0);
  r.count.assign(n, 0);
  for (int64_t i = 0; i < a.numel(); ++i) {
    auto idx = testing::unravel(i, a.shape());
    double v = testing::read_element(a, idx);
    for (int d = 0; d < a.dim(); ++d)
      if (r.keep_shape[d] == 1) idx[size_t(d)] = 0;
    size_t o = size_t(ravel(idx, r.keep_shape));
    r.sum[o] += v;
    r.abs_sum[o] += std::abs(v);
    r.count[o] += 1;
  }
  return r;
}

Tensor uniform_tensor(const Shape& shape, double lo, double hi, uint32_t seed,
                      DType dtype = DType::f32) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(size_t(shape.numel()));
  for (double& x : v) x = is_integral(dtype) ? std::floor(dist(rng)) : dist(rng);
  return from_vector(v, shape).to(dtype);
}

double unit_roundoff(DType t) {
  return t == DType::f64 ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);  // bf16, f16: f32 sums
}
double storage_rtol(DType t) {
  return t == DType::bf16 ? std::ldexp(1.0, -8) : t == DType::f16 ? std::ldexp(1.0, -11) : 0.0;
}

// Checks a sum (or mean, scaled by 1/count) against the reference, element by element; reports
// how many outputs are off and the worst one.
void check_reduction(const Tensor& got, const Reduced& r, bool mean) {
  REQUIRE(got.numel() == int64_t(r.sum.size()));
  int64_t bad = 0;
  std::string worst;
  double worst_ratio = 0;
  for (size_t o = 0; o < r.sum.size(); ++o) {
    double scale = mean ? 1.0 / double(std::max<int64_t>(r.count[o], 1)) : 1.0;
    double want = r.sum[o] * scale;
    // A mean adds the rounding of 1/count and of the product, and a second 16-bit rounding.
    double u = unit_roundoff(got.dtype()), st = storage_rtol(got.dtype());
    double tol = (double(r.count[o]) * u * r.abs_sum[o] * scale +
                  (mean ? 3 * u + 2 * st : st) * std::abs(want)) *
                     1.01 +
                 1e-300;
    double g = testing::read_element(got, testing::unravel(int64_t(o), got.shape()));
    double ratio = std::abs(g - want) / tol;
    if (!(ratio <= 1)) {
      ++bad;
      if (!(ratio <= worst_ratio)) {
        worst_ratio = ratio;
        worst = fmt::format("output {}: got {}, want {} (tol {:.3g})", o, g, want, tol);
      }
    }
  }
  INFO(bad << " of " << r.sum.size() << " outputs off; worst " << worst);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("sum and mean over all elements match the double reference and give 0-d tensors") {
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    INFO(dtype_name(t));
    Tensor a = uniform_tensor({3, 4, 5}, -1, 1, 1, t);
    Tensor s = sum(a), m = mean(a);
    CHECK(s.dim() == 0);
    CHECK(s.dtype() == t);
    CHECK(m.dim() == 0);
    check_reduction(s, reference_sum(a, {0, 1, 2}), false);
    check_reduction(m, reference_sum(a, {0, 1, 2}), true);
    Tensor tr = a.permute({2, 0, 1});  // non-contiguous: same sum
    check_reduction(sum(tr), reference_sum(a, {0, 1, 2}), false);
  }
  CHECK(sum(scalar_tensor(2.5)).item() == 2.5);
  CHECK(sum(zeros({0, 3})).item() == 0.0);
  CHECK(sum(zeros({0, 3})).dim() == 0);
}

TEST_CASE("sum_of_squares is sum(mul(a, a)) bit for bit, on every length, layout and dtype") {
  // One pass without the squared copy; a square rounds before it is added, chunks combine in
  // their fixed order, so the result is the two ops' to the last bit (1 and 2 threads alike).
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16})
    for (int64_t n : {0, 1, 15, 16, 17, 16384, 16385, 100003}) {
      INFO(dtype_name(t) << " n " << n);
      // f16's largest finite value is 65504: keep its sum of 100003 squares finite.
      const double r = t == DType::f16 ? 0.5 : 3.0;
      Tensor a = uniform_tensor({n}, -r, r, uint64_t(n) + 7, t);
      const int saved = get_num_threads();
      for (int threads : {1, 2}) {
        set_num_threads(threads);
        Tensor got = sum_of_squares(a), want = sum(mul(a, a));
        CHECK(got.dim() == 0);
        CHECK(got.dtype() == t);
        CHECK(bitwise_equal(got, want));
      }
      set_num_threads(saved);
    }
  Tensor m = uniform_tensor({37, 53}, -1, 1, 5, DType::f32);
  CHECK(bitwise_equal(sum_of_squares(m.transpose(0, 1)),
                      sum(mul(m.transpose(0, 1).contiguous(), m.transpose(0, 1).contiguous()))));
  CHECK_THROWS_WITH(sum_of_squares(Tensor()), Contains("sum_of_squares"));
}

TEST_CASE("sum and mean over dims, negative and non-adjacent, with and without keepdim") {
  const std::vector<std::vector<int>> dim_sets3 = {{0},      {1},    {2},       {-1},   {0, 2},
                                                   {-3, -1}, {2, 0}, {0, 1, 2}, {1, 2}, {0, 1}};
  const std::vector<std::vector<int>> dim_sets4 = {{0, 2}, {1, 3}, {0, 3}, {0, 1, 3}, {-4, -2}};
  uint32_t seed = 10;
  for (DType t : {DType::f32, DType::f64}) {
    for (int nd : {3, 4}) {
      Tensor base = nd == 3 ? uniform_tensor({3, 4, 5}, -2, 2, seed++, t)
                            : uniform_tensor({2, 3, 4, 5}, -2, 2, seed++, t);
      // The same values read through a transposed layout.
      Tensor strided = base.transpose(0, -1).contiguous().transpose(0, -1);
      for (const Tensor& a : {base, strided}) {
        for (const auto& dims : nd == 3 ? dim_sets3 : dim_sets4) {
          for (bool keepdim : {false, true}) {
            INFO(dtype_name(t) << " shape " << fmt::format("{}", a.shape()) << " dims "
                               << fmt::format("{}", dims) << " keepdim " << keepdim
                               << " contiguous " << a.is_contiguous());
            Reduced r = reference_sum(a, dims);
            Shape want_shape = keepdim ? r.keep_shape : Shape();
            if (!keepdim)
              for (int d = 0; d < a.dim(); ++d) {
                bool reduced = false;
                for (int x : dims) reduced |= (x < 0 ? x + a.dim() : x) == d;
                if (!reduced) want_shape.push_back(a.size(d));
              }
            Tensor s = sum(a, dims, keepdim), m = mean(a, dims, keepdim);
            CHECK(s.shape() == want_shape);
            CHECK(m.shape() == want_shape);
            CHECK(s.dtype() == t);
            check_reduction(s, r, false);
            check_reduction(m, r, true);
          }
        }
      }
    }
  }
}

TEST_CASE("bf16 sums accumulate in f32 and round once, also over non-adjacent dims") {
  // x (2, 1, 2) = [[[1, 2^-8]], [[2^-8, 0]]]: the exact sum 1 + 2^-7 is a bf16 value. Rounding a
  // partial sum to bf16 on the way (1 + 2^-8 is a tie that rounds to 1) would give 1.
  Tensor x =
      from_vector(std::vector<float>{1, 0.00390625f, 0.00390625f, 0}, {2, 1, 2}).to(DType::bf16);
  CHECK(sum(x).item() == 1.0078125);
  CHECK(sum(x, {0, 1, 2}).item() == 1.0078125);
  CHECK(sum(x, {0, 2}).to_vector<float>() == std::vector<float>{1.0078125f});
  CHECK(sum(x, {-1, 0}, true).to_vector<float>() == std::vector<float>{1.0078125f});
  // Random inputs: within f32 accumulation error plus half a bf16 ulp of the result.
  Tensor a = uniform_tensor({2, 3, 4, 5}, -2, 2, 20, DType::bf16);
  for (const std::vector<int>& dims :
       std::vector<std::vector<int>>{{3}, {1, 2}, {0, 1, 2, 3}, {0, 2}, {1, 3}, {0, 1, 3}}) {
    INFO("dims " << fmt::format("{}", dims));
    check_reduction(sum(a, dims), reference_sum(a, dims), false);
    check_reduction(mean(a, dims), reference_sum(a, dims), true);
  }
}

TEST_CASE("sum over size-1 and zero-size dims") {
  Tensor a = uniform_tensor({3, 1, 4}, -1, 1, 30);
  Tensor s = sum(a, {1});
  CHECK(s.shape() == Shape{3, 4});
  CHECK(all_values(s) == all_values(a));  // summing one term is exact
  CHECK(sum(a, {1}, true).shape() == Shape{3, 1, 4});
  Tensor e = zeros({3, 0, 4});
  Tensor s1 = sum(e, {1});
  CHECK(s1.shape() == Shape{3, 4});
  CHECK(all_values(s1) == std::vector<double>(12, 0.0));
  Tensor s0 = sum(e, {0}, true);
  CHECK(s0.shape() == Shape{1, 0, 4});
  CHECK(s0.numel() == 0);
  CHECK(sum(e, {0, 2}).shape() == Shape{0});
  Tensor ei = zeros({2, 0}, DType::i32);
  CHECK(sum(ei, {1}).to_vector<int64_t>() == std::vector<int64_t>{0, 0});
}

TEST_CASE("integer sums are i64 and do not wrap") {
  Tensor ones_u8 = ones({1000}, DType::u8);
  Tensor s = sum(ones_u8);
  CHECK(s.dtype() == DType::i64);
  CHECK(s.item() == 1000.0);
  Tensor cols = ones({1000, 3}, DType::u8);
  Tensor sc = sum(cols, {0});
  CHECK(sc.dtype() == DType::i64);
  CHECK(sc.to_vector<int64_t>() == std::vector<int64_t>{1000, 1000, 1000});
  Tensor big = full({3}, 2e9, DType::i32);
  CHECK(sum(big).to_vector<int64_t>() == std::vector<int64_t>{6000000000});
  CHECK(sum(full({10}, -100, DType::i8)).item() == -1000.0);
  Tensor i64 = from_vector(std::vector<int64_t>{(int64_t(1) << 62), 1, 2}, {3, 1});
  CHECK(sum(i64, {0}).to_vector<int64_t>() == std::vector<int64_t>{(int64_t(1) << 62) + 3});
  Tensor mixed = uniform_tensor({7, 9, 5}, -50, 50, 31, DType::i32);
  Reduced r = reference_sum(mixed, {0, 2});
  std::vector<int64_t> want(r.sum.begin(), r.sum.end());
  CHECK(sum(mixed, {0, 2}).to_vector<int64_t>() == want);
  REQUIRE_THROWS_WITH(mean(ones_u8), Contains("mean") && Contains("u8"));
}

TEST_CASE("max and argmax over a dim pick the first maximum and match a naive scan") {
  // Integer-valued floats in [0, 4): frequent ties, so "first" is tested.
  Tensor a = uniform_tensor({4, 6, 5}, 0, 4, 40, DType::i64).to(DType::f32);
  for (int dim : {0, 1, 2, -1, -3}) {
    for (bool keepdim : {false, true}) {
      for (const Tensor& x : {a, a.transpose(0, 2).contiguous().transpose(0, 2)}) {
        INFO("dim " << dim << " keepdim " << keepdim << " contiguous " << x.is_contiguous());
        int d = dim < 0 ? dim + 3 : dim;
        MaxResult m = max(x, dim, keepdim);
        Tensor am = argmax(x, dim, keepdim);
        Shape want_shape = x.shape();
        if (keepdim)
          want_shape[d] = 1;
        else
          want_shape = [&] {
            Shape s;
            for (int i = 0; i < 3; ++i)
              if (i != d) s.push_back(x.size(i));
            return s;
          }();
        CHECK(m.values.shape() == want_shape);
        CHECK(m.indices.shape() == want_shape);
        CHECK(m.indices.dtype() == DType::i64);
        CHECK(m.values.dtype() == DType::f32);
        CHECK(testing::bitwise_equal(am, m.indices));
        Shape keep = x.shape();
        keep[d] = 1;
        for (int64_t o = 0; o < keep.numel(); ++o) {
          auto idx = testing::unravel(o, keep);
          double best = -INFINITY;
          int64_t arg = -1;
          for (int64_t k = 0; k < x.size(d); ++k) {
            idx[size_t(d)] = k;
            double v = testing::read_element(x, idx);
            if (v > best) best = v, arg = k;
          }
          CHECK(m.values.to_vector<float>()[size_t(o)] == best);
          CHECK(m.indices.to_vector<int64_t>()[size_t(o)] == arg);
        }
      }
    }
  }
  Tensor row = from_vector(std::vector<float>{1, 5, 3, 5});
  CHECK(max(row, 0).indices.item() == 1.0);
  CHECK(max(row, 0).values.item() == 5.0);
  CHECK(max(row, 0).values.dim() == 0);
  Tensor ints = from_vector(std::vector<int32_t>{-7, -2, -9, -2}, {2, 2});
  MaxResult mi = max(ints, 1);
  CHECK(mi.values.dtype() == DType::i32);
  CHECK(mi.values.to_vector<int32_t>() == std::vector<int32_t>{-2, -2});
  CHECK(mi.indices.to_vector<int64_t>() == std::vector<int64_t>{1, 1});
  Tensor h = from_vector(std::vector<float>{0.5f, -1, 2.25f}).to(DType::bf16);
  CHECK(max(h).dtype() == DType::bf16);
  CHECK(max(h).item() == 2.25);
}

TEST_CASE("max over all elements returns the largest value; NaN propagates") {
  Tensor a = uniform_tensor({50, 40}, -10, 10, 41);
  std::vector<double> v = all_values(a);
  CHECK(max(a).item() == *std::max_element(v.begin(), v.end()));
  CHECK(max(a).dim() == 0);
  CHECK(max(a.t()).item() == *std::max_element(v.begin(), v.end()));
  CHECK(max(full({5}, -INFINITY)).item() == -INFINITY);
  Tensor n = a.clone();
  n.select(0, 31).select(0, 7).fill_(NAN);
  CHECK(std::isnan(max(n).item()));
  Tensor rows = from_vector(std::vector<float>{1, NAN, 7, NAN, 2, 3, 9, 0}, {2, 4});
  MaxResult m = max(rows, 1);
  CHECK(std::isnan(m.values.to_vector<float>()[0]));
  CHECK(m.indices.to_vector<int64_t>()[0] == 1);  // the first NaN
  CHECK(m.values.to_vector<float>()[1] == 9.0f);
  CHECK(m.indices.to_vector<int64_t>()[1] == 2);
  Tensor lead = from_vector(std::vector<double>{NAN, 3, 1});  // NaN first, then larger values
  CHECK(std::isnan(max(lead, 0).values.item()));
  CHECK(max(lead, 0).indices.item() == 0.0);
}

TEST_CASE("max rejects empty reductions, naming the op and the shape") {
  REQUIRE_THROWS_WITH(max(zeros({3, 0}), 1), Contains("max") && Contains("[3, 0]"));
  REQUIRE_THROWS_WITH(max(zeros({0})), Contains("max"));
  REQUIRE_THROWS_WITH(max(zeros({2, 3}), 2), Contains("max") && Contains("2"));
  MaxResult m = max(zeros({0, 3}), 1);  // nothing to reduce per output, and no outputs
  CHECK(m.values.shape() == Shape{0});
}

TEST_CASE("sum_to sums broadcast dims back down to the given shape") {
  Tensor a = uniform_tensor({2, 3, 4}, -1, 1, 50);
  struct Case {
    Shape target;
    std::vector<int> dims;  // what the reference sums over
  };
  const Case cases[] = {{{3, 1}, {0, 2}},       {{4}, {0, 1}},   {{1, 4}, {0, 1}}, {{3, 4}, {0}},
                        {{1, 1, 1}, {0, 1, 2}}, {{}, {0, 1, 2}}, {{2, 1, 4}, {1}}};
  for (const Case& c : cases) {
    INFO("target " << fmt::format("{}", c.target));
    Tensor s = sum_to(a, c.target);
    CHECK(s.shape() == c.target);
    check_reduction(s, reference_sum(a, c.dims), false);
  }
  CHECK(sum_to(a, {2, 3, 4}).storage() == a.storage());
  REQUIRE_THROWS_WITH(sum_to(a, {5}),
                      Contains("sum_to") && Contains("[2, 3, 4]") && Contains("[5]"));
  REQUIRE_THROWS_WITH(sum_to(a, {1, 2, 3, 4}), Contains("sum_to"));
  REQUIRE_THROWS_WITH(sum_to(a, {2, 2, 4}), Contains("sum_to"));
}

TEST_CASE("all_finite is false exactly when some element is inf or NaN") {
  Tensor a = uniform_tensor({100, 400}, -1e30, 1e30, 60);  // > one 16384-element chunk
  CHECK(all_finite(a));
  CHECK(all_finite(full({10}, std::numeric_limits<float>::max())));  // huge but finite
  for (double bad : {double(INFINITY), -double(INFINITY), double(NAN)}) {
    for (int64_t pos : {int64_t(0), int64_t(20000), int64_t(39999)}) {
      INFO("value " << bad << " at " << pos);
      Tensor b = a.clone();
      b.view({-1}).narrow(0, pos, 1).fill_(bad);
      CHECK_FALSE(all_finite(b));
      CHECK_FALSE(all_finite(b.t()));
      CHECK_FALSE(all_finite(b.to(DType::f64)));
    }
  }
  Tensor h = full({3}, 1.0, DType::f16);
  CHECK(all_finite(h));
  h.narrow(0, 1, 1).fill_(1e6);  // overflows f16 to inf
  CHECK_FALSE(all_finite(h));
  CHECK_FALSE(all_finite(full({2}, NAN, DType::bf16)));
  CHECK(all_finite(full({4}, 7, DType::i32)));
  CHECK(all_finite(zeros({0})));
}

TEST_CASE("a large f32 sum is bitwise the same at 1 and 2 threads and close to the reference") {
  const int64_t n = 1000000;
  Tensor a = uniform_tensor({n}, 0, 1, 70);
  Tensor m = a.view({1000, 1000});
  auto run = [&](int threads) {
    testing::ThreadCount tc(threads);
    return std::vector<Tensor>{
        sum(a), mean(a), sum(m, {0}), sum(m, {1}), mean(m, {0}, true), sum(a.to(DType::bf16))};
  };
  std::vector<Tensor> one = run(1), two = run(2);
  for (size_t i = 0; i < one.size(); ++i) {
    INFO("result " << i);
    CHECK(testing::bitwise_equal(one[i], two[i]));
  }
  // Accuracy: the rounding error of a blocked sum grows like sqrt(n) u, about 1e-7 relative here;
  // 2e-6 relative leaves room while still far tighter than the (n - 1) u worst case.
  Reduced r = reference_sum(a, {0});
  CHECK(std::abs(one[0].item() - r.sum[0]) <= 2e-6 * r.sum[0]);
  CHECK(std::abs(one[1].item() - r.sum[0] / n) <= 2e-6 * r.sum[0] / n);
  check_reduction(one[2], reference_sum(m, {0}), false);
  check_reduction(one[3], reference_sum(m, {1}), false);
  // Integer-valued floats: every partial sum is exact in f32 (< 2^24), so the total must be exact;
  // this catches a dropped or doubled element that the relative check could miss.
  Tensor k = uniform_tensor({n}, 0, 4, 71, DType::i64).to(DType::f32);
  double exact = reference_sum(k, {0}).sum[0];
  CHECK(sum(k).item() == exact);
  CHECK(sum(ones({n})).item() == double(n));
}

TEST_CASE("max_abs_diff and allclose compare elementwise with the documented tolerances") {
  Tensor a = from_vector(std::vector<float>{1, 2, 3});
  Tensor b = from_vector(std::vector<double>{1, 2.5, 2});
  CHECK(max_abs_diff(a, b) == 1.0);
  CHECK(max_abs_diff(a, a.to(DType::f64)) == 0.0);
  CHECK(std::isinf(
      max_abs_diff(from_vector(std::vector<float>{NAN}), from_vector(std::vector<float>{0}))));
  REQUIRE_THROWS_WITH(max_abs_diff(a, zeros({2, 2})),
                      Contains("max_abs_diff") && Contains("[3]") && Contains("[2, 2]"));
  // allclose: |x - y| <= atol + rtol |y|.
  Tensor x = from_vector(std::vector<double>{1.0, 100.0});
  CHECK(allclose(x, from_vector(std::vector<double>{1.0 + 9e-6, 100.0 + 9e-4})));
  CHECK_FALSE(allclose(x, from_vector(std::vector<double>{1.0 + 2e-5, 100.0})));
  CHECK(allclose(x, from_vector(std::vector<double>{1.5, 100.0}), 0.0, 0.5));
  CHECK_FALSE(allclose(x, from_vector(std::vector<double>{1.5, 100.0}), 0.0, 0.49));
  CHECK(allclose(from_vector(std::vector<double>{0.0}), from_vector(std::vector<double>{1e-9})));
  CHECK_FALSE(allclose(x, zeros({2, 1}, DType::f64)));
  CHECK_FALSE(allclose(from_vector(std::vector<float>{NAN}), from_vector(std::vector<float>{NAN})));
}

namespace {

// The row reductions' definition (tensor/cpu/lanes.h), written out per element: element i into
// lane i % 16, then the lanes combined, pairwise for the sums (8 apart, then 4, 2, 1), in lane
// order for the max, which is NaN if any element is.
template <class A>
A combined(std::array<A, 16> acc) {
  for (int w = 8; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[size_t(j)] += acc[size_t(j + w)];
  return acc[0];
}
template <class A>
A sum_by_lanes(const A* x, int64_t n) {
  std::array<A, 16> acc{};
  for (int64_t i = 0; i < n; ++i) acc[size_t(i % 16)] += x[i];
  return combined(acc);
}
template <class A>
A dot_by_lanes(const A* x, const A* y, int64_t n) {
  std::array<A, 16> acc{};
  for (int64_t i = 0; i < n; ++i) acc[size_t(i % 16)] += x[i] * y[i];
  return combined(acc);
}
template <class A>
A max_by_lanes(const A* x, int64_t n) {
  std::array<A, 16> acc;
  acc.fill(-std::numeric_limits<A>::infinity());
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    nan |= std::isnan(x[i]);
    A& a = acc[size_t(i % 16)];
    a = x[i] > a ? x[i] : a;
  }
  for (size_t j = 1; j < 16; ++j) acc[0] = acc[j] > acc[0] ? acc[j] : acc[0];
  return nan ? std::numeric_limits<A>::quiet_NaN() : acc[0];
}

template <class A>
bool same_bits(A a, A b) {
  return std::isnan(a) ? std::isnan(b) : std::memcmp(&a, &b, sizeof a) == 0;
}

template <class A>
void check_lanes() {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal;
  std::vector<A> x(80), y(80);
  for (size_t i = 0; i < x.size(); ++i) x[i] = A(normal(rng)), y[i] = A(normal(rng));
  // Every length from empty to past four vectors, at an offset (unaligned rows), then a -0, an
  // infinity and a NaN placed in turn in whole and tail vectors.
  for (int64_t n = 0; n <= 70; ++n)
    for (int64_t off : {0, 3}) {
      INFO("n " << n << " offset " << off);
      const A* px = x.data() + off;
      CHECK(same_bits(cpu::lanes_sum(px, n), sum_by_lanes(px, n)));
      CHECK(same_bits(cpu::lanes_dot(px, y.data(), n), dot_by_lanes(px, y.data(), n)));
      CHECK(same_bits(cpu::lanes_max(px, n), max_by_lanes(px, n)));
    }
  for (A special :
       {A(-0.0), std::numeric_limits<A>::infinity(), std::numeric_limits<A>::quiet_NaN()})
    for (int64_t at : {0, 15, 16, 33}) {
      std::vector<A> z(x.begin(), x.begin() + 40);
      z[size_t(at)] = special;
      INFO("special " << special << " at " << at);
      CHECK(same_bits(cpu::lanes_sum(z.data(), 40), sum_by_lanes(z.data(), 40)));
      CHECK(
          same_bits(cpu::lanes_dot(z.data(), y.data(), 40), dot_by_lanes(z.data(), y.data(), 40)));
      CHECK(same_bits(cpu::lanes_max(z.data(), 40), max_by_lanes(z.data(), 40)));
    }
}

}  // namespace

TEST_CASE("row reductions in 16 lanes give the bits of their per-element definition") {
  check_lanes<float>();
  check_lanes<double>();
}
