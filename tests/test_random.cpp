// Philox4x32-10 known answers, reproducibility (seed, saved state, thread count) and the
// distributions of rand, randn, uniform_, normal_ and randperm.
//
// Statistical bounds are 5 standard errors of the estimate at the sample size used (a fixed seed
// makes each check deterministic; 5 sigma keeps a correct generator from ever landing outside by
// chance for any seed we might move to). Chi-square thresholds are quoted with their p-values.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <vector>

#include "tensor/random.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;

namespace {

struct Moments {
  double mean = 0, var = 0, min = 1e300, max = -1e300;
};

Moments moments(const std::vector<double>& v) {
  Moments m;
  for (double x : v) {
    m.mean += x;
    m.min = std::min(m.min, x);
    m.max = std::max(m.max, x);
  }
  m.mean /= double(v.size());
  for (double x : v) m.var += (x - m.mean) * (x - m.mean);
  m.var /= double(v.size() - 1);
  return m;
}

std::vector<double> values(const Tensor& t) {
  return t.to(DType::f64).to_vector<double>();
}

}  // namespace

TEST_CASE("philox4x32 matches the Random123 known-answer vectors") {
  using W = std::array<uint32_t, 4>;
  CHECK(philox4x32({0, 0, 0, 0}, 0) == W{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
  CHECK(philox4x32({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, 0xffffffffffffffffull) ==
        W{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd});
  CHECK(philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
                   uint64_t(0xa4093822) | uint64_t(0x299f31d0) << 32) ==
        W{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1});
}

TEST_CASE("Generator::block is Philox of the 64-bit counter first + i under the seed") {
  Generator g(0x0123456789abcdefull);
  uint64_t c = 0x00000001fffffffeull + 3;
  CHECK(g.block(0x00000001fffffffeull, 3) ==
        philox4x32({uint32_t(c), uint32_t(c >> 32), 0, 0}, 0x0123456789abcdefull));
  CHECK(g.advance(5) == 0);
  CHECK(g.advance(2) == 5);
  CHECK(g.state().offset == 7);
  CHECK(g.state().seed == 0x0123456789abcdefull);
}

TEST_CASE("Generator::blocks gives block()'s words in order, across the counter's 32-bit carry") {
  Generator g(0x0123456789abcdefull);
  for (uint64_t first : {uint64_t(0), uint64_t(0xffffffffull) - 20, uint64_t(1) << 40}) {
    for (int64_t n = 0; n <= 40; ++n) {
      INFO("first " << first << " n " << n);
      std::vector<uint32_t> words(size_t(4 * n + 4), 0xdeadbeefu);  // one block's room past the end
      g.blocks(first, n, words.data());
      bool same = true;
      for (int64_t i = 0; i < n; ++i) {
        const std::array<uint32_t, 4> w = g.block(first, uint64_t(i));
        for (int k = 0; k < 4; ++k) same = same && words[size_t(4 * i + k)] == w[size_t(k)];
      }
      CHECK(same);
      for (size_t k = size_t(4 * n); k < words.size(); ++k) CHECK(words[k] == 0xdeadbeefu);
    }
  }
}

TEST_CASE("uniform_from_bits maps the top 24 bits onto [0, 1)") {
  CHECK(uniform_from_bits(0) == 0.0f);
  CHECK(uniform_from_bits(0xff) == 0.0f);
  CHECK(uniform_from_bits(0x100) == std::ldexp(1.0f, -24));
  CHECK(uniform_from_bits(0x80000000u) == 0.5f);
  CHECK(uniform_from_bits(0xffffffffu) == 1.0f - std::ldexp(1.0f, -24));
}

TEST_CASE("the same seed gives the same tensors; another seed gives others") {
  Generator a(1337), b(1337), c(1338);
  Tensor ua = rand({257}, a), ub = rand({257}, b), uc = rand({257}, c);
  CHECK(testing::bitwise_equal(ua, ub));
  CHECK_FALSE(testing::bitwise_equal(ua, uc));
  Tensor na = randn({3, 5}, a, DType::f64), nb = randn({3, 5}, b, DType::f64);
  CHECK(testing::bitwise_equal(na, nb));
  // Consecutive draws do not repeat.
  CHECK_FALSE(testing::bitwise_equal(rand({257}, a), ua));
  CHECK(a.state().offset > 0);
  CHECK_FALSE(a.state() == b.state());  // a drew one tensor more
}

TEST_CASE("a draw's i-th value depends only on the seed, the offset and i") {
  Generator g1(99), g2(99);
  std::vector<float> small = rand({5}, g1).to_vector<float>();
  std::vector<float> large = rand({10000}, g2).to_vector<float>();
  CHECK(std::equal(small.begin(), small.end(), large.begin()));
}

TEST_CASE("set_state replays the draws made after state was saved") {
  Generator g(5);
  rand({10}, g);
  Generator::State saved = g.state();
  Tensor x1 = randn({7, 3}, g);
  Tensor y1 = rand({100}, g, DType::f64);
  double s1 = g.uniform();
  uint64_t r1 = g.randint(1000);
  Tensor p1 = randperm(50, g);
  Generator::State end = g.state();
  g.set_state(saved);
  CHECK(testing::bitwise_equal(randn({7, 3}, g), x1));
  CHECK(testing::bitwise_equal(rand({100}, g, DType::f64), y1));
  CHECK(g.uniform() == s1);
  CHECK(g.randint(1000) == r1);
  CHECK(testing::bitwise_equal(randperm(50, g), p1));
  CHECK(g.state() == end);
  // A fresh generator given the saved state replays too.
  Generator h;
  h.set_state(saved);
  CHECK(testing::bitwise_equal(randn({7, 3}, h), x1));
}

TEST_CASE("manual_seed reseeds the default generator") {
  manual_seed(42);
  Tensor a = rand({16});
  Generator g(42);
  CHECK(testing::bitwise_equal(a, rand({16}, g)));
  CHECK_FALSE(testing::bitwise_equal(rand({16}), a));  // the default generator moved on
  manual_seed(42);
  CHECK(testing::bitwise_equal(rand({16}), a));
}

TEST_CASE("rand is uniform on [0, 1): range, mean 1/2, variance 1/12, flat histogram") {
  const int64_t n = 1 << 20;
  Generator g(2024);
  Tensor u = rand({n}, g);
  CHECK(u.dtype() == DType::f32);
  std::vector<double> v = values(u);
  Moments m = moments(v);
  CHECK(m.min >= 0.0);
  CHECK(m.max < 1.0);
  // Standard error of the mean: sqrt(1/12 / n) = 2.8e-4; of the variance:
  // sqrt((mu4 - sigma^4) / n) = sqrt((1/80 - 1/144) / n) = 7.3e-5.
  CHECK(std::abs(m.mean - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
  CHECK(std::abs(m.var - 1.0 / 12) < 5 * std::sqrt((1.0 / 80 - 1.0 / 144) / n));
  // 16 equal bins: chi-square with 15 degrees of freedom; P(chi2 > 50) = 1e-5.
  std::vector<double> bins(16, 0);
  for (double x : v) bins[std::min<size_t>(size_t(x * 16), 15)] += 1;
  double expected = double(n) / 16, chi2 = 0;
  for (double c : bins) chi2 += (c - expected) * (c - expected) / expected;
  CHECK(chi2 < 50);
  // rand(f64) uses the same draws.
  Generator g2(2024);
  Tensor d = rand({n}, g2, DType::f64);
  CHECK(values(d) == v);
}

TEST_CASE("rand in bf16 and f16 stays below 1") {
  // Values within half a 16-bit ulp of 1 must not round up to 1.0 (bf16: 1 - 2^-9 and above, a
  // 0.2% chance per element; f16: 1 - 2^-12 and above).
  Generator g(11);
  for (DType t : {DType::bf16, DType::f16}) {
    Tensor u = rand({1 << 16}, g, t);
    CHECK(u.dtype() == t);
    Moments m = moments(values(u));
    INFO("dtype " << dtype_name(t));
    CHECK(m.min >= 0.0);
    CHECK(m.max < 1.0);
    CHECK(std::abs(m.mean - 0.5) < 5 * std::sqrt(1.0 / 12 / (1 << 16)) + 2e-3);
  }
}

TEST_CASE("uniform_ fills [lo, hi) with mean (lo + hi) / 2") {
  const int64_t n = 1 << 18;
  Generator g(3);
  Tensor t = Tensor::empty({n}, DType::f64);
  uniform_(t, -2.0, 5.0, g);
  Moments m = moments(values(t));
  CHECK(m.min >= -2.0);
  CHECK(m.max < 5.0);
  CHECK(std::abs(m.mean - 1.5) < 5 * 7.0 * std::sqrt(1.0 / 12 / n));
  CHECK(std::abs(m.var - 49.0 / 12) < 5 * 49.0 * std::sqrt((1.0 / 80 - 1.0 / 144) / n));
}

TEST_CASE("randn is standard normal: mean 0, std 1, two-sigma tail 4.55%") {
  const int64_t n = 1 << 20;
  Generator g(77);
  for (DType t : {DType::f32, DType::f64}) {
    INFO("dtype " << dtype_name(t));
    std::vector<double> v = values(randn({n}, g, t));
    Moments m = moments(v);
    // Standard errors: mean 1/sqrt(n) = 9.8e-4; variance sqrt(2/n) = 1.4e-3.
    CHECK(std::abs(m.mean) < 5 / std::sqrt(double(n)));
    CHECK(std::abs(m.var - 1.0) < 5 * std::sqrt(2.0 / n));
    double within1 = 0, beyond2 = 0, positive = 0;
    for (double x : v) {
      within1 += std::abs(x) < 1;
      beyond2 += std::abs(x) > 2;
      positive += x > 0;
    }
    const double p1 = 0.682689492, p2 = 0.045500264;
    CHECK(std::abs(within1 / n - p1) < 5 * std::sqrt(p1 * (1 - p1) / n));
    CHECK(std::abs(beyond2 / n - p2) < 5 * std::sqrt(p2 * (1 - p2) / n));
    CHECK(std::abs(positive / n - 0.5) < 5 * std::sqrt(0.25 / n));
    CHECK(all_finite(randn({n}, g, t)));
    CHECK(m.max < 6.0);  // Box-Muller on 24-bit uniforms: |z| <= sqrt(2 ln 2^24) = 5.77
    CHECK(m.min > -6.0);
  }
}

TEST_CASE("normal_ scales and shifts: mean and std as asked") {
  const int64_t n = 1 << 18;
  Generator g(8);
  Tensor t = Tensor::empty({n});
  normal_(t, 3.0, 2.0, g);
  Moments m = moments(values(t));
  CHECK(std::abs(m.mean - 3.0) < 5 * 2.0 / std::sqrt(double(n)));
  CHECK(std::abs(m.var - 4.0) < 5 * 4.0 * std::sqrt(2.0 / n));
  // An odd size fills every element (the last block is used in part).
  Tensor odd = Tensor::empty({7});
  odd.fill_(std::nan(""));
  normal_(odd, 0.0, 1.0, g);
  CHECK(all_finite(odd));
}

TEST_CASE("uniform_ and normal_ reject non-contiguous and integer tensors, naming the op") {
  Generator g(0);
  Tensor t = Tensor::empty({4, 4}).t().narrow(0, 0, 2);
  REQUIRE_THROWS_WITH(uniform_(t, 0, 1, g), Contains("uniform_") && Contains("[2, 4]"));
  Tensor i = Tensor::empty({4}, DType::i32);
  REQUIRE_THROWS_WITH(normal_(i, 0, 1, g), Contains("normal_") && Contains("i32"));
  REQUIRE_THROWS_WITH(rand({2}, g, DType::i64), Contains("i64"));
}

TEST_CASE("uniform() and randint() draw single values in range and evenly") {
  Generator g(31);
  const int n = 100000;
  std::vector<double> u(n);
  std::vector<double> counts(10, 0);
  for (int i = 0; i < n; ++i) {
    u[size_t(i)] = g.uniform();
    uint64_t r = g.randint(10);
    REQUIRE(r < 10);
    counts[r] += 1;
  }
  Moments m = moments(u);
  CHECK(m.min >= 0);
  CHECK(m.max < 1);
  CHECK(std::abs(m.mean - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
  // Chi-square with 9 degrees of freedom; P(chi2 > 40) = 7e-6.
  double chi2 = 0;
  for (double c : counts) chi2 += (c - n / 10.0) * (c - n / 10.0) / (n / 10.0);
  CHECK(chi2 < 40);
  CHECK(g.randint(1) == 0);
  REQUIRE_THROWS_WITH(g.randint(0), Contains("randint"));
}

TEST_CASE("randperm returns a permutation of 0..n-1 with every order equally likely") {
  Generator g(12);
  Tensor p = randperm(1000, g);
  CHECK(p.dtype() == DType::i64);
  CHECK(p.shape() == Shape{1000});
  std::vector<int64_t> v = p.to_vector<int64_t>();
  std::vector<int64_t> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> iota(1000);
  std::iota(iota.begin(), iota.end(), 0);
  CHECK(sorted == iota);
  CHECK(v != iota);
  CHECK(randperm(0, g).numel() == 0);
  CHECK(randperm(1, g).to_vector<int64_t>() == std::vector<int64_t>{0});
  // All 24 orders of 4 elements, 24000 draws: chi-square with 23 degrees of freedom,
  // P(chi2 > 60) = 3e-5. A biased shuffle (swap with any position) fails this by far.
  std::map<std::vector<int64_t>, double> counts;
  const int draws = 24000;
  for (int i = 0; i < draws; ++i) counts[randperm(4, g).to_vector<int64_t>()] += 1;
  CHECK(counts.size() == 24);
  double chi2 = 0;
  for (auto& [perm, c] : counts) chi2 += (c - 1000.0) * (c - 1000.0) / 1000.0;
  CHECK(chi2 < 60);
}

TEST_CASE("rand, randn and randperm are bitwise the same at 1 and 2 threads") {
  auto draw = [](int threads) {
    testing::ThreadCount tc(threads);
    Generator g(555);
    std::vector<Tensor> out;
    out.push_back(rand({1 << 18}, g));  // 65536 blocks: split across threads
    out.push_back(randn({(1 << 18) + 3}, g));
    out.push_back(randn({1 << 16}, g, DType::f64));
    out.push_back(rand({1 << 16}, g, DType::bf16));
    out.push_back(randperm(10000, g));
    out.push_back(scalar_tensor(double(g.state().offset), DType::f64));
    return out;
  };
  std::vector<Tensor> one = draw(1), two = draw(2);
  REQUIRE(one.size() == two.size());
  for (size_t i = 0; i < one.size(); ++i) {
    INFO("draw " << i);
    CHECK(testing::bitwise_equal(one[i], two[i]));
  }
}
