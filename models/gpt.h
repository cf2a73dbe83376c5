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
// Parameter names follow nanoGPT's (transformer.h.0.attn.c_attn.weight, ...), so checkpoints read
// like PyTorch ones. The tied head is the one tensor transformer.wte.weight. Initialisation as
// GPT-2: weights N(0, 0.02), biases 0, residual projections (attn.c_proj, mlp.c_proj) N(0,
// 0.02/sqrt(2L)).
#pragma once

#include <string>

#include "models/layers.h"

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

class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(const GPTConfig& cfg, Generator& init, Generator& dropout_gen);
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
  int64_t n_head_;
  double dropout_;
  Generator* gen_;
};

class GPTMLP : public Module {
 public:
  GPTMLP(const GPTConfig& cfg, Generator& init, Generator& dropout_gen);
  Variable forward(const Variable& x) override;  // C -> 4C -> GELU -> C
  std::shared_ptr<Linear> c_fc, c_proj;

 private:
  double dropout_;
  GeluApprox gelu_;
  Generator* gen_;
};

class Block : public Module {
 public:
  Block(const GPTConfig& cfg, Generator& init, Generator& dropout_gen);
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
  GPT(const GPTConfig& cfg, Generator& init, Generator& dropout_gen);
  const GPTConfig& config() const { return cfg_; }

  // idx (B, T) integer tokens, T <= block_size -> logits (B, T, vocab_size).
  Variable forward(const Tensor& idx);
  // Generation: idx (B, T) continues the positions in `cache` (cache.length + T <= block_size);
  // returns the logits of the last position only (B, 1, vocab_size). Run under NoGradGuard.
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
  // Mean cross-entropy of logits (B, T, V) against targets (B, T).
  static Variable loss(const Variable& logits, const Tensor& targets);
  // Activation checkpointing of the transformer blocks in training: each keeps only its input and
  // is recomputed in backward (same dropout masks; gradients bit for bit the same).
  void set_checkpoint_blocks(bool on) { checkpoint_blocks_ = on; }
  bool checkpoint_blocks() const { return checkpoint_blocks_; }
  // Generation on the CPU (forward_cached, forward_slots): every f32 Linear's weight and the
  // head's (wte) packed once for the matrix-product kernels (Linear::set_prepacked); the same
  // results bit for bit, faster when few rows run at a time. Costs a copy of those weights; call
  // again after changing them (or after moving the model). Returns the matrices packed.
  int set_prepacked(bool on);

  std::shared_ptr<Embedding> wte, wpe;
  std::vector<std::shared_ptr<Block>> blocks;
  std::shared_ptr<LayerNorm> ln_f;

 private:
  GPTConfig cfg_;
  Generator* dropout_gen_;
  bool checkpoint_blocks_ = false;
  PackedWeight head_;                // wte packed for the head (set_prepacked)
  Variable head(const Variable& x);  // the logits of x (after ln_f)
};

}  // namespace forge
