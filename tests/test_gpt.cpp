// GPT: nanoGPT's parameter names and counts, GPT-2 initialisation, the loss of a fresh model,
// forward shapes and errors, dropout only in training, the KV-cache path against the full forward,
// config validation, and a finite-difference check of the whole model's gradients in f64.
#include <cmath>
#include <map>

#include "autograd/functions.h"
#include "models/gpt.h"
#include "testing.h"

using namespace forge;
using namespace forge::testing;

namespace {

GPTConfig tiny_config(bool bias = true) {
  GPTConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 16;
  c.block_size = 12;
  c.vocab_size = 13;
  c.bias = bias;
  return c;
}

// Random tokens (rows, cols) in [0, vocab).
Tensor random_tokens(int64_t rows, int64_t cols, int64_t vocab, Generator& gen) {
  std::vector<int64_t> v(size_t(rows * cols));
  for (int64_t& x : v) x = int64_t(gen.randint(uint64_t(vocab)));
  return from_vector(v, Shape{rows, cols});
}

std::vector<double> values(const Tensor& t) {
  std::vector<double> out(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[size_t(i)] = read_element(t, unravel(i, t.shape()));
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// nanoGPT's named_parameters() for this config, in its order (the tied lm_head is not listed).
std::vector<std::pair<std::string, Shape>> nanogpt_parameters(const GPTConfig& c) {
  const int64_t C = c.n_embd;
  std::vector<std::pair<std::string, Shape>> out = {{"transformer.wte.weight", {c.vocab_size, C}},
                                                    {"transformer.wpe.weight", {c.block_size, C}}};
  auto add = [&](const std::string& name, Shape w, int64_t bias_size) {
    out.emplace_back(name + ".weight", w);
    if (c.bias) out.emplace_back(name + ".bias", Shape{bias_size});
  };
  for (int64_t l = 0; l < c.n_layer; ++l) {
    std::string h = "transformer.h." + std::to_string(l);
    add(h + ".ln_1", {C}, C);
    add(h + ".attn.c_attn", {3 * C, C}, 3 * C);
    add(h + ".attn.c_proj", {C, C}, C);
    add(h + ".ln_2", {C}, C);
    add(h + ".mlp.c_fc", {4 * C, C}, 4 * C);
    add(h + ".mlp.c_proj", {C, 4 * C}, C);
  }
  add("transformer.ln_f", {C}, C);
  return out;
}

}  // namespace

// ============================================================================================
// Parameters

TEST_CASE("GPT parameter names and shapes are nanoGPT's, with and without bias") {
  for (bool bias : {true, false}) {
    INFO("bias " << bias);
    GPTConfig cfg = tiny_config(bias);
    Generator init(1), drop(2);
    GPT model(cfg, init, drop);
    auto expected = nanogpt_parameters(cfg);
    auto actual = model.named_parameters();
    REQUIRE(actual.size() == expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      INFO(expected[i].first);
      CHECK(actual[i].first == expected[i].first);
      CHECK(actual[i].second.shape() == expected[i].second);
      CHECK(actual[i].second.dtype() == DType::f32);
      CHECK(actual[i].second.requires_grad());
    }
  }
}

TEST_CASE("GPT output head is transformer.wte.weight itself") {
  GPTConfig cfg = tiny_config();
  Generator init(3), drop(4), gen(5);
  GPT model(cfg, init, drop);
  // Tokens 0 .. 9 only, so changing row 12 of wte changes nothing but the head's logit 12.
  Tensor idx = from_vector<int64_t>({0, 3, 5, 9, 1, 2}, {1, 6});
  Tensor before = model.forward(idx).data();
  model.wte->weight.data().narrow(0, 12, 1).zero_();
  Tensor after = model.forward(idx).data();
  // A zero row of a tied head gives logits of exactly 0, and leaves the other logits alone.
  CHECK(max_abs_diff(after.narrow(2, 12, 1), zeros({1, 6, 1})) == 0.0);
  CHECK(bitwise_equal(after.narrow(2, 0, 12).contiguous(), before.narrow(2, 0, 12).contiguous()));
  CHECK(max_abs_diff(before.narrow(2, 12, 1), zeros({1, 6, 1})) > 0.0);
}

TEST_CASE("GPTConfig::num_parameters equals the model's count, with and without wpe") {
  for (bool bias : {true, false}) {
    for (int64_t n_layer : {1, 3}) {
      GPTConfig cfg = tiny_config(bias);
      cfg.n_layer = n_layer;
      INFO("bias " << bias << " n_layer " << n_layer);
      Generator init(1), drop(2);
      GPT model(cfg, init, drop);
      CHECK(cfg.num_parameters() == model.num_parameters());
      CHECK(cfg.num_parameters(true) == model.num_parameters() - model.wpe->weight.numel());
    }
  }
}

TEST_CASE("GPTConfig::num_parameters of GPT-2 small is 124,439,808 (123.65M without wpe)") {
  GPTConfig gpt2;
  gpt2.n_layer = 12;
  gpt2.n_head = 12;
  gpt2.n_embd = 768;
  gpt2.block_size = 1024;
  gpt2.vocab_size = 50257;
  // wte 50257*768 + wpe 1024*768 + 12 blocks of 7,087,872 + ln_f 1536.
  CHECK(gpt2.num_parameters() == 124439808);
  CHECK(gpt2.num_parameters(true) == 124439808 - 786432);
  // Without biases: per block 2*768 (ln) + 2304 + 768 + 3072 + 768 fewer, and ln_f's 768.
  gpt2.bias = false;
  CHECK(gpt2.num_parameters() == 124439808 - 12 * 8448 - 768);
}

TEST_CASE("GPTConfig::flops_per_token is 6 N + 12 L C T") {
  GPTConfig gpt2;
  gpt2.n_layer = 12;
  gpt2.n_head = 12;
  gpt2.n_embd = 768;
  gpt2.block_size = 1024;
  gpt2.vocab_size = 50257;
  // 6 * 123,653,376 + 12 * 12 * 768 * 1024 (nanoGPT's estimate_mfu for GPT-2 small).
  CHECK(gpt2.flops_per_token(1024) == 741920256.0 + 113246208.0);
  CHECK(gpt2.flops_per_token(256) == 741920256.0 + 113246208.0 / 4);
  GPTConfig cfg = tiny_config();
  Generator init(1), drop(2);
  GPT model(cfg, init, drop);
  double n = double(model.num_parameters() - model.wpe->weight.numel());
  CHECK(cfg.flops_per_token(7) == 6.0 * n + 12.0 * 2 * 16 * 7);
}

// ============================================================================================
// Initialisation

TEST_CASE(
    "GPT initialisation: weights N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), "
    "biases 0, LayerNorm 1 and 0") {
  GPTConfig cfg;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 64;
  cfg.block_size = 32;
  cfg.vocab_size = 50;
  Generator init(7), drop(8);
  GPT model(cfg, init, drop);
  const double proj_std = 0.02 / std::sqrt(2.0 * 2);  // 0.01
  int normal_tensors = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    INFO(name);
    std::vector<double> v = values(p.data());
    const double n = double(v.size());
    if (name.find(".ln_") != std::string::npos) {
      double expected = ends_with(name, ".weight") ? 1.0 : 0.0;
      for (double x : v) REQUIRE(x == expected);
      continue;
    }
    if (ends_with(name, ".bias")) {
      for (double x : v) REQUIRE(x == 0.0);
      continue;
    }
    double sigma = name.find("c_proj.weight") != std::string::npos ? proj_std : 0.02;
    double mean = 0, sq = 0, within = 0;
    for (double x : v) mean += x;
    mean /= n;
    for (double x : v) {
      sq += (x - mean) * (x - mean);
      within += std::abs(x) <= sigma ? 1.0 : 0.0;
    }
    double sd = std::sqrt(sq / (n - 1));
    // n >= 2048 samples each. Sample mean: std sigma/sqrt(n). Sample std: relative std
    // 1/sqrt(2n) <= 1.6%. Fraction within one sigma: 0.6827 with std sqrt(.68*.32/n) <= 0.0103
    // (a uniform of the same std gives 0.577). All to 5 standard errors.
    CHECK(std::abs(mean) <= 5.0 * sigma / std::sqrt(n));
    CHECK(std::abs(sd / sigma - 1.0) <= 5.0 / std::sqrt(2.0 * n));
    CHECK(std::abs(within / n - 0.6827) <= 5.0 * std::sqrt(0.6827 * 0.3173 / n));
    ++normal_tensors;
  }
  CHECK(normal_tensors == 2 + 2 * 4);  // wte, wpe and four weights per block
}

TEST_CASE("GPT loss of a fresh model on random targets is close to ln(vocab)") {
  GPTConfig cfg = tiny_config();
  cfg.n_embd = 32;
  cfg.block_size = 16;
  cfg.vocab_size = 50;
  Generator init(9), drop(10), gen(11);
  GPT model(cfg, init, drop);
  Tensor idx = random_tokens(8, 16, 50, gen), targets = random_tokens(8, 16, 50, gen);
  double loss = model.loss(model.forward(idx), targets).item();
  // ln_f's output has unit variance per row and wte ~ N(0, 0.02^2), so logits have std
  // s = 0.02 sqrt(32) = 0.113: E[loss] = ln V + s^2/2 = ln V + 0.0064, and the mean over 128
  // positions of the target's logit has std s/sqrt(128) = 0.01. Tolerance 0.0064 + 5 * 0.01.
  CHECK(std::abs(loss - std::log(50.0)) <= 0.06);
}

// ============================================================================================
// Forward

TEST_CASE("GPT forward maps (B, T) tokens to (B, T, vocab) logits up to block_size") {
  GPTConfig cfg = tiny_config();
  Generator init(12), drop(13), gen(14);
  GPT model(cfg, init, drop);
  Variable y = model.forward(random_tokens(3, 5, 13, gen));
  CHECK(y.shape() == Shape({3, 5, 13}));
  CHECK(y.dtype() == DType::f32);
  CHECK(all_finite(y.data()));
  CHECK(model.forward(random_tokens(1, 12, 13, gen)).shape() == Shape({1, 12, 13}));
  // A prefix's logits do not depend on later tokens (causality through the whole model).
  Tensor idx = random_tokens(1, 12, 13, gen);
  Tensor full = model.forward(idx).data();
  Tensor prefix = model.forward(idx.narrow(1, 0, 5).contiguous()).data();
  CHECK(max_abs_diff(full.narrow(1, 0, 5), prefix) <= 1e-6);
}

TEST_CASE("GPT forward errors on T > block_size and on non-integer tokens") {
  GPTConfig cfg = tiny_config();
  Generator init(15), drop(16), gen(17);
  GPT model(cfg, init, drop);
  REQUIRE_THROWS_WITH(model.forward(random_tokens(1, 13, 13, gen)),
                      Contains("13 tokens") && Contains("block_size 12"));
  REQUIRE_THROWS_WITH(model.forward(zeros({1, 4})), Contains("integer") && Contains("[1, 4]"));
  REQUIRE_THROWS_WITH(model.forward(zeros({4}, DType::i64)), Contains("[4]"));
}

TEST_CASE("GPT dropout is active only in training mode") {
  GPTConfig with = tiny_config(), without = tiny_config();
  with.dropout = 0.3;
  Generator init_a(18), drop_a(19), init_b(18), drop_b(19), gen(20);
  GPT dropped(with, init_a, drop_a), plain(without, init_b, drop_b);
  Tensor idx = random_tokens(2, 8, 13, gen);
  // Same init seed: the dropout setting does not change the initial weights.
  Tensor reference = plain.forward(idx).data();
  // Training: a new mask each forward, so two forwards differ, and both differ from no dropout.
  REQUIRE(dropped.is_training());
  Tensor t1 = dropped.forward(idx).data(), t2 = dropped.forward(idx).data();
  CHECK(max_abs_diff(t1, t2) > 1e-3);
  CHECK(max_abs_diff(t1, reference) > 1e-3);
  // Eval: exactly the model without dropout, every time.
  dropped.eval();
  CHECK(bitwise_equal(dropped.forward(idx).data(), reference));
  CHECK(bitwise_equal(dropped.forward(idx).data(), reference));
  // With dropout 0, eval gives what training gave.
  plain.eval();
  CHECK(bitwise_equal(plain.forward(idx).data(), reference));
}

TEST_CASE(
    "GPT forward_cached over a prompt then token by token gives the full forward's last "
    "logits") {
  GPTConfig cfg = tiny_config();
  Generator init(21), drop(22), gen(23);
  GPT model(cfg, init, drop);
  model.eval();
  NoGradGuard no_grad;
  Tensor idx = random_tokens(2, 12, 13, gen);
  KVCache cache = model.make_cache(2);
  REQUIRE(cache.k.size() == 2);
  REQUIRE(cache.length == 0);
  // A prompt of 4, one token, a chunk of 3, then one at a time to block_size.
  const std::vector<int64_t> steps = {4, 1, 3, 1, 1, 1, 1};
  int64_t at = 0;
  for (int64_t n : steps) {
    INFO("positions " << at << " .. " << at + n - 1);
    Tensor logits = model.forward_cached(idx.narrow(1, at, n).contiguous(), cache).data();
    at += n;
    CHECK(cache.length == at);
    REQUIRE(logits.shape() == Shape({2, 1, 13}));
    Tensor full = model.forward(idx.narrow(1, 0, at).contiguous()).data();
    // f32, the same terms summed in other orders: |logits| < 1, so 1e-5 is ~100 ulp.
    CHECK(max_abs_diff(logits, full.narrow(1, at - 1, 1)) <= 1e-5);
  }
  REQUIRE(at == 12);
  REQUIRE_THROWS_WITH(model.forward_cached(idx.narrow(1, 0, 1).contiguous(), cache),
                      Contains("12 cached") && Contains("block_size 12"));
  // Resetting the length reuses the cache from the start.
  cache.length = 0;
  Tensor again = model.forward_cached(idx.narrow(1, 0, 3).contiguous(), cache).data();
  Tensor full3 = model.forward(idx.narrow(1, 0, 3).contiguous()).data();
  CHECK(max_abs_diff(again, full3.narrow(1, 2, 1)) <= 1e-5);
}

TEST_CASE(
    "GPT forward_slots over slots of different lengths equals each sequence run alone, "
    "bit for bit, whatever else is in the step") {
  // Odd sizes (n_embd 36, 3 heads of 12, vocab 29) so the matrix products have edge tiles.
  GPTConfig cfg = tiny_config();
  cfg.n_embd = 36;
  cfg.n_head = 3;
  cfg.vocab_size = 29;
  cfg.block_size = 16;
  Generator init(31), drop(32), gen(33);
  GPT model(cfg, init, drop);
  model.eval();
  NoGradGuard no_grad;
  // Five sequences: prompts of 1..5 tokens, then 8 more tokens each.
  const int64_t n = 5, extra = 8;
  std::vector<Tensor> seq;
  for (int64_t i = 0; i < n; ++i) seq.push_back(random_tokens(1, i + 1 + extra, 29, gen));
  // Alone: a one-sequence KVCache, the prompt at once, then one token at a time.
  std::vector<std::vector<Tensor>> alone(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    KVCache c = model.make_cache(1);
    alone[size_t(i)].push_back(model.forward_cached(seq[size_t(i)].narrow(1, 0, i + 1), c).data());
    for (int64_t t = 0; t < extra; ++t)
      alone[size_t(i)].push_back(
          model.forward_cached(seq[size_t(i)].narrow(1, i + 1 + t, 1).contiguous(), c).data());
  }
  // Together, with the weights prepacked (bit for bit the same products): sequence i in slot
  // slot_of[i] of 7; sequences join late (their prompt in the same
  // step as the others' next tokens) and leave early, so every step runs a different mix of
  // prompts and next tokens in a different order.
  REQUIRE(model.set_prepacked(true) == 4 * cfg.n_layer + 1);  // 4 Linear per block, the head
  SlotCache cache = model.make_slot_cache(7);
  const std::vector<int64_t> slot_of = {6, 0, 3, 1, 5};
  const std::vector<int64_t> joins = {0, 0, 2, 3, 5};  // step at which each sequence's prompt runs
  std::vector<int64_t> done(size_t(n), -1);            // -1: prompt not run; then tokens decoded
  int64_t checked = 0;
  for (int64_t step = 0; checked < n * (extra + 1); ++step) {
    std::vector<int64_t> seqs, slots, counts, tokens;
    for (int64_t r = n - 1; r >= 0; --r) {  // reverse order: rows and slots disagree
      if (joins[size_t(r)] > step || done[size_t(r)] >= extra) continue;
      const int64_t at = done[size_t(r)] < 0 ? 0 : r + 1 + done[size_t(r)];
      const int64_t count = done[size_t(r)] < 0 ? r + 1 : 1;
      seqs.push_back(r);
      slots.push_back(slot_of[size_t(r)]);
      counts.push_back(count);
      for (int64_t t = 0; t < count; ++t) tokens.push_back(seq[size_t(r)].data<int64_t>()[at + t]);
    }
    if (seqs.empty()) continue;
    Tensor logits = model
                        .forward_slots(from_vector(tokens, Shape{1, int64_t(tokens.size())}), slots,
                                       counts, cache)
                        .data();
    REQUIRE(logits.shape() == Shape({int64_t(seqs.size()), 1, 29}));
    for (size_t b = 0; b < seqs.size(); ++b) {
      const int64_t i = seqs[b];
      INFO("sequence " << i << ", step " << step << " ("
                       << (done[size_t(i)] < 0 ? "prompt" : "next") << "), " << seqs.size()
                       << " slots in the step");
      CHECK(bitwise_equal(logits.narrow(0, int64_t(b), 1).contiguous(),
                          alone[size_t(i)][size_t(1 + done[size_t(i)])]));
      CHECK(cache.length[size_t(slot_of[size_t(i)])] == i + 2 + done[size_t(i)]);
      ++done[size_t(i)];
      ++checked;
    }
  }
  // A refilled window (length reset to 0, then several tokens) equals a fresh cache run on them.
  {
    cache.length[0] = 0;
    Tensor window = seq[4].narrow(1, 2, 6).contiguous();
    KVCache c = model.make_cache(1);
    Tensor want = model.forward_cached(window, c).data();
    CHECK(bitwise_equal(model.forward_slots(window, {0}, {6}, cache).data().contiguous(), want));
  }
  // Bad calls name what is wrong.
  CHECK_THROWS_WITH(
      model.forward_slots(from_vector<int64_t>({1, 2}, {1, 2}), {1, 1}, {1, 1}, cache),
      Contains("slot 1 given twice"));
  CHECK_THROWS_WITH(model.forward_slots(from_vector<int64_t>({1}, {1, 1}), {7}, {1}, cache),
                    Contains("slot 7 of 7"));
  CHECK_THROWS_WITH(model.forward_slots(from_vector<int64_t>({1, 2}, {1, 2}), {2}, {1}, cache),
                    Contains("2 tokens for counts adding up to 1"));
  cache.length[2] = 16;
  CHECK_THROWS_WITH(model.forward_slots(from_vector<int64_t>({1}, {1, 1}), {2}, {1}, cache),
                    Contains("slot 2 holds 16 positions") && Contains("full"));
}

// ============================================================================================
// Config validation

TEST_CASE("GPTConfig::validate errors name the field") {
  auto expect_error = [](auto change, const std::string& field) {
    GPTConfig c = tiny_config();
    change(c);
    INFO(field);
    REQUIRE_THROWS_WITH(c.validate(), Contains(field));
    Generator init(1), drop(2);
    REQUIRE_THROWS_WITH(GPT(c, init, drop), Contains(field));
  };
  expect_error([](GPTConfig& c) { c.n_layer = 0; }, "n_layer");
  expect_error([](GPTConfig& c) { c.n_head = 0; }, "n_head");
  expect_error([](GPTConfig& c) { c.n_head = 3; }, "n_embd 16");  // 16 % 3 != 0
  expect_error([](GPTConfig& c) { c.n_embd = -4; }, "n_embd");
  expect_error([](GPTConfig& c) { c.block_size = 0; }, "block_size");
  expect_error([](GPTConfig& c) { c.vocab_size = 0; }, "vocab_size");
  expect_error([](GPTConfig& c) { c.dropout = 1.0; }, "dropout");
  expect_error([](GPTConfig& c) { c.dropout = -0.1; }, "dropout");
  CHECK_NOTHROW(tiny_config().validate());
}

// ============================================================================================
// Gradients of the whole model

TEST_CASE(
    "GPT gradients in f64 match central finite differences of the loss for every "
    "parameter, with either GELU") {
  // A tiny model converted to f64, re-initialised with larger values (std 0.4, LayerNorm weights
  // around 1) so every path carries weight. Every parameter element is nudged by +-1e-6; the
  // central difference errs by ~eps^2 |f'''| (~1e-12) plus rounding ~1e-16 |L| / eps (~1e-9), so
  // |num - ana| <= 1e-8 + 1e-6 |num| has ~10x margin, while a wrong backward term is off by
  // O(1e-2) relative.
  GPTConfig cfg;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 8;
  cfg.block_size = 6;
  cfg.vocab_size = 11;
  cfg.gelu = GENERATE(GeluApprox::tanh, GeluApprox::none);
  INFO("gelu " << gelu_name(cfg.gelu));
  Generator init(24), drop(25), gen(26);
  GPT model(cfg, init, drop);
  for (auto& [name, p] : model.named_parameters()) {
    Tensor v = mul(randn(p.shape(), gen, DType::f64), 0.4);
    if (name.find(".ln_") != std::string::npos && ends_with(name, ".weight")) v = add(v, 1.0);
    p.data() = v;
  }
  Tensor idx = random_tokens(2, 6, 11, gen), targets = random_tokens(2, 6, 11, gen);
  Variable loss = model.loss(model.forward(idx), targets);
  REQUIRE(loss.dtype() == DType::f64);
  model.zero_grad();
  loss.backward();

  auto loss_at = [&]() {
    NoGradGuard no_grad;
    return model.loss(model.forward(idx), targets).item();
  };
  const double eps = 1e-6;
  int64_t checked = 0;
  for (auto& [name, p] : model.named_parameters()) {
    INFO(name);
    REQUIRE(p.grad().defined());
    REQUIRE(p.grad().dtype() == DType::f64);
    std::vector<double> analytic = values(p.grad());
    double* w = p.data().data<double>();
    double largest = 0, worst = 0;
    for (int64_t i = 0; i < p.numel(); ++i) {
      double saved = w[i];
      w[i] = saved + eps;
      double up = loss_at();
      w[i] = saved - eps;
      double down = loss_at();
      w[i] = saved;
      double numerical = (up - down) / (2 * eps);
      worst = testing::nan_max(
          worst, std::abs(numerical - analytic[size_t(i)]) / (1e-8 + 1e-6 * std::abs(numerical)));
      largest = std::max(largest, std::abs(numerical));
      ++checked;
    }
    CHECK(worst <= 1.0);
    CHECK(largest > 1e-4);  // each tensor's gradient is non-trivial
  }
  CHECK(checked == cfg.num_parameters());
}
