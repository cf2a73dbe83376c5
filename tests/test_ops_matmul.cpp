// matmul, bmm, gemm_ and linear against naive f64 loops.
//
// Tolerances are relative to the magnitude sum_p |op(a)_ip op(b)_pj| of each output element, the
// scale of any summation-order rounding: 1e-5 for f32 (k eps_f32 ~ 1.6e-5 at k = 130 in the very
// worst case, far less in practice), 1e-12 for f64.
#include <cmath>
#include <limits>

#include "tensor/cpu/gemm.h"
#include "testing.h"

using namespace forge;
using namespace forge::testing;

namespace {

constexpr double kTolF32 = 1e-5;
constexpr double kTolF64 = 1e-12;

double tol_for(DType t) {
  return t == DType::f64 ? kTolF64 : kTolF32;
}

// The naive product of op(a) (m, k) and op(b) (k, n) in f64, with the magnitude of each element.
struct Reference {
  int64_t m = 0, n = 0;
  std::vector<double> value, magnitude;
};

Reference reference_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  std::vector<double> A = a.to_vector<double>(), B = b.to_vector<double>();
  int64_t ac = a.size(1), bc = b.size(1);
  int64_t m = ta ? a.size(1) : a.size(0), k = ta ? a.size(0) : a.size(1);
  int64_t n = tb ? b.size(0) : b.size(1);
  Reference r{m, n, std::vector<double>(size_t(m * n), 0.0),
              std::vector<double>(size_t(m * n), 0.0)};
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p) {
        double x = ta ? A[size_t(p * ac + i)] : A[size_t(i * ac + p)];
        double y = tb ? B[size_t(j * bc + p)] : B[size_t(p * bc + j)];
        r.value[size_t(i * n + j)] += x * y;
        r.magnitude[size_t(i * n + j)] += std::abs(x * y);
      }
  return r;
}

// max over elements of |got - ref| / magnitude (an exact zero is required where magnitude is 0).
double scaled_error(const Tensor& got, const Reference& ref) {
  REQUIRE(got.shape() == Shape{ref.m, ref.n});
  std::vector<double> g = got.to_vector<double>();
  double worst = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    double d = std::abs(g[i] - ref.value[i]);
    if (std::isnan(g[i])) return std::numeric_limits<double>::infinity();
    if (ref.magnitude[i] == 0) {
      if (d != 0) return std::numeric_limits<double>::infinity();
    } else {
      worst = testing::nan_max(worst, d / ref.magnitude[i]);
    }
  }
  return worst;
}

// A random operand stored as (rows, cols).
Tensor operand(int64_t rows, int64_t cols, DType dtype, Generator& gen) {
  return randn({rows, cols}, gen, dtype);
}

struct MatmulShape {
  int64_t m, k, n;
};

}  // namespace

TEST_CASE("matmul matches a naive f64 product for all transposes, shapes and f32/f64") {
  Generator gen(1);
  // 1x1; odd sizes; sizes straddling and exceeding the 64-wide kernel blocks in both directions.
  const MatmulShape shapes[] = {{1, 1, 1},    {7, 13, 5},  {130, 70, 90}, {64, 64, 64},
                                {65, 3, 129}, {2, 200, 3}, {129, 1, 1},   {1, 33, 70}};
  for (DType dtype : {DType::f32, DType::f64}) {
    for (const MatmulShape& s : shapes) {
      for (int combo = 0; combo < 4; ++combo) {
        bool ta = combo & 1, tb = combo & 2;
        Tensor a = ta ? operand(s.k, s.m, dtype, gen) : operand(s.m, s.k, dtype, gen);
        Tensor b = tb ? operand(s.n, s.k, dtype, gen) : operand(s.k, s.n, dtype, gen);
        Tensor c = matmul(a, b, ta, tb);
        INFO(fmt::format("{} m={} k={} n={} trans_a={} trans_b={}", dtype, s.m, s.k, s.n, ta, tb));
        CHECK(c.dtype() == dtype);
        CHECK(c.shape() == Shape{s.m, s.n});
        CHECK(scaled_error(c, reference_matmul(a, b, ta, tb)) < tol_for(dtype));
      }
    }
  }
}

TEST_CASE("matmul matches hand-computed values") {
  // [[1, 2, 3], [4, 5, 6]] @ [[7, 8], [9, 10], [11, 12]] = [[58, 64], [139, 154]]
  Tensor a = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = from_vector<double>({7, 8, 9, 10, 11, 12}, {3, 2});
  CHECK(matmul(a, b).to_vector<double>() == std::vector<double>{58, 64, 139, 154});
  // a^T (3, 2) @ a (2, 3): [[17, 22, 27], [22, 29, 36], [27, 36, 45]]
  CHECK(matmul(a, a, true, false).to_vector<double>() ==
        std::vector<double>{17, 22, 27, 22, 29, 36, 27, 36, 45});
  // a @ a^T: [[14, 32], [32, 77]]
  CHECK(matmul(a, a, false, true).to_vector<double>() == std::vector<double>{14, 32, 32, 77});
}

TEST_CASE("matmul with an inner dim of 0 gives zeros and gemm_ then scales the output by beta") {
  for (DType dtype : {DType::f32, DType::f64}) {
    for (int combo = 0; combo < 4; ++combo) {
      bool ta = combo & 1, tb = combo & 2;
      Tensor a = ta ? Tensor::empty({0, 3}, dtype) : Tensor::empty({3, 0}, dtype);
      Tensor b = tb ? Tensor::empty({4, 0}, dtype) : Tensor::empty({0, 4}, dtype);
      Tensor c = matmul(a, b, ta, tb);
      INFO(fmt::format("{} trans_a={} trans_b={}", dtype, ta, tb));
      REQUIRE(c.shape() == Shape{3, 4});
      CHECK(c.to_vector<double>() == std::vector<double>(12, 0.0));
    }
    Tensor out = full({3, 4}, 2.0, dtype);
    gemm_(out, Tensor::empty({3, 0}, dtype), Tensor::empty({0, 4}, dtype), false, false, 1.0, 0.5);
    CHECK(out.to_vector<double>() == std::vector<double>(12, 1.0));
  }
}

TEST_CASE("matmul of strided views equals matmul of their contiguous copies") {
  Generator gen(2);
  for (DType dtype : {DType::f32, DType::f64}) {
    const int64_t m = 37, k = 70, n = 29;
    // Views of a with shape (m, k): a transpose (unit row stride), a narrow of a wider matrix
    // (leading-dim stride k + 9 > k), and a view with no unit stride at all (every other column).
    Tensor a_t = operand(k, m, dtype, gen).t();
    Tensor a_narrow = operand(m, k + 9, dtype, gen).narrow(1, 4, k);
    Tensor a_every_other = operand(m, 2 * k, dtype, gen).as_strided({m, k}, {2 * k, 2}, 1);
    // Views of b with shape (k, n): likewise, plus a narrowed transpose (column stride k + 5).
    Tensor b_t = operand(n, k, dtype, gen).t();
    Tensor b_narrow = operand(k, n + 5, dtype, gen).narrow(1, 3, n);
    Tensor b_narrow_t = operand(n, k + 5, dtype, gen).narrow(1, 2, k).t();
    REQUIRE(a_narrow.stride(0) == k + 9);
    REQUIRE(b_narrow_t.stride(1) == k + 5);
    for (const Tensor& a : {a_t, a_narrow, a_every_other}) {
      for (const Tensor& b : {b_t, b_narrow, b_narrow_t}) {
        INFO(fmt::format("{} a strides {} b strides {}", dtype, a.strides(), b.strides()));
        REQUIRE_FALSE((a.is_contiguous() && b.is_contiguous()));
        Tensor got = matmul(a, b);
        Tensor want = matmul(a.contiguous(), b.contiguous());
        CHECK(scaled_error(got, reference_matmul(a.contiguous(), b.contiguous(), false, false)) <
              tol_for(dtype));
        CHECK(max_abs_diff(got, want) <= tol_for(dtype) * 20);
      }
    }
    // The same views, used with transpose flags: op(a) = a_view^T where the view is (k, m).
    Tensor at_view = operand(m, k + 3, dtype, gen).narrow(1, 1, k).t();  // (k, m), strides (1, k+3)
    Tensor bt_view = operand(k, n + 6, dtype, gen).narrow(1, 0, n).t();  // (n, k), strides (1, n+6)
    Tensor got = matmul(at_view, bt_view, true, true);
    CHECK(scaled_error(got, reference_matmul(at_view.contiguous(), bt_view.contiguous(), true,
                                             true)) < tol_for(dtype));
    CHECK(max_abs_diff(got, matmul(at_view.contiguous(), bt_view.contiguous(), true, true)) <=
          tol_for(dtype) * 20);
  }
}

TEST_CASE("matmul of bf16 and f16 inputs equals the f32 product of the same rounded values") {
  Generator gen(3);
  // Rounding the f32 product to 16 bits moves it by at most half an ulp, which is at most 2^-8 of
  // the value for bf16 (8 significant bits) and 2^-11 for f16 (11 significant bits).
  const std::pair<DType, double> cases[] = {{DType::bf16, 1.0 / 256}, {DType::f16, 1.0 / 2048}};
  for (auto [dtype, half_ulp] : cases) {
    for (int combo = 0; combo < 4; ++combo) {
      bool ta = combo & 1, tb = combo & 2;
      const int64_t m = 19, k = 70, n = 66;
      Tensor a = (ta ? operand(k, m, DType::f32, gen) : operand(m, k, DType::f32, gen)).to(dtype);
      Tensor b = (tb ? operand(n, k, DType::f32, gen) : operand(k, n, DType::f32, gen)).to(dtype);
      Tensor c = matmul(a, b, ta, tb);
      INFO(fmt::format("{} trans_a={} trans_b={}", dtype, ta, tb));
      REQUIRE(c.dtype() == dtype);
      // The f32 product of the rounded inputs, and the f64 product of the same values.
      std::vector<double> f32_product =
          matmul(a.to(DType::f32), b.to(DType::f32), ta, tb).to_vector<double>();
      Reference ref = reference_matmul(a.to(DType::f64), b.to(DType::f64), ta, tb);
      std::vector<double> got = c.to_vector<double>();
      double worst_vs_f32 = 0, worst_vs_f64 = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        worst_vs_f32 = std::max(
            worst_vs_f32, std::abs(got[i] - f32_product[i]) / (std::abs(f32_product[i]) + 1e-30));
        worst_vs_f64 = std::max(
            worst_vs_f64, std::abs(got[i] - ref.value[i]) /
                              (half_ulp * std::abs(ref.value[i]) + kTolF32 * ref.magnitude[i]));
      }
      CHECK(worst_vs_f32 <= half_ulp);
      CHECK(worst_vs_f64 <= 1.0);
    }
  }
}

TEST_CASE("bmm matches per-batch naive products, broadcasting a batch of 1 on either side") {
  Generator gen(4);
  const int64_t m = 9, k = 70, n = 5;
  for (DType dtype : {DType::f32, DType::f64}) {
    for (auto [ba, bb] : {std::pair<int64_t, int64_t>{3, 3}, {1, 3}, {3, 1}, {1, 1}}) {
      for (int combo = 0; combo < 4; ++combo) {
        bool ta = combo & 1, tb = combo & 2;
        Tensor a = ta ? randn({ba, k, m}, gen, dtype) : randn({ba, m, k}, gen, dtype);
        Tensor b = tb ? randn({bb, n, k}, gen, dtype) : randn({bb, k, n}, gen, dtype);
        Tensor c = bmm(a, b, ta, tb);
        int64_t batch = std::max(ba, bb);
        INFO(fmt::format("{} batches {} and {} trans_a={} trans_b={}", dtype, ba, bb, ta, tb));
        REQUIRE(c.shape() == Shape{batch, m, n});
        for (int64_t i = 0; i < batch; ++i) {
          Reference ref = reference_matmul(a.select(0, ba == 1 ? 0 : i).contiguous(),
                                           b.select(0, bb == 1 ? 0 : i).contiguous(), ta, tb);
          CHECK(scaled_error(c.select(0, i).contiguous(), ref) < tol_for(dtype));
        }
      }
    }
  }
}

TEST_CASE("bmm of permuted and narrowed batch views equals bmm of contiguous copies") {
  Generator gen(5);
  const int64_t B = 4, m = 6, k = 11, n = 7;
  // (m, B, k) permuted to (B, m, k): matrices with row stride B*k; b narrowed in its last dim.
  Tensor a = randn({m, B, k}, gen, DType::f64).permute({1, 0, 2});
  Tensor b = randn({B, k, n + 4}, gen, DType::f64).narrow(2, 2, n);
  Tensor got = bmm(a, b);
  for (int64_t i = 0; i < B; ++i) {
    Reference ref =
        reference_matmul(a.select(0, i).contiguous(), b.select(0, i).contiguous(), false, false);
    CHECK(scaled_error(got.select(0, i).contiguous(), ref) < kTolF64);
  }
  CHECK(max_abs_diff(got, bmm(a.contiguous(), b.contiguous())) < 1e-12);

  // Matrices transposed in place (B, m, k) with strides (m k, 1, m), with trans flags too, and
  // a batch of 1 expanded to B (batch stride 0).
  Tensor a_t = randn({B, k, m}, gen, DType::f64).transpose(1, 2);
  Tensor b_expanded = randn({1, n, k}, gen, DType::f64).expand({B, n, k});
  REQUIRE(b_expanded.stride(0) == 0);
  for (int combo = 0; combo < 4; ++combo) {
    bool ta = combo & 1, tb = combo & 2;
    Tensor lhs = ta ? a_t.transpose(1, 2) : a_t;  // op(lhs) is (m, k) either way
    Tensor rhs = tb ? b_expanded : b_expanded.transpose(1, 2);
    Tensor c = bmm(lhs, rhs, ta, tb);
    INFO(fmt::format("trans_a={} trans_b={}", ta, tb));
    REQUIRE(c.shape() == Shape{B, m, n});
    for (int64_t i = 0; i < B; ++i) {
      Reference ref =
          reference_matmul(lhs.select(0, i).contiguous(), rhs.select(0, i).contiguous(), ta, tb);
      CHECK(scaled_error(c.select(0, i).contiguous(), ref) < kTolF64);
    }
  }
}

TEST_CASE("bmm of bf16 inputs equals the f32 batched product rounded to bf16") {
  Generator gen(6);
  Tensor a = randn({2, 5, 70}, gen).to(DType::bf16), b = randn({1, 70, 3}, gen).to(DType::bf16);
  Tensor c = bmm(a, b);
  REQUIRE(c.dtype() == DType::bf16);
  std::vector<double> want = bmm(a.to(DType::f32), b.to(DType::f32)).to_vector<double>();
  std::vector<double> got = c.to_vector<double>();
  REQUIRE(got.size() == 30);
  for (size_t i = 0; i < got.size(); ++i)
    CHECK(std::abs(got[i] - want[i]) <= std::abs(want[i]) / 256);  // half a bf16 ulp
}

TEST_CASE("gemm_ accumulates alpha times the product onto beta times the existing output") {
  Generator gen(7);
  const int64_t m = 70, k = 13, n = 66;
  for (DType dtype : {DType::f32, DType::f64}) {
    for (int combo = 0; combo < 4; ++combo) {
      bool ta = combo & 1, tb = combo & 2;
      Tensor a = ta ? operand(k, m, dtype, gen) : operand(m, k, dtype, gen);
      Tensor b = tb ? operand(n, k, dtype, gen) : operand(k, n, dtype, gen);
      Tensor out = randn({m, n}, gen, dtype);
      std::vector<double> before = out.to_vector<double>();
      const double alpha = 0.75, beta = -1.5;
      gemm_(out, a, b, ta, tb, alpha, beta);
      Reference ref = reference_matmul(a, b, ta, tb);
      for (size_t i = 0; i < ref.value.size(); ++i) {
        ref.value[i] = beta * before[i] + alpha * ref.value[i];
        ref.magnitude[i] = std::abs(beta * before[i]) + alpha * ref.magnitude[i];
      }
      INFO(fmt::format("{} trans_a={} trans_b={}", dtype, ta, tb));
      CHECK(scaled_error(out, ref) < tol_for(dtype));
    }
  }
}

TEST_CASE("gemm_ into a narrowed output view writes only inside the view") {
  Generator gen(8);
  const int64_t m = 5, k = 9, n = 70;
  for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
    Tensor big = randn({m, n + 7}, gen, dtype);
    Tensor outside_before = concat({big.narrow(1, 0, 3), big.narrow(1, 3 + n, 4)}, 1);
    Tensor out = big.narrow(1, 3, n);
    REQUIRE(out.stride(0) == n + 7);
    std::vector<double> before = out.to_vector<double>();
    Tensor a = randn({m, k}, gen, dtype), b = randn({n, k}, gen, dtype);
    gemm_(out, a, b, false, true, 2.0, 1.0);
    Reference ref = reference_matmul(a, b, false, true);
    for (size_t i = 0; i < ref.value.size(); ++i) {
      ref.value[i] = before[i] + 2.0 * ref.value[i];
      ref.magnitude[i] = std::abs(before[i]) + 2.0 * ref.magnitude[i];
    }
    INFO(fmt::format("{}", dtype));
    // bf16: the sum is rounded to bf16 once more (half an ulp, at most 2^-8 of the value).
    std::vector<double> got = big.narrow(1, 3, n).to_vector<double>();
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      double allowed = tol_for(dtype) * ref.magnitude[i] +
                       (dtype == DType::bf16 ? std::abs(ref.value[i]) / 256 : 0.0);
      worst = testing::nan_max(worst, std::abs(got[i] - ref.value[i]) / allowed);
    }
    CHECK(worst <= 1.0);
    Tensor outside_after = concat({big.narrow(1, 0, 3), big.narrow(1, 3 + n, 4)}, 1);
    CHECK(bitwise_equal(outside_before, outside_after));
  }
}

TEST_CASE("gemm_ rejects an output of the wrong shape, dtype or column stride") {
  Tensor a = zeros({2, 3}), b = zeros({3, 4});
  Tensor wrong_shape = zeros({4, 2});
  REQUIRE_THROWS_WITH(gemm_(wrong_shape, a, b, false, false),
                      Contains("gemm_") && Contains("[4, 2]") && Contains("[2, 4]"));
  Tensor wrong_dtype = zeros({2, 4}, DType::f64);
  REQUIRE_THROWS_WITH(gemm_(wrong_dtype, a, b, false, false),
                      Contains("gemm_") && Contains("f64") && Contains("f32"));
  Tensor transposed = zeros({4, 2}).t();
  REQUIRE_THROWS_WITH(gemm_(transposed, a, b, false, false), Contains("gemm_"));
}

TEST_CASE("linear computes x w^T + b, without bias, and over leading dims of 3-D input") {
  Generator gen(9);
  for (DType dtype : {DType::f32, DType::f64}) {
    const int64_t in = 70, out = 6;
    Tensor w = randn({out, in}, gen, dtype), bias = randn({out}, gen, dtype);
    std::vector<double> bv = bias.to_vector<double>();
    Tensor x2 = randn({5, in}, gen, dtype);
    Tensor x3 = randn({2, 3, in}, gen, dtype);
    for (const Tensor& x : {x2, x3}) {
      Tensor rows = x.reshape({-1, in});
      Reference ref = reference_matmul(rows, w, false, true);
      Shape want_shape = x.shape();
      want_shape[-1] = out;
      INFO(fmt::format("{} input {}", dtype, x.shape()));

      Tensor no_bias = linear(x, w, Tensor());
      REQUIRE(no_bias.shape() == want_shape);
      CHECK(scaled_error(no_bias.reshape({-1, out}), ref) < tol_for(dtype));

      Tensor with_bias = linear(x, w, bias);
      REQUIRE(with_bias.shape() == want_shape);
      for (int64_t i = 0; i < ref.m; ++i)
        for (int64_t j = 0; j < out; ++j) {
          ref.value[size_t(i * out + j)] += bv[size_t(j)];
          ref.magnitude[size_t(i * out + j)] += std::abs(bv[size_t(j)]);
        }
      CHECK(scaled_error(with_bias.reshape({-1, out}), ref) < tol_for(dtype));

      // A transposed (non-contiguous) weight and input give the same result.
      Tensor w_view = w.t().contiguous().t();
      Tensor x_view = x.transpose(0, -1).contiguous().transpose(0, -1);
      REQUIRE_FALSE(w_view.is_contiguous());
      REQUIRE_FALSE(x_view.is_contiguous());
      CHECK(max_abs_diff(linear(x_view, w_view, bias), with_bias) <= 20 * tol_for(dtype));
    }
  }
}

TEST_CASE("linear with a packed weight is bit for bit linear with the weight, else falls back") {
  Generator gen(19);
  const int64_t in = 300, out = 45;  // two K blocks; an edge sliver
  Tensor w = randn({out, in}, gen), bias = randn({out}, gen);
  PackedWeight packed = pack_weight(w);
  REQUIRE(packed.panels != nullptr);
  for (const Tensor& x :
       {randn({1, in}, gen), randn({2, 7, in}, gen), randn({5, in}, gen).t().contiguous().t()}) {
    INFO(fmt::format("input {}", x.shape()));
    CHECK(bitwise_equal(linear(x, packed, bias), linear(x, w, bias)));
    CHECK(bitwise_equal(linear(x, packed, Tensor()), linear(x, w, Tensor())));
  }
  // Not f32 on the CPU: nothing packed, the plain op; bad shapes: the plain op's errors.
  CHECK(pack_weight(w.to(DType::f64)).panels == nullptr);
  Tensor x64 = randn({3, in}, gen, DType::f64);
  CHECK(bitwise_equal(linear(x64, pack_weight(w.to(DType::f64)), Tensor()),
                      linear(x64, w.to(DType::f64), Tensor())));
  REQUIRE_THROWS_WITH(linear(randn({3, in + 1}, gen), packed, bias),
                      Contains("does not end in the weight's in_features 300"));
  REQUIRE_THROWS_WITH(linear(randn({3, in}, gen), packed, randn({4}, gen)),
                      Contains("bias [4] should be [45]"));
  // Under the Eigen backend the panels are not used: the result is Eigen's.
  cpu::set_gemm_backend(cpu::GemmBackend::eigen);
  Tensor x = randn({4, in}, gen);
  Tensor eigen = linear(x, w, bias), via_packed = linear(x, packed, bias);
  cpu::set_gemm_backend(cpu::GemmBackend::packed);
  CHECK(bitwise_equal(via_packed, eigen));
}

TEST_CASE("linear names the shapes when input, weight and bias disagree") {
  Tensor x = zeros({4, 3}), w = zeros({5, 2});
  REQUIRE_THROWS_WITH(linear(x, w, Tensor()),
                      Contains("linear") && Contains("[4, 3]") && Contains("[5, 2]"));
  Tensor w_ok = zeros({5, 3}), bad_bias = zeros({4});
  REQUIRE_THROWS_WITH(linear(x, w_ok, bad_bias), Contains("linear") && Contains("[4]"));
  REQUIRE_THROWS_WITH(linear(x, zeros({5, 3, 1}), Tensor()),
                      Contains("linear") && Contains("[5, 3, 1]"));
}

TEST_CASE("matmul and bmm errors name the op and the shapes") {
  SECTION("inner dims differ") {
    REQUIRE_THROWS_WITH(matmul(zeros({2, 3}), zeros({4, 5})),
                        Contains("matmul") && Contains("[2, 3]") && Contains("[4, 5]"));
    // With trans_b the inner dim of b is its second: (2, 3) @ (5, 4)^T does not fit.
    REQUIRE_THROWS_WITH(matmul(zeros({2, 3}), zeros({5, 4}), false, true),
                        Contains("matmul") && Contains("[2, 3]") && Contains("[5, 4]"));
    REQUIRE_THROWS_WITH(bmm(zeros({2, 3, 4}), zeros({2, 5, 6})),
                        Contains("bmm") && Contains("[2, 3, 4]") && Contains("[2, 5, 6]"));
  }
  SECTION("wrong ranks") {
    REQUIRE_THROWS_WITH(matmul(zeros({2, 3, 4}), zeros({4, 5})),
                        Contains("matmul") && Contains("[2, 3, 4]") && Contains("[4, 5]"));
    REQUIRE_THROWS_WITH(matmul(zeros({3}), zeros({3, 5})),
                        Contains("matmul") && Contains("[3]") && Contains("[3, 5]"));
    REQUIRE_THROWS_WITH(bmm(zeros({3, 4}), zeros({1, 4, 5})),
                        Contains("bmm") && Contains("[3, 4]") && Contains("[1, 4, 5]"));
  }
  SECTION("batch sizes that neither match nor broadcast") {
    REQUIRE_THROWS_WITH(bmm(zeros({2, 3, 4}), zeros({3, 4, 5})),
                        Contains("bmm") && Contains("[2, 3, 4]") && Contains("[3, 4, 5]"));
  }
  SECTION("dtypes differ or are not floating") {
    REQUIRE_THROWS_WITH(matmul(zeros({2, 3}), zeros({3, 4}, DType::f64)),
                        Contains("matmul") && Contains("f32") && Contains("f64"));
    REQUIRE_THROWS_WITH(bmm(zeros({1, 2, 3}, DType::bf16), zeros({1, 3, 4})),
                        Contains("bmm") && Contains("bf16") && Contains("f32"));
    REQUIRE_THROWS_WITH(matmul(zeros({2, 3}, DType::i64), zeros({3, 4}, DType::i64)),
                        Contains("matmul") && Contains("i64"));
  }
}

TEST_CASE("matmul, bmm and linear are bitwise identical at 1 and 2 threads") {
  Generator gen(10);
  // Sizes that split into several 64-wide blocks with enough work per block to use threads:
  // 256 x 300 x 200 (blocks along rows), 96 x 300 x 256 (blocks along columns).
  const MatmulShape shapes[] = {{256, 300, 200}, {96, 300, 256}};
  for (DType dtype : {DType::f32, DType::f64}) {
    for (const MatmulShape& s : shapes) {
      for (int combo = 0; combo < 4; ++combo) {
        bool ta = combo & 1, tb = combo & 2;
        Tensor a = ta ? operand(s.k, s.m, dtype, gen) : operand(s.m, s.k, dtype, gen);
        Tensor b = tb ? operand(s.n, s.k, dtype, gen) : operand(s.k, s.n, dtype, gen);
        Tensor one, two;
        {
          ThreadCount t(1);
          one = matmul(a, b, ta, tb);
        }
        {
          ThreadCount t(2);
          two = matmul(a, b, ta, tb);
        }
        INFO(fmt::format("{} m={} k={} n={} trans_a={} trans_b={}", dtype, s.m, s.k, s.n, ta, tb));
        CHECK(bitwise_equal(one, two));
      }
    }
  }
  Tensor a = randn({4, 100, 80}, gen), b = randn({4, 80, 90}, gen);
  Tensor x = randn({3, 100, 300}, gen), w = randn({200, 300}, gen), bias = randn({200}, gen);
  Tensor bmm1, bmm2, lin1, lin2;
  {
    ThreadCount t(1);
    bmm1 = bmm(a, b);
    lin1 = linear(x, w, bias);
  }
  {
    ThreadCount t(2);
    bmm2 = bmm(a, b);
    lin2 = linear(x, w, bias);
  }
  CHECK(bitwise_equal(bmm1, bmm2));
  CHECK(bitwise_equal(lin1, lin2));
}
