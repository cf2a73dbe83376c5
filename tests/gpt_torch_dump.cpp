// Writes what tests/torch_gpt_check.py compares against PyTorch: for three small GPTs (biases on
// and off with the tanh GELU, biases on with the erf GELU), the initial weights, one batch, our
// logits, loss and gradients, and the losses and weights of 10 AdamW steps on that batch. Not a
// Catch test; tests/torch_gpt_check.sh runs it.
//
//   gpt_torch_dump OUT_DIR
//     OUT_DIR/<case>/model.safetensors      state_dict; metadata "config" (GPT config JSON)
//     OUT_DIR/<case>/batch.safetensors      x, y: (B, T) I64
//     OUT_DIR/<case>/reference.safetensors  logits (B, T, V) F32, loss (1) F32, grad.<param> F32
//     OUT_DIR/<case>/adamw.safetensors      losses, grad_norms (steps) F64, final.<param> F32;
//                                           metadata "adamw" (the settings below, JSON)
//
// The batch is random tokens of a 65-symbol vocabulary, or a get_batch window of $TINYSHAKESPEARE
// (character tokenizer) when that is set.
//
// The optimisation is the recipe's (recipes/gpt_train.cpp) at a fixed learning rate: per step
// zero_grad, forward, mean cross-entropy, backward, clip_grad_norm to 1.0, AdamW with weight decay
// on tensors of 2+ dims and none on the others; lr 1e-3, betas (0.9, 0.99), eps 1e-8 (the cpu
// preset's values), except the weight decay: 1.0, not the preset's 0.1, at which the decay's share
// of a residual projection's 10-step update is ~3e-3, close to the comparison's tolerance (1e-3);
// at 1.0 it is >= 3e-2 (torch_gpt_check.py checks that margin).
//
// The MLP's first weights are drawn with std 0.2 instead of GPT-2's 0.02, so that its
// pre-activations reach |x| ~ 1..3, where the tanh and erf GELU differ (by up to ~2e-4): at 0.02
// the two forms give the same logits to ~1e-7 and the comparison could not tell which one ran.
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/text_data.h"
#include "models/gpt.h"
#include "optim/optimizer.h"
#include "recipes/checkpoint.h"

using namespace forge;

namespace {

constexpr int64_t kBatch = 4, kSteps = 10;
constexpr double kLr = 1e-3, kBeta1 = 0.9, kBeta2 = 0.99, kEps = 1e-8, kWeightDecay = 1.0,
                 kGradClip = 1.0;
constexpr uint64_t kSeed = 1337;

Batch make_batch(int64_t block_size, int64_t& vocab_size) {
  Generator gen(kSeed + 10);
  std::string corpus = tinyshakespeare_path();
  if (!corpus.empty()) {
    TextData d = load_text(corpus, Tokenizer::Kind::chars);
    vocab_size = d.tokenizer.vocab_size();
    return get_batch(d.train, kBatch, block_size, gen, "train");
  }
  vocab_size = 65;
  std::vector<int64_t> tokens(size_t(kBatch * (block_size + 1)));
  for (int64_t& t : tokens) t = int64_t(gen.randint(uint64_t(vocab_size)));
  Tensor seq = from_vector(tokens, {kBatch, block_size + 1});
  return {seq.narrow(1, 0, block_size).contiguous(), seq.narrow(1, 1, block_size).contiguous()};
}

// nanoGPT's groups, as recipes/gpt_train.cpp builds them.
std::vector<ParamGroup> param_groups(const GPT& model) {
  ParamGroup decay{{}, kWeightDecay}, no_decay{{}, 0.0};
  for (const auto& [name, p] : model.named_parameters())
    (p.dim() >= 2 ? decay : no_decay).params.push_back(p);
  return {decay, no_decay};
}

void dump_case(const std::filesystem::path& dir, GPTConfig cfg) {
  std::filesystem::create_directories(dir);
  Batch batch = make_batch(cfg.block_size, cfg.vocab_size);
  Generator init(kSeed), dropout_gen(kSeed + 2);
  GPT model(cfg, init, dropout_gen);
  for (auto& [name, p] : model.named_parameters())
    if (name.ends_with("mlp.c_fc.weight")) normal_(p.data(), 0.0, 0.2, init);
  model.train();
  save_safetensors((dir / "model.safetensors").string(), model.state_dict(),
                   {{"config", gpt_config_to_json(cfg)}});
  save_safetensors((dir / "batch.safetensors").string(), {{"x", batch.x}, {"y", batch.y}});

  // One forward and backward from the initial weights.
  {
    Variable logits = model.forward(batch.x);
    Variable loss = model.loss(logits, batch.y);
    model.zero_grad();
    loss.backward();
    NamedTensors ref = {{"logits", logits.data()},
                        {"loss", from_vector<float>({float(loss.item())}, {1})}};
    for (const auto& [name, p] : model.named_parameters())
      ref.emplace_back("grad." + name, p.grad());
    save_safetensors((dir / "reference.safetensors").string(), ref);
  }

  // Ten AdamW steps on the same batch.
  AdamW opt(param_groups(model), {.lr = kLr, .beta1 = kBeta1, .beta2 = kBeta2, .eps = kEps});
  const std::vector<Variable> params = model.parameters();
  std::vector<double> losses, norms;
  for (int64_t step = 0; step < kSteps; ++step) {
    Variable loss = model.loss(model.forward(batch.x), batch.y);
    opt.zero_grad();
    loss.backward();
    losses.push_back(loss.item());
    norms.push_back(clip_grad_norm(params, kGradClip));
    opt.step();
  }
  NamedTensors after = {{"losses", from_vector(losses, {kSteps})},
                        {"grad_norms", from_vector(norms, {kSteps})}};
  for (const auto& [name, t] : model.state_dict()) after.emplace_back("final." + name, t);
  std::string adamw = fmt::format(
      R"({{"steps": {}, "lr": {}, "beta1": {}, "beta2": {}, "eps": {}, "weight_decay": {}, )"
      R"("grad_clip": {}}})",
      kSteps, kLr, kBeta1, kBeta2, kEps, kWeightDecay, kGradClip);
  save_safetensors((dir / "adamw.safetensors").string(), after, {{"adamw", adamw}});
  std::printf("%s: %lld parameters, vocab %lld, loss %.6f -> %.6f after %lld AdamW steps\n",
              dir.string().c_str(), (long long)model.num_parameters(), (long long)cfg.vocab_size,
              losses.front(), losses.back(), (long long)kSteps);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  try {
    std::filesystem::path out(argv[1]);
    GPTConfig base{.n_layer = 2,
                   .n_head = 2,
                   .n_embd = 32,
                   .block_size = 16,
                   .vocab_size = 0,
                   .dropout = 0.0,
                   .bias = true};
    dump_case(out / "bias", base);
    GPTConfig erf = base;
    erf.gelu = GeluApprox::none;
    dump_case(out / "erf", erf);
    base.bias = false;
    dump_case(out / "nobias", base);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
