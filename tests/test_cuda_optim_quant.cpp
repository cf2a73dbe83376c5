// AdamW, SGD and the grad scaler with parameters on a GPU, and the quantization kernels on CUDA
// (fake quantization, activations to u8, the u8 x s8 product and its dequantizing epilogue, the
// Int8Linear layer and an int8 MLP), each against the CPU on the same inputs: bit for bit where the
// arithmetic is the same (the kernels are built without fused multiply-adds), else at f32
// tolerance. Without a GPU the tests print SKIPPED.
#include <array>
#include <cmath>
#include <vector>

#include "cuda_testing.h"
#include "models/mlp.h"
#include "optim/grad_scaler.h"
#include "optim/optimizer.h"
#include "quant/fake_quant.h"
#include "quant/int8_gemm.h"
#include "quant/int8_gemm_cuda.h"
#include "quant/quantize.h"
#include "tensor/cuda/cuda.h"

using namespace forge;
using namespace forge::testing;

namespace {

// Parameters of a few shapes (odd sizes included), with copies on the GPU.
struct Twin {
  std::vector<Variable> cpu, gpu;
};
Twin twin_params(Generator& gen, DType t) {
  Twin p;
  for (Shape s : {Shape{1}, Shape{7, 3}, Shape{1000}, Shape{33, 65}}) {
    Tensor v = randn(s, gen).to(t);
    p.cpu.emplace_back(v.clone(), true);
    p.gpu.emplace_back(v.to(gpu), true);
  }
  return p;
}
void set_twin_grads(Twin& p, Generator& gen, double scale = 1.0) {
  for (size_t i = 0; i < p.cpu.size(); ++i) {
    Tensor g = mul(randn(p.cpu[i].shape(), gen), scale).to(p.cpu[i].dtype());
    p.cpu[i].set_grad(g);
    p.gpu[i].set_grad(g.to(gpu));
  }
}

}  // namespace

TEST_CASE("AdamW on cuda takes the CPU's steps bit for bit, f32 and f64, with weight decay") {
  if (!have_gpu("cuda AdamW")) return;
  for (DType t : {DType::f32, DType::f64}) {
    Generator gen(1);
    Twin p = twin_params(gen, t);
    // Two groups, one without weight decay; a parameter whose gradient starts late.
    auto groups = [](const std::vector<Variable>& v) {
      return std::vector<ParamGroup>{{{v[0], v[1]}, 0.1}, {{v[2], v[3]}, 0.0}};
    };
    AdamW oc(groups(p.cpu), {.lr = 1e-2}), og(groups(p.gpu), {.lr = 1e-2});
    for (int step = 0; step < 5; ++step) {
      set_twin_grads(p, gen);
      if (step < 2) {
        p.cpu[3].set_grad(Tensor());
        p.gpu[3].set_grad(Tensor());
      }
      oc.step();
      og.step();
      for (size_t i = 0; i < p.cpu.size(); ++i) {
        CHECK(p.gpu[i].data().device() == gpu);
        CHECK(bitwise_equal(p.gpu[i].data().to(Device::cpu()), p.cpu[i].data()));
      }
    }
    // The state lives on the GPU and reads back as the CPU's.
    auto sc = oc.state(), sg = og.state();
    REQUIRE(sc.size() == sg.size());
    for (size_t i = 0; i < sc.size(); ++i) {
      CHECK(sc[i].first == sg[i].first);
      CHECK(bitwise_equal(sg[i].second.to(Device::cpu()), sc[i].second));
    }
  }
}

TEST_CASE("SGD with momentum and weight decay on cuda follows the CPU's steps") {
  if (!have_gpu("cuda SGD")) return;
  Generator gen(2);
  Twin p = twin_params(gen, DType::f32);
  SGD oc({{p.cpu, 0.01}}, {.lr = 0.1, .momentum = 0.9, .nesterov = true});
  SGD og({{p.gpu, 0.01}}, {.lr = 0.1, .momentum = 0.9, .nesterov = true});
  for (int step = 0; step < 4; ++step) {
    set_twin_grads(p, gen);
    oc.step();
    og.step();
  }
  for (size_t i = 0; i < p.cpu.size(); ++i)
    CHECK(max_rel_diff(p.gpu[i].data().to(Device::cpu()), p.cpu[i].data()) < 1e-6);
}

TEST_CASE("the grad scaler unscales cuda gradients and finds inf and NaN in them") {
  if (!have_gpu("cuda grad scaler")) return;
  Generator gen(3);
  Twin p = twin_params(gen, DType::f32);
  set_twin_grads(p, gen, 1024.0);
  GradScaler sc({.init_scale = 1024.0}), sg({.init_scale = 1024.0});
  sc.unscale(p.cpu);
  sg.unscale(p.gpu);
  CHECK_FALSE(sg.found_inf());
  for (size_t i = 0; i < p.cpu.size(); ++i)
    CHECK(bitwise_equal(p.gpu[i].grad().to(Device::cpu()), p.cpu[i].grad()));
  sg.update();
  for (double bad : {INFINITY, NAN}) {
    set_twin_grads(p, gen);
    Tensor g = p.cpu[2].grad().clone();
    g.narrow(0, 999, 1).fill_(bad);
    p.gpu[2].set_grad(g.to(gpu));
    sg.unscale(p.gpu);
    CHECK(sg.found_inf());
    sg.update();
  }
  CHECK(sg.scale_value() == 256.0);  // backed off twice
}

TEST_CASE("fake_quantize on cuda equals the CPU's bit for bit, per tensor and per channel") {
  if (!have_gpu("cuda fake_quantize")) return;
  Generator gen(4);
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    Tensor x = mul(randn({6, 5, 37}, gen), 4.0).to(t);
    // Values on the rounding ties: x / s = k + 0.5 exactly (s a power of two).
    Tensor ties = from_vector<float>({0.125f, 0.375f, -0.125f, -0.375f, 31.875f, 32.125f}).to(t);
    QuantParams pt{full({}, 0.25), full({}, 7.0, DType::i32), -1, QuantRange::u8()};
    for (const Tensor& in : {x, ties, x.transpose(0, 2)}) {
      FakeQuantResult h = fake_quantize_with_mask(in, pt),
                      d = fake_quantize_with_mask(in.to(gpu), pt);
      CHECK(bitwise_equal(d.y.to(Device::cpu()), h.y));
      CHECK(bitwise_equal(d.mask.to(Device::cpu()), h.mask));
    }
    for (int axis : {0, 1, 2}) {
      const int64_t c = x.size(axis);
      Tensor scale = add(mul(rand({c}, gen), 0.1), 0.01);
      Tensor zero = from_vector<int32_t>(std::vector<int32_t>(size_t(c), -3));
      QuantParams pc{scale, zero, axis, QuantRange::s8()};
      FakeQuantResult h = fake_quantize_with_mask(x, pc),
                      d = fake_quantize_with_mask(x.to(gpu), pc);
      CHECK(bitwise_equal(d.y.to(Device::cpu()), h.y));
      CHECK(bitwise_equal(d.mask.to(Device::cpu()), h.mask));
      // Parameters on the GPU too, and the backward (dy where the mask is 1).
      QuantParams pg{scale.to(gpu), zero.to(gpu), axis, QuantRange::s8()};
      CHECK(bitwise_equal(fake_quantize(x.to(gpu), pg).to(Device::cpu()), h.y));
      Tensor dy = randn(x.shape(), gen).to(t);
      CHECK(bitwise_equal(fake_quantize_backward(dy.to(gpu), d.mask).to(Device::cpu()),
                          fake_quantize_backward(dy, h.mask)));
    }
  }
}

TEST_CASE("the int8 product on cuda equals int8_gemm_reference, and its epilogue the CPU's") {
  if (!have_gpu("cuda int8 gemm")) return;
  Generator gen(5);
  for (auto [m, k, n] : std::vector<std::array<int64_t, 3>>{
           {1, 1, 1}, {3, 5, 7}, {16, 64, 16}, {17, 65, 33}, {64, 300, 48}, {5, 1000, 3}}) {
    // Extremes included: a in {0, 255}, w in {-128, 127} on the first row.
    std::vector<uint8_t> a(size_t(m * k));
    std::vector<int8_t> w(size_t(n * k));
    for (size_t i = 0; i < a.size(); ++i) a[i] = uint8_t(gen.randint(256));
    for (size_t i = 0; i < w.size(); ++i) w[i] = int8_t(int(gen.randint(256)) - 128);
    for (int64_t i = 0; i < k; ++i) {
      a[size_t(i)] = i % 2 ? 255 : 0;
      w[size_t(i)] = i % 2 ? -128 : 127;
    }
    std::vector<int32_t> ref(size_t(m * n));
    int8_gemm_reference(a.data(), m, k, k, w.data(), n, ref.data(), n);
    Tensor ta = from_vector<uint8_t>(a, {m, k}), tw = from_vector<int8_t>(w, {n, k});
    Tensor acc = int8_gemm_cuda(ta.to(gpu), tw.to(gpu));
    CHECK(acc.to(Device::cpu()).to_vector<int32_t>() == ref);

    // The epilogue: y = float(acc - a_zero * row_sum) * (a_scale * w_scale[j]) + bias[j].
    Tensor w_scale = add(mul(rand({n}, gen), 0.01), 0.001), bias = randn({n}, gen);
    const float a_scale = 0.0173f;
    const int32_t a_zero = 97;
    std::vector<float> y(size_t(m * n));
    PackedInt8Weight pw = pack_int8_weight(w.data(), n, k);
    int8_linear_f32(a.data(), m, k, a_scale, a_zero, pw, w_scale.data<float>(), bias.data<float>(),
                    y.data(), n);
    Tensor yd =
        int8_linear_cuda(ta.to(gpu), a_scale, a_zero, tw.to(gpu), w_scale.to(gpu), bias.to(gpu));
    CHECK(yd.to(Device::cpu()).to_vector<float>() == y);
  }
}

TEST_CASE("activations quantize to u8 on cuda into the CPU's bytes, ties and NaN included") {
  if (!have_gpu("cuda quantize_u8")) return;
  Generator gen(6);
  Tensor x = mul(randn({7, 301}, gen), 3.0);
  // x * 4 lands on k + 0.5 (ties round to even), beyond the range, and NaN (to qmin).
  Tensor special = from_vector<float>(
      {0.125f, 0.375f, -0.125f, -0.375f, 31.875f, 32.125f, 1e9f, -1e9f, std::nanf(""), 0.f, -0.f});
  struct Grid {
    int32_t zero, qmin, qmax;
  };
  for (Grid g : {Grid{0, 0, 127}, Grid{60, 0, 127}, Grid{128, 0, 255}, Grid{-5, 3, 200}}) {
    // (host input, the same on the GPU): a strided view on the device too.
    for (auto [in, on_gpu] : std::vector<std::pair<Tensor, Tensor>>{
             {x, x.to(gpu)}, {special, special.to(gpu)}, {x.t(), x.to(gpu).t()}}) {
      Tensor c = in.contiguous();
      std::vector<uint8_t> want(size_t(c.numel()));
      quantize_u8(c.data<float>(), c.numel(), 4.0f, g.zero, g.qmin, g.qmax, want.data());
      Tensor got = quantize_u8_cuda(on_gpu, 4.0f, g.zero, g.qmin, g.qmax);
      CHECK(got.shape() == in.shape());
      CHECK(host(got).contiguous().to_vector<uint8_t>() == want);
    }
  }
}

namespace {

Tensor uniform(const Shape& shape, double lo, double hi, Generator& gen) {
  Tensor t = Tensor::empty(shape);
  uniform_(t, lo, hi, gen);
  return t;
}

// The layer's output for x on the cpu and for x_gpu (x on the GPU unless given; copied back).
std::pair<Tensor, Tensor> run_both(Module& layer, const Tensor& x, Tensor x_gpu = Tensor()) {
  NoGradGuard ng;
  Tensor on_cpu = layer.forward(Variable(x)).data();
  Tensor on_gpu = layer.forward(Variable(x_gpu.defined() ? x_gpu : x.to(gpu))).data();
  CHECK(on_gpu.device() == gpu);
  return {on_cpu, host(on_gpu)};
}

}  // namespace

TEST_CASE("Int8Linear on cuda gives the CPU's outputs bit for bit, dynamic and static") {
  if (!have_gpu("cuda Int8Linear")) return;
  Generator gen(7);
  struct Grid {
    const char* name;
    QuantRange range;
    QScheme scheme;
  };
  const std::vector<Grid> grids = {{"u7 affine", QuantRange::u7(), QScheme::affine},
                                   {"u8 affine", QuantRange::u8(), QScheme::affine},
                                   {"s8 symmetric", QuantRange::s8(), QScheme::symmetric}};
  // Input shapes (batch dims included) and N: odd K and N, one row, K past one 64-byte step.
  struct Case {
    Shape x;
    int64_t n;
  };
  const std::vector<Case> cases = {{{1, 1}, 1},     {{3, 5}, 7},        {{2, 3, 65}, 33},
                                   {{17, 300}, 48}, {{4, 1, 127}, 129}, {{1, 768}, 5}};
  for (const Grid& grid : grids) {
    for (const Case& c : cases) {
      const int64_t K = c.x[c.x.size() - 1], N = c.n;
      INFO(fmt::format("{}, x {}, N {}", grid.name, c.x, N));
      Tensor w = uniform({N, K}, -0.5, 0.5, gen), b = uniform({N}, -1, 1, gen);
      Tensor x = uniform(c.x, -2, 3, gen);
      QuantConfig config{.activation_range = grid.range, .activation_scheme = grid.scheme};
      for (bool with_bias : {true, false}) {
        Int8Linear dynamic(w, with_bias ? b : Tensor(), config);
        auto [want, got] = run_both(dynamic, x);
        CHECK(got.shape() == want.shape());
        CHECK(bitwise_equal(got, want));
      }
      // Static: the input grid fixed (here from a range wider than x's, so some values clamp).
      QuantParams in =
          choose_qparams(scalar_tensor(-1.5), scalar_tensor(2.5), grid.range, grid.scheme);
      Int8Linear fixed(w, b, config, in);
      auto [want, got] = run_both(fixed, x);
      CHECK(bitwise_equal(got, want));
    }
  }
  // A bf16 input, and a strided view on the GPU, are read as the CPU reads them (as f32 rows).
  Tensor w = uniform({9, 40}, -0.5, 0.5, gen), b = uniform({9}, -1, 1, gen);
  Int8Linear layer(w, b, QuantConfig{});
  Tensor xb = uniform({6, 40}, -1, 1, gen).to(DType::bf16);
  auto [want_b, got_b] = run_both(layer, xb);
  CHECK(bitwise_equal(got_b, want_b));
  Tensor x = uniform({40, 6}, -1, 1, gen);
  auto [want_t, got_t] = run_both(layer, x.t(), x.to(gpu).t());
  CHECK(bitwise_equal(got_t, want_t));
  // NaNs are left out of the batch's range and quantize to qmin, on both devices.
  Tensor xn = uniform({5, 40}, -1, 1, gen);
  xn.data<float>()[0] = NAN;
  xn.data<float>()[77] = NAN;
  auto [want_n, got_n] = run_both(layer, xn);
  CHECK(bitwise_equal(got_n, want_n));
}

TEST_CASE("an int8 MLP moved to cuda computes what it computes on the cpu; int4 refuses cuda") {
  if (!have_gpu("cuda int8 MLP")) return;
  Generator gen(8);
  MLP net({37, 64, 21, 10}, gen);
  REQUIRE(quantize_dynamic(net) == 3);
  Tensor x = randn({5, 37}, gen);
  NoGradGuard ng;
  Tensor want = net.forward(Variable(x)).data();
  net.to(gpu);  // the f32 parameters move; the int8 layers copy theirs on the first GPU input
  Tensor got = net.forward(Variable(x.to(gpu))).data();
  CHECK(got.device() == gpu);
  CHECK(bitwise_equal(host(got), want));
  CHECK(bitwise_equal(host(net.forward(Variable(x.to(gpu))).data()), want));  // the copies again
  CHECK(bitwise_equal(net.forward(Variable(x)).data(), want));  // and the cpu still works

  MLP small({64, 8}, gen);
  REQUIRE(quantize_dynamic(small, {.bits = 4, .group = 32, .config = {}}) == 1);
  CHECK_NOTHROW(small.forward(Variable(randn({2, 64}, gen))));
  REQUIRE_THROWS_WITH(small.forward(Variable(randn({2, 64}, gen).to(gpu))),
                      Contains("Int4Linear") && Contains("cuda:0"));
}
