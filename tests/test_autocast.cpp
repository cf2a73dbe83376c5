// Mixed precision: the 16-bit-input matrix products (every kernel family, against the f32 product
// of the widened inputs, bit for bit, and against the unrounded f32 product at the dtype's
// tolerance), the autocast policy and its cast cache, a GPT step under bf16/f16 against f32, the
// activation memory it saves, and f16 gradients that underflow without a loss scale and train with
// one.
#include <cmath>
#include <vector>

#include "autograd/autocast.h"
#include "autograd/functions.h"
#include "models/gpt.h"
#include "models/layers.h"
#include "optim/grad_scaler.h"
#include "optim/optimizer.h"
#include "tensor/allocator.h"
#include "tensor/cpu/cpu_features.h"
#include "tensor/cpu/gemm.h"
#include "testing.h"

using namespace forge;
using forge::testing::bitwise_equal;
using forge::testing::Contains;
using forge::testing::IsaScope;
using forge::testing::runnable_isas;

namespace {

cpu::GemmElem elem_of(DType d) {
  return d == DType::bf16  ? cpu::GemmElem::bf16
         : d == DType::f16 ? cpu::GemmElem::f16
                           : cpu::GemmElem::f32;
}

// max |a - b| / max |b|
double rel_err(const Tensor& a, const Tensor& b) {
  double num = max(abs(sub(a.to(DType::f64), b.to(DType::f64)))).item();
  double den = max(abs(b.to(DType::f64))).item();
  return num / (den > 0 ? den : 1.0);
}

}  // namespace

TEST_CASE("16-bit GEMM inputs: bitwise the f32 product of the widened inputs, on every kernel") {
  // The widening path (bf16 x bf16 on AVX512_BF16 runs the native kernel by default: its own
  // bitwise test is test_gemm_bf16).
  const cpu::Bf16Gemm saved = cpu::bf16_gemm();
  cpu::set_bf16_gemm(cpu::Bf16Gemm::widen);
  Generator g(11);
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {13, 37, 29}, {64, 48, 300}, {100, 33, 17}};
  for (cpu::Isa isa : runnable_isas("16-bit GEMM inputs")) {
    IsaScope scope(isa);
    for (DType ea : {DType::f32, DType::bf16, DType::f16})
      for (DType eb : {DType::f32, DType::bf16, DType::f16})
        for (const auto& s : shapes)
          for (bool ta : {false, true})
            for (bool tb : {false, true}) {
              int64_t m = s[0], n = s[1], k = s[2];
              INFO(cpu::isa_name(isa)
                   << " " << dtype_name(ea) << " x " << dtype_name(eb) << " m " << m << " n " << n
                   << " k " << k << " ta " << ta << " tb " << tb);
              Tensor a = randn(ta ? Shape{k, m} : Shape{m, k}, g).to(ea);
              Tensor b = randn(tb ? Shape{n, k} : Shape{k, n}, g).to(eb);
              Tensor want = Tensor::empty({m, n}, DType::f32);
              Tensor got = Tensor::empty({m, n}, DType::f32);
              cpu::gemm_packed(ta, tb, m, n, k, 1.0f, a.to(DType::f32).data<float>(), a.size(1),
                               b.to(DType::f32).data<float>(), b.size(1), 0.0f, want.data<float>(),
                               n);
              cpu::gemm_mixed(ta, tb, m, n, k, 1.0f, a.raw_data(), elem_of(ea), a.size(1),
                              b.raw_data(), elem_of(eb), b.size(1), 0.0f, got.data<float>(), n);
              CHECK(bitwise_equal(got, want));
            }
  }
  cpu::set_bf16_gemm(saved);
}

TEST_CASE(
    "bf16 and f16 matmul against f32 on unrounded inputs: error within the dtype's rounding") {
  Generator g(12);
  Tensor a = randn({96, 256}, g), b = randn({256, 80}, g);
  Tensor exact = matmul(a.to(DType::f64), b.to(DType::f64));
  // Inputs rounded to 8 (bf16) or 11 (f16) significant bits: relative error ~ 2^-8 / 2^-11 per
  // product, averaging down over k = 256 terms.
  for (auto [dt, tol] : {std::pair{DType::bf16, 1e-2}, std::pair{DType::f16, 2e-3}}) {
    Tensor out = Tensor::empty({96, 80}, DType::f32);
    gemm_(out, a.to(dt), b.to(dt), false, false);
    double err = rel_err(out, exact);
    WARN(dtype_name(dt) << " matmul, f32 accumulation: max relative error " << err
                        << " against f64");
    CHECK(err < tol);
    CHECK(err > 0);
  }
  CHECK(rel_err(matmul(a, b), exact) < 1e-5);
}

TEST_CASE("autocast linear is the linear of the rounded inputs; backward as the policy says") {
  // Widening path: bitwise the f32 linear of the widened inputs. Native bf16 path (AVX512_BF16):
  // bitwise the tensor-level linear of the bf16 inputs (the kernel itself is checked bit for bit
  // against the instruction in test_gemm_bf16), gradients near the widened products (they differ
  // only in summation order and flushed denormals).
  const cpu::Bf16Gemm saved = cpu::bf16_gemm();
  std::vector<cpu::Bf16Gemm> modes{cpu::Bf16Gemm::widen};
  if (cpu::bf16_native_supported())
    modes.push_back(cpu::Bf16Gemm::native);
  else
    WARN("native bf16 products not checked here: this processor lacks AVX512_BF16");
  for (cpu::Bf16Gemm mode : modes)
    for (DType dt : {DType::bf16, DType::f16}) {
      const bool native = mode == cpu::Bf16Gemm::native && dt == DType::bf16;
      if (mode == cpu::Bf16Gemm::native && !native) continue;
      cpu::set_bf16_gemm(mode);
      INFO(dtype_name(dt) << (native ? " native" : " widened"));
      Generator g(13);
      Tensor xt = randn({6, 10}, g), wt = randn({7, 10}, g), bt = randn({7}, g);
      Variable x(xt, true), w(wt, true), b(bt, true);
      Variable y;
      {
        Autocast ac(dt);
        y = linear(x, w, b);
      }
      CHECK(y.data().dtype() == DType::f32);
      Tensor widened = linear(xt.to(dt).to(DType::f32), wt.to(dt).to(DType::f32), bt);
      if (native) {
        CHECK(bitwise_equal(y.data(), linear(xt.to(dt), wt.to(dt), bt, DType::f32)));
        CHECK(rel_err(y.data(), widened) < 1e-5);
      } else {
        CHECK(bitwise_equal(y.data(), widened));
      }
      Tensor gy = randn({6, 7}, g);
      y.backward(gy);
      Tensor gl = gy.to(dt).to(DType::f32);
      CHECK(x.grad().dtype() == DType::f32);
      CHECK(w.grad().dtype() == DType::f32);
      Tensor want_dx = matmul(gl, wt.to(dt).to(DType::f32));
      Tensor want_dw = matmul(gl, xt.to(dt).to(DType::f32), true, false);
      if (native) {
        CHECK(rel_err(x.grad(), want_dx) < 1e-5);
        CHECK(rel_err(w.grad(), want_dw) < 1e-5);
      } else {
        CHECK(bitwise_equal(x.grad(), want_dx));
        CHECK(bitwise_equal(w.grad(), want_dw));
      }
      CHECK(bitwise_equal(b.grad(), sum(gy, {0})));
    }
  cpu::set_bf16_gemm(saved);
  CHECK_FALSE(autocast_dtype().has_value());
  CHECK_THROWS_WITH(Autocast(DType::f64), Contains("autocast") && Contains("f64"));
}

TEST_CASE("the cast cache converts each parameter once per scope") {
  Generator g(14);
  Variable w(randn({8, 8}, g), true);
  Variable x(randn({2, 8}, g), true);
  {
    Autocast ac(DType::bf16);
    Variable y = linear(linear(x, w, Variable()), w, Variable());
    CHECK(autocast_cache_size() == 1);
    {
      Autocast inner(DType::bf16);
      linear(x, w, Variable());
      CHECK(autocast_cache_size() == 1);
    }
    CHECK(autocast_cache_size() == 1);  // only the outermost scope clears it
  }
  CHECK(autocast_cache_size() == 0);
}

TEST_CASE(
    "a GPT step under bf16 and f16 autocast: loss and gradients near f32, activations "
    "saved in 16 bits") {
  GPTConfig cfg{.n_layer = 2,
                .n_head = 2,
                .n_embd = 64,
                .block_size = 32,
                .vocab_size = 17,
                .dropout = 0.0,
                .bias = true};
  Generator data(3);
  Tensor x = mul(rand({4, 32}, data), 17.0).to(DType::i64);
  Tensor y = mul(rand({4, 32}, data), 17.0).to(DType::i64);
  struct Out {
    double loss;
    std::vector<Tensor> grads;
    int64_t saved_activations;  // activation bytes alive between forward and backward
  };
  auto step = [&](std::optional<DType> dt) {
    Generator init(1), drop(2);
    GPT model(cfg, init, drop);
    reset_peak_memory(Device::cpu());
    Out o{};
    {
      MemoryTagScope tag(MemoryTag::activations);
      std::optional<Autocast> ac;
      if (dt) ac.emplace(*dt);
      Variable loss = model.loss(model.forward(x), y);
      o.saved_activations = memory_stats(Device::cpu()).live_by_tag[size_t(MemoryTag::activations)];
      loss.backward();
      o.loss = loss.item();
    }
    for (const Variable& p : model.parameters()) o.grads.push_back(p.grad().clone());
    return o;
  };
  Out f32 = step(std::nullopt);
  for (auto [dt, loss_tol, grad_tol] :
       {std::tuple{DType::bf16, 1e-2, 6e-2}, std::tuple{DType::f16, 2e-3, 1e-2}}) {
    INFO(dtype_name(dt));
    Out lo = step(dt);
    CHECK(std::abs(lo.loss - f32.loss) / f32.loss < loss_tol);
    double worst = 0;
    for (size_t i = 0; i < f32.grads.size(); ++i)
      worst = testing::nan_max(worst, rel_err(lo.grads[i], f32.grads[i]));
    double mem = double(lo.saved_activations) / double(f32.saved_activations);
    WARN(dtype_name(dt) << ": loss " << lo.loss << " (f32 " << f32.loss
                        << "), worst gradient relative error " << worst
                        << ", activations saved for backward " << mem << "x f32");
    CHECK(worst < grad_tol);
    // Per block f32 keeps 16C + H*T floats per token, the policy 9C + H*T/2 (+ the f32 logits).
    CHECK(mem < 0.65);
  }
}

TEST_CASE("f16: small gradients underflow to zero without loss scaling and train with it") {
  // A loss weighted by 1e-7 (as small auxiliary losses are): the gradients reaching the f16
  // products are ~1e-9, below f16's smallest subnormal (6e-8); scaled by 2^16 they are ~1e-4.
  auto run = [](bool scaled, int steps, double* first_grad_norm) {
    Generator g(21);
    auto net = std::make_shared<Linear>(16, 4, false, g);
    Tensor x = randn({64, 16}, g);
    Tensor y = argmax(matmul(x, randn({16, 4}, g)), 1);
    std::vector<Variable> ps = net->parameters();
    SGD opt({{ps, 0.0}}, {.lr = 2e6});  // compensates the 1e-7 weight
    GradScaler scaler({.enabled = scaled});
    double loss0 = 0, loss = 0;
    for (int s = 0; s < steps; ++s) {
      opt.zero_grad();
      Variable l;
      {
        Autocast ac(DType::f16);
        l = mul(cross_entropy(net->forward(Variable(x)), y), 1e-7);
        scaler.scale(l).backward();
      }
      scaler.unscale(ps);
      if (s == 0) *first_grad_norm = grad_norm(ps);
      scaler.step(opt, ps);
      scaler.update();
      loss = l.item() * 1e7;
      if (s == 0) loss0 = loss;
    }
    return std::pair{loss0, loss};
  };
  double norm_plain = -1, norm_scaled = -1;
  auto [start_plain, end_plain] = run(false, 30, &norm_plain);
  auto [start_scaled, end_scaled] = run(true, 30, &norm_scaled);
  WARN("f16 without scaling: gradient norm " << norm_plain << ", loss " << start_plain << " -> "
                                             << end_plain << "; with scaling: gradient norm "
                                             << norm_scaled << ", loss " << start_scaled << " -> "
                                             << end_scaled);
  CHECK(norm_plain == 0.0);  // every gradient underflowed
  CHECK(end_plain == start_plain);
  CHECK(norm_scaled > 0.0);
  CHECK(end_scaled < 0.8 * start_scaled);
}
