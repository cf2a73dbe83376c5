// Training is bitwise reproducible whatever the thread count: a small network through every
// threaded kernel (matmul, softmax, layer norm, embedding, cross-entropy, dropout, reductions,
// AdamW), run at 1, 2 and 3 threads from the same seeds.
//
// Sizes are chosen so every kernel really splits its work at 2 and 3 threads: 512 tokens,
// hidden 256 (matmul blocks of 64 with >= 1M multiply-adds each; softmax and layer-norm rows in
// chunks of 16384 / C; dropout over 131072 elements; AdamW over parameters of >= 16384 elements).
#include <cmath>

#include "autograd/functions.h"
#include "models/layers.h"
#include "optim/optimizer.h"
#include "testing.h"

using namespace forge;
using namespace forge::testing;

namespace {

constexpr int64_t kBatch = 4, kSeq = 128, kVocab = 100, kEmbed = 128, kHidden = 256, kClasses = 64;

// embedding -> linear -> relu -> layer_norm -> dropout -> linear -> gelu -> softmax gate -> linear.
struct TinyNet : Module {
  std::shared_ptr<Embedding> embed;
  std::shared_ptr<Linear> fc1, fc2, gate, head;
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<Dropout> drop;

  TinyNet(Generator& init, Generator& dropout_gen) {
    embed = register_module("embed", std::make_shared<Embedding>(kVocab, kEmbed, init));
    fc1 = register_module("fc1", std::make_shared<Linear>(kEmbed, kHidden, true, init));
    norm = register_module("norm", std::make_shared<LayerNorm>(kHidden));
    drop = register_module("drop", std::make_shared<Dropout>(0.1, dropout_gen));
    fc2 = register_module("fc2", std::make_shared<Linear>(kHidden, kHidden, true, init));
    gate = register_module("gate", std::make_shared<Linear>(kHidden, kHidden, false, init));
    head = register_module("head", std::make_shared<Linear>(kHidden, kClasses, true, init));
  }

  // tokens (B, T) -> logits (B*T, classes)
  Variable forward_tokens(const Tensor& tokens) {
    Variable h = relu(fc1->forward(embed->forward(tokens)));  // (B, T, hidden)
    h = drop->forward(norm->forward(h));
    Variable g = gelu(fc2->forward(h), GeluApprox::none);
    Variable s = softmax(gate->forward(g), -1);
    return reshape(head->forward(mul(g, s)), {-1, kClasses});
  }
};

struct StepRecord {
  double loss = 0;
  NamedTensors grads;   // after backward
  NamedTensors params;  // after the optimizer step
};

// Two AdamW steps from fixed seeds at the given thread count.
std::vector<StepRecord> train(int threads) {
  ThreadCount tc(threads);
  REQUIRE(get_num_threads() == threads);
  Generator init(2024), dropout_gen(7), data(99);
  TinyNet net(init, dropout_gen);
  std::vector<int64_t> tokens, targets;
  for (int64_t i = 0; i < kBatch * kSeq; ++i) {
    tokens.push_back(int64_t(data.randint(kVocab)));
    // Every 7th position is padding, ignored by the loss.
    targets.push_back(i % 7 == 3 ? -100 : int64_t(data.randint(kClasses)));
  }
  Tensor token_tensor = from_vector<int64_t>(tokens, {kBatch, kSeq});
  Tensor target_tensor = from_vector<int64_t>(targets);
  AdamW opt({{net.parameters(), 0.01}}, {.lr = 1e-2});
  std::vector<StepRecord> steps;
  for (int step = 0; step < 2; ++step) {
    opt.zero_grad();
    Variable loss = cross_entropy(net.forward_tokens(token_tensor), target_tensor);
    loss.backward();
    StepRecord rec;
    rec.loss = loss.item();
    for (auto& [name, p] : net.named_parameters())
      rec.grads.emplace_back(name, p.grad().defined() ? p.grad().clone() : Tensor());
    opt.step();
    for (auto& [name, p] : net.named_parameters()) rec.params.emplace_back(name, p.data().clone());
    steps.push_back(std::move(rec));
  }
  return steps;
}

}  // namespace

TEST_CASE(
    "a training step gives bitwise identical losses, gradients and parameters at 1, 2 and 3 "
    "threads") {
  std::vector<StepRecord> one = train(1);

  // The run is not vacuous: the loss is finite and near ln(64) at the start, every parameter gets
  // a nonzero gradient, and every parameter moves.
  REQUIRE(one.size() == 2);
  CHECK(std::isfinite(one[0].loss));
  CHECK(std::abs(one[0].loss - std::log(double(kClasses))) < 1.0);
  CHECK(one[1].loss != one[0].loss);
  REQUIRE(one[0].grads.size() == 10);  // embed 1, fc1 2, norm 2, fc2 2, gate 1, head 2
  for (auto& [name, g] : one[0].grads) {
    INFO(name);
    REQUIRE(g.defined());
    CHECK(all_finite(g));
    CHECK(max_abs_diff(g, zeros(g.shape(), g.dtype())) > 0);
  }
  for (size_t i = 0; i < one[0].params.size(); ++i) {
    INFO(one[0].params[i].first);
    CHECK_FALSE(bitwise_equal(one[0].params[i].second, one[1].params[i].second));
  }

  for (int threads : {2, 3}) {
    std::vector<StepRecord> other = train(threads);
    REQUIRE(other.size() == one.size());
    for (size_t s = 0; s < one.size(); ++s) {
      INFO(fmt::format("{} threads, step {}", threads, s));
      CHECK(other[s].loss == one[s].loss);
      REQUIRE(other[s].grads.size() == one[s].grads.size());
      for (size_t i = 0; i < one[s].grads.size(); ++i) {
        INFO(fmt::format("gradient of {}", one[s].grads[i].first));
        CHECK(other[s].grads[i].first == one[s].grads[i].first);
        CHECK(bitwise_equal(other[s].grads[i].second, one[s].grads[i].second));
      }
      for (size_t i = 0; i < one[s].params.size(); ++i) {
        INFO(fmt::format("parameter {}", one[s].params[i].first));
        CHECK(bitwise_equal(other[s].params[i].second, one[s].params[i].second));
      }
    }
  }
}

TEST_CASE("dropout masks and embedding gradients do not depend on the thread count") {
  // The two kernels that draw random numbers or scatter-add, on their own, at sizes that split.
  Generator gen(5);
  Tensor x = randn({512, 256}, gen);
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < 4096; ++i) idx.push_back(int64_t(gen.randint(50)));
  Tensor indices = from_vector<int64_t>(idx);
  Tensor grad = randn({4096, 96}, gen);
  std::vector<Tensor> masks, ys, dws;
  for (int threads : {1, 2, 3}) {
    ThreadCount tc(threads);
    Generator g(11);
    DropoutResult r = dropout(x, 0.25, g);
    masks.push_back(r.mask);
    ys.push_back(r.y);
    dws.push_back(embedding_backward(grad, indices, 50));
  }
  // The mask keeps about 75% of elements.
  std::vector<uint8_t> m = masks[0].to_vector<uint8_t>();
  double kept = 0;
  for (uint8_t k : m) kept += k;
  CHECK(std::abs(kept / double(m.size()) - 0.75) < 0.01);
  for (size_t i = 1; i < 3; ++i) {
    INFO(fmt::format("{} threads", i + 1));
    CHECK(bitwise_equal(masks[i], masks[0]));
    CHECK(bitwise_equal(ys[i], ys[0]));
    CHECK(bitwise_equal(dws[i], dws[0]));
  }
}
