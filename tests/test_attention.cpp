// Causal self-attention: causal_attention (forward, dropout, backward through the Variable op) and
// cached_attention (the KV-cache inference path), against a naive reference written out in double.
//
// The reference, per batch b, head h and query t (hs = C / NH):
//   s_j = q_t . k_j / sqrt(hs)             for keys j = 0 .. t
//   P_tj = exp(s_j - max s) / sum exp(..)   (0 for j > t)
//   out_t = sum_j P_tj * m_tj / (1 - p) * v_j      (m = the dropout mask; 1 when p = 0)
// Tolerances: f64 results agree to 1e-12 (a few dozen roundings of O(1) numbers). f32 results carry
// the f32 rounding of the scores (|s| ~ a few, so ~1e-6 absolute), of exp and of sums of <= 17
// terms: 3e-5 absolute plus relative leaves a factor ~10 over what they show.
#include <cmath>
#include <cstring>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/lanes.h"
#include "tensor/cpu/vec_math.h"
#include "testing.h"

using namespace forge;
using namespace forge::testing;

namespace {

// Every element of a tensor as double, row-major, read straight from memory.
std::vector<double> values(const Tensor& t) {
  std::vector<double> out(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[size_t(i)] = read_element(t, unravel(i, t.shape()));
  return out;
}

struct Reference {
  std::vector<double> out;    // (B, T, C)
  std::vector<double> probs;  // (B, NH, T, T), before dropout
};

// The naive attention above; `mask` (B, NH, T, T) of 0/1, or empty for no dropout.
Reference naive_attention(const Tensor& qkv_tensor, int64_t NH,
                          const std::vector<double>& mask = {}, double p = 0.0) {
  const std::vector<double> qkv = values(qkv_tensor);
  const int64_t B = qkv_tensor.size(0), T = qkv_tensor.size(1), C = qkv_tensor.size(2) / 3;
  const int64_t hs = C / NH;
  auto at = [&](int64_t b, int64_t t, int64_t which, int64_t col) {
    return qkv[size_t((b * T + t) * 3 * C + which * C + col)];
  };
  Reference r{std::vector<double>(size_t(B * T * C), 0.0),
              std::vector<double>(size_t(B * NH * T * T), 0.0)};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < NH; ++h)
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> s(size_t(t + 1));
        double m = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < hs; ++d) dot += at(b, t, 0, h * hs + d) * at(b, j, 1, h * hs + d);
          s[size_t(j)] = dot / std::sqrt(double(hs));
          m = std::max(m, s[size_t(j)]);
        }
        double z = 0;
        for (double& x : s) z += (x = std::exp(x - m));
        for (int64_t j = 0; j <= t; ++j) {
          size_t pi = size_t(((b * NH + h) * T + t) * T + j);
          double prob = s[size_t(j)] / z;
          r.probs[pi] = prob;
          double weight = mask.empty() ? prob : prob * mask[pi] / (1.0 - p);
          for (int64_t d = 0; d < hs; ++d)
            r.out[size_t((b * T + t) * C + h * hs + d)] += weight * at(b, j, 2, h * hs + d);
        }
      }
  return r;
}

// The largest |a - b| / (atol + rtol |b|); <= 1 means every element is within tolerance.
double worst_ratio(const std::vector<double>& a, const std::vector<double>& b, double atol,
                   double rtol) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) return INFINITY;
    worst = testing::nan_max(worst, std::abs(a[i] - b[i]) / (atol + rtol * std::abs(b[i])));
  }
  return worst;
}

struct AttentionShape {
  int64_t B, T, C, NH;
};
// T = 1, T prime, one and several heads, head sizes 1 .. 8.
const AttentionShape kShapes[] = {{1, 1, 4, 1}, {2, 7, 12, 3},  {1, 13, 8, 2},
                                  {3, 5, 6, 6}, {2, 17, 16, 2}, {1, 3, 16, 4}};

void require_gradcheck(const GradcheckFn& fn, const Tensor& input) {
  GradcheckResult r = gradcheck(fn, {input});
  INFO(r.report);
  CHECK(r.ok);
  CHECK(r.checked == input.numel());
}

}  // namespace

// ============================================================================================
// Forward

TEST_CASE("causal_attention forward matches the naive double reference in f64 and f32") {
  Generator gen(1);
  for (const auto& [B, T, C, NH] : kShapes) {
    for (DType dtype : {DType::f64, DType::f32}) {
      INFO(fmt::format("B {} T {} C {} heads {} {}", B, T, C, NH, dtype));
      Tensor qkv = randn({B, T, 3 * C}, gen, dtype);
      AttentionResult r = causal_attention(qkv, int(NH));
      REQUIRE(r.out.shape() == Shape({B, T, C}));
      REQUIRE(r.probs.shape() == Shape({B, NH, T, T}));
      REQUIRE(r.out.dtype() == dtype);
      CHECK_FALSE(r.mask.defined());
      Reference ref = naive_attention(qkv, NH);
      double tol = dtype == DType::f64 ? 1e-12 : 3e-5;
      CHECK(worst_ratio(values(r.out), ref.out, tol, tol) <= 1.0);
      CHECK(worst_ratio(values(r.probs), ref.probs, tol, tol) <= 1.0);
    }
  }
}

TEST_CASE("causal_attention reads a non-contiguous qkv like its contiguous copy") {
  Generator gen(2);
  // (B, T, 3C) as a transposed view of (B, 3C, T).
  Tensor qkv = randn({2, 12, 5}, gen, DType::f64).transpose(1, 2);
  REQUIRE_FALSE(qkv.is_contiguous());
  AttentionResult r = causal_attention(qkv, 2);
  Reference ref = naive_attention(qkv, 2);
  CHECK(worst_ratio(values(r.out), ref.out, 1e-12, 1e-12) <= 1.0);
}

TEST_CASE("causal_attention probabilities are zero above the diagonal and each row sums to 1") {
  Generator gen(3);
  for (DType dtype : {DType::f64, DType::f32}) {
    INFO(fmt::format("{}", dtype));
    // Large scores (std 3) so a leak above the diagonal would carry real weight.
    Tensor qkv = mul(randn({2, 11, 3 * 8}, gen, dtype), 3.0);
    AttentionResult r = causal_attention(qkv, 2);
    const double row_tol = dtype == DType::f64 ? 1e-14 : 1e-6;  // 11 terms, each <= 1
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t t = 0; t < 11; ++t) {
          double row_sum = 0;
          for (int64_t j = 0; j < 11; ++j) {
            double p = read_element(r.probs, {b, h, t, j});
            if (j > t) {
              CHECK(p == 0.0);
            } else {
              CHECK(p >= 0.0);
              row_sum += p;
            }
          }
          CHECK(std::abs(row_sum - 1.0) <= row_tol);
        }
  }
}

TEST_CASE("causal_attention probabilities are, bit for bit, the softmax of the visible scores") {
  // Row t of P from S = Q K^T / sqrt(hs) (the same product, on and below the diagonal) by its
  // definition over the visible part alone: m = lanes_max(s, t + 1), e_j = vexp(s_j - m),
  // P_tj = e_j * (1 / lanes_sum(e, t + 1)), then 0 past t. The f32 rows of whole 16-lane groups
  // (T 16, 48, 64) take the vector path, T 37 the general one; a NaN score gives a NaN row.
  Generator gen(29);
  for (int64_t T : {16, 37, 48, 64}) {
    const int64_t NH = 2, hs = 8, C = NH * hs;
    Tensor qkv = mul(randn({2, T, 3 * C}, gen), 2.0);
    if (T == 48) qkv.data<float>()[5 * 3 * C] = std::nanf("");  // q of position 5, head 0
    AttentionResult r = causal_attention(qkv, int(NH));
    const float scale = float(1.0 / std::sqrt(double(hs)));
    int64_t wrong = 0;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t h = 0; h < NH; ++h) {
        const float* Q = qkv.data<float>() + b * T * 3 * C + h * hs;
        std::vector<float> S(size_t(T * T));
        cpu::gemm<float>(false, true, T, T, hs, scale, Q, 3 * C, Q + C, 3 * C, 0.0f, S.data(), T);
        const float* P = r.probs.data<float>() + (b * NH + h) * T * T;
        for (int64_t t = 0; t < T; ++t) {
          float* s = S.data() + t * T;
          const float m = cpu::lanes_max(s, t + 1);
          for (int64_t j = 0; j <= t; ++j) s[j] = cpu::vexp(s[j] - m);
          const float inv = 1.0f / cpu::lanes_sum(s, t + 1);
          for (int64_t j = 0; j < T; ++j) {
            const float want = j <= t ? s[j] * inv : 0.0f, got = P[t * T + j];
            if (std::memcmp(&want, &got, sizeof want) != 0 && !(want != want && got != got))
              ++wrong;
          }
        }
      }
    INFO("T " << T);
    CHECK(wrong == 0);
  }
}

TEST_CASE("causal_attention_backward is, bit for bit, its products and dS by definition") {
  // Per head, from the saved P: dP = dO V^T, dV = P^T dO, dS_tj = P_tj (dP_tj - lanes_dot(P_t,
  // dP_t, t + 1)) for j <= t (0 past t), dQ = dS K / sqrt(hs), dK = dS^T Q / sqrt(hs), each product
  // whole (the op's causal skips give the same bits). T 16 and 64 take the f32 vector rows, 37 the
  // general ones.
  Generator gen(31);
  for (int64_t T : {16, 37, 64}) {
    const int64_t NH = 2, hs = 8, C = NH * hs, B = 2;
    Tensor qkv = randn({B, T, 3 * C}, gen), dout = randn({B, T, C}, gen);
    AttentionResult r = causal_attention(qkv, int(NH));
    Tensor got = causal_attention_backward(dout, qkv, r.probs, Tensor(), int(NH), 0.0);
    Tensor want = zeros({B, T, 3 * C});
    const float scale = float(1.0 / std::sqrt(double(hs)));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < NH; ++h) {
        const float* Q = qkv.data<float>() + b * T * 3 * C + h * hs;
        const float *K = Q + C, *V = Q + 2 * C, *dO = dout.data<float>() + b * T * C + h * hs;
        float* dQ = want.data<float>() + b * T * 3 * C + h * hs;
        const float* P = r.probs.data<float>() + (b * NH + h) * T * T;
        std::vector<float> dP(size_t(T * T));
        cpu::gemm<float>(false, true, T, T, hs, 1.0f, dO, C, V, 3 * C, 0.0f, dP.data(), T);
        cpu::gemm<float>(true, false, T, hs, T, 1.0f, P, T, dO, C, 0.0f, dQ + 2 * C, 3 * C);
        for (int64_t t = 0; t < T; ++t) {
          float* d = dP.data() + t * T;
          const float dot = cpu::lanes_dot(P + t * T, d, t + 1);
          for (int64_t j = 0; j < T; ++j) d[j] = j <= t ? P[t * T + j] * (d[j] - dot) : 0.0f;
        }
        cpu::gemm<float>(false, false, T, hs, T, scale, dP.data(), T, K, 3 * C, 0.0f, dQ, 3 * C);
        cpu::gemm<float>(true, false, T, hs, T, scale, dP.data(), T, Q, 3 * C, 0.0f, dQ + C, 3 * C);
      }
    INFO("T " << T);
    CHECK(bitwise_equal(got, want));
  }
}

TEST_CASE("causal_attention with T = 1 returns v of the one position") {
  // A query that sees only itself gives probability 1 and out = v exactly.
  Generator gen(4);
  Tensor qkv = randn({3, 1, 3 * 6}, gen, DType::f64);
  AttentionResult r = causal_attention(qkv, 3);
  CHECK(bitwise_equal(r.out, qkv.narrow(2, 12, 6).contiguous()));
  CHECK(bitwise_equal(r.probs, ones({3, 3, 1, 1}, DType::f64)));
}

// ============================================================================================
// Dropout on the attention weights

TEST_CASE("causal_attention dropout keeps about 1-p of the weights and scales them by 1/(1-p)") {
  const int64_t B = 2, T = 32, C = 8, NH = 2;
  for (double p : {0.25, 0.5}) {
    INFO("p " << p);
    Generator gen(5);
    Tensor qkv = randn({B, T, 3 * C}, gen, DType::f64);
    Generator drop(77);
    AttentionResult r = causal_attention(qkv, int(NH), p, &drop);
    REQUIRE(r.mask.defined());
    REQUIRE(r.mask.dtype() == DType::u8);
    REQUIRE(r.mask.shape() == Shape({B, NH, T, T}));
    std::vector<double> mask = values(r.mask);
    double kept = 0;
    for (double m : mask) {
      REQUIRE((m == 0.0 || m == 1.0));
      kept += m;
    }
    // 4096 Bernoulli(1-p) draws: the kept fraction has std sqrt(p(1-p)/4096) <= 0.0079; 5 sigma.
    double n = double(mask.size());
    CHECK(std::abs(kept / n - (1.0 - p)) <= 5.0 * std::sqrt(p * (1.0 - p) / n));
    // The output is the reference computed with the same mask; probs stay the undropped weights.
    Reference with_mask = naive_attention(qkv, NH, mask, p);
    CHECK(worst_ratio(values(r.out), with_mask.out, 1e-12, 1e-12) <= 1.0);
    CHECK(worst_ratio(values(r.probs), with_mask.probs, 1e-12, 1e-12) <= 1.0);
    // And it differs from the undropped output (so the mask was applied at all).
    Reference plain = naive_attention(qkv, NH);
    CHECK(worst_ratio(values(r.out), plain.out, 1e-3, 0.0) > 1.0);
  }
}

TEST_CASE(
    "causal_attention dropout masks repeat for the same generator state and differ for "
    "another") {
  Generator gen(6);
  Tensor qkv = randn({1, 9, 12}, gen, DType::f32);
  Generator a(10), b(10), c(11);
  AttentionResult ra = causal_attention(qkv, 2, 0.3, &a);
  AttentionResult rb = causal_attention(qkv, 2, 0.3, &b);
  AttentionResult rc = causal_attention(qkv, 2, 0.3, &c);
  CHECK(bitwise_equal(ra.mask, rb.mask));
  CHECK(bitwise_equal(ra.out, rb.out));
  CHECK_FALSE(bitwise_equal(ra.mask, rc.mask));
  // The draw advanced the generator: a second call gives a new mask.
  AttentionResult ra2 = causal_attention(qkv, 2, 0.3, &a);
  CHECK_FALSE(bitwise_equal(ra.mask, ra2.mask));
}

TEST_CASE("causal_attention over a slice of the heads draws that slice of the whole mask") {
  // Tensor parallelism: rank r holds heads [r * NH / R, ...) with their q, k, v columns. Its
  // output and mask must be those heads' part of the unsplit layer's, and the generator must
  // advance alike on every rank.
  const int64_t B = 2, T = 7, NH = 4, hs = 3, C = NH * hs;
  Generator gen(8);
  Tensor qkv = randn({B, T, 3 * C}, gen, DType::f64);
  Generator whole_gen(21);
  AttentionResult whole = causal_attention(qkv, int(NH), 0.4, &whole_gen);
  for (int64_t R : {2, 4}) {
    const int64_t nh = NH / R;
    for (int64_t r = 0; r < R; ++r) {
      INFO(R << " ranks, rank " << r);
      std::vector<Tensor> parts;
      for (int64_t w = 0; w < 3; ++w) parts.push_back(qkv.narrow(2, w * C + r * nh * hs, nh * hs));
      Generator g(21);
      AttentionResult part =
          causal_attention(concat(parts, 2), int(nh), 0.4, &g, std::nullopt, {r * nh, NH});
      CHECK(bitwise_equal(part.mask, whole.mask.narrow(1, r * nh, nh).contiguous()));
      CHECK(bitwise_equal(part.out, whole.out.narrow(2, r * nh * hs, nh * hs).contiguous()));
      CHECK(g.state() == whole_gen.state());
    }
  }
  Generator g(21);
  REQUIRE_THROWS_WITH(causal_attention(qkv, int(NH), 0.4, &g, std::nullopt, {2, 5}),
                      Contains("causal_attention") && Contains("heads [2, 6) of 5"));
}

TEST_CASE("causal_attention Variable op ignores dropout outside training") {
  Generator gen(7);
  Variable qkv(randn({2, 6, 3 * 8}, gen, DType::f64));
  Generator drop(3);
  Variable eval_out = causal_attention(qkv, 2, 0.4, /*training=*/false, &drop);
  Variable plain = causal_attention(qkv, 2);
  CHECK(bitwise_equal(eval_out.data(), plain.data()));
  CHECK(drop.state().offset == 0);  // no mask drawn
  Variable train_out = causal_attention(qkv, 2, 0.4, /*training=*/true, &drop);
  CHECK(max_abs_diff(train_out.data(), plain.data()) > 1e-3);
}

// ============================================================================================
// Backward

TEST_CASE("gradcheck: causal_attention without dropout over several shapes") {
  Generator gen(8);
  const AttentionShape shapes[] = {{1, 1, 4, 1}, {2, 5, 6, 3}, {1, 7, 8, 2}, {1, 4, 4, 1}};
  for (const auto& [B, T, C, NH] : shapes) {
    INFO(fmt::format("B {} T {} C {} heads {}", B, T, C, NH));
    int nh = int(NH);
    require_gradcheck([nh](const std::vector<Variable>& v) { return causal_attention(v[0], nh); },
                      randn({B, T, 3 * C}, gen, DType::f64));
  }
}

TEST_CASE("gradcheck: causal_attention with dropout, the same mask at every evaluation") {
  Generator gen(9);
  for (double p : {0.2, 0.5}) {
    INFO("p " << p);
    // A fresh generator per evaluation: every finite-difference pass draws the same mask.
    auto fn = [p](const std::vector<Variable>& v) {
      Generator drop(1234);
      return causal_attention(v[0], 2, p, /*training=*/true, &drop);
    };
    Tensor qkv = randn({2, 6, 3 * 4}, gen, DType::f64);
    require_gradcheck(fn, qkv);
    // The check is not vacuous: dropout changed the output.
    Variable dropped = fn({Variable(qkv)});
    CHECK(max_abs_diff(dropped.data(), causal_attention(qkv, 2).out) > 1e-3);
  }
}

TEST_CASE("causal_attention_backward matches the Variable op's gradient and a hand-derived one") {
  // T = 1: out = v, so d qkv = (0 for q and k, dout for v) exactly.
  Generator gen(10);
  Tensor qkv = randn({2, 1, 3 * 4}, gen, DType::f64);
  AttentionResult r = causal_attention(qkv, 2);
  Tensor dout = randn({2, 1, 4}, gen, DType::f64);
  Tensor d = causal_attention_backward(dout, qkv, r.probs, r.mask, 2, 0.0);
  std::vector<double> dv = values(d), go = values(dout);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t c = 0; c < 12; ++c) {
      double expected = c < 8 ? 0.0 : go[size_t(b * 4 + c - 8)];
      CHECK(dv[size_t(b * 12 + c)] == expected);
    }
}

// ============================================================================================
// Cached attention

namespace {
// Runs cached_attention over qkv (B, T, 3C, f32) in chunks of the given sizes, appending keys and
// values to a cache of capacity `capacity` positions, and returns the rows (B, T, C) it produced.
Tensor run_cached(const Tensor& qkv, int n_head, const std::vector<int64_t>& chunks,
                  int64_t capacity) {
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3;
  Tensor kc = zeros({B, capacity, C}), vc = zeros({B, capacity, C});
  Tensor out = zeros({B, T, C});
  int64_t at = 0;
  for (int64_t n : chunks) {
    Tensor rows = qkv.narrow(1, at, n);
    kc.narrow(1, at, n).copy_(rows.narrow(2, C, C));
    vc.narrow(1, at, n).copy_(rows.narrow(2, 2 * C, C));
    Tensor y = cached_attention(rows.narrow(2, 0, C), kc.narrow(1, 0, at + n),
                                vc.narrow(1, 0, at + n), n_head, at);
    REQUIRE(y.shape() == Shape({B, n, C}));
    out.narrow(1, at, n).copy_(y);
    at += n;
  }
  REQUIRE(at == T);
  return out;
}
}  // namespace

TEST_CASE(
    "cached_attention fed one position or a chunk at a time gives the full attention's rows") {
  Generator gen(11);
  const int64_t B = 2, T = 10, C = 12;
  const int NH = 3;
  Tensor qkv = randn({B, T, 3 * C}, gen);
  Tensor full = causal_attention(qkv, NH).out;
  const std::vector<std::vector<int64_t>> schedules = {
      std::vector<int64_t>(10, 1), {3, 1, 4, 2}, {10}, {1, 9}};
  for (const auto& chunks : schedules) {
    INFO(fmt::format("chunks {}", chunks));
    // Capacity 16 > T: the cache views have a batch stride of 16 rows, not L.
    Tensor cached = run_cached(qkv, NH, chunks, 16);
    // Both f32, summing the same terms in possibly different orders: 1e-6 absolute (|out| < 3).
    CHECK(max_abs_diff(cached, full) <= 1e-6);
    // And against the double reference, at the f32 tolerance.
    CHECK(worst_ratio(values(cached), naive_attention(qkv, NH).out, 3e-5, 3e-5) <= 1.0);
  }
}

TEST_CASE("cached_attention reads k and v as views into qkv (row stride 3C)") {
  Generator gen(12);
  const int64_t C = 8;
  Tensor qkv = randn({2, 7, 3 * C}, gen);
  Tensor y =
      cached_attention(qkv.narrow(2, 0, C), qkv.narrow(2, C, C), qkv.narrow(2, 2 * C, C), 2, 0);
  CHECK(max_abs_diff(y, causal_attention(qkv, 2).out) <= 1e-6);
  // The last three positions as queries at offset 4 against all seven keys.
  Tensor tail = cached_attention(qkv.narrow(1, 4, 3).narrow(2, 0, C), qkv.narrow(2, C, C),
                                 qkv.narrow(2, 2 * C, C), 2, 4);
  CHECK(max_abs_diff(tail, causal_attention(qkv, 2).out.narrow(1, 4, 3)) <= 1e-6);
}

// ============================================================================================
// Thread-count independence

TEST_CASE(
    "causal_attention, its backward and cached_attention are bitwise equal at 1 and 2 "
    "threads") {
  Generator gen(13);
  Tensor qkv32 = randn({2, 9, 3 * 12}, gen), qkv64 = randn({2, 9, 3 * 12}, gen, DType::f64);
  Tensor dout = randn({2, 9, 12}, gen, DType::f64);
  struct Results {
    Tensor out32, out64, probs, out_drop, mask, dqkv, dqkv_drop, cached;
  };
  auto run = [&](int threads) {
    ThreadCount tc(threads);
    Results r;
    r.out32 = causal_attention(qkv32, 3).out;
    AttentionResult a = causal_attention(qkv64, 3);
    r.out64 = a.out;
    r.probs = a.probs;
    Generator drop(5);
    AttentionResult d = causal_attention(qkv64, 3, 0.3, &drop);
    r.out_drop = d.out;
    r.mask = d.mask;
    r.dqkv = causal_attention_backward(dout, qkv64, a.probs, a.mask, 3, 0.0);
    r.dqkv_drop = causal_attention_backward(dout, qkv64, d.probs, d.mask, 3, 0.3);
    r.cached = run_cached(qkv32, 3, {4, 1, 1, 3}, 12);
    return r;
  };
  Results one = run(1), two = run(2);
  CHECK(bitwise_equal(one.out32, two.out32));
  CHECK(bitwise_equal(one.out64, two.out64));
  CHECK(bitwise_equal(one.probs, two.probs));
  CHECK(bitwise_equal(one.out_drop, two.out_drop));
  CHECK(bitwise_equal(one.mask, two.mask));
  CHECK(bitwise_equal(one.dqkv, two.dqkv));
  CHECK(bitwise_equal(one.dqkv_drop, two.dqkv_drop));
  CHECK(bitwise_equal(one.cached, two.cached));
}

// ============================================================================================
// Errors

TEST_CASE("causal_attention errors name the op and the shapes") {
  Generator gen(14);
  REQUIRE_THROWS_WITH(causal_attention(randn({1, 4, 15}, gen), 2), Contains("causal_attention") &&
                                                                       Contains("5 channels") &&
                                                                       Contains("2 heads"));
  REQUIRE_THROWS_WITH(causal_attention(randn({4, 12}, gen), 2),
                      Contains("causal_attention") && Contains("[4, 12]"));
  REQUIRE_THROWS_WITH(causal_attention(randn({1, 4, 10}, gen), 1),
                      Contains("causal_attention") && Contains("[1, 4, 10]"));
  REQUIRE_THROWS_WITH(causal_attention(randn({1, 4, 12}, gen), 0),
                      Contains("causal_attention") && Contains("0 heads"));
  REQUIRE_THROWS_WITH(
      causal_attention(from_vector<int32_t>(std::vector<int32_t>(12, 1), {1, 1, 12}), 1),
      Contains("causal_attention") && Contains("i32"));
  REQUIRE_THROWS_WITH(causal_attention(randn({1, 4, 12}, gen), 2, 0.1),
                      Contains("causal_attention") && Contains("generator"));
  Generator drop(1);
  REQUIRE_THROWS_WITH(causal_attention(randn({1, 4, 12}, gen), 2, 1.0, &drop),
                      Contains("causal_attention") && Contains("dropout"));
  // The Variable op reports the same.
  REQUIRE_THROWS_WITH(causal_attention(Variable(randn({1, 4, 15}, gen)), 2),
                      Contains("causal_attention") && Contains("2 heads"));
}

TEST_CASE("causal_attention_backward errors name the op and the mismatched shapes") {
  Generator gen(15);
  Tensor qkv = randn({1, 4, 12}, gen);
  AttentionResult r = causal_attention(qkv, 2);
  REQUIRE_THROWS_WITH(
      causal_attention_backward(randn({1, 3, 4}, gen), qkv, r.probs, r.mask, 2, 0),
      Contains("causal_attention_backward") && Contains("[1, 3, 4]") && Contains("[1, 4, 12]"));
  REQUIRE_THROWS_WITH(
      causal_attention_backward(randn({1, 4, 4}, gen), qkv, randn({1, 2, 3, 3}, gen), r.mask, 2, 0),
      Contains("causal_attention_backward") && Contains("[1, 2, 3, 3]"));
}

TEST_CASE(
    "slot_attention gives each span what cached_attention gives its sequence alone, bit "
    "for bit") {
  Generator gen(41);
  const int64_t S = 5, L = 9, C = 12;
  const int NH = 3;
  Tensor k = randn({S, L, C}, gen), v = randn({S, L, C}, gen);
  // Spans in an order unrelated to the slots: a whole prompt, one next token at the end of a full
  // slot, a first token, a middle chunk, and a next token.
  const std::vector<SlotSpan> spans = {{3, 0, 5}, {0, 8, 1}, {4, 0, 1}, {1, 2, 4}, {2, 3, 1}};
  const int64_t N = 12;
  Tensor q = randn({1, N, C}, gen);
  for (int threads : {1, 2}) {
    ThreadCount guard(threads);
    Tensor y = slot_attention(q, k, v, NH, spans);
    REQUIRE(y.shape() == Shape({1, N, C}));
    int64_t row = 0;
    for (const SlotSpan& sp : spans) {
      INFO("span of slot " << sp.slot << ", threads " << threads);
      const int64_t n = sp.offset + sp.count;
      Tensor qs = q.narrow(1, row, sp.count).contiguous();
      Tensor kb = k.narrow(0, sp.slot, 1).narrow(1, 0, n);
      Tensor vb = v.narrow(0, sp.slot, 1).narrow(1, 0, n);
      Tensor want = cached_attention(qs, kb, vb, NH, sp.offset);
      CHECK(bitwise_equal(y.narrow(1, row, sp.count).contiguous(), want));
      // A span alone in the step gives the same bits as among the others.
      CHECK(bitwise_equal(slot_attention(qs, k, v, NH, {sp}), want));
      row += sp.count;
    }
  }
  // Against plain arithmetic (double), so that "equal to cached_attention" is not equal to a
  // wrong answer: span {1, 2, 4}, head 1, its last row.
  {
    const std::vector<float> y = slot_attention(q, k, v, NH, spans).to_vector<float>();
    const std::vector<float> qv = q.to_vector<float>(), kv = k.to_vector<float>(),
                             vv = v.to_vector<float>();
    const int64_t hs = C / NH, h = 1, row = 10, n = 6, slot = 1;
    auto at = [&](const std::vector<float>& t, int64_t r, int64_t col) {
      return double(t[size_t(r * C + col)]);
    };
    std::vector<double> p(static_cast<size_t>(n));
    double m = -1e300, z = 0;
    for (int64_t j = 0; j < n; ++j) {
      double dot = 0;
      for (int64_t d = 0; d < hs; ++d)
        dot += at(qv, row, h * hs + d) * at(kv, slot * L + j, h * hs + d);
      p[size_t(j)] = dot / std::sqrt(double(hs));
      m = std::max(m, p[size_t(j)]);
    }
    for (double& x : p) z += (x = std::exp(x - m));
    for (int64_t d = 0; d < hs; ++d) {
      double want = 0;
      for (int64_t j = 0; j < n; ++j) want += p[size_t(j)] / z * at(vv, slot * L + j, h * hs + d);
      CHECK(std::abs(at(y, row, h * hs + d) - want) <= 1e-5);
    }
  }
  CHECK_THROWS_WITH(slot_attention(q, k, v, NH, {{3, 0, 5}, {0, 8, 1}}),
                    Contains("q has 12 rows but the spans count 6"));
  CHECK_THROWS_WITH(slot_attention(q, k, v, NH, {{3, 0, 5}, {5, 0, 7}}),
                    Contains("span 1 reads slot 5 of 5"));
  CHECK_THROWS_WITH(slot_attention(q, k, v, NH, {{3, 0, 5}, {0, 6, 7}}),
                    Contains("span 1 reads slot 0 of 5 at positions 6..12 of 9"));
  CHECK_THROWS_WITH(slot_attention(randn({4, 2, C}, gen), k, v, NH, {{0, 0, 2}}),
                    Contains("slot_attention") && Contains("(1, N, C)"));
}

TEST_CASE("cached_attention errors name the op and the shapes") {
  Generator gen(16);
  Tensor k = randn({1, 5, 8}, gen), v = randn({1, 5, 8}, gen);
  // Wrong ranks.
  REQUIRE_THROWS_WITH(cached_attention(randn({2, 8}, gen), k, v, 2, 3),
                      Contains("cached_attention") && Contains("[2, 8]"));
  REQUIRE_THROWS_WITH(cached_attention(randn({1, 2, 8}, gen), randn({5, 8}, gen), v, 2, 3),
                      Contains("cached_attention") && Contains("[5, 8]"));
  // k and v of different lengths.
  REQUIRE_THROWS_WITH(cached_attention(randn({1, 2, 8}, gen), k, randn({1, 4, 8}, gen), 2, 3),
                      Contains("cached_attention") && Contains("[1, 4, 8]"));
  // Offset + Tq must equal the cache length: 2 + 2 != 5.
  REQUIRE_THROWS_WITH(cached_attention(randn({1, 2, 8}, gen), k, v, 2, 2),
                      Contains("cached_attention") && Contains("offset 2") &&
                          Contains("[1, 2, 8]") && Contains("[1, 5, 8]"));
  // Channels not divisible by heads.
  REQUIRE_THROWS_WITH(cached_attention(randn({1, 2, 8}, gen), k, v, 3, 3),
                      Contains("cached_attention") && Contains("3 heads"));
  // Batch or channel mismatch.
  REQUIRE_THROWS_WITH(cached_attention(randn({2, 2, 8}, gen), k, v, 2, 3),
                      Contains("cached_attention") && Contains("[2, 2, 8]"));
  // f64 is not supported on this path.
  REQUIRE_THROWS_WITH(cached_attention(randn({1, 2, 8}, gen, DType::f64), k, v, 2, 3),
                      Contains("cached_attention") && Contains("f32"));
}
