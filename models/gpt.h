// GPT: a decoder-only transformer (GPT-2 / nanoGPT layout).
//
//   GPTConfig cfg{.n_layer = 4, .n_head = 4, .n_embd = 128, .block_size = 64, .vocab_size = 65};
//   Generator init(1337), dropout_gen(1338);
//   GPT model(cfg, init, dropout_gen);
//   Variable logits = model.forward(idx);          // idx (B, T) i64 -> (B, T, vocab) f32
//   Variable loss = model.loss(logits, targets);   // mean cross-entropy over B*T positions
//
//   x = wte[idx] + wpe[0..T)                      token + learned position embeddings, dropout
//   for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))      (pre-LayerNorm)
//   logits = ln_f(x) @ wte^T                      output head tied to the token embedding
//
// Generation keeps a KVCache: forward_cached(next_token, cache) costs O(context) per token. A
// server keeps a SlotCache of several sequences and advances them together with forward_slots.
//
// One class for every layout: the layers come from a GptLayers factory (the serial Linear,
// Embedding and cross-entropy here; parallel/tensor_parallel.h's TensorParallelLayers returns the
// column-, row- and vocabulary-parallel layers of a tensor-parallel group) and the model holds a
// range of blocks (a pipeline stage: the first holds the embeddings, the last ln_f and its own copy
// of the tied wte). With the defaults it is the serial model.
//
//   GPT stage(cfg, init, dropout_gen, {.layers = tp_layers, .blocks = {4, 8}});  // blocks 4..7
//   Variable h = stage.forward(Tensor(), hidden_from_previous_stage);
//
// Parameter names follow nanoGPT's (transformer.h.0.attn.c_attn.weight, ...), so checkpoints read
// like PyTorch ones. The tied head is the one tensor transformer.wte.weight. Initialisation as
// GPT-2: weights N(0, 0.02), biases 0, residual projections (attn.c_proj, mlp.c_proj) N(0,
// 0.02/sqrt(2L)). The values are a function of the init generator's state alone, whatever the
// layout: each normal tensor takes its own range of the generator's counter-based stream, in the
// serial model's parameter order, and a process draws only its slice of it (normal_shard_), so
// every shard equals the same slice of the serial initialisation bit for bit and no process holds
// more than its share.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "models/layers.h"
#include "models/sharding.h"

namespace forge {

struct GPTConfig {
  int64_t n_layer = 4;
  int64_t n_head = 4;
  int64_t n_embd = 128;
  int64_t block_size = 64;
  int64_t vocab_size = 65;
  double dropout = 0.0;
  bool bias = true;  // biases in Linear and LayerNorm
  // The MLP's GELU: the tanh approximation (GPT-2's, the default) or the exact erf form
  // (GeluApprox::none: PyTorch's nn.GELU() default, which nanoGPT uses).
  GeluApprox gelu = GeluApprox::tanh;

  // Throws naming the field when the numbers do not make a model.
  void validate() const;
  // Parameters (the tied head counted once); with `non_embedding`, without wpe (nanoGPT's count).
  int64_t num_parameters(bool non_embedding = false) const;
  // Training FLOPs per token at context T (PaLM's estimate, as nanoGPT's estimate_mfu):
  // 6 N + 12 L C T (N: parameters without wpe; the second term is attention's two products).
  double flops_per_token(int64_t T) const;
  friend bool operator==(const GPTConfig&, const GPTConfig&) = default;
};

// The layers a GPT is built from: these are the serial ones; a tensor-parallel group's factory
// returns layers that hold this process's slice (gpt_tp_split says which) and communicate.
class GptLayers {
 public:
  virtual ~GptLayers() = default;
  // Which slice of every split parameter this process holds: part() of parts().
  virtual int part() const { return 0; }
  virtual int parts() const { return 1; }
  // y = x W^T + b with W (out, in) split by output features (x whole, y split: column parallel).
  virtual std::shared_ptr<Linear> column_linear(int64_t in, int64_t out, bool bias);
  // The same split by input features (x split, y whole: row parallel).
  virtual std::shared_ptr<Linear> row_linear(int64_t in, int64_t out, bool bias);
  // The token embedding, split by rows (the vocabulary).
  virtual std::shared_ptr<Embedding> token_embedding(int64_t vocab_size, int64_t dim);
  // The tied head: the logits of x (..., C) for this process's rows of wte, (..., rows).
  virtual Variable logits(const Variable& x, const Variable& wte);
  // Mean cross-entropy of those logits against targets over the whole vocabulary.
  virtual Variable loss(const Variable& logits, const Tensor& targets, int64_t vocab_size);
};

// Which part of the model a process builds.
struct GptPart {
  std::shared_ptr<GptLayers> layers;  // null: the serial layers
  std::optional<IndexRange> blocks;   // a pipeline stage's blocks [first, last); none: all
};

// The serial model's parameters, names and shapes in its parameter order, without building it.
std::vector<std::pair<std::string, Shape>> gpt_parameter_shapes(const GPTConfig& cfg);
// How the serial parameter `name` splits over tensor-parallel ranks.
TpSplit gpt_tp_split(const std::string& name);
// The blocks of pipeline stage `stage` of `stages` (balanced).
IndexRange gpt_stage_layers(const GPTConfig& cfg, int stage, int stages);
// Whether stage `stage` holds the serial parameter `name`.
bool gpt_stage_holds(const GPTConfig& cfg, const std::string& name, int stage, int stages);
// The parameters (elements) rank (tp_rank of tp_size, stage of stages) holds: its share's size.
int64_t gpt_shard_numel(const GPTConfig& cfg, int tp_rank, int tp_size, int stage, int stages);
// Rank (tp_rank of tp_size, stage of stages)'s share of a serial state dict.
NamedTensors shard_gpt_state(const NamedTensors& serial, const GPTConfig& cfg, int tp_rank,
                             int tp_size, int stage, int stages);

// The names of the GELU forms in configs and checkpoints: "tanh" and "erf".
const char* gelu_name(GeluApprox g);
GeluApprox parse_gelu(const std::string& name);  // throws naming the text

// Keys and values of every position seen so far, per layer, for generation: each new token then
// costs attention over the cache instead of a re-run of the whole context.
struct KVCache {
  std::vector<Tensor> k, v;  // per layer (B, block_size, C)
  int64_t length = 0;        // positions filled
};

// Keys and values of S independent sequences (a server's slots), each with its own length.
// GPT::forward_slots advances any set of slots by any number of tokens each (prompts and next
// tokens together) in one batched forward; slot(s) is a one-sequence view sharing this storage.
struct SlotCache {
  std::vector<Tensor> k, v;     // per layer (S, block_size, C)
  std::vector<int64_t> length;  // per slot: positions filled
  int64_t slots() const { return int64_t(length.size()); }
  KVCache slot(int64_t s);  // slot s as a one-sequence cache (length included)
};

// Parameters that are not kept whole between uses (ZeRO stage 3, parallel/zero.h). The model
// groups its parameters into units (GPT::parameter_units) and says when each is needed: acquire
// before a forward use and release after it; acquire_for_backward when backward is about to reach
// the unit's ops (the gate releases that hold itself, once the unit's gradients are final).
class ParameterGate {
 public:
  virtual ~ParameterGate() = default;
  virtual void acquire(int unit) = 0;
  virtual void release(int unit) = 0;
  virtual void acquire_for_backward(int unit) = 0;
  // A hint: `unit` is the next one needed (in forward or in backward); a gate may start fetching.
  virtual void prefetch(int /*unit*/) {}
};

class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(const GPTConfig& cfg, GptLayers& layers, Generator& dropout_gen);
  Variable forward(const Variable& x) override;  // (B, T, C) -> (B, T, C)
  // Inference: x holds positions cache.length ..; their keys and values are appended to layer
  // `layer` of the cache (the caller advances cache.length once all layers have run).
  Variable forward(const Variable& x, KVCache& cache, int64_t layer);
  // Serving: x (1, N, C) packs the spans' positions (tensor/ops.h SlotSpan); their keys and values
  // are written into their slots (the caller advances the lengths once all layers have run).
  Variable forward(const Variable& x, SlotCache& cache, const std::vector<SlotSpan>& spans,
                   int64_t layer);
  std::shared_ptr<Linear> c_attn, c_proj;

 private:
  int64_t n_head_;   // on this process
  HeadSlice heads_;  // which of all the heads (tensor parallelism: dropout draws their mask part)
  double dropout_;
  Generator* gen_;
};

class GPTMLP : public Module {
 public:
  GPTMLP(const GPTConfig& cfg, GptLayers& layers, Generator& dropout_gen);
  Variable forward(const Variable& x) override;  // C -> 4C -> GELU -> C
  std::shared_ptr<Linear> c_fc, c_proj;

 private:
  double dropout_;
  GeluApprox gelu_;
  Generator* gen_;
};

class Block : public Module {
 public:
  Block(const GPTConfig& cfg, GptLayers& layers, Generator& dropout_gen);
  Variable forward(const Variable& x) override;
  Variable forward(const Variable& x, KVCache* cache, int64_t layer);
  Variable forward(const Variable& x, SlotCache& cache, const std::vector<SlotSpan>& spans,
                   int64_t layer);
  std::shared_ptr<LayerNorm> ln_1, ln_2;
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<GPTMLP> mlp;
};

class GPT : public Module {
 public:
  GPT(const GPTConfig& cfg, Generator& init, Generator& dropout_gen, GptPart part = {});
  const GPTConfig& config() const { return cfg_; }

  // The whole model: idx (B, T) integer tokens, T <= block_size -> logits (B, T, vocab_size).
  Variable forward(const Tensor& idx);
  // A pipeline stage: the first reads tokens idx (B, T), the others the previous stage's hidden
  // state (B, T, C). Returns the hidden state for the next stage, or on the last stage the logits
  // of this process's vocabulary rows (B, T, vocab().size()).
  Variable forward(const Tensor& idx, const Variable& hidden);
  // Last stage: mean cross-entropy of logits (B, T, vocab().size()) against targets (B, T) over the
  // whole vocabulary (the same on every process of a tensor-parallel group).
  Variable loss(const Variable& logits, const Tensor& targets) const;

  bool first_stage() const { return layers_.begin == 0; }
  bool last_stage() const { return layers_.end == cfg_.n_layer; }
  IndexRange layers() const { return layers_; }  // the blocks held
  IndexRange vocab() const;                      // the rows of wte held (first and last stage)
  const GptLayers& layer_factory() const { return *factory_; }

  // Generation (the whole model on one process): idx (B, T) continues the positions in `cache`
  // (cache.length + T <= block_size); returns the logits of the last position only
  // (B, 1, vocab_size). Run under NoGradGuard.
  Variable forward_cached(const Tensor& idx, KVCache& cache);
  KVCache make_cache(int64_t batch) const;
  // Serving: one step over several slots. Slot slots[i] continues its sequence (at
  // cache.length[slot]) by counts[i] tokens: a whole prompt, a refilled window (set its length to
  // 0 first) or the one next token; idx (1, N) holds those tokens, slot after slot (N = the sum
  // of counts). Returns the logits of each slot's last new position (slots, 1, vocab_size) and
  // advances the lengths. Each slot's logits are bit for bit those of forward_cached on that
  // sequence alone, whatever else is in the step (the matrix products sum each output in an order
  // that does not depend on the rows; attention is per slot). Run under NoGradGuard.
  Variable forward_slots(const Tensor& idx, const std::vector<int64_t>& slots,
                         const std::vector<int64_t>& counts, SlotCache& cache);
  SlotCache make_slot_cache(int64_t slots) const;
  // Activation checkpointing of the transformer blocks in training: each keeps only its input and
  // is recomputed in backward (same dropout masks; gradients bit for bit the same).
  void set_checkpoint_blocks(bool on) { checkpoint_blocks_ = on; }
  bool checkpoint_blocks() const { return checkpoint_blocks_; }
  // Generation on the CPU (forward_cached, forward_slots): every f32 Linear's weight and the
  // head's (wte) packed once for the matrix-product kernels (Linear::set_prepacked); the same
  // results bit for bit, faster when few rows run at a time. Costs a copy of those weights; call
  // again after changing them (or after moving the model). Returns the matrices packed.
  int set_prepacked(bool on);
  // The parameter names of each unit a ParameterGate gathers whole, in the order forward uses
  // them: transformer.wte (first or last stage), transformer.wpe (first stage), each block,
  // transformer.ln_f (last stage). The tied wte is a unit of its own, so that the first and the
  // last stage hold it alike; on a stage that holds both ends it stays acquired from the
  // embedding to the head (one gather per forward, as every other unit).
  std::vector<std::vector<std::string>> parameter_units() const;
  // Training with a gate (null: the parameters are always whole). Not for generation.
  void set_parameter_gate(ParameterGate* gate) { gate_ = gate; }
  // The initial values of elements `elements` of this process's slice of parameter `name`
  // (flattened, f32), as the constructor gives them: what a model built under
  // DeferParameterMemory, which initialises nothing, fills its parameters' pieces from.
  Tensor initial_values(const std::string& name, IndexRange elements) const;

  std::shared_ptr<Embedding> wte, wpe;  // wte: first and last stage; wpe: first
  std::vector<std::shared_ptr<Block>> blocks;
  std::shared_ptr<LayerNorm> ln_f;  // last stage

 private:
  GPTConfig cfg_;
  std::shared_ptr<GptLayers> factory_;
  IndexRange layers_;
  Generator* dropout_gen_;
  bool checkpoint_blocks_ = false;
  PackedWeight head_;  // wte packed for the head (set_prepacked)
  ParameterGate* gate_ = nullptr;
  // Each matrix held: where its values start in the init stream, and its serial shape.
  std::map<std::string, std::pair<Generator::State, Shape>> init_at_;
  int wte_unit_ = -1, wpe_unit_ = -1, block_unit0_ = -1, lnf_unit_ = -1;  // parameter_units()
  void acquire(int unit) const;
  void release(int unit) const;
  // x itself; its backward first acquires `units` for backward (with a gate and a graph), then
  // hints `next`, the unit backward needs after them.
  Variable acquire_for_backward(const Variable& x, std::vector<int> units, int next = -1) const;
  void initialise(Generator& init);  // GPT-2's initialisation of the parts held
  void check_whole(const char* what) const;
  Variable embed(const Tensor& idx, const Tensor& positions);  // wte + wpe (then dropout)
  Variable run_blocks(Variable x);                             // in training, checkpointed or not
  Variable head(const Variable& x);                            // the logits of x (after ln_f)
};

}  // namespace forge
