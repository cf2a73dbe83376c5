#include "parallel/parallel_gpt.h"

#include <algorithm>
#include <cmath>

#include "autograd/checkpoint.h"
#include "parallel/tp_mappings.h"
#include "tensor/ops.h"

namespace forge {

// ---------------------------------------------------------------------------------------------
// Where each serial parameter goes

namespace {
bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The block index of transformer.h.<i>.*, or -1.
int64_t block_index(const std::string& name) {
  const std::string head = "transformer.h.";
  if (name.rfind(head, 0) != 0) return -1;
  return std::stoll(name.substr(head.size(), name.find('.', head.size()) - head.size()));
}
}  // namespace

TpSplit gpt_tp_split(const std::string& name) {
  if (ends_with(name, ".attn.c_attn.weight") || ends_with(name, ".attn.c_attn.bias"))
    return {0, 3};  // q, k and v each cut by heads
  if (ends_with(name, ".mlp.c_fc.weight") || ends_with(name, ".mlp.c_fc.bias")) return {0, 1};
  if (ends_with(name, ".attn.c_proj.weight") || ends_with(name, ".mlp.c_proj.weight"))
    return {1, 1};
  if (name == "transformer.wte.weight") return {0, 1};
  return {};
}

IndexRange gpt_stage_layers(const GPTConfig& cfg, int stage, int stages) {
  FORGE_CHECK(stages >= 1 && stages <= cfg.n_layer,
              "pipeline: {} stages for {} layers (each stage needs at least one)", stages,
              cfg.n_layer);
  return shard_range(cfg.n_layer, stages, stage);
}

bool gpt_stage_holds(const GPTConfig& cfg, const std::string& name, int stage, int stages) {
  const bool first = stage == 0, last = stage == stages - 1;
  if (name == "transformer.wte.weight") return first || last;  // the tied head on the last
  if (name == "transformer.wpe.weight") return first;
  if (name.rfind("transformer.ln_f.", 0) == 0) return last;
  const int64_t b = block_index(name);
  FORGE_CHECK(b >= 0, "GPT: unexpected parameter {}", name);
  const IndexRange r = gpt_stage_layers(cfg, stage, stages);
  return b >= r.begin && b < r.end;
}

NamedTensors shard_gpt_state(const NamedTensors& serial, const GPTConfig& cfg, int tp_rank,
                             int tp_size, int stage, int stages) {
  NamedTensors out;
  for (const auto& [name, t] : serial)
    if (gpt_stage_holds(cfg, name, stage, stages))
      out.emplace_back(name, shard_tensor(t, gpt_tp_split(name), tp_rank, tp_size));
  return out;
}

NamedTensors merge_gpt_shards(const std::vector<std::vector<NamedTensors>>& shards,
                              const std::function<TpSplit(const std::string&)>& split_of) {
  NamedTensors out;
  auto have = [&](const std::string& n) {
    return std::any_of(out.begin(), out.end(), [&](const auto& e) { return e.first == n; });
  };
  for (size_t s = 0; s < shards.size(); ++s) {
    const auto& ranks = shards[s];
    FORGE_CHECK(!ranks.empty(), "merge_gpt_shards: stage {} has no shards", s);
    for (size_t i = 0; i < ranks[0].size(); ++i) {
      const std::string& name = ranks[0][i].first;
      if (have(name)) continue;  // the last stage's copy of the tied wte
      std::vector<Tensor> parts;
      for (size_t r = 0; r < ranks.size(); ++r) {
        FORGE_CHECK(i < ranks[r].size() && ranks[r][i].first == name,
                    "merge_gpt_shards: stage {} tensor-parallel rank {} lacks {} (or holds it at "
                    "another position)",
                    s, r, name);
        parts.push_back(ranks[r][i].second);
      }
      out.emplace_back(name, merge_shards(parts, split_of(name)));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Layers

ParallelAttention::ParallelAttention(const GPTConfig& cfg, const std::shared_ptr<Communicator>& tp,
                                     Generator& dropout_gen)
    : n_head_(cfg.n_head / tp->size()),
      heads_{tp->rank() * (cfg.n_head / tp->size()), cfg.n_head},
      dropout_(cfg.dropout),
      gen_(&dropout_gen) {
  c_attn = register_module(
      "c_attn", std::make_shared<ColumnParallelLinear>(cfg.n_embd, 3 * cfg.n_embd, cfg.bias, tp));
  c_proj = register_module(
      "c_proj", std::make_shared<RowParallelLinear>(cfg.n_embd, cfg.n_embd, cfg.bias, tp));
}

Variable ParallelAttention::forward(const Variable& x) {
  Variable y =
      causal_attention(c_attn->forward(x), int(n_head_), dropout_, is_training(), gen_, heads_);
  return dropout(c_proj->forward(y), dropout_, is_training(), *gen_);
}

ParallelMLP::ParallelMLP(const GPTConfig& cfg, const std::shared_ptr<Communicator>& tp,
                         Generator& dropout_gen)
    : dropout_(cfg.dropout), gelu_(cfg.gelu), gen_(&dropout_gen) {
  c_fc = register_module(
      "c_fc", std::make_shared<ColumnParallelLinear>(cfg.n_embd, 4 * cfg.n_embd, cfg.bias, tp));
  c_proj = register_module(
      "c_proj", std::make_shared<RowParallelLinear>(4 * cfg.n_embd, cfg.n_embd, cfg.bias, tp));
}

Variable ParallelMLP::forward(const Variable& x) {
  Variable h = gelu(c_fc->forward(x), gelu_);
  return dropout(c_proj->forward(h), dropout_, is_training(), *gen_);
}

ParallelBlock::ParallelBlock(const GPTConfig& cfg, const std::shared_ptr<Communicator>& tp,
                             Generator& dropout_gen) {
  ln_1 = register_module("ln_1", std::make_shared<LayerNorm>(cfg.n_embd, cfg.bias));
  attn = register_module("attn", std::make_shared<ParallelAttention>(cfg, tp, dropout_gen));
  ln_2 = register_module("ln_2", std::make_shared<LayerNorm>(cfg.n_embd, cfg.bias));
  mlp = register_module("mlp", std::make_shared<ParallelMLP>(cfg, tp, dropout_gen));
}

Variable ParallelBlock::forward(const Variable& x) {
  Variable h = add(x, attn->forward(ln_1->forward(x)));
  return add(h, mlp->forward(ln_2->forward(h)));
}

// ---------------------------------------------------------------------------------------------
// ParallelGPT

ParallelGPT::ParallelGPT(const GPTConfig& cfg, ModelParallel mp, Generator& init,
                         Generator& dropout_gen)
    : cfg_(cfg), mp_(std::move(mp)), dropout_gen_(&dropout_gen) {
  cfg.validate();
  if (!mp_.tp) mp_.tp = single_process_communicator();
  const int R = mp_.tp->size();
  FORGE_CHECK(cfg.n_head % R == 0, "GPT: n_head {} does not split over {} tensor-parallel ranks",
              cfg.n_head, R);
  FORGE_CHECK(mp_.stage >= 0 && mp_.stage < mp_.stages, "GPT: pipeline stage {} of {}", mp_.stage,
              mp_.stages);
  layers_ = gpt_stage_layers(cfg, mp_.stage, mp_.stages);

  auto transformer = register_module("transformer", std::make_shared<ModuleDict>());
  if (first_stage() || last_stage())
    wte = transformer->add(
        "wte", std::make_shared<VocabParallelEmbedding>(cfg.vocab_size, cfg.n_embd, mp_.tp));
  Generator scratch(0);  // draws values that the serial weights below replace
  if (first_stage())
    wpe = transformer->add("wpe", std::make_shared<Embedding>(cfg.block_size, cfg.n_embd, scratch));
  auto h = transformer->add("h", std::make_shared<ModuleDict>());
  for (int64_t i = layers_.begin; i < layers_.end; ++i)
    blocks.push_back(
        h->add(std::to_string(i), std::make_shared<ParallelBlock>(cfg, mp_.tp, dropout_gen)));
  if (last_stage())
    ln_f = transformer->add("ln_f", std::make_shared<LayerNorm>(cfg.n_embd, cfg.bias));

  // Start from the serial model's initialisation.
  GPT serial(cfg, init, scratch);
  load_state_dict(
      shard_gpt_state(serial.state_dict(), cfg, mp_.tp->rank(), R, mp_.stage, mp_.stages));
}

Variable ParallelGPT::forward(const Tensor& idx, const Variable& hidden) {
  Variable x;
  if (first_stage()) {
    FORGE_CHECK(idx.dim() == 2 && is_integral(idx.dtype()),
                "GPT: expected (B, T) integer tokens, got {} {}", idx.dtype(), idx.shape());
    const int64_t T = idx.size(1);
    FORGE_CHECK(T <= cfg_.block_size, "GPT: sequence of {} tokens is longer than block_size {}", T,
                cfg_.block_size);
    Tensor pos = arange(0, double(T), 1, DType::i64).to(wpe->weight.data().device());
    x = dropout(add(wte->forward(idx), wpe->forward(pos)), cfg_.dropout, is_training(),
                *dropout_gen_);
  } else {
    FORGE_CHECK(hidden.defined() && hidden.dim() == 3 && hidden.size(2) == cfg_.n_embd,
                "GPT stage {}: expected the previous stage's hidden state (B, T, {}), got {}",
                mp_.stage, cfg_.n_embd, hidden.defined() ? hidden.shape() : Shape{});
    x = hidden;
  }
  for (auto& b : blocks) {
    if (checkpoint_blocks_ && is_training())
      x = checkpoint([b](const Variable& in) { return b->forward(in); }, x, {dropout_gen_});
    else
      x = b->forward(x);
  }
  if (!last_stage()) return x;
  x = ln_f->forward(x);
  return linear(copy_to_tp_region(x, mp_.tp), wte->weight, Variable());
}

Variable ParallelGPT::loss(const Variable& logits, const Tensor& targets) const {
  FORGE_CHECK(last_stage(), "GPT: the loss is computed on the last pipeline stage, not stage {}",
              mp_.stage);
  return vocab_parallel_cross_entropy(logits, targets, wte->range(), cfg_.vocab_size, mp_.tp);
}

double parallel_grad_norm(const ParallelGPT& model, Communicator& model_parallel_group) {
  const bool tp_lead = model.layout().tp->rank() == 0;
  double local = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    if (!p.grad().defined()) continue;
    if (gpt_tp_split(name).replicated() && !tp_lead) continue;
    if (name == "transformer.wte.weight" && !model.first_stage()) continue;
    local += sum(mul(p.grad(), p.grad())).item();
  }
  Tensor total = full({1}, local, DType::f64, model_parallel_group.device());
  model_parallel_group.all_reduce(total, ReduceOp::sum);
  return std::sqrt(total.item());
}

}  // namespace forge
