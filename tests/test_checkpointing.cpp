// Activation checkpointing: gradients identical to the run without it (dropout masks replayed),
// generators left where the plain run leaves them, and less activation memory at the peak.
#include "autograd/autocast.h"
#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "models/gpt.h"
#include "tensor/allocator.h"
#include "testing.h"

using namespace forge;
using forge::testing::bitwise_equal;

namespace {

GPTConfig config(double dropout) {
  return {.n_layer = 4,
          .n_head = 2,
          .n_embd = 32,
          .block_size = 32,
          .vocab_size = 11,
          .dropout = dropout,
          .bias = true};
}

struct Run {
  double loss;
  std::vector<std::pair<std::string, Tensor>> grads;
  Generator::State dropout_after;
  int64_t peak_activations;
};

Run train_step(bool checkpointing, double dropout, int steps = 1) {
  Generator init(3), drop(4), data(5);
  GPT model(config(dropout), init, drop);
  model.set_checkpoint_blocks(checkpointing);
  Run r{};
  for (int s = 0; s < steps; ++s) {
    Tensor x = mul(rand({3, 32}, data), 11.0).to(DType::i64);
    Tensor y = mul(rand({3, 32}, data), 11.0).to(DType::i64);
    model.zero_grad();
    reset_peak_memory(Device::cpu());
    {
      MemoryTagScope tag(MemoryTag::activations);
      Variable loss = model.loss(model.forward(x), y);
      loss.backward();
      r.loss = loss.item();
    }
    r.peak_activations = memory_stats(Device::cpu()).peak_by_tag[size_t(MemoryTag::activations)];
  }
  for (const auto& [n, p] : model.named_parameters()) r.grads.emplace_back(n, p.grad().clone());
  r.dropout_after = drop.state();
  return r;
}

}  // namespace

TEST_CASE("GPT with checkpointed blocks: the same loss and gradients, bit for bit") {
  for (double dropout : {0.0, 0.2}) {
    INFO("dropout " << dropout);
    Run plain = train_step(false, dropout, 2);
    Run ckpt = train_step(true, dropout, 2);
    CHECK(plain.loss == ckpt.loss);
    REQUIRE(plain.grads.size() == ckpt.grads.size());
    for (size_t i = 0; i < plain.grads.size(); ++i) {
      INFO(plain.grads[i].first);
      CHECK(bitwise_equal(plain.grads[i].second, ckpt.grads[i].second));
    }
    // The recomputation replays the masks, then the generator continues as in the plain run.
    CHECK(plain.dropout_after == ckpt.dropout_after);
  }
}

TEST_CASE("checkpointing the blocks at least halves the peak activation memory") {
  Run plain = train_step(false, 0.1);
  Run ckpt = train_step(true, 0.1);
  double ratio = double(ckpt.peak_activations) / double(plain.peak_activations);
  WARN("peak activation bytes: " << plain.peak_activations << " without, " << ckpt.peak_activations
                                 << " with checkpointing (" << ratio << "x)");
  CHECK(ratio <= 0.5);
}

TEST_CASE("checkpoint() of any function: value and gradients as without it; plain without grad") {
  Generator g(9);
  Tensor xt = randn({4, 5}, g), wt = randn({5, 5}, g);
  auto f = [&](const Variable& w) {
    return [&w](const Variable& in) { return tanh(matmul(gelu(matmul(in, w)), w)); };
  };
  Variable x1(xt.clone(), true), w1(wt.clone(), true);
  Variable y1 = f(w1)(x1);
  sum(mul(y1, y1)).backward();
  Variable x2(xt.clone(), true), w2(wt.clone(), true);
  Variable y2 = checkpoint(f(w2), x2);
  CHECK(bitwise_equal(y1.data(), y2.data()));
  sum(mul(y2, y2)).backward();
  CHECK(bitwise_equal(x1.grad(), x2.grad()));
  CHECK(bitwise_equal(w1.grad(), w2.grad()));

  NoGradGuard no_grad;
  Variable y3 = checkpoint(f(w2), x2);
  CHECK_FALSE(y3.requires_grad());
  CHECK(bitwise_equal(y3.data(), y1.data()));
}

TEST_CASE(
    "a checkpointed forward under autocast recomputes under autocast, wherever backward runs") {
  GPTConfig cfg = config(0.1);
  Generator data(6);
  Tensor x = mul(rand({2, 32}, data), 11.0).to(DType::i64);
  auto grads = [&](bool checkpointing) {
    Generator init(3), drop(4);
    GPT model(cfg, init, drop);
    model.set_checkpoint_blocks(checkpointing);
    Variable loss;
    {
      Autocast ac(DType::bf16);
      loss = model.loss(model.forward(x), x);
    }
    loss.backward();  // outside the scope, as PyTorch users write it
    std::vector<Tensor> out;
    for (const Variable& p : model.parameters()) out.push_back(p.grad().clone());
    return out;
  };
  std::vector<Tensor> plain = grads(false), ckpt = grads(true);
  REQUIRE(plain.size() == ckpt.size());
  for (size_t i = 0; i < plain.size(); ++i) CHECK(bitwise_equal(plain[i], ckpt[i]));
}
