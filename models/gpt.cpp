#include "models/gpt.h"

#include <algorithm>
#include <cmath>

#include "autograd/checkpoint.h"
#include "tensor/ops.h"

namespace forge {

// ---------------------------------------------------------------------------------------------
// Config

void GPTConfig::validate() const {
  FORGE_CHECK(n_layer > 0, "GPT config: n_layer must be positive, got {}", n_layer);
  FORGE_CHECK(n_head > 0, "GPT config: n_head must be positive, got {}", n_head);
  FORGE_CHECK(n_embd > 0 && n_embd % n_head == 0,
              "GPT config: n_embd {} must be a positive multiple of n_head {}", n_embd, n_head);
  FORGE_CHECK(block_size > 0, "GPT config: block_size must be positive, got {}", block_size);
  FORGE_CHECK(vocab_size > 0, "GPT config: vocab_size must be positive, got {}", vocab_size);
  FORGE_CHECK(dropout >= 0 && dropout < 1, "GPT config: dropout must be in [0, 1), got {}",
              dropout);
}

const char* gelu_name(GeluApprox g) {
  return g == GeluApprox::tanh ? "tanh" : "erf";
}

GeluApprox parse_gelu(const std::string& name) {
  if (name == "tanh") return GeluApprox::tanh;
  if (name == "erf") return GeluApprox::none;
  throw_error(fmt::format("gelu must be tanh or erf, got '{}'", name));
}

int64_t GPTConfig::num_parameters(bool non_embedding) const {
  int64_t C = n_embd, b = bias ? 1 : 0;
  int64_t ln = C + b * C;
  int64_t block = 2 * ln + (3 * C * C + b * 3 * C) + (C * C + b * C) + (4 * C * C + b * 4 * C) +
                  (4 * C * C + b * C);
  int64_t n = vocab_size * C + block_size * C + n_layer * block + ln;
  return non_embedding ? n - block_size * C : n;
}

double GPTConfig::flops_per_token(int64_t T) const {
  return 6.0 * double(num_parameters(true)) + 12.0 * double(n_layer * n_embd * T);
}

// ---------------------------------------------------------------------------------------------
// Layers

namespace {
// GPT-2 initialisation of a Linear layer: weight N(0, std), bias 0.
std::shared_ptr<Linear> gpt_linear(int64_t in, int64_t out, bool bias, double std, Generator& g) {
  auto l = std::make_shared<Linear>(in, out, bias, g);
  normal_(l->weight.data(), 0.0, std, g);
  if (bias) l->bias.data().zero_();
  return l;
}
}  // namespace

CausalSelfAttention::CausalSelfAttention(const GPTConfig& cfg, Generator& init,
                                         Generator& dropout_gen)
    : n_head_(cfg.n_head), dropout_(cfg.dropout), gen_(&dropout_gen) {
  double proj_std = 0.02 / std::sqrt(2.0 * double(cfg.n_layer));
  c_attn = register_module("c_attn", gpt_linear(cfg.n_embd, 3 * cfg.n_embd, cfg.bias, 0.02, init));
  c_proj = register_module("c_proj", gpt_linear(cfg.n_embd, cfg.n_embd, cfg.bias, proj_std, init));
}

Variable CausalSelfAttention::forward(const Variable& x) {
  Variable qkv = c_attn->forward(x);  // (B, T, 3C)
  Variable y = causal_attention(qkv, int(n_head_), dropout_, is_training(), gen_);
  return dropout(c_proj->forward(y), dropout_, is_training(), *gen_);
}

Variable CausalSelfAttention::forward(const Variable& x, KVCache& cache, int64_t layer) {
  const int64_t Tn = x.size(1), C = x.size(2), at = cache.length;
  Tensor qkv = c_attn->forward(x).data();  // (B, Tn, 3C)
  Tensor& kc = cache.k[size_t(layer)];
  Tensor& vc = cache.v[size_t(layer)];
  FORGE_CHECK(at + Tn <= kc.size(1), "GPT: {} cached + {} new positions exceed block_size {}", at,
              Tn, kc.size(1));
  kc.narrow(1, at, Tn).copy_(qkv.narrow(2, C, C));
  vc.narrow(1, at, Tn).copy_(qkv.narrow(2, 2 * C, C));
  Tensor y = cached_attention(qkv.narrow(2, 0, C), kc.narrow(1, 0, at + Tn),
                              vc.narrow(1, 0, at + Tn), int(n_head_), at);
  return c_proj->forward(Variable(y));
}

Variable CausalSelfAttention::forward(const Variable& x, SlotCache& cache,
                                      const std::vector<SlotSpan>& spans, int64_t layer) {
  const int64_t C = x.size(2);
  Tensor qkv = c_attn->forward(x).data();  // (1, N, 3C)
  Tensor& kc = cache.k[size_t(layer)];
  Tensor& vc = cache.v[size_t(layer)];
  int64_t row = 0;
  for (const SlotSpan& sp : spans) {
    Tensor rows = qkv.narrow(1, row, sp.count);
    kc.narrow(0, sp.slot, 1).narrow(1, sp.offset, sp.count).copy_(rows.narrow(2, C, C));
    vc.narrow(0, sp.slot, 1).narrow(1, sp.offset, sp.count).copy_(rows.narrow(2, 2 * C, C));
    row += sp.count;
  }
  Tensor y = slot_attention(qkv.narrow(2, 0, C), kc, vc, int(n_head_), spans);
  return c_proj->forward(Variable(y));
}

GPTMLP::GPTMLP(const GPTConfig& cfg, Generator& init, Generator& dropout_gen)
    : dropout_(cfg.dropout), gelu_(cfg.gelu), gen_(&dropout_gen) {
  double proj_std = 0.02 / std::sqrt(2.0 * double(cfg.n_layer));
  c_fc = register_module("c_fc", gpt_linear(cfg.n_embd, 4 * cfg.n_embd, cfg.bias, 0.02, init));
  c_proj =
      register_module("c_proj", gpt_linear(4 * cfg.n_embd, cfg.n_embd, cfg.bias, proj_std, init));
}

Variable GPTMLP::forward(const Variable& x) {
  Variable h = gelu(c_fc->forward(x), gelu_);
  return dropout(c_proj->forward(h), dropout_, is_training(), *gen_);
}

Block::Block(const GPTConfig& cfg, Generator& init, Generator& dropout_gen) {
  ln_1 = register_module("ln_1", std::make_shared<LayerNorm>(cfg.n_embd, cfg.bias));
  attn = register_module("attn", std::make_shared<CausalSelfAttention>(cfg, init, dropout_gen));
  ln_2 = register_module("ln_2", std::make_shared<LayerNorm>(cfg.n_embd, cfg.bias));
  mlp = register_module("mlp", std::make_shared<GPTMLP>(cfg, init, dropout_gen));
}

Variable Block::forward(const Variable& x) {
  return forward(x, nullptr, 0);
}

Variable Block::forward(const Variable& x, KVCache* cache, int64_t layer) {
  Variable a = ln_1->forward(x);
  Variable h = add(x, cache ? attn->forward(a, *cache, layer) : attn->forward(a));
  return add(h, mlp->forward(ln_2->forward(h)));
}

Variable Block::forward(const Variable& x, SlotCache& cache, const std::vector<SlotSpan>& spans,
                        int64_t layer) {
  Variable h = add(x, attn->forward(ln_1->forward(x), cache, spans, layer));
  return add(h, mlp->forward(ln_2->forward(h)));
}

KVCache SlotCache::slot(int64_t s) {
  FORGE_CHECK(s >= 0 && s < slots(), "SlotCache: slot {} of {}", s, slots());
  KVCache c;
  for (size_t l = 0; l < k.size(); ++l) {
    c.k.push_back(k[l].narrow(0, s, 1));
    c.v.push_back(v[l].narrow(0, s, 1));
  }
  c.length = length[size_t(s)];
  return c;
}

// ---------------------------------------------------------------------------------------------
// GPT

GPT::GPT(const GPTConfig& cfg, Generator& init, Generator& dropout_gen)
    : cfg_(cfg), dropout_gen_(&dropout_gen) {
  cfg.validate();
  auto transformer = register_module("transformer", std::make_shared<ModuleDict>());
  wte = transformer->add("wte", std::make_shared<Embedding>(cfg.vocab_size, cfg.n_embd, init));
  wpe = transformer->add("wpe", std::make_shared<Embedding>(cfg.block_size, cfg.n_embd, init));
  normal_(wte->weight.data(), 0.0, 0.02, init);
  normal_(wpe->weight.data(), 0.0, 0.02, init);
  auto h = transformer->add("h", std::make_shared<ModuleDict>());
  for (int64_t i = 0; i < cfg.n_layer; ++i)
    blocks.push_back(h->add(std::to_string(i), std::make_shared<Block>(cfg, init, dropout_gen)));
  ln_f = transformer->add("ln_f", std::make_shared<LayerNorm>(cfg.n_embd, cfg.bias));
}

Variable GPT::forward(const Tensor& idx) {
  FORGE_CHECK(idx.dim() == 2 && is_integral(idx.dtype()),
              "GPT: expected (B, T) integer tokens, got {} {}", idx.dtype(), idx.shape());
  int64_t T = idx.size(1);
  FORGE_CHECK(T <= cfg_.block_size, "GPT: sequence of {} tokens is longer than block_size {}", T,
              cfg_.block_size);
  Tensor pos = arange(0, double(T), 1, DType::i64).to(idx.device());
  Variable x = add(wte->forward(idx), wpe->forward(pos));  // (B, T, C) + (T, C)
  x = dropout(x, cfg_.dropout, is_training(), *dropout_gen_);
  for (auto& b : blocks) {
    if (checkpoint_blocks_ && is_training())
      x = checkpoint([b](const Variable& in) { return b->forward(in); }, x, {dropout_gen_});
    else
      x = b->forward(x);
  }
  x = ln_f->forward(x);
  return linear(x, wte->weight, Variable());  // (B, T, V): the head is wte^T
}

KVCache GPT::make_cache(int64_t batch) const {
  KVCache c;
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    c.k.push_back(Tensor::empty({batch, cfg_.block_size, cfg_.n_embd}, DType::f32, device()));
    c.v.push_back(Tensor::empty({batch, cfg_.block_size, cfg_.n_embd}, DType::f32, device()));
  }
  return c;
}

Variable GPT::forward_cached(const Tensor& idx, KVCache& cache) {
  FORGE_CHECK(idx.dim() == 2 && is_integral(idx.dtype()),
              "GPT: expected (B, T) integer tokens, got {} {}", idx.dtype(), idx.shape());
  const int64_t Tn = idx.size(1), at = cache.length;
  FORGE_CHECK(at + Tn <= cfg_.block_size, "GPT: {} cached + {} new positions exceed block_size {}",
              at, Tn, cfg_.block_size);
  Tensor pos = arange(double(at), double(at + Tn), 1, DType::i64).to(idx.device());
  Variable x = add(wte->forward(idx), wpe->forward(pos));
  for (size_t l = 0; l < blocks.size(); ++l) x = blocks[l]->forward(x, &cache, int64_t(l));
  cache.length = at + Tn;
  Variable last = narrow(x, 1, Tn - 1, 1);  // only the next token's distribution is needed
  return head(ln_f->forward(last));
}

SlotCache GPT::make_slot_cache(int64_t slots) const {
  FORGE_CHECK(slots > 0, "GPT: a slot cache needs at least one slot, got {}", slots);
  KVCache c = make_cache(slots);
  return SlotCache{std::move(c.k), std::move(c.v), std::vector<int64_t>(size_t(slots), 0)};
}

Variable GPT::forward_slots(const Tensor& idx, const std::vector<int64_t>& slots,
                            const std::vector<int64_t>& counts, SlotCache& cache) {
  FORGE_CHECK(idx.dim() == 2 && idx.size(0) == 1 && is_integral(idx.dtype()),
              "GPT: forward_slots expects (1, N) integer tokens, got {} {}", idx.dtype(),
              idx.shape());
  FORGE_CHECK(!slots.empty() && slots.size() == counts.size(),
              "GPT: forward_slots got {} slots and {} counts", slots.size(), counts.size());
  std::vector<SlotSpan> spans;
  std::vector<int64_t> pos, last;  // every token's position; each slot's last row
  for (size_t i = 0; i < slots.size(); ++i) {
    const int64_t s = slots[i], n = counts[i];
    FORGE_CHECK(s >= 0 && s < cache.slots(), "GPT: slot {} of {}", s, cache.slots());
    FORGE_CHECK(std::count(slots.begin(), slots.end(), s) == 1, "GPT: slot {} given twice", s);
    const int64_t at = cache.length[size_t(s)];
    FORGE_CHECK(n >= 1 && at + n <= cfg_.block_size,
                "GPT: slot {} holds {} positions and cannot take {} more (block_size {}){}", s, at,
                n, cfg_.block_size, at >= cfg_.block_size ? ": it is full" : "");
    spans.push_back({s, at, n});
    for (int64_t t = 0; t < n; ++t) pos.push_back(at + t);
    last.push_back(int64_t(pos.size()) - 1);
  }
  const int64_t N = int64_t(pos.size());
  FORGE_CHECK(idx.size(1) == N, "GPT: forward_slots got {} tokens for counts adding up to {}",
              idx.size(1), N);
  Tensor positions = from_vector(pos, Shape{1, N}).to(idx.device());
  Variable x = add(wte->forward(idx), wpe->forward(positions));  // (1, N, C)
  for (size_t l = 0; l < blocks.size(); ++l) x = blocks[l]->forward(x, cache, spans, int64_t(l));
  for (const SlotSpan& sp : spans) cache.length[size_t(sp.slot)] += sp.count;
  // Only each slot's next-token distribution is needed: its last row.
  const int64_t B = int64_t(slots.size());
  Tensor rows = index_select(x.data().reshape({N, cfg_.n_embd}),
                             from_vector(last, Shape{B}).to(idx.device()));
  return head(ln_f->forward(Variable(rows.reshape({B, 1, cfg_.n_embd}))));
}

int GPT::set_prepacked(bool on) {
  int n = forge::set_prepacked(*this, on);
  head_ = on ? pack_weight(wte->weight.data()) : PackedWeight{};
  return n + (head_.panels ? 1 : 0);
}

Variable GPT::head(const Variable& x) {
  if (!grad_enabled() && head_.packs(wte->weight.data()))
    return Variable(linear(x.data(), head_, Tensor()));
  return linear(x, wte->weight, Variable());  // the head is wte^T
}

Variable GPT::loss(const Variable& logits, const Tensor& targets) {
  int64_t V = logits.size(-1);
  return cross_entropy(reshape(logits, {-1, V}), targets.reshape({-1}));
}

}  // namespace forge
