// Matrix products (cuBLASLt) and causal attention on CUDA against the CPU ops on the same inputs:
// matmul, gemm_, bmm and linear over every transpose and dtype, views mapped to transposes, the
// flash-attention forward and its backward from the saved log-sum-exp, and the KV-cache path.
// Without a GPU each device test prints SKIPPED with the reason.
#include <cmath>

#include "cuda_testing.h"
#include "tensor/cuda/blaslt.h"
#include "tensor/cuda/cuda.h"

using namespace forge;
using namespace forge::testing;

namespace {

const DType kDtypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16};

}  // namespace

TEST_CASE("cuda matmul matches the cpu over every transpose, dtype and odd shapes") {
  if (!have_gpu("cuda matmul")) return;
  Generator gen(1);
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {128, 64, 96}, {3, 200, 1}};
  for (DType dt : kDtypes)
    for (auto [m, n, k] : shapes)
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          CAPTURE(dt, m, n, k, ta, tb);
          Tensor a = randn(ta ? Shape{k, m} : Shape{m, k}, gen).to(dt);
          Tensor b = randn(tb ? Shape{n, k} : Shape{k, n}, gen).to(dt);
          Tensor want = matmul(a, b, ta, tb);
          Tensor got = matmul(a.to(gpu), b.to(gpu), ta, tb);
          REQUIRE(got.device() == gpu);
          REQUIRE(got.dtype() == dt);
          REQUIRE(got.shape() == Shape({m, n}));
          CHECK(max_rel_diff(host(got), want) <= tolerance(dt));
        }
}

TEST_CASE("cuda matmul takes transposed and narrowed views in place, as the cpu") {
  if (!have_gpu("cuda matmul views")) return;
  Generator gen(2);
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor a = randn({19, 23}, gen).to(dt), b = randn({31, 23}, gen).to(dt);
    Tensor ga = a.to(gpu), gb = b.to(gpu);
    // a^T (23, 19) as a view; b^T (23, 31) as a view: the op flags flip instead of copies.
    CHECK(max_rel_diff(host(matmul(ga.t(), gb.t(), true, false)),
                       matmul(a.t(), b.t(), true, false)) <= tolerance(dt));
    CHECK(max_rel_diff(host(matmul(ga, gb.t())), matmul(a, b.t())) <= tolerance(dt));
    // Column slices: row stride 23 over 10 columns (ld > cols), at an unaligned start.
    Tensor na = a.narrow(1, 3, 10), nb = b.narrow(1, 5, 10);
    CHECK(max_rel_diff(host(matmul(ga.narrow(1, 3, 10), gb.narrow(1, 5, 10), false, true)),
                       matmul(na, nb, false, true)) <= tolerance(dt));
  }
}

TEST_CASE("cuda gemm_ accumulates alpha op(A) op(B) + beta C, into f32 for 16-bit inputs") {
  if (!have_gpu("cuda gemm_")) return;
  Generator gen(3);
  for (DType dt : kDtypes)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        CAPTURE(dt, ta, tb);
        const int64_t m = 21, n = 13, k = 40;
        Tensor a = randn(ta ? Shape{k, m} : Shape{m, k}, gen).to(dt);
        Tensor b = randn(tb ? Shape{n, k} : Shape{k, n}, gen).to(dt);
        const DType out_dt = dt == DType::bf16 || dt == DType::f16 ? DType::f32 : dt;
        Tensor c0 = randn({m, n}, gen).to(out_dt);
        Tensor want = c0.clone();
        gemm_(want, a, b, ta, tb, 0.5, 2.0);
        Tensor got = c0.to(gpu);
        gemm_(got, a.to(gpu), b.to(gpu), ta, tb, 0.5, 2.0);
        CHECK(max_rel_diff(host(got), want) <=
              tolerance(out_dt == DType::f64 ? dt : DType::f32) * 4);
        // beta = 0 ignores what was there; into a column slice of a wider output (ldd > n).
        Tensor wide = randn({m, n + 7}, gen).to(out_dt);
        Tensor want_wide = wide.clone(), got_wide = wide.to(gpu);
        Tensor wv = want_wide.narrow(1, 2, n), gv = got_wide.narrow(1, 2, n);
        gemm_(wv, a, b, ta, tb, 1.0, 0.0);
        gemm_(gv, a.to(gpu), b.to(gpu), ta, tb, 1.0, 0.0);
        CHECK(max_rel_diff(host(got_wide), want_wide) <= tolerance(dt));
      }
}

TEST_CASE("cuda bmm matches the cpu with transposes and a batch of one broadcast") {
  if (!have_gpu("cuda bmm")) return;
  Generator gen(4);
  for (DType dt : kDtypes)
    for (auto [ba, bb] : {std::pair<int64_t, int64_t>{3, 3}, {1, 4}, {4, 1}})
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          CAPTURE(dt, ba, bb, ta, tb);
          const int64_t m = 9, n = 34, k = 17;
          Tensor a = randn(ta ? Shape{ba, k, m} : Shape{ba, m, k}, gen).to(dt);
          Tensor b = randn(tb ? Shape{bb, n, k} : Shape{bb, k, n}, gen).to(dt);
          Tensor want = bmm(a, b, ta, tb);
          Tensor got = bmm(a.to(gpu), b.to(gpu), ta, tb);
          REQUIRE(got.shape() == want.shape());
          CHECK(max_rel_diff(host(got), want) <= tolerance(dt));
        }
  // A batch of transposed views: (B, k, m) read as (B, m, k).
  Tensor a = randn({5, 12, 7}, gen), b = randn({5, 12, 6}, gen);
  CHECK(max_rel_diff(host(bmm(a.to(gpu).transpose(1, 2), b.to(gpu))), bmm(a.transpose(1, 2), b)) <=
        1e-5);
}

TEST_CASE("cuda linear adds the bias in the epilogue, in every dtype and into f32") {
  if (!have_gpu("cuda linear")) return;
  Generator gen(5);
  for (DType dt : kDtypes) {
    CAPTURE(dt);
    Tensor x = randn({2, 5, 24}, gen).to(dt), w = randn({10, 24}, gen).to(dt);
    Tensor bias = randn({10}, gen).to(dt);
    Tensor gx = x.to(gpu), gw = w.to(gpu), gbias = bias.to(gpu);
    Tensor want = linear(x, w, bias), got = linear(gx, gw, gbias);
    REQUIRE(got.shape() == Shape({2, 5, 10}));
    CHECK(max_rel_diff(host(got), want) <= tolerance(dt));
    CHECK(max_rel_diff(host(linear(gx, gw, Tensor())), linear(x, w, Tensor())) <= tolerance(dt));
    if (dt == DType::bf16 || dt == DType::f16) {
      Tensor want32 = linear(x, w, bias.to(DType::f32), DType::f32);
      Tensor got32 = linear(gx, gw, bias.to(DType::f32).to(gpu), DType::f32);
      REQUIRE(got32.dtype() == DType::f32);
      CHECK(max_rel_diff(host(got32), want32) <= 1e-5);
    }
  }
}

TEST_CASE("cuda matrix products refuse mixed devices and bad shapes by name") {
  if (!have_gpu("cuda matmul checks")) return;
  Tensor a = ones({2, 3}).to(gpu), b = ones({3, 4}), c = ones({4, 4}).to(gpu);
  REQUIRE_THROWS_WITH(matmul(a, b), Contains("matmul"));
  REQUIRE_THROWS_WITH(matmul(a, c), Contains("inner dims differ"));
  REQUIRE_THROWS_WITH(linear(a, ones({5, 3}), Tensor()), Contains("linear"));
  Tensor out = zeros({2, 4});
  REQUIRE_THROWS_WITH(gemm_(out, a, b.to(gpu), false, false, 1.0, 0.0), Contains("gemm_"));
}

TEST_CASE(
    "cuda f32 products with TF32 allowed stay within TF32's precision, and the switch "
    "reads back") {
  CHECK_FALSE(cuda::allow_tf32());
  cuda::set_allow_tf32(true);
  CHECK(cuda::allow_tf32());
  if (cuda::device_count() > 0) {
    Generator gen(6);
    Tensor a = randn({64, 256}, gen), b = randn({256, 48}, gen);
    double err = max_rel_diff(host(matmul(a.to(gpu), b.to(gpu))), matmul(a, b));
    CHECK(err <= 5e-3);
  } else {
    have_gpu("tf32 products");
  }
  cuda::set_allow_tf32(false);
  CHECK_FALSE(cuda::allow_tf32());
}

TEST_CASE("measure_matmul_tflops times products and reports a positive rate") {
  if (!have_gpu("measure_matmul_tflops")) return;
  double tflops = cuda::measure_matmul_tflops(DType::bf16, 512, 3);
  std::printf("bf16 512^3: %.1f TFLOP/s\n", tflops);
  CHECK(tflops > 0.0);
  CHECK(std::isfinite(tflops));
}

// ---------------------------------------------------------------------------------------------
// attention

TEST_CASE("cuda causal_attention forward matches the cpu, and saves each row's log-sum-exp") {
  if (!have_gpu("cuda causal_attention")) return;
  Generator gen(7);
  struct Case {
    int64_t B, NH, T, hs;
  };
  // T across the 32-query tiles (1, under, at, over, several) and head sizes to 64.
  for (Case c : {Case{1, 1, 1, 8}, Case{2, 3, 7, 8}, Case{1, 2, 32, 64}, Case{2, 2, 33, 64},
                 Case{1, 4, 100, 16}, Case{2, 1, 130, 64}})
    for (DType dt : {DType::f32, DType::f64}) {
      CAPTURE(c.B, c.NH, c.T, c.hs, dt);
      const int64_t C = c.NH * c.hs;
      Tensor qkv = randn({c.B, c.T, 3 * C}, gen).to(dt);
      AttentionResult want = causal_attention(qkv, int(c.NH));
      AttentionResult got = causal_attention(qkv.to(gpu), int(c.NH));
      REQUIRE(got.out.shape() == Shape({c.B, c.T, C}));
      REQUIRE(got.probs.shape() == Shape({c.B, c.NH, c.T}));
      CHECK(max_rel_diff(host(got.out), want.out) <= (dt == DType::f64 ? 1e-12 : 1e-5));
      // lse from the naive sum over the visible keys, in double.
      Tensor q = qkv.to(DType::f64), lse = host(got.probs).to(DType::f64);
      const double scale = 1.0 / std::sqrt(double(c.hs));
      double worst = 0;
      for (int64_t b = 0; b < c.B; ++b)
        for (int64_t h = 0; h < c.NH; ++h)
          for (int64_t t = 0; t < c.T; t += std::max<int64_t>(1, c.T / 5)) {
            double mx = -INFINITY;
            std::vector<double> s(size_t(t + 1));
            for (int64_t j = 0; j <= t; ++j) {
              double acc = 0;
              for (int64_t d = 0; d < c.hs; ++d)
                acc += read_element(q, {b, t, h * c.hs + d}) *
                       read_element(q, {b, j, C + h * c.hs + d});
              s[size_t(j)] = acc * scale;
              mx = std::max(mx, s[size_t(j)]);
            }
            double sum = 0;
            for (double v : s) sum += std::exp(v - mx);
            worst = testing::nan_max(worst,
                                     std::abs(read_element(lse, {b, h, t}) - (mx + std::log(sum))));
          }
      CHECK(worst <= (dt == DType::f64 ? 1e-10 : 1e-4));
    }
}

TEST_CASE("cuda causal_attention backward from the log-sum-exp matches the cpu's from P") {
  if (!have_gpu("cuda causal_attention_backward")) return;
  Generator gen(8);
  struct Case {
    int64_t B, NH, T, hs;
  };
  for (Case c : {Case{1, 1, 1, 8}, Case{2, 3, 7, 8}, Case{1, 2, 33, 64}, Case{2, 2, 130, 64},
                 Case{1, 1, 300, 16}})
    for (DType dt : {DType::f32, DType::f64}) {
      CAPTURE(c.B, c.NH, c.T, c.hs, dt);
      const int64_t C = c.NH * c.hs;
      Tensor qkv = randn({c.B, c.T, 3 * C}, gen).to(dt);
      Tensor dout = randn({c.B, c.T, C}, gen).to(dt);
      AttentionResult fwd = causal_attention(qkv, int(c.NH));
      Tensor want = causal_attention_backward(dout, qkv, fwd.probs, Tensor(), int(c.NH), 0.0);
      Tensor gqkv = qkv.to(gpu);
      AttentionResult gfwd = causal_attention(gqkv, int(c.NH));
      Tensor got =
          causal_attention_backward(dout.to(gpu), gqkv, gfwd.probs, Tensor(), int(c.NH), 0.0);
      REQUIRE(got.shape() == qkv.shape());
      CHECK(max_rel_diff(host(got), want) <= (dt == DType::f64 ? 1e-11 : 1e-4));
    }
}

TEST_CASE("cuda causal_attention_backward refuses P in place of the log-sum-exp") {
  if (!have_gpu("cuda attention checks")) return;
  Generator gen(9);
  Tensor qkv = randn({1, 4, 12}, gen).to(gpu);
  Tensor probs = zeros({1, 2, 4, 4}).to(gpu);
  REQUIRE_THROWS_WITH(
      causal_attention_backward(zeros({1, 4, 4}).to(gpu), qkv, probs, Tensor(), 2, 0.0),
      Contains("log-sum-exp"));
}

TEST_CASE("cuda cached_attention over a cache view matches the cpu at several offsets") {
  if (!have_gpu("cuda cached_attention")) return;
  Generator gen(10);
  const int64_t B = 2, NH = 4, hs = 64, C = NH * hs, max_len = 80;
  Tensor kc = randn({B, max_len, C}, gen), vc = randn({B, max_len, C}, gen);
  Tensor gk = kc.to(gpu), gv = vc.to(gpu);
  for (auto [offset, Tq] :
       {std::pair<int64_t, int64_t>{0, 1}, {0, 37}, {5, 1}, {40, 3}, {63, 17}}) {
    CAPTURE(offset, Tq);
    Tensor q = randn({B, Tq, C}, gen);
    const int64_t L = offset + Tq;
    Tensor want = cached_attention(q, kc.narrow(1, 0, L), vc.narrow(1, 0, L), int(NH), offset);
    Tensor got =
        cached_attention(q.to(gpu), gk.narrow(1, 0, L), gv.narrow(1, 0, L), int(NH), offset);
    REQUIRE(got.shape() == Shape({B, Tq, C}));
    CHECK(max_rel_diff(host(got), want) <= 1e-5);
  }
}
