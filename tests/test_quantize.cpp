// Quantized models (quant/quantize.h): Int8Linear against its formula (dynamic and static),
// dynamic int8 of an MLP and int4 of a GPT against f32, QAT training then conversion (the int8
// model computes what the fake-quantized one did), all-or-nothing changes, and the safetensors
// round trip with its errors. (int8 GPTs run end to end in tests/cli_quant.sh.)
#include <cmath>

#include "autograd/functions.h"
#include "models/gpt.h"
#include "models/mlp.h"
#include "optim/optimizer.h"
#include "quant/quantize.h"
#include "testing.h"

using namespace forge;
using namespace forge::testing;

namespace {

Tensor uniform(const Shape& shape, double lo, double hi, Generator& gen) {
  Tensor t = Tensor::empty(shape);
  uniform_(t, lo, hi, gen);
  return t;
}

Tensor forward(Module& m, const Tensor& x) {
  NoGradGuard ng;
  return m.forward(Variable(x)).data();
}

GPTConfig small_gpt() {
  return {.n_layer = 2,
          .n_head = 2,
          .n_embd = 64,
          .block_size = 16,
          .vocab_size = 37,
          .dropout = 0.0,
          .bias = true};
}

}  // namespace

TEST_CASE("Int8Linear computes s_x s_w (q_x - z_x) q_w + b from its integers") {
  Generator gen(1);
  const int64_t M = 5, K = 40, N = 7;
  Tensor w = uniform({N, K}, -0.5, 0.5, gen), b = uniform({N}, -1, 1, gen);
  Tensor x = uniform({M, K}, -2, 3, gen);
  struct Case {
    const char* name;
    QuantRange range;
    QScheme scheme;
  };
  for (Case c : {Case{"u7 affine", QuantRange::u7(), QScheme::affine},
                 Case{"u8 affine", QuantRange::u8(), QScheme::affine},
                 Case{"s8 symmetric", QuantRange::s8(), QScheme::symmetric}}) {
    DYNAMIC_SECTION(c.name) {
      Int8Linear layer(w, b,
                       QuantConfig{.activation_range = c.range, .activation_scheme = c.scheme});
      Tensor y = forward(layer, x);
      // The same by hand in double: the batch's range gives s_x and z_x.
      QuantParams qx = choose_qparams(scalar_tensor(-max(neg(x)).item()),
                                      scalar_tensor(max(x).item()), c.range, c.scheme);
      const double sx = qx.scale.item(), zx = qx.zero_point.item();
      if (c.scheme == QScheme::symmetric) CHECK(zx == 0);
      Tensor wq = layer.weight_q(), ws = layer.weight_scale();
      double worst = 0;
      for (int64_t i = 0; i < M; ++i) {
        for (int64_t n = 0; n < N; ++n) {
          double acc = 0;
          for (int64_t k = 0; k < K; ++k) {
            float v = x.data<float>()[i * K + k];
            double q = std::clamp(double(std::nearbyint(v * (1.0f / float(sx)))) + zx,
                                  double(c.range.qmin), double(c.range.qmax));
            acc += (q - zx) * double(wq.data<int8_t>()[n * K + k]);
          }
          double want = sx * double(ws.data<float>()[n]) * acc + double(b.data<float>()[n]);
          worst = testing::nan_max(worst, std::abs(double(y.data<float>()[i * N + n]) - want) /
                                              std::max(1.0, std::abs(want)));
        }
      }
      INFO("worst relative difference " << worst);
      CHECK(worst < 1e-5);
      // The weights are the per-channel symmetric rounding of w: |w - q s| <= s / 2 everywhere.
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k)
          REQUIRE(std::abs(w.data<float>()[n * K + k] -
                           float(wq.data<int8_t>()[n * K + k]) * ws.data<float>()[n]) <=
                  ws.data<float>()[n] * 0.5f * (1 + 1e-5f));
    }
  }
}

TEST_CASE(
    "Int8Linear per row: each row quantized on its own grid, its output independent of the "
    "other rows, as the per-batch path computes that row alone") {
  Generator gen(5);
  const int64_t K = 70, N = 37;  // odd: edge panels
  Tensor w = uniform({N, K}, -0.5, 0.5, gen), b = uniform({N}, -1, 1, gen);
  // Rows of very different ranges: a shared grid would change the small rows a lot.
  Tensor x = mul(uniform({6, K}, -1, 1, gen),
                 from_vector<float>({0.01f, 1.0f, 30.0f, 0.5f, 2.0f, 0.1f}, {6, 1}));
  Int8Linear batch(w, b, QuantConfig{}), rows(w, b, QuantConfig{});
  rows.set_per_row(true);
  CHECK(rows.per_row());
  Tensor y = forward(rows, x);
  Tensor shared = forward(batch, x);
  Tensor f32 = add(matmul(x, w.t()), b);
  for (int64_t i = 0; i < 6; ++i) {
    INFO("row " << i);
    Tensor xi = x.narrow(0, i, 1).contiguous();
    // The per-batch path on the row alone is that row's own grid: the same bits.
    CHECK(bitwise_equal(y.narrow(0, i, 1).contiguous(), forward(batch, xi)));
    // In any batch: the row with others after it, and the row alone through the per-row layer.
    CHECK(bitwise_equal(forward(rows, xi), y.narrow(0, i, 1).contiguous()));
    Tensor pair = concat({x.narrow(0, 5 - i, 1), xi}, 0);
    CHECK(bitwise_equal(forward(rows, pair).narrow(0, 1, 1).contiguous(), forward(rows, xi)));
  }
  // Per-row grids are finer for the small rows: closer to f32 than the shared grid.
  double err_rows = max_abs_diff(y.narrow(0, 0, 1), f32.narrow(0, 0, 1));
  double err_shared = max_abs_diff(shared.narrow(0, 0, 1), f32.narrow(0, 0, 1));
  INFO("row 0 error: per row " << err_rows << ", per batch " << err_shared);
  CHECK(err_rows < err_shared);
  CHECK(max_rel_diff(y, f32) < 0.02);
  // Static layers have a fixed grid: per row does not apply.
  Int8Linear fixed(
      w, b, QuantConfig{},
      choose_qparams(scalar_tensor(-1.0), scalar_tensor(1.0), QuantRange::u7(), QScheme::affine));
  CHECK_THROWS_WITH(fixed.set_per_row(true), Contains("static"));
  // On a whole model.
  Generator g2(6);
  MLP net({16, 12, 4}, g2);
  quantize_dynamic(net);
  CHECK(set_int8_per_row(net, true) == 2);
}

TEST_CASE("quantize_dynamic keeps an MLP's outputs within int8 rounding of f32") {
  Generator gen(2);
  MLP net({64, 48, 32, 10}, gen);
  Tensor x = randn({20, 64}, gen);
  Tensor want = forward(net, x);
  CHECK(quantize_dynamic(net) == 3);
  CHECK(describe_quantization(net) == "int8-dynamic");
  Tensor got = forward(net, x);
  double rel = max_rel_diff(got, want);
  INFO("max relative difference " << rel);
  CHECK(rel < 0.03);
  CHECK(rel > 0);  // it did quantize
  // The f32 weights the integer layers replaced are gone (memory, and no stale values to save).
  for (auto& [name, v] : net.named_parameters()) CHECK(v.numel() == 0);
  // A layer is quantized once.
  REQUIRE_THROWS_WITH(quantize_dynamic(net), Contains("already quantized"));
  // Integer layers carry no gradient.
  Variable xv(x, /*requires_grad=*/true);
  REQUIRE_THROWS_WITH(net.forward(xv), Contains("inference"));
}

TEST_CASE(
    "QAT trains through fake quantization and converts to int8 layers that compute the same") {
  Generator gen(3);
  MLP net({32, 24, 5}, gen);
  AdamW opt({{net.parameters(), 0.0}}, {.lr = 1e-2});
  CHECK(prepare_qat(net, {.freeze_after = 6}) == 2);
  CHECK(describe_quantization(net) == "qat");
  Tensor x = randn({16, 32}, gen);
  Tensor y = from_vector<int64_t>({0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0});
  Tensor w_before = net.named_parameters()[0].second.data().clone();
  double first = 0, last = 0;
  for (int step = 0; step < 10; ++step) {
    Variable loss = cross_entropy(net.forward(Variable(x)), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item();
  }
  INFO("loss " << first << " -> " << last);
  CHECK(last < first);  // gradients pass the straight-through estimator
  CHECK(!bitwise_equal(net.named_parameters()[0].second.data(), w_before));

  net.eval();
  Tensor fake = forward(net, x);  // fake-quantized f32 arithmetic, frozen scales
  CHECK(convert(net) == 2);
  CHECK(describe_quantization(net) == "int8-static");
  Tensor real = forward(net, x);
  double rel = max_rel_diff(real, fake);
  INFO("int8 vs fake-quantized: " << rel);
  CHECK(rel < 1e-4);
  REQUIRE_THROWS_WITH(convert(net), Contains("prepare_qat"));
}

TEST_CASE("a static Int8Linear adds its s32 bias in units of s_x s_w") {
  Generator gen(11);
  const int64_t M = 3, K = 24, N = 5;
  Tensor w = uniform({N, K}, -0.3, 0.3, gen), b = uniform({N}, -2, 2, gen);
  Tensor x = uniform({M, K}, -1, 1.5, gen);
  QuantParams in;
  in.scale = scalar_tensor(0.02);
  in.zero_point = scalar_tensor(40, DType::i32);
  in.range = QuantRange::u7();
  Int8Linear layer(w, b, QuantConfig{}, in);
  CHECK(layer.is_static());
  Tensor y = forward(layer, x);
  Tensor wq = layer.weight_q(), ws = layer.weight_scale();
  Tensor bq = layer.state()[2].second;
  REQUIRE(layer.state()[2].first == "bias");
  REQUIRE(bq.dtype() == DType::i32);
  const float sx = 0.02f;
  double worst = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float unit = sx * ws.data<float>()[n];
    CHECK(bq.data<int32_t>()[n] ==
          int32_t(std::nearbyint(double(b.data<float>()[n]) / double(unit))));
    for (int64_t i = 0; i < M; ++i) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        double q = std::clamp(double(std::nearbyint(x.data<float>()[i * K + k] * (1.0f / sx))) + 40,
                              0.0, 127.0);
        acc += (q - 40) * double(wq.data<int8_t>()[n * K + k]);
      }
      double want = double(unit) * (acc + double(bq.data<int32_t>()[n]));
      worst = testing::nan_max(worst, std::abs(double(y.data<float>()[i * N + n]) - want) /
                                          std::max(1.0, std::abs(want)));
    }
  }
  INFO("worst relative difference " << worst);
  CHECK(worst < 1e-5);
}

TEST_CASE("quantizing fails whole: a layer that cannot be quantized leaves the model as it was") {
  Generator gen(12);
  MLP net({64, 48, 10}, gen);  // int4 group 32 fits 64 inputs, not 48
  NamedTensors before;
  for (auto& [name, t] : net.state_dict()) before.emplace_back(name, t.clone());
  REQUIRE_THROWS_WITH(quantize_dynamic(net, {.bits = 4, .group = 32, .config = {}}),
                      Contains("layers.2") && Contains("48 inputs") && Contains("group 32"));
  CHECK(describe_quantization(net) == "none");
  auto after = net.state_dict();
  for (size_t i = 0; i < before.size(); ++i)
    CHECK(bitwise_equal(after[i].second, before[i].second));
  REQUIRE_THROWS_WITH(quantize_dynamic(net, {.bits = 4, .group = 0, .config = {}}),
                      Contains("32, 64 or 128"));
  CHECK(quantize_dynamic(net) == 2);  // int8 fits
}

TEST_CASE("observers of a model prepared in eval mode wait for training mode") {
  Generator gen(13);
  MLP net({8, 4}, gen);
  net.eval();
  prepare_qat(net);
  forward(net, randn({2, 8}, gen));
  REQUIRE_THROWS_WITH(convert(net), Contains("saw no data"));
  net.train();
  forward(net, randn({2, 8}, gen));
  CHECK(convert(net) == 1);
}

TEST_CASE("convert refuses a layer whose observers saw no data") {
  Generator gen(4);
  MLP net({8, 4}, gen);
  prepare_qat(net);
  REQUIRE_THROWS_WITH(convert(net), Contains("layers.0") && Contains("saw no data"));
}

TEST_CASE("int4 layers in a GPT: logits near f32, and generation with the cache runs them") {
  Generator init(5), drop(6);
  GPT gpt(small_gpt(), init, drop);
  gpt.eval();
  Tensor idx = from_vector<int64_t>({1, 5, 9, 2, 30, 7, 7, 3}, {1, 8});
  NoGradGuard ng;
  Tensor want = gpt.forward(idx).data();
  CHECK(quantize_dynamic(gpt, {.bits = 4, .group = 32, .config = {}}) == 8);  // 4 per block
  CHECK(describe_quantization(gpt) == "int4-g32");
  Tensor got = gpt.forward(idx).data();
  double rel = max_rel_diff(got, want);
  INFO("int4 logits vs f32: " << rel);
  CHECK(rel < 0.05);
  // The cached path (one token at a time) gives the full forward's last logits.
  KVCache cache = gpt.make_cache(1);
  Tensor step_logits;
  for (int64_t t = 0; t < 8; ++t)
    step_logits = gpt.forward_cached(idx.narrow(1, t, 1), cache).data();
  CHECK(max_rel_diff(step_logits.reshape({-1}), got.select(1, 7).reshape({-1})) < 1e-5);
}

TEST_CASE("quantized models round-trip through safetensors bit for bit") {
  TempDir dir;
  Generator gen(7);
  Tensor x = randn({6, 64}, gen);
  for (std::string label : {"int8-dynamic", "int8-static", "int8-static-s8", "int4-g64"}) {
    DYNAMIC_SECTION(label) {
      Generator g1(8), g2(9);  // b starts from other weights: all it has comes from the file
      MLP a({64, 64, 10}, g1), b({64, 64, 10}, g2);
      std::string kind = label == "int8-static-s8" ? "int8-static" : label;
      if (label == "int8-dynamic") {
        quantize_dynamic(a);
      } else if (kind == "int8-static") {
        QuantConfig c;
        if (label == "int8-static-s8") {
          c.activation_range = QuantRange::s8();
          c.activation_scheme = QScheme::symmetric;
        }
        prepare_qat(a, c);
        forward(a, x);  // training mode: observers see x
        convert(a);
      } else {
        // 10 outputs x 64 inputs: groups of 64.
        quantize_dynamic(a, {.bits = 4, .group = 64, .config = {}});
      }
      CHECK(describe_quantization(a) == kind);
      std::string path = dir.file(label + ".safetensors");
      save_quantized(path, a, {{"note", "test"}});
      SafetensorsContents file = load_safetensors(path);
      CHECK(file.metadata.at("quantization") == kind);
      CHECK(file.metadata.at("note") == "test");
      load_quantized(b, file, path);
      CHECK(describe_quantization(b) == kind);
      CHECK(bitwise_equal(forward(b, x), forward(a, x)));
      CHECK(state_bytes(quantized_state(b)) == state_bytes(quantized_state(a)));
    }
  }
}

TEST_CASE("an int8 MLP is about a quarter of its f32 size") {
  Generator gen(9);
  MLP net({784, 256, 256, 10}, gen);
  int64_t f32 = state_bytes(net.state_dict());
  quantize_dynamic(net);
  int64_t i8 = state_bytes(quantized_state(net));
  // Weights 1 byte instead of 4, plus f32 scales and biases per output channel.
  const int64_t weights = 784 * 256 + 256 * 256 + 256 * 10, channels = 256 + 256 + 10;
  CHECK(f32 == 4 * (weights + channels));
  CHECK(i8 == weights + 4 * channels + 4 * channels);
  CHECK(double(i8) / double(f32) <= 0.26);
}

TEST_CASE("load_quantized names what does not fit") {
  TempDir dir;
  Generator g1(10), g2(10);
  MLP a({16, 8, 4}, g1);
  quantize_dynamic(a);
  std::string path = dir.file("m.safetensors");
  save_quantized(path, a);
  SafetensorsContents file = load_safetensors(path);
  MLP wrong({16, 12, 4}, g2);
  REQUIRE_THROWS_WITH(load_quantized(wrong, file, path),
                      Contains(path) && Contains("layers.0.weight"));
  SafetensorsContents missing = file;
  missing.tensors.erase(missing.tensors.begin() + 1);  // layers.0.weight_scale
  MLP b({16, 8, 4}, g2);
  REQUIRE_THROWS_WITH(load_quantized(b, missing, path), Contains("layers.0.weight_scale"));
  SafetensorsContents extra = file;
  extra.tensors.emplace_back("layers.9.weight", zeros({2}));
  MLP c({16, 8, 4}, g2);
  REQUIRE_THROWS_WITH(load_quantized(c, extra, path),
                      Contains("unexpected") && Contains("layers.9"));
  // Nothing changed in a model whose load failed, even past its first layer.
  CHECK(describe_quantization(c) == "none");
  SafetensorsContents no_grid = file;
  no_grid.metadata.erase("activation_range");
  REQUIRE_THROWS_WITH(load_quantized(c, no_grid, path), Contains("activation_range"));
  SafetensorsContents bad_scale = file;
  bad_scale.tensors[1].second = full({8}, -1.0);  // layers.0.weight_scale
  REQUIRE_THROWS_WITH(load_quantized(c, bad_scale, path),
                      Contains(path) && Contains("weight_scale") && Contains("positive"));
  CHECK(describe_quantization(c) == "none");
  load_quantized(c, file, path);
  CHECK(describe_quantization(c) == "int8-dynamic");
}
