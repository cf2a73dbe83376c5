// The GPT of models/gpt.h split for tensor and pipeline parallelism: this rank's share of it.
//
//   ProcessGrid grid(world, {.pp = 2, .dp = 1, .tp = 2});
//   ParallelGPT model(cfg, {grid.tp_group(), grid.coord().pp, 2}, init_gen, dropout_gen);
//   Variable h = model.forward(idx, {});          // first stage: tokens -> hidden (B, T, C)
//   Variable l = model.forward({}, h_received);   // last stage: hidden -> this rank's logits
//   Variable loss = model.loss(l, targets);       // the whole vocabulary's cross-entropy
//
// Tensor parallel (Megatron): attention's heads split over the group (c_attn column-parallel with
// q, k and v each cut by heads, c_proj row-parallel), the MLP as column- then row-parallel, the
// token embedding split by vocabulary rows and the tied head producing this rank's logits columns
// for vocab_parallel_cross_entropy. LayerNorms, wpe and the row-parallel biases are whole on every
// rank; their gradients come out equal on every rank without communication.
//
// Pipeline: stage s of P holds blocks [s L / P, (s + 1) L / P); the first stage also holds wte and
// wpe, the last ln_f and its own copy of wte for the tied head (its gradient summed with the first
// stage's: embedding_group of the grid). Parameters keep the serial model's names
// (transformer.h.5.attn.c_attn.weight), so shards merge back by name.
//
// Dropout: the generator must be in the same state on every rank of a tensor-parallel group. Where
// activations are whole (after the embeddings and row-parallel layers) every rank then draws the
// same mask; in attention, whose heads are split, each rank draws its heads' part of the one mask
// of all heads (HeadSlice), so with one stage the masks are exactly the serial model's.
//
// Initialisation: the serial model is built with `init` and each rank keeps its slices of it, so a
// parallel run starts from the serial run's weights (at the cost of the whole model in memory
// once).
#pragma once

#include <functional>

#include "models/gpt.h"
#include "parallel/tensor_parallel.h"

namespace forge {

struct ModelParallel {
  std::shared_ptr<Communicator> tp;  // the tensor-parallel group (one rank: none)
  int stage = 0, stages = 1;         // pipeline stage of this rank, of how many
};

// How the serial parameter `name` splits over tensor-parallel ranks.
TpSplit gpt_tp_split(const std::string& name);
// The blocks of pipeline stage `stage`.
IndexRange gpt_stage_layers(const GPTConfig& cfg, int stage, int stages);
// Whether stage `stage` holds the serial parameter `name`.
bool gpt_stage_holds(const GPTConfig& cfg, const std::string& name, int stage, int stages);
// Rank (tp_rank of tp_size, stage of stages)'s share of a serial state dict.
NamedTensors shard_gpt_state(const NamedTensors& serial, const GPTConfig& cfg, int tp_rank,
                             int tp_size, int stage, int stages);
// The inverse: shards[stage][tp_rank] -> the serial state dict (the tied wte taken from stage 0).
// `split_of` says how each name was cut (other tensors named after parameters: optimizer moments).
NamedTensors merge_gpt_shards(
    const std::vector<std::vector<NamedTensors>>& shards,
    const std::function<TpSplit(const std::string&)>& split_of = gpt_tp_split);

class ParallelAttention : public Module {
 public:
  ParallelAttention(const GPTConfig& cfg, const std::shared_ptr<Communicator>& tp,
                    Generator& dropout_gen);
  Variable forward(const Variable& x) override;  // (B, T, C) whole -> (B, T, C) whole
  std::shared_ptr<ColumnParallelLinear> c_attn;
  std::shared_ptr<RowParallelLinear> c_proj;

 private:
  int64_t n_head_;   // on this rank
  HeadSlice heads_;  // which of all the heads
  double dropout_;
  Generator* gen_;
};

class ParallelMLP : public Module {
 public:
  ParallelMLP(const GPTConfig& cfg, const std::shared_ptr<Communicator>& tp,
              Generator& dropout_gen);
  Variable forward(const Variable& x) override;
  std::shared_ptr<ColumnParallelLinear> c_fc;
  std::shared_ptr<RowParallelLinear> c_proj;

 private:
  double dropout_;
  GeluApprox gelu_;
  Generator* gen_;
};

class ParallelBlock : public Module {
 public:
  ParallelBlock(const GPTConfig& cfg, const std::shared_ptr<Communicator>& tp,
                Generator& dropout_gen);
  Variable forward(const Variable& x) override;
  std::shared_ptr<LayerNorm> ln_1, ln_2;
  std::shared_ptr<ParallelAttention> attn;
  std::shared_ptr<ParallelMLP> mlp;
};

class ParallelGPT : public Module {
 public:
  ParallelGPT(const GPTConfig& cfg, ModelParallel mp, Generator& init, Generator& dropout_gen);
  const GPTConfig& config() const { return cfg_; }
  const ModelParallel& layout() const { return mp_; }
  bool first_stage() const { return mp_.stage == 0; }
  bool last_stage() const { return mp_.stage == mp_.stages - 1; }
  IndexRange layers() const { return layers_; }

  // The first stage reads tokens idx (B, T), the others the previous stage's hidden (B, T, C).
  // Returns the hidden state for the next stage, or on the last stage this rank's logits columns
  // (B, T, vocab().size()).
  Variable forward(const Tensor& idx, const Variable& hidden);
  // Last stage: the mean cross-entropy over the whole vocabulary (the same on every tp rank).
  Variable loss(const Variable& logits, const Tensor& targets) const;
  // The slice of the vocabulary this rank's wte rows and logits columns hold.
  IndexRange vocab() const { return wte->range(); }
  void set_checkpoint_blocks(bool on) { checkpoint_blocks_ = on; }

  std::shared_ptr<VocabParallelEmbedding> wte;  // first and last stage
  std::shared_ptr<Embedding> wpe;               // first stage
  std::vector<std::shared_ptr<ParallelBlock>> blocks;
  std::shared_ptr<LayerNorm> ln_f;  // last stage

 private:
  GPTConfig cfg_;
  ModelParallel mp_;
  IndexRange layers_;
  Generator* dropout_gen_;
  bool checkpoint_blocks_ = false;
};

// The norm of the whole model's gradient from every rank's shards: each parameter of the serial
// model counted once (a tensor-parallel replica on tp rank 0 only, the tied embedding on the first
// stage only), summed over the model-parallel group (the ranks of one replica).
double parallel_grad_norm(const ParallelGPT& model, Communicator& model_parallel_group);

}  // namespace forge
