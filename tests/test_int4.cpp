// int4 group-wise weights: quantization against the formula, nibble order, dequantization error,
// int4_linear against the f32 product of the dequantized weights (every kernel family, GEMV and
// blocked-GEMM regimes, every group size, bf16 x), thread-count independence, and the errors.
//
// The hidden "[.benchmark]" case times int4_linear against forge::linear on one thread:
//   build/tests/test_int4 "[.benchmark]"
#include <chrono>
#include <cmath>
#include <cstdio>

#include "quant/int4.h"
#include "testing.h"

using namespace forge;
using namespace forge::testing;

namespace {

// The header's formulas for one group, in f32.
struct GroupRef {
  float scale;
  int zero;
  std::vector<int> q;
};
GroupRef quantize_group_ref(const float* w, int64_t group) {
  float lo = 0.0f, hi = 0.0f;
  for (int64_t j = 0; j < group; ++j) {
    lo = std::min(lo, w[j]);
    hi = std::max(hi, w[j]);
  }
  GroupRef r;
  r.scale = (hi - lo) / 15.0f;
  if (r.scale == 0.0f) r.scale = 1.0f;
  r.zero = int(std::clamp(std::nearbyint(-lo / r.scale), 0.0f, 15.0f));
  for (int64_t j = 0; j < group; ++j)
    r.q.push_back(int(std::clamp(std::nearbyint(w[j] / r.scale) + float(r.zero), 0.0f, 15.0f)));
  return r;
}

// Nibble j of a packed row: element 2i in the low half of byte i, 2i+1 in the high half.
int nibble(const uint8_t* row, int64_t j) {
  return j % 2 == 0 ? row[j / 2] & 15 : row[j / 2] >> 4;
}

// x @ w_hat^T + bias with the library's f32 matmul: the reference int4_linear must match.
Tensor reference_linear(const Tensor& x, const Int4Weight& q, const Tensor& bias) {
  Tensor x2 = x.to(DType::f32).reshape({-1, q.k});
  Tensor y = matmul(x2, dequantize_int4(q), false, true);
  if (bias.defined()) y = add(y, bias);
  Shape shape = x.shape();
  shape[-1] = q.n;
  return y.reshape(shape);
}

}  // namespace

// ============================================================================================
// Quantization

TEST_CASE("quantize_int4: scales, zeros and every code follow the group formula") {
  Generator gen(1);
  for (int64_t group : {32, 64, 128}) {
    INFO("group " << group);
    Tensor w = randn({6, 256}, gen);
    w.narrow(0, 1, 1).copy_(abs(w.narrow(0, 1, 1)));       // row 1 all positive: lo = 0
    w.narrow(0, 2, 1).copy_(neg(abs(w.narrow(0, 2, 1))));  // row 2 all negative: hi = 0
    w.narrow(0, 3, 1).narrow(1, 0, group).fill_(0.0);      // an all-zero group
    Int4Weight q = quantize_int4(w, group);
    REQUIRE(q.n == 6);
    REQUIRE(q.k == 256);
    REQUIRE(q.group == group);
    REQUIRE(q.packed.shape() == Shape{6, 128});
    REQUIRE(q.scales.shape() == Shape{6, 256 / group});
    REQUIRE(q.zeros.shape() == Shape{6, 256 / group});
    const float* pw = w.data<float>();
    const uint8_t* packed = q.packed.data<uint8_t>();
    const float* scales = q.scales.data<float>();
    const uint8_t* zeros = q.zeros.data<uint8_t>();
    int64_t wrong = 0;
    for (int64_t n = 0; n < 6; ++n)
      for (int64_t g = 0; g < 256 / group; ++g) {
        GroupRef r = quantize_group_ref(pw + n * 256 + g * group, group);
        wrong += scales[n * (256 / group) + g] != r.scale;
        wrong += zeros[n * (256 / group) + g] != r.zero;
        for (int64_t j = 0; j < group; ++j)
          wrong += nibble(packed + n * 128, g * group + j) != r.q[size_t(j)];
      }
    CHECK(wrong == 0);
    CHECK(zeros[1 * (256 / group)] == 0);      // all positive: zero point 0
    CHECK(zeros[2 * (256 / group)] == 15);     // all negative: zero point 15
    CHECK(scales[3 * (256 / group)] == 1.0f);  // all zero: scale 1, zero 0, codes 0
    CHECK(zeros[3 * (256 / group)] == 0);
  }
}

TEST_CASE("quantize_int4: element 2i goes in the low nibble, 2i+1 in the high one") {
  // w[j] = j % 16: lo = 0, hi = 15, so scale 1, zero 0 and the codes are the values.
  std::vector<float> v(32);
  for (int j = 0; j < 32; ++j) v[size_t(j)] = float(j % 16);
  Int4Weight q = quantize_int4(from_vector<float>(v, {1, 32}), 32);
  CHECK(q.scales.item() == 1.0);
  CHECK(q.zeros.item() == 0.0);
  CHECK(q.packed.to_vector<uint8_t>() ==
        std::vector<uint8_t>{0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe,  //
                             0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe});
  CHECK(dequantize_int4(q).to_vector<float>() == v);
}

TEST_CASE("dequantize_int4: (q - zero) * scale, within scale / 2 of the original weight") {
  Generator gen(2);
  for (cpu::Isa isa : runnable_isas("dequantize_int4")) {
    IsaScope scope(isa);
    Tensor w = mul(randn({9, 384}, gen), 0.1);
    Int4Weight q = quantize_int4(w, 128);
    Tensor w_hat = dequantize_int4(q);
    REQUIRE(w_hat.shape() == Shape{9, 384});
    const float* pw = w.data<float>();
    const float* ph = w_hat.data<float>();
    const uint8_t* packed = q.packed.data<uint8_t>();
    int64_t wrong = 0, beyond_half = 0;
    for (int64_t n = 0; n < 9; ++n)
      for (int64_t j = 0; j < 384; ++j) {
        float s = q.scales.data<float>()[n * 3 + j / 128];
        float z = float(q.zeros.data<uint8_t>()[n * 3 + j / 128]);
        float expect = (float(nibble(packed + n * 192, j)) - z) * s;
        wrong += ph[n * 384 + j] != expect;
        beyond_half += std::fabs(ph[n * 384 + j] - pw[n * 384 + j]) > 0.5f * s * (1 + 1e-5f);
      }
    CHECK(wrong == 0);
    CHECK(beyond_half == 0);
  }
}

// ============================================================================================
// int4_linear

TEST_CASE("int4_linear: equals x @ dequantize_int4(q)^T + bias, every path, group and M") {
  Generator gen(3);
  for (cpu::Isa isa : runnable_isas("int4_linear")) {
    IsaScope scope(isa);
    for (int64_t group : {32, 64, 128})
      for (int64_t m : {1, 3, 64}) {
        INFO(cpu::isa_name(isa) << " group " << group << " M " << m);
        const int64_t n = 37, k = 384;  // N not a multiple of the kernels' row blocks
        Int4Weight q = quantize_int4(randn({n, k}, gen), group);
        Tensor x = randn({m, k}, gen), bias = randn({n}, gen);
        Tensor y = int4_linear(x, q, bias);
        REQUIRE(y.shape() == Shape{m, n});
        CHECK(max_rel_diff(y, reference_linear(x, q, bias)) < 1e-5);
        CHECK(max_rel_diff(int4_linear(x, q, Tensor()), reference_linear(x, q, Tensor())) < 1e-5);
      }
  }
}

TEST_CASE("int4_linear: GPT shapes, leading dims and bf16 x") {
  Generator gen(4);
  for (cpu::Isa isa : runnable_isas("int4_linear")) {
    IsaScope scope(isa);
    INFO(cpu::isa_name(isa));
    for (auto [n, k] : {std::pair<int64_t, int64_t>{512, 128}, {128, 512}}) {
      Int4Weight q = quantize_int4(mul(randn({n, k}, gen), 0.02), 64);
      Tensor bias = randn({n}, gen);
      Tensor x = randn({2, 5, k}, gen);  // (B, T, C)
      Tensor y = int4_linear(x, q, bias);
      REQUIRE(y.shape() == Shape{2, 5, n});
      CHECK(max_rel_diff(y, reference_linear(x, q, bias)) < 1e-5);
      Tensor x1 = randn({1, 1, k}, gen);  // one token
      CHECK(max_rel_diff(int4_linear(x1, q, bias), reference_linear(x1, q, bias)) < 1e-5);
      // bf16 x is widened to f32 first: the same result as its f32 copy, bit for bit.
      for (const Tensor& xs : {x, x1}) {
        Tensor xb = xs.to(DType::bf16);
        Tensor yb = int4_linear(xb, q, bias);
        CHECK(yb.dtype() == DType::f32);
        CHECK(bitwise_equal(yb, int4_linear(xb.to(DType::f32), q, bias)));
        CHECK(max_rel_diff(yb, reference_linear(xb, q, bias)) < 1e-5);
      }
    }
  }
}

TEST_CASE("int4_linear: the result does not depend on the thread count") {
  Generator gen(5);
  Int4Weight q = quantize_int4(randn({300, 256}, gen), 32);
  for (cpu::Isa isa : runnable_isas("int4_linear")) {
    IsaScope scope(isa);
    for (int64_t m : {1, 2, 80}) {
      INFO(cpu::isa_name(isa) << " M " << m);
      Tensor x = randn({m, 256}, gen);
      Tensor one, four;
      {
        ThreadCount t(1);
        one = int4_linear(x, q, Tensor());
      }
      {
        ThreadCount t(4);
        four = int4_linear(x, q, Tensor());
      }
      CHECK(bitwise_equal(one, four));
    }
  }
}

TEST_CASE("int4: bad inputs throw naming the problem") {
  Generator gen(6);
  REQUIRE_THROWS_WITH(quantize_int4(randn({4, 96}, gen), 64),
                      Contains("K = 96") && Contains("not a multiple of group 64"));
  REQUIRE_THROWS_WITH(quantize_int4(randn({4, 96}, gen), 48),
                      Contains("group 48") && Contains("32, 64 or 128"));
  REQUIRE_THROWS_WITH(quantize_int4(randn({96}, gen), 32), Contains("2-D") && Contains("[96]"));

  Int4Weight q = quantize_int4(randn({8, 64}, gen), 32);
  REQUIRE_THROWS_WITH(int4_linear(randn({2, 64}, gen, DType::f64), q, Tensor()),
                      Contains("f32 or bf16") && Contains("f64"));
  REQUIRE_THROWS_WITH(int4_linear(randn({2, 63}, gen), q, Tensor()),
                      Contains("[2, 63]") && Contains("K = 64"));
  REQUIRE_THROWS_WITH(int4_linear(randn({2, 64}, gen), q, randn({7}, gen)),
                      Contains("bias") && Contains("[7]") && Contains("[8]"));

  Int4Weight bad = q;
  bad.zeros = q.zeros.clone();
  bad.zeros.data<uint8_t>()[5] = 16;
  REQUIRE_THROWS_WITH(validate_int4(bad, "h.0.mlp.c_fc"),
                      Contains("h.0.mlp.c_fc") && Contains("zero point 16") && Contains("row 2"));
  bad = q;
  bad.scales = zeros({8, 3});
  REQUIRE_THROWS_WITH(validate_int4(bad, "lm_head"),
                      Contains("lm_head") && Contains("scales") && Contains("[8, 3]"));
  bad = q;
  bad.group = 16;
  REQUIRE_THROWS_WITH(validate_int4(bad, "w"), Contains("group 16"));
  bad = q;
  bad.packed = q.packed.to(DType::i32);
  REQUIRE_THROWS_WITH(validate_int4(bad, "w"), Contains("packed") && Contains("i32"));
  bad = q;
  bad.scales = full({8, 2}, -1.0);
  REQUIRE_THROWS_WITH(validate_int4(bad, "w"), Contains("scale -1"));
  REQUIRE_NOTHROW(validate_int4(q, "w"));
}

// ============================================================================================
// Benchmark (hidden): one thread, int4_linear against forge::linear in f32.

TEST_CASE("int4_linear benchmark against f32 linear", "[.benchmark]") {
  ThreadCount threads(1);
  Generator gen(7);
  auto time_ms = [](auto&& f) {
    f();  // warm up
    double best = 1e30;
    for (int rep = 0; rep < 5; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      int iters = 0;
      double elapsed = 0;
      do {
        f();
        ++iters;
        elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                      .count();
      } while (elapsed < 50);
      best = std::min(best, elapsed / iters);
    }
    return best;
  };
  std::printf("int4_linear vs linear (f32), threads 1, group 64, kernels %s, x f32\n",
              cpu::isa_name(cpu::cpu_isa()));
  std::printf("%6s %6s %6s %12s %12s %8s\n", "M", "N", "K", "linear ms", "int4 ms", "speedup");
  for (auto [n, k] : {std::pair<int64_t, int64_t>{512, 128}, {128, 512}, {1024, 1024}})
    for (int64_t m : {1, 256}) {
      Tensor w = mul(randn({n, k}, gen), 0.02), bias = randn({n}, gen), x = randn({m, k}, gen);
      Int4Weight q = quantize_int4(w, 64);
      double t_f32 = time_ms([&] { linear(x, w, bias); });
      double t_int4 = time_ms([&] { int4_linear(x, q, bias); });
      std::printf("%6ld %6ld %6ld %12.4f %12.4f %8.2f\n", long(m), long(n), long(k), t_f32, t_int4,
                  t_f32 / t_int4);
      CHECK(max_rel_diff(int4_linear(x, q, bias), reference_linear(x, q, bias)) < 1e-5);
    }
}
