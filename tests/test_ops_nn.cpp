// softmax, log_softmax, layer norm, embedding, cross-entropy, index_select, concat and split,
// forward and backward, against references written out in double. Last, the checks before
// dispatch: a bad argument gets the op surface's message, the same on the CPU and on a GPU.
#include <cmath>
#include <functional>

#include "cuda_testing.h"

using namespace forge;
using namespace forge::testing;

namespace {

// A tensor as rows along `dim`: for each of the other index combinations, the flat positions of
// the elements along `dim` (so references can work on rows whatever the dim).
std::vector<std::vector<size_t>> rows_along(const Shape& shape, int dim) {
  int d = dim < 0 ? dim + shape.size() : dim;
  Shape strides = contiguous_strides(shape);
  std::vector<std::vector<size_t>> rows;
  for (int64_t flat = 0; flat < shape.numel(); ++flat) {
    if ((flat / strides[d]) % shape[d] != 0) continue;  // rows start where index[d] == 0
    std::vector<size_t> row;
    for (int64_t j = 0; j < shape[d]; ++j) row.push_back(size_t(flat + j * strides[d]));
    rows.push_back(row);
  }
  return rows;
}

// softmax (log_softmax when `log`) of x along dim, in double.
std::vector<double> reference_softmax(const Tensor& x, int dim, bool log) {
  std::vector<double> v = x.to_vector<double>(), out(v.size());
  for (const auto& row : rows_along(x.shape(), dim)) {
    double m = -INFINITY;
    for (size_t i : row) m = std::max(m, v[i]);
    double s = 0;
    for (size_t i : row) s += std::exp(v[i] - m);
    for (size_t i : row) out[i] = log ? v[i] - m - std::log(s) : std::exp(v[i] - m) / s;
  }
  return out;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    m = std::max(m, std::abs(a[i] - b[i]));
  }
  return m;
}

// Layer norm of x (R, C) in double: y, mean, rstd.
struct LayerNormReference {
  std::vector<double> y, mean, rstd;
};
LayerNormReference reference_layer_norm(const std::vector<double>& x, int64_t R, int64_t C,
                                        const std::vector<double>& w, const std::vector<double>& b,
                                        double eps) {
  LayerNormReference r{std::vector<double>(x.size()), {}, {}};
  for (int64_t i = 0; i < R; ++i) {
    double m = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) m += x[size_t(i * C + c)];
    m /= double(C);
    for (int64_t c = 0; c < C; ++c) var += (x[size_t(i * C + c)] - m) * (x[size_t(i * C + c)] - m);
    double rs = 1.0 / std::sqrt(var / double(C) + eps);
    r.mean.push_back(m);
    r.rstd.push_back(rs);
    for (int64_t c = 0; c < C; ++c)
      r.y[size_t(i * C + c)] = (x[size_t(i * C + c)] - m) * rs * (w.empty() ? 1.0 : w[size_t(c)]) +
                               (b.empty() ? 0.0 : b[size_t(c)]);
  }
  return r;
}

}  // namespace

// ============================================================================================
// softmax, log_softmax

TEST_CASE("softmax and log_softmax over the last dim match a double reference") {
  Generator gen(1);
  for (DType dtype : {DType::f32, DType::f64}) {
    Tensor x = mul(randn({5, 37}, gen, dtype), 3.0);
    double tol = dtype == DType::f64 ? 1e-14 : 1e-6;
    std::vector<double> sm = softmax(x, -1).to_vector<double>();
    INFO(fmt::format("{}", dtype));
    CHECK(max_abs_diff(sm, reference_softmax(x, -1, false)) < tol);
    // log_softmax values reach about -20 here: compare with a tolerance scaled to that.
    CHECK(max_abs_diff(log_softmax(x, 1).to_vector<double>(), reference_softmax(x, -1, true)) <
          20 * tol);
    for (int64_t r = 0; r < 5; ++r) {
      double s = 0;
      for (int64_t c = 0; c < 37; ++c) s += sm[size_t(r * 37 + c)];
      CHECK(std::abs(s - 1.0) < 40 * tol);
    }
  }
}

TEST_CASE("softmax matches hand-computed values") {
  // softmax([0, ln 2, ln 5]) = [1, 2, 5] / 8
  Tensor x = from_vector<double>({0.0, std::log(2.0), std::log(5.0)}, {1, 3});
  std::vector<double> y = softmax(x, -1).to_vector<double>();
  CHECK(max_abs_diff(y, {0.125, 0.25, 0.625}) < 1e-15);
  std::vector<double> ly = log_softmax(x, -1).to_vector<double>();
  CHECK(max_abs_diff(ly, {std::log(0.125), std::log(0.25), std::log(0.625)}) < 1e-15);
}

TEST_CASE("softmax and log_softmax over a middle or first dim normalise along that dim") {
  Generator gen(2);
  for (DType dtype : {DType::f32, DType::f64}) {
    Tensor x = randn({3, 5, 4}, gen, dtype);
    double tol = dtype == DType::f64 ? 1e-14 : 1e-6;
    for (int dim : {1, -2, 0}) {
      INFO(fmt::format("{} dim {}", dtype, dim));
      Tensor y = softmax(x, dim);
      REQUIRE(y.shape() == x.shape());
      CHECK(max_abs_diff(y.to_vector<double>(), reference_softmax(x, dim, false)) < tol);
      CHECK(max_abs_diff(log_softmax(x, dim).to_vector<double>(), reference_softmax(x, dim, true)) <
            10 * tol);
    }
    // A non-contiguous input: the transpose of a (4, 5) matrix, softmax along its rows.
    Tensor xt = randn({4, 5}, gen, dtype).t();
    CHECK(max_abs_diff(softmax(xt, -1).to_vector<double>(),
                       reference_softmax(xt.contiguous(), -1, false)) < tol);
  }
}

TEST_CASE("softmax and log_softmax are stable for inputs near 1000 and for wide spreads") {
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(fmt::format("{}", dtype));
    // 1000 + x: the same probabilities as x, no overflow.
    Tensor small = from_vector<double>({0.5, -1.0, 2.0, 0.0}, {1, 4}).to(dtype);
    Tensor big = add(small, 1000.0);
    std::vector<double> want = reference_softmax(small, -1, false);
    std::vector<double> got = softmax(big, -1).to_vector<double>();
    CHECK(all_finite(softmax(big, -1)));
    CHECK(max_abs_diff(got, want) < 1e-6);
    CHECK(max_abs_diff(log_softmax(big, -1).to_vector<double>(),
                       reference_softmax(small, -1, true)) < 1e-4);  // 1000 + x loses bits in f32
    // -1000 + x likewise (no underflow of the whole row to 0/0).
    CHECK(max_abs_diff(softmax(add(small, -1000.0), -1).to_vector<double>(), want) < 1e-6);
    // A spread of 2000: exp(-1000) underflows to 0, log_softmax stays exact.
    Tensor wide = from_vector<double>({1000.0, 0.0, -1000.0}, {1, 3}).to(dtype);
    CHECK(softmax(wide, -1).to_vector<double>() == std::vector<double>{1.0, 0.0, 0.0});
    CHECK(log_softmax(wide, -1).to_vector<double>() == std::vector<double>{0.0, -1000.0, -2000.0});
  }
}

TEST_CASE("softmax of a one-element row is 1 and log_softmax is 0") {
  Tensor x = from_vector<float>({3.0f, -50.0f, 1e4f, 0.0f}, {4, 1});
  CHECK(softmax(x, -1).to_vector<float>() == std::vector<float>{1, 1, 1, 1});
  CHECK(log_softmax(x, -1).to_vector<float>() == std::vector<float>{0, 0, 0, 0});
  // Along dim 0 of a (1, 3) tensor every row has one element too.
  Tensor y = from_vector<double>({7.0, -2.0, 0.5}, {1, 3});
  CHECK(softmax(y, 0).to_vector<double>() == std::vector<double>{1, 1, 1});
  CHECK(log_softmax(y, 0).to_vector<double>() == std::vector<double>{0, 0, 0});
}

TEST_CASE("softmax_backward and log_softmax_backward equal the Jacobian-vector product") {
  Generator gen(3);
  Tensor x = randn({3, 4, 5}, gen, DType::f64), g = randn({3, 4, 5}, gen, DType::f64);
  for (int dim : {-1, 1}) {
    INFO(fmt::format("dim {}", dim));
    Tensor y = softmax(x, dim), ly = log_softmax(x, dim);
    std::vector<double> p = reference_softmax(x, dim, false), gv = g.to_vector<double>();
    std::vector<double> want_sm(p.size(), 0.0), want_lsm(p.size(), 0.0);
    // Explicit Jacobians per row: d softmax_i / d x_j = p_i (delta_ij - p_j);
    // d log_softmax_i / d x_j = delta_ij - p_j. dx_j = sum_i g_i J_ij.
    for (const auto& row : rows_along(x.shape(), dim))
      for (size_t j : row)
        for (size_t i : row) {
          double delta = i == j ? 1.0 : 0.0;
          want_sm[j] += gv[i] * p[i] * (delta - p[j]);
          want_lsm[j] += gv[i] * (delta - p[j]);
        }
    CHECK(max_abs_diff(softmax_backward(g, y, dim).to_vector<double>(), want_sm) < 1e-14);
    CHECK(max_abs_diff(log_softmax_backward(g, ly, dim).to_vector<double>(), want_lsm) < 1e-13);
  }
  // f32 against the same reference at f32 accuracy.
  Tensor x32 = x.to(DType::f32), g32 = g.to(DType::f32);
  std::vector<double> p = reference_softmax(x32, -1, false), gv = g32.to_vector<double>();
  std::vector<double> want(p.size(), 0.0);
  for (const auto& row : rows_along(x.shape(), -1))
    for (size_t j : row)
      for (size_t i : row) want[j] += gv[i] * p[i] * ((i == j ? 1.0 : 0.0) - p[j]);
  CHECK(max_abs_diff(softmax_backward(g32, softmax(x32, -1), -1).to_vector<double>(), want) < 1e-6);
}

// ============================================================================================
// layer norm

TEST_CASE("layer_norm gives y, mean and rstd of a double reference, with and without affine") {
  Generator gen(4);
  const int64_t C = 10;
  const double eps = 1e-5;
  for (DType dtype : {DType::f32, DType::f64}) {
    Tensor x = add(mul(randn({2, 3, C}, gen, dtype), 2.0), 0.5);
    Tensor w = randn({C}, gen, dtype), b = randn({C}, gen, dtype);
    std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>(),
                        bv = b.to_vector<double>();
    double tol = dtype == DType::f64 ? 1e-13 : 2e-6;
    struct Case {
      Tensor w, b;
      std::vector<double> wv, bv;
      const char* name;
    };
    for (const Case& c : {Case{w, b, wv, bv, "weight and bias"}, Case{w, {}, wv, {}, "weight only"},
                          Case{{}, {}, {}, {}, "no affine"}}) {
      INFO(fmt::format("{} {}", dtype, c.name));
      LayerNormResult r = layer_norm(x, c.w, c.b, eps);
      LayerNormReference ref = reference_layer_norm(xv, 6, C, c.wv, c.bv, eps);
      REQUIRE(r.y.shape() == x.shape());
      REQUIRE(r.mean.shape() == Shape{2, 3});
      REQUIRE(r.rstd.shape() == Shape{2, 3});
      CHECK(max_abs_diff(r.y.to_vector<double>(), ref.y) < 10 * tol);
      CHECK(max_abs_diff(r.mean.to_vector<double>(), ref.mean) < tol);
      CHECK(max_abs_diff(r.rstd.to_vector<double>(), ref.rstd) < tol);
    }
  }
  // Hand-computed: x = [1, 2, 3, 4], mean 2.5, var 1.25, eps 0: xhat = (x - 2.5) / sqrt(1.25).
  LayerNormResult r = layer_norm(from_vector<double>({1, 2, 3, 4}, {1, 4}), {}, {}, 0.0);
  double s = std::sqrt(1.25);
  CHECK(max_abs_diff(r.y.to_vector<double>(), {-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s}) < 1e-15);
  CHECK(r.mean.item() == 2.5);
  CHECK(std::abs(r.rstd.item() - 1 / s) < 1e-15);
}

TEST_CASE("layer_norm_backward gives dx, dweight and dbias of a double reference") {
  Generator gen(5);
  // 70 rows: more than one block of the row-blocked weight-gradient sums.
  const int64_t R = 70, C = 8;
  const double eps = 1e-5;
  for (DType dtype : {DType::f32, DType::f64}) {
    Tensor x = randn({R, C}, gen, dtype), dy = randn({R, C}, gen, dtype);
    Tensor w = randn({C}, gen, dtype), b = randn({C}, gen, dtype);
    std::vector<double> xv = x.to_vector<double>(), dyv = dy.to_vector<double>();
    double tol = dtype == DType::f64 ? 1e-12 : 2e-5;
    for (bool with_weight : {true, false}) {
      INFO(fmt::format("{} with_weight={}", dtype, with_weight));
      Tensor wt = with_weight ? w : Tensor();
      std::vector<double> wv = with_weight ? w.to_vector<double>() : std::vector<double>(C, 1.0);
      LayerNormResult f = layer_norm(x, wt, b, eps);
      LayerNormGrads g = layer_norm_backward(dy, x, wt, f.mean, f.rstd);
      LayerNormReference ref = reference_layer_norm(xv, R, C, {}, {}, eps);  // ref.y = xhat
      // dx_j = sum_i dy_i w_i d xhat_i / d x_j, with the explicit derivative
      // d xhat_i / d x_j = rstd (delta_ij - 1/C) - xhat_i xhat_j rstd / C.
      std::vector<double> want_dx(xv.size(), 0.0), want_dw(C, 0.0), want_db(C, 0.0);
      for (int64_t r = 0; r < R; ++r) {
        double rs = ref.rstd[size_t(r)];
        for (int64_t j = 0; j < C; ++j)
          for (int64_t i = 0; i < C; ++i) {
            double xi = ref.y[size_t(r * C + i)], xj = ref.y[size_t(r * C + j)];
            double d = rs * ((i == j ? 1.0 : 0.0) - 1.0 / double(C)) - xi * xj * rs / double(C);
            want_dx[size_t(r * C + j)] += dyv[size_t(r * C + i)] * wv[size_t(i)] * d;
          }
        for (int64_t c = 0; c < C; ++c) {
          want_dw[size_t(c)] += dyv[size_t(r * C + c)] * ref.y[size_t(r * C + c)];
          want_db[size_t(c)] += dyv[size_t(r * C + c)];
        }
      }
      REQUIRE(g.dx.defined());
      CHECK(max_abs_diff(g.dx.to_vector<double>(), want_dx) < tol);
      REQUIRE(g.dbias.defined());
      CHECK(max_abs_diff(g.dbias.to_vector<double>(), want_db) < 10 * tol);
      if (with_weight) {
        REQUIRE(g.dweight.defined());
        CHECK(max_abs_diff(g.dweight.to_vector<double>(), want_dw) < 10 * tol);
      } else {
        CHECK_FALSE(g.dweight.defined());
      }
    }
  }
}

TEST_CASE("layer_norm_backward skips dx or the parameter gradients when not asked") {
  Generator gen(6);
  Tensor x = randn({4, 6}, gen, DType::f64), dy = randn({4, 6}, gen, DType::f64);
  Tensor w = randn({6}, gen, DType::f64);
  LayerNormResult f = layer_norm(x, w, {}, 1e-5);
  LayerNormGrads full = layer_norm_backward(dy, x, w, f.mean, f.rstd);
  LayerNormGrads no_dx = layer_norm_backward(dy, x, w, f.mean, f.rstd, false, true);
  LayerNormGrads no_dw = layer_norm_backward(dy, x, w, f.mean, f.rstd, true, false);
  CHECK_FALSE(no_dx.dx.defined());
  CHECK(bitwise_equal(no_dx.dweight, full.dweight));
  CHECK(bitwise_equal(no_dw.dx, full.dx));
  CHECK_FALSE(no_dw.dweight.defined());
  CHECK_FALSE(no_dw.dbias.defined());
}

// ============================================================================================
// embedding

TEST_CASE("embedding picks weight rows and embedding_backward adds the rows of repeated indices") {
  Generator gen(7);
  const int64_t V = 5, C = 70;  // 70 columns: more than one 32-column chunk of the backward
  Tensor w = randn({V, C}, gen, DType::f64);
  std::vector<int64_t> idx = {0, 2, 2, 4, 0, 2};
  std::vector<double> wv = w.to_vector<double>();
  for (DType idx_dtype : {DType::i64, DType::i32}) {
    INFO(fmt::format("indices {}", idx_dtype));
    Tensor indices = from_vector<int64_t>(idx, {2, 3}).to(idx_dtype);
    Tensor out = embedding(w, indices);
    REQUIRE(out.shape() == Shape{2, 3, C});
    std::vector<double> ov = out.to_vector<double>(), want;
    for (int64_t i : idx)
      for (int64_t c = 0; c < C; ++c) want.push_back(wv[size_t(i * C + c)]);
    CHECK(ov == want);

    Tensor grad = randn({2, 3, C}, gen, DType::f64);
    std::vector<double> gv = grad.to_vector<double>(), want_dw(size_t(V * C), 0.0);
    for (size_t p = 0; p < idx.size(); ++p)
      for (int64_t c = 0; c < C; ++c) want_dw[size_t(idx[p] * C + c)] += gv[p * size_t(C) + c];
    Tensor dw = embedding_backward(grad, indices, V);
    REQUIRE(dw.shape() == Shape{V, C});
    CHECK(max_abs_diff(dw.to_vector<double>(), want_dw) < 1e-14);
    // Rows 1 and 3 are never picked: exactly zero.
    for (int64_t c = 0; c < C; ++c) {
      CHECK(dw.to_vector<double>()[size_t(1 * C + c)] == 0.0);
      CHECK(dw.to_vector<double>()[size_t(3 * C + c)] == 0.0);
    }
  }
  // Hand-computed f32: index 1 three times adds 1 + 2 + 4.
  Tensor dw =
      embedding_backward(from_vector<float>({1, 2, 4}, {3, 1}), from_vector<int64_t>({1, 1, 1}), 2);
  CHECK(dw.to_vector<float>() == std::vector<float>{0, 7});
}

TEST_CASE("embedding and embedding_backward name an out-of-range index") {
  Tensor w = zeros({5, 3});
  REQUIRE_THROWS_WITH(embedding(w, from_vector<int64_t>({0, 7, 1})),
                      Contains("embedding") && Contains("7") && Contains("5"));
  REQUIRE_THROWS_WITH(embedding(w, from_vector<int64_t>({-1}, {1})),
                      Contains("embedding") && Contains("-1"));
  REQUIRE_THROWS_WITH(embedding_backward(zeros({2, 3}), from_vector<int64_t>({0, 9}), 5),
                      Contains("embedding_backward") && Contains("9"));
  REQUIRE_THROWS_WITH(embedding(w, zeros({2})), Contains("embedding") && Contains("f32"));
}

// ============================================================================================
// cross-entropy

namespace {
// loss = mean over counted rows of lse_i - x_i[t_i]; lse per row.
struct CrossEntropyReference {
  double loss = 0;
  std::vector<double> lse;
  int64_t count = 0;
};
CrossEntropyReference reference_cross_entropy(const Tensor& logits, const std::vector<int64_t>& t,
                                              int64_t ignore_index) {
  std::vector<double> x = logits.to_vector<double>();
  int64_t N = logits.size(0), C = logits.size(1);
  CrossEntropyReference r;
  double total = 0;
  for (int64_t i = 0; i < N; ++i) {
    double m = -INFINITY, s = 0;
    for (int64_t c = 0; c < C; ++c) m = std::max(m, x[size_t(i * C + c)]);
    for (int64_t c = 0; c < C; ++c) s += std::exp(x[size_t(i * C + c)] - m);
    r.lse.push_back(m + std::log(s));
    if (t[size_t(i)] == ignore_index) continue;
    total += r.lse.back() - x[size_t(i * C + t[size_t(i)])];
    ++r.count;
  }
  r.loss = r.count ? total / double(r.count) : 0.0;
  return r;
}
}  // namespace

TEST_CASE("cross_entropy gives the mean of lse minus the target logit, and each row's lse") {
  Generator gen(8);
  const std::vector<int64_t> t = {0, 4, 2, 2, 1, 3};
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(fmt::format("{}", dtype));
    Tensor logits = mul(randn({6, 5}, gen, dtype), 2.0);
    CrossEntropyResult r = cross_entropy(logits, from_vector<int64_t>(t));
    CrossEntropyReference ref = reference_cross_entropy(logits, t, -100);
    double tol = dtype == DType::f64 ? 1e-14 : 2e-6;
    CHECK(r.count == 6);
    CHECK(r.loss.dim() == 0);
    CHECK(r.loss.dtype() == dtype);
    CHECK(std::abs(r.loss.item() - ref.loss) < tol);
    CHECK(max_abs_diff(r.lse.to_vector<double>(), ref.lse) < tol);
    // The same logits shifted by 1000: the same loss, no overflow.
    CrossEntropyResult shifted = cross_entropy(add(logits, 1000.0), from_vector<int64_t>(t));
    CHECK(std::abs(shifted.loss.item() - ref.loss) < (dtype == DType::f64 ? 1e-12 : 1e-4));
  }
  // Hand-computed: logits [0, ln 3] target 1: loss = ln(1 + 3) - ln 3 = ln(4/3).
  Tensor l = from_vector<double>({0.0, std::log(3.0)}, {1, 2});
  CHECK(std::abs(cross_entropy(l, from_vector<int64_t>({1}, {1})).loss.item() -
                 std::log(4.0 / 3.0)) < 1e-15);
}

TEST_CASE("cross_entropy leaves rows with ignore_index out of the loss and the mean") {
  Generator gen(9);
  Tensor logits = randn({6, 5}, gen, DType::f64);
  SECTION("the default ignore_index -100") {
    std::vector<int64_t> t = {0, -100, 2, -100, 1, 3};
    CrossEntropyResult r = cross_entropy(logits, from_vector<int64_t>(t));
    CrossEntropyReference ref = reference_cross_entropy(logits, t, -100);
    CHECK(r.count == 4);
    CHECK(std::abs(r.loss.item() - ref.loss) < 1e-14);
    // The mean over 4 rows, not 6: dropping the ignored rows gives the same loss.
    Tensor kept = index_select(logits, from_vector<int64_t>({0, 2, 4, 5}));
    CHECK(std::abs(cross_entropy(kept, from_vector<int64_t>({0, 2, 1, 3})).loss.item() -
                   r.loss.item()) < 1e-14);
  }
  SECTION("a class index used as ignore_index") {
    std::vector<int64_t> t = {3, 0, 3, 1, 2, 4};
    CrossEntropyResult r = cross_entropy(logits, from_vector<int64_t>(t), 3);
    CHECK(r.count == 4);
    CHECK(std::abs(r.loss.item() - reference_cross_entropy(logits, t, 3).loss) < 1e-14);
  }
  SECTION("all rows ignored gives loss 0 and a zero gradient, not NaN") {
    for (DType dtype : {DType::f32, DType::f64}) {
      Tensor x = logits.to(dtype);
      Tensor t = from_vector<int64_t>({-100, -100, -100, -100, -100, -100});
      CrossEntropyResult r = cross_entropy(x, t);
      CHECK(r.count == 0);
      CHECK(r.loss.item() == 0.0);
      Tensor dx = cross_entropy_backward(ones({}, dtype), x, t, r.lse, r.count);
      CHECK(dx.to_vector<double>() == std::vector<double>(30, 0.0));
    }
  }
}

TEST_CASE("cross_entropy names the row and value of an out-of-range target") {
  Tensor logits = zeros({4, 5});
  REQUIRE_THROWS_WITH(cross_entropy(logits, from_vector<int64_t>({0, 1, 5, 2})),
                      Contains("cross_entropy") && Contains("target 5") && Contains("row 2"));
  REQUIRE_THROWS_WITH(cross_entropy(logits, from_vector<int64_t>({0, -1, 0, 0})),
                      Contains("cross_entropy") && Contains("-1") && Contains("row 1"));
  REQUIRE_THROWS_WITH(cross_entropy(logits, from_vector<int64_t>({0, 1, 2})),
                      Contains("cross_entropy") && Contains("[3]"));
}

TEST_CASE("cross_entropy_backward is (softmax - onehot) * grad / count, zero on ignored rows") {
  Generator gen(10);
  const std::vector<int64_t> t = {0, -100, 4, 2, -100, 1, 3};
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(fmt::format("{}", dtype));
    Tensor logits = mul(randn({7, 5}, gen, dtype), 2.0);
    Tensor targets = from_vector<int64_t>(t);
    CrossEntropyResult r = cross_entropy(logits, targets);
    const double grad_loss = 2.5;
    Tensor dx = cross_entropy_backward(full({}, grad_loss, dtype), logits, targets, r.lse, r.count);
    std::vector<double> x = logits.to_vector<double>(), want(x.size(), 0.0);
    CrossEntropyReference ref = reference_cross_entropy(logits, t, -100);
    REQUIRE(ref.count == 5);
    for (int64_t i = 0; i < 7; ++i) {
      if (t[size_t(i)] == -100) continue;
      for (int64_t c = 0; c < 5; ++c) {
        double p = std::exp(x[size_t(i * 5 + c)] - ref.lse[size_t(i)]);
        want[size_t(i * 5 + c)] = (p - (c == t[size_t(i)] ? 1.0 : 0.0)) * grad_loss / 5.0;
      }
    }
    REQUIRE(dx.shape() == logits.shape());
    CHECK(max_abs_diff(dx.to_vector<double>(), want) < (dtype == DType::f64 ? 1e-15 : 1e-7));
    // Ignored rows are exactly zero.
    std::vector<double> dv = dx.to_vector<double>();
    for (int64_t c = 0; c < 5; ++c) {
      CHECK(dv[size_t(1 * 5 + c)] == 0.0);
      CHECK(dv[size_t(4 * 5 + c)] == 0.0);
    }
  }
}

// ============================================================================================
// index_select, concat, split

TEST_CASE("index_select picks rows in the order given, repeats included") {
  Tensor a = arange(0, 15, 1, DType::f64).reshape({5, 3});
  Tensor out = index_select(a, from_vector<int64_t>({4, 0, 4, 2}));
  REQUIRE(out.shape() == Shape{4, 3});
  CHECK(out.to_vector<double>() == std::vector<double>{12, 13, 14, 0, 1, 2, 12, 13, 14, 6, 7, 8});
  // Integer data, i32 indices, a 3-D tensor, a non-contiguous source.
  Tensor b = arange(0, 12, 1, DType::i64).reshape({3, 2, 2});
  CHECK(index_select(b, from_vector<int32_t>({2, 1})).to_vector<int64_t>() ==
        std::vector<int64_t>{8, 9, 10, 11, 4, 5, 6, 7});
  Tensor at = a.t();  // (3, 5): rows are a's columns
  CHECK(index_select(at, from_vector<int64_t>({1}, {1})).to_vector<double>() ==
        std::vector<double>{1, 4, 7, 10, 13});
  REQUIRE_THROWS_WITH(index_select(a, from_vector<int64_t>({5}, {1})),
                      Contains("index_select") && Contains("5"));
  // Many rows (split across threads, each copy after asking for the rows ahead of it) of 70
  // floats (rows not a whole number of cache lines), at random, against plain loops.
  Generator gen(5);
  Tensor table = randn({1000, 70}, gen);
  Tensor idx = randperm(1000, gen).narrow(0, 0, 300).contiguous();
  for (int threads : {1, 2}) {
    testing::ThreadCount tc(threads);
    Tensor got = index_select(table, idx);
    REQUIRE(got.shape() == Shape{300, 70});
    bool same = true;
    for (int64_t i = 0; i < 300; ++i)
      for (int64_t j = 0; j < 70; ++j)
        same = same && got.data<float>()[i * 70 + j] ==
                           table.data<float>()[idx.data<int64_t>()[i] * 70 + j];
    CHECK(same);
  }
}

TEST_CASE("concat joins along any dim and split returns views with the given sizes") {
  Tensor a = arange(0, 6, 1, DType::f32).reshape({2, 3});
  Tensor b = arange(10, 14, 1, DType::f32).reshape({2, 2});
  Tensor c = arange(20, 22, 1, DType::f32).reshape({2, 1});
  Tensor joined = concat({a, b, c}, 1);
  REQUIRE(joined.shape() == Shape{2, 6});
  CHECK(joined.to_vector<float>() == std::vector<float>{0, 1, 2, 10, 11, 20, 3, 4, 5, 12, 13, 21});
  // Along dim 0 (and -2), with a transposed (non-contiguous) part.
  Tensor rows = concat({a, arange(30, 36, 1, DType::f32).reshape({3, 2}).t()}, -2);
  REQUIRE(rows.shape() == Shape{4, 3});
  CHECK(rows.to_vector<float>() == std::vector<float>{0, 1, 2, 3, 4, 5, 30, 32, 34, 31, 33, 35});

  std::vector<Tensor> parts = split(joined, {3, 2, 1}, 1);
  REQUIRE(parts.size() == 3);
  CHECK(bitwise_equal(parts[0], a));
  CHECK(bitwise_equal(parts[1], b));
  CHECK(bitwise_equal(parts[2], c));
  // Views: writing into a part writes into the joined tensor.
  parts[1].fill_(-1);
  CHECK(joined.to_vector<float>() == std::vector<float>{0, 1, 2, -1, -1, 20, 3, 4, 5, -1, -1, 21});
  // A zero size gives an empty part.
  std::vector<Tensor> with_empty = split(rows, {0, 4}, 0);
  CHECK(with_empty[0].shape() == Shape{0, 3});
  CHECK(bitwise_equal(with_empty[1], rows));
}

TEST_CASE("concat and split name the shapes that do not fit") {
  Tensor a = zeros({2, 3}), b = zeros({3, 3}), c = zeros({2, 3}, DType::f64);
  REQUIRE_THROWS_WITH(concat({a, b}, 1),
                      Contains("concat") && Contains("[2, 3]") && Contains("[3, 3]"));
  REQUIRE_THROWS_WITH(concat({a, c}, 0), Contains("concat") && Contains("f64"));
  REQUIRE_THROWS_WITH(concat({a, zeros({2})}, 0), Contains("concat") && Contains("[2]"));
  REQUIRE_THROWS_WITH(concat({}, 0), Contains("concat"));
  REQUIRE_THROWS_WITH(split(a, {1, 1}, 1),
                      Contains("split") && Contains("[1, 1]") && Contains("[2, 3]"));
  REQUIRE_THROWS_WITH(split(a, {4, -1}, 1), Contains("split") && Contains("-1"));
}

// ============================================================================================
// Checks before dispatch: every op validates its arguments before it picks a device, so a
// mistake has one message. Most cases below were checked only by the CUDA host code before
// (mean/rstd, lse, the dropout mask, index dtypes of the backward); on the CPU they now throw the
// op's message instead of reading past a buffer. With a GPU, the same calls on it must give the
// very same message.

namespace {

// The message of the forge::Error f throws; "" when it throws none.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

struct BadCall {
  std::string message;               // the op surface's, word for word
  std::function<void(Device)> call;  // the mistake, with every tensor on the device
};

std::vector<BadCall> bad_calls() {
  auto i64 = [](std::vector<int64_t> v) { return from_vector<int64_t>(v); };
  return {
      {"softmax_backward: grad [2, 3] f32 and output [3, 2] f32 differ",
       [](Device d) {
         softmax_backward(zeros({2, 3}).to(d), zeros({3, 2}).to(d), 0);
       }},
      {"log_softmax: dim 2 out of range for a 2-d tensor",
       [](Device d) {
         log_softmax(zeros({2, 3}).to(d), 2);
       }},
      {"layer_norm: weight/bias [4] f32 should be [3] f32 for input [2, 3]",
       [](Device d) {
         layer_norm(zeros({2, 3}).to(d), zeros({4}).to(d), Tensor(), 1e-5);
       }},
      {"layer_norm_backward: mean/rstd [3] f32 should be 2 contiguous values (f32) for input "
       "[2, 3]",
       [](Device d) {
         layer_norm_backward(zeros({2, 3}).to(d), zeros({2, 3}).to(d), Tensor(), zeros({2}).to(d),
                             zeros({3}).to(d));
       }},
      {"embedding: indices must be integers, got f32",
       [](Device d) {
         embedding(zeros({5, 3}).to(d), zeros({2}).to(d));
       }},
      {"embedding_backward: indices must be integers, got f32",
       [](Device d) {
         embedding_backward(zeros({2, 3}).to(d), zeros({2}).to(d), 5);
       }},
      {"cross_entropy: targets must be integers of shape [3], got i64 [2]",
       [=](Device d) {
         cross_entropy(zeros({3, 4}).to(d), i64({0, 1}).to(d));
       }},
      {"cross_entropy_backward: lse [2] f32 should be 3 contiguous values (f32)",
       [=](Device d) {
         cross_entropy_backward(ones({}).to(d), zeros({3, 4}).to(d), i64({0, 1, 2}).to(d),
                                zeros({2}).to(d), 3, -100);
       }},
      {"causal_attention_backward: dropout mask [1, 2, 4, 3] u8 does not match (1, 2, 4, 4) u8",
       [](Device d) {
         causal_attention_backward(zeros({1, 4, 4}).to(d), zeros({1, 4, 12}).to(d),
                                   zeros({1, 2, 4, 4}).to(d), zeros({1, 2, 4, 3}, DType::u8).to(d),
                                   2, 0.5);
       }},
      {"max: cannot reduce an empty dim of shape [3, 0]",
       [](Device d) {
         max(zeros({3, 0}).to(d), 1);
       }},
      {"exp: expected a floating dtype, got i64",
       [](Device d) { exp(zeros({2}, DType::i64).to(d)); }},
      {"div: expected a floating dtype, got i32",
       [](Device d) { div(zeros({2}, DType::i32).to(d), zeros({2}, DType::i32).to(d)); }},
      {"relu_backward: dtypes differ (f32 [3] and f64 [3])",
       [](Device d) { relu_backward(zeros({3}).to(d), zeros({3}, DType::f64).to(d)); }},
      {"where: condition must be an integer mask, got f32",
       [](Device d) { where(zeros({2}).to(d), zeros({2}).to(d), zeros({2}).to(d)); }},
      {"linear: dtypes differ (f32 and f64)",
       [](Device d) {
         linear(zeros({2, 3}).to(d), zeros({4, 3}, DType::f64).to(d), Tensor());
       }},
  };
}

}  // namespace

TEST_CASE("a bad argument gets the op surface's message, on the CPU and on the GPU alike") {
  for (const BadCall& c : bad_calls()) {
    INFO(c.message);
    CHECK(error_of([&] { c.call(Device::cpu()); }) == c.message);
  }
  if (!have_gpu("the op surface's messages on the GPU")) return;
  for (const BadCall& c : bad_calls()) {
    INFO(c.message);
    CHECK(error_of([&] { c.call(gpu); }) == c.message);
  }
}
