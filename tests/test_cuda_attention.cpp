// Causal attention on CUDA (tensor/cuda/attention.cu) against the CPU op on the same inputs:
// dropout in f32 (the same mask bits as the CPU's, the values at the f32 tolerance), the bf16/f16
// tensor-core kernels against the CPU's f32 attention of the same 16-bit-rounded inputs (at the
// 16-bit tolerance, relative to the largest value), forward and backward, and the Variable op
// under autocast. T runs across the 64-row tiles (1, under, over, several) with several heads and
// batches. Without a GPU every test prints SKIPPED.
#include <cmath>

#include "autograd/autocast.h"
#include "autograd/functions.h"
#include "cuda_testing.h"

using namespace forge;
using namespace forge::testing;

namespace {

struct Case {
  int64_t B, NH, T, hs;
};
const Case kCases[] = {{1, 1, 1, 64},   {2, 3, 17, 64}, {1, 2, 100, 32},
                       {2, 2, 257, 64}, {1, 4, 65, 32}, {1, 1, 130, 128}};

// max |a - b| / max |b| over each of q, k, v's column blocks of a (B, T, 3C) gradient: the three
// differ in scale, so each is measured against its own largest value.
double worst_block_diff(const Tensor& got, const Tensor& want) {
  const int64_t C = want.size(2) / 3;
  double worst = 0;
  for (int64_t i = 0; i < 3; ++i)
    worst =
        testing::nan_max(worst, max_rel_diff(got.narrow(2, i * C, C), want.narrow(2, i * C, C)));
  return worst;
}

// 16-bit results against the f32 reference: the rounding of P and dS to 16 bits before their
// products, a few units of the 16-bit format relative to the largest value.
double tolerance16(DType t) {
  return t == DType::bf16 ? 2e-2 : 3e-3;
}

}  // namespace

TEST_CASE("cuda causal_attention with dropout draws the cpu's mask and matches its result") {
  if (!have_gpu("cuda causal_attention dropout")) return;
  Generator gen(21);
  for (Case c : kCases)
    for (double p : {0.1, 0.5}) {
      CAPTURE(c.B, c.NH, c.T, c.hs, p);
      const int64_t C = c.NH * c.hs;
      Tensor qkv = randn({c.B, c.T, 3 * C}, gen);
      Tensor dout = randn({c.B, c.T, C}, gen);
      Generator cpu_drop(99), gpu_drop(99);
      AttentionResult want = causal_attention(qkv, int(c.NH), p, &cpu_drop);
      Tensor gqkv = qkv.to(gpu);
      AttentionResult got = causal_attention(gqkv, int(c.NH), p, &gpu_drop);
      CHECK(gpu_drop.state().offset == cpu_drop.state().offset);
      REQUIRE(got.mask.defined());
      CHECK(got.mask.device() == gpu);
      CHECK(bitwise_equal(host(got.mask), want.mask));
      CHECK(max_rel_diff(host(got.out), want.out) <= 1e-5);
      Tensor dwant = causal_attention_backward(dout, qkv, want.probs, want.mask, int(c.NH), p);
      Tensor dgot =
          causal_attention_backward(dout.to(gpu), gqkv, got.probs, got.mask, int(c.NH), p);
      REQUIRE(dgot.shape() == qkv.shape());
      CHECK(worst_block_diff(host(dgot), dwant) <= 1e-4);
    }
}

TEST_CASE("cuda causal_attention dropout over a slice of the heads draws that slice of the mask") {
  if (!have_gpu("cuda causal_attention head slice")) return;
  Generator gen(22);
  const int64_t B = 2, NH = 2, T = 40, hs = 32, C = NH * hs;
  Tensor qkv = randn({B, T, 3 * C}, gen);
  Generator cpu_drop(5), gpu_drop(5);
  AttentionResult want = causal_attention(qkv, int(NH), 0.3, &cpu_drop, std::nullopt, {1, 4});
  AttentionResult got =
      causal_attention(qkv.to(gpu), int(NH), 0.3, &gpu_drop, std::nullopt, {1, 4});
  CHECK(bitwise_equal(host(got.mask), want.mask));
  CHECK(max_rel_diff(host(got.out), want.out) <= 1e-5);
  CHECK(gpu_drop.state().offset == cpu_drop.state().offset);
}

TEST_CASE("cuda bf16/f16 causal_attention on tensor cores matches the cpu's f32 attention") {
  if (!have_gpu("cuda causal_attention 16-bit")) return;
  Generator gen(23);
  for (DType dt : {DType::bf16, DType::f16})
    for (Case c : kCases)
      for (double p : {0.0, 0.2}) {
        CAPTURE(dt, c.B, c.NH, c.T, c.hs, p);
        const int64_t C = c.NH * c.hs;
        Tensor q16 = randn({c.B, c.T, 3 * C}, gen).to(dt);
        Tensor d16 = randn({c.B, c.T, C}, gen).to(dt);
        Tensor qkv = q16.to(DType::f32), dout = d16.to(DType::f32);  // the same values in f32
        Generator cpu_drop(7), gpu_drop(7);
        AttentionResult want = causal_attention(qkv, int(c.NH), p, p > 0 ? &cpu_drop : nullptr);
        Tensor g16 = q16.to(gpu);
        AttentionResult got = causal_attention(g16, int(c.NH), p, p > 0 ? &gpu_drop : nullptr);
        REQUIRE(got.out.dtype() == dt);
        REQUIRE(got.probs.dtype() == DType::f32);  // lse
        REQUIRE(got.probs.shape() == Shape({c.B, c.NH, c.T}));
        if (p > 0) CHECK(bitwise_equal(host(got.mask), want.mask));
        CHECK(max_rel_diff(host(got.out).to(DType::f32), want.out) <= tolerance16(dt));
        // lse against the f32 kernel's on the same values (checked against a double reference
        // in test_cuda_matmul): the products are exact in both, the sums differ in order.
        AttentionResult f32 = causal_attention(qkv.to(gpu), int(c.NH));
        CHECK(max_abs_diff(host(got.probs), host(f32.probs)) <= 1e-3);
        Tensor dwant = causal_attention_backward(dout, qkv, want.probs, want.mask, int(c.NH), p);
        Tensor dgot =
            causal_attention_backward(d16.to(gpu), g16, got.probs, got.mask, int(c.NH), p);
        REQUIRE(dgot.dtype() == dt);
        REQUIRE(dgot.shape() == qkv.shape());
        CHECK(worst_block_diff(host(dgot).to(DType::f32), dwant) <= tolerance16(dt));
      }
}

TEST_CASE("cuda bf16 causal_attention with a head size off the tensor cores computes in f32") {
  if (!have_gpu("cuda causal_attention 16-bit, other head sizes")) return;
  Generator gen(24);
  for (int64_t hs : {8, 24}) {
    CAPTURE(hs);
    const int64_t B = 2, NH = 2, T = 33, C = NH * hs;
    Tensor q16 = randn({B, T, 3 * C}, gen).to(DType::bf16);
    Tensor d16 = randn({B, T, C}, gen).to(DType::bf16);
    Tensor qkv = q16.to(DType::f32);
    AttentionResult want = causal_attention(qkv, int(NH));
    AttentionResult got = causal_attention(q16.to(gpu), int(NH));
    REQUIRE(got.out.dtype() == DType::bf16);
    CHECK(max_rel_diff(host(got.out).to(DType::f32), want.out) <= 1e-2);
    Tensor dwant =
        causal_attention_backward(d16.to(DType::f32), qkv, want.probs, Tensor(), int(NH), 0.0);
    Tensor dgot =
        causal_attention_backward(d16.to(gpu), q16.to(gpu), got.probs, Tensor(), int(NH), 0.0);
    REQUIRE(dgot.dtype() == DType::bf16);
    CHECK(worst_block_diff(host(dgot).to(DType::f32), dwant) <= 1e-2);
  }
}

TEST_CASE("cuda causal_attention Variable op under autocast runs on the 16-bit qkv") {
  if (!have_gpu("cuda causal_attention autocast")) return;
  Generator gen(25);
  const int64_t B = 2, NH = 2, T = 70, hs = 64, C = NH * hs;
  for (DType dt : {DType::bf16, DType::f16}) {
    CAPTURE(dt);
    Tensor x = randn({B, T, 3 * C}, gen);
    Tensor gy = randn({B, T, C}, gen);
    // The reference: the cpu's f32 attention of the rounded qkv, its gradient for the rounded
    // qkv (autocast's backward passes the gradient through the rounding unchanged).
    Tensor x16 = x.to(dt).to(DType::f32);
    AttentionResult want = causal_attention(x16, int(NH));
    Tensor dwant = causal_attention_backward(gy.to(dt).to(DType::f32), x16, want.probs, Tensor(),
                                             int(NH), 0.0);
    Variable v(x.to(gpu), /*requires_grad=*/true);
    Variable y;
    {
      Autocast ac(dt);
      y = causal_attention(v, int(NH));
    }
    REQUIRE(y.data().dtype() == DType::f32);
    REQUIRE(y.data().device() == gpu);
    CHECK(max_rel_diff(host(y.data()), want.out) <= tolerance16(dt));
    y.backward(gy.to(gpu));
    REQUIRE(v.grad().dtype() == DType::f32);
    CHECK(worst_block_diff(host(v.grad()), dwant) <= tolerance16(dt));
  }
}

TEST_CASE("cuda causal_attention_backward checks the dropout mask") {
  if (!have_gpu("cuda causal_attention_backward mask checks")) return;
  Generator gen(26);
  Tensor qkv = randn({1, 4, 12}, gen).to(gpu);
  AttentionResult r = causal_attention(qkv, 2, 0.5, &gen);
  Tensor dout = zeros({1, 4, 4}).to(gpu);
  REQUIRE_THROWS_WITH(
      causal_attention_backward(dout, qkv, r.probs, zeros({1, 2, 4, 3}, DType::u8).to(gpu), 2, 0.5),
      Contains("dropout mask"));
  REQUIRE_THROWS_WITH(
      causal_attention_backward(dout, qkv, r.probs, r.mask.to(Device::cpu()), 2, 0.5),
      Contains("causal_attention_backward"));
}
