#include "models/gpt.h"

#include <algorithm>
#include <cmath>
#include <map>

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
// The serial layers, and where each parameter goes under tensor and pipeline parallelism

std::shared_ptr<Linear> GptLayers::column_linear(int64_t in, int64_t out, bool bias) {
  return std::make_shared<Linear>(in, out, bias);
}

std::shared_ptr<Linear> GptLayers::row_linear(int64_t in, int64_t out, bool bias) {
  return std::make_shared<Linear>(in, out, bias);
}

std::shared_ptr<Embedding> GptLayers::token_embedding(int64_t vocab_size, int64_t dim) {
  return std::make_shared<Embedding>(vocab_size, dim);
}

Variable GptLayers::logits(const Variable& x, const Variable& wte) {
  return linear(x, wte, Variable());
}

Variable GptLayers::loss(const Variable& logits, const Tensor& targets, int64_t vocab_size) {
  FORGE_CHECK(logits.size(-1) == vocab_size,
              "GPT loss: logits of {} columns for a vocabulary of {}", logits.size(-1), vocab_size);
  return cross_entropy(reshape(logits, {-1, vocab_size}), targets.reshape({-1}));
}

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

std::vector<std::pair<std::string, Shape>> gpt_parameter_shapes(const GPTConfig& cfg) {
  const int64_t C = cfg.n_embd;
  std::vector<std::pair<std::string, Shape>> out{{"transformer.wte.weight", {cfg.vocab_size, C}},
                                                 {"transformer.wpe.weight", {cfg.block_size, C}}};
  auto linear = [&](const std::string& name, int64_t in, int64_t outf) {
    out.emplace_back(name + ".weight", Shape{outf, in});
    if (cfg.bias) out.emplace_back(name + ".bias", Shape{outf});
  };
  auto layer_norm = [&](const std::string& name) {
    out.emplace_back(name + ".weight", Shape{C});
    if (cfg.bias) out.emplace_back(name + ".bias", Shape{C});
  };
  for (int64_t l = 0; l < cfg.n_layer; ++l) {
    const std::string b = fmt::format("transformer.h.{}.", l);
    layer_norm(b + "ln_1");
    linear(b + "attn.c_attn", C, 3 * C);
    linear(b + "attn.c_proj", C, C);
    layer_norm(b + "ln_2");
    linear(b + "mlp.c_fc", C, 4 * C);
    linear(b + "mlp.c_proj", 4 * C, C);
  }
  layer_norm("transformer.ln_f");
  return out;
}

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

namespace {
// Whether a model holding blocks `r` holds the serial parameter `name`.
bool holds(const GPTConfig& cfg, const std::string& name, IndexRange r) {
  const bool first = r.begin == 0, last = r.end == cfg.n_layer;
  if (name == "transformer.wte.weight") return first || last;  // the tied head on the last
  if (name == "transformer.wpe.weight") return first;
  if (name.rfind("transformer.ln_f.", 0) == 0) return last;
  const int64_t b = block_index(name);
  FORGE_CHECK(b >= 0, "GPT: unexpected parameter {}", name);
  return r.contains(b);
}
}  // namespace

bool gpt_stage_holds(const GPTConfig& cfg, const std::string& name, int stage, int stages) {
  return holds(cfg, name, gpt_stage_layers(cfg, stage, stages));
}

int64_t gpt_shard_numel(const GPTConfig& cfg, int tp_rank, int tp_size, int stage, int stages) {
  int64_t n = 0;
  for (const auto& [name, shape] : gpt_parameter_shapes(cfg))
    if (gpt_stage_holds(cfg, name, stage, stages))
      n += shard_shape(shape, gpt_tp_split(name), tp_rank, tp_size).numel();
  return n;
}

NamedTensors shard_gpt_state(const NamedTensors& serial, const GPTConfig& cfg, int tp_rank,
                             int tp_size, int stage, int stages) {
  NamedTensors out;
  for (const auto& [name, t] : serial)
    if (gpt_stage_holds(cfg, name, stage, stages))
      out.emplace_back(name, shard_tensor(t, gpt_tp_split(name), tp_rank, tp_size));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Layers

CausalSelfAttention::CausalSelfAttention(const GPTConfig& cfg, GptLayers& layers,
                                         Generator& dropout_gen)
    : n_head_(cfg.n_head / layers.parts()),
      heads_{layers.part() * (cfg.n_head / layers.parts()), cfg.n_head},
      dropout_(cfg.dropout),
      gen_(&dropout_gen) {
  c_attn = register_module("c_attn", layers.column_linear(cfg.n_embd, 3 * cfg.n_embd, cfg.bias));
  c_proj = register_module("c_proj", layers.row_linear(cfg.n_embd, cfg.n_embd, cfg.bias));
}

Variable CausalSelfAttention::forward(const Variable& x) {
  Variable qkv = c_attn->forward(x);  // (B, T, 3C) (tensor parallel: this process's heads)
  Variable y = causal_attention(qkv, int(n_head_), dropout_, is_training(), gen_, heads_);
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

GPTMLP::GPTMLP(const GPTConfig& cfg, GptLayers& layers, Generator& dropout_gen)
    : dropout_(cfg.dropout), gelu_(cfg.gelu), gen_(&dropout_gen) {
  c_fc = register_module("c_fc", layers.column_linear(cfg.n_embd, 4 * cfg.n_embd, cfg.bias));
  c_proj = register_module("c_proj", layers.row_linear(4 * cfg.n_embd, cfg.n_embd, cfg.bias));
}

Variable GPTMLP::forward(const Variable& x) {
  Variable h = gelu(c_fc->forward(x), gelu_);
  return dropout(c_proj->forward(h), dropout_, is_training(), *gen_);
}

Block::Block(const GPTConfig& cfg, GptLayers& layers, Generator& dropout_gen) {
  ln_1 = register_module("ln_1", std::make_shared<LayerNorm>(cfg.n_embd, cfg.bias));
  attn = register_module("attn", std::make_shared<CausalSelfAttention>(cfg, layers, dropout_gen));
  ln_2 = register_module("ln_2", std::make_shared<LayerNorm>(cfg.n_embd, cfg.bias));
  mlp = register_module("mlp", std::make_shared<GPTMLP>(cfg, layers, dropout_gen));
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

GPT::GPT(const GPTConfig& cfg, Generator& init, Generator& dropout_gen, GptPart part)
    : cfg_(cfg),
      factory_(part.layers ? std::move(part.layers) : std::make_shared<GptLayers>()),
      layers_(part.blocks ? *part.blocks : IndexRange{0, cfg.n_layer}),
      dropout_gen_(&dropout_gen) {
  cfg.validate();
  const int R = factory_->parts();
  FORGE_CHECK(cfg.n_head % R == 0, "GPT: n_head {} does not split over {} tensor-parallel ranks",
              cfg.n_head, R);
  FORGE_CHECK(layers_.begin >= 0 && layers_.begin < layers_.end && layers_.end <= cfg.n_layer,
              "GPT: blocks [{}, {}) of {} (a stage needs at least one)", layers_.begin, layers_.end,
              cfg.n_layer);
  auto transformer = register_module("transformer", std::make_shared<ModuleDict>());
  if (first_stage() || last_stage())
    wte = transformer->add("wte", factory_->token_embedding(cfg.vocab_size, cfg.n_embd));
  if (first_stage())
    wpe = transformer->add("wpe", std::make_shared<Embedding>(cfg.block_size, cfg.n_embd));
  auto h = transformer->add("h", std::make_shared<ModuleDict>());
  for (int64_t i = layers_.begin; i < layers_.end; ++i)
    blocks.push_back(
        h->add(std::to_string(i), std::make_shared<Block>(cfg, *factory_, dropout_gen)));
  if (last_stage())
    ln_f = transformer->add("ln_f", std::make_shared<LayerNorm>(cfg.n_embd, cfg.bias));
  int units = 0;
  if (wte) wte_unit_ = units++;
  if (wpe) wpe_unit_ = units++;
  block_unit0_ = units;
  units += int(blocks.size());
  if (ln_f) lnf_unit_ = units++;
  initialise(init);
}

std::vector<std::vector<std::string>> GPT::parameter_units() const {
  std::vector<std::vector<std::string>> units(size_t(block_unit0_) + blocks.size() +
                                              (ln_f ? 1 : 0));
  for (const auto& [name, p] : named_parameters()) {
    int u = -1;
    if (name.starts_with("transformer.wte.")) {
      u = wte_unit_;
    } else if (name.starts_with("transformer.wpe.")) {
      u = wpe_unit_;
    } else if (name.starts_with("transformer.ln_f.")) {
      u = lnf_unit_;
    } else if (name.starts_with("transformer.h.")) {
      const int64_t block = std::stoll(name.substr(14));
      u = block_unit0_ + int(block - layers_.begin);
    }
    FORGE_CHECK(u >= 0 && size_t(u) < units.size(), "GPT: parameter '{}' belongs to no unit", name);
    units[size_t(u)].push_back(name);
  }
  return units;
}

void GPT::acquire(int unit) const {
  if (gate_ && unit >= 0) gate_->acquire(unit);
}

void GPT::release(int unit) const {
  if (gate_ && unit >= 0) gate_->release(unit);
}

Variable GPT::acquire_for_backward(const Variable& x, std::vector<int> units, int next) const {
  if (!gate_ || !grad_enabled() || !x.requires_grad()) return x;
  ParameterGate* gate = gate_;
  return make_variable(x.data(), "acquire_for_backward", {&x},
                       [gate, units, next](const Tensor& g) -> std::vector<Tensor> {
                         for (int u : units)
                           if (u >= 0) gate->acquire_for_backward(u);
                         if (next >= 0) gate->prefetch(next);
                         return {g};
                       });
}

namespace {
double init_std(const GPTConfig& cfg, const std::string& name) {
  return name.ends_with(".c_proj.weight") ? 0.02 / std::sqrt(2.0 * double(cfg.n_layer)) : 0.02;
}
}  // namespace

void GPT::initialise(Generator& init) {
  std::map<std::string, Variable> mine;
  for (auto& [name, p] : named_parameters()) mine.emplace(name, p);
  // Every matrix of the serial model (the normal tensors; LayerNorm gains are 1, biases 0), in its
  // parameter order, takes the next ceil(numel / 4) counter blocks of the stream; this process
  // fills its slice (or, with its parameters' memory deferred, remembers where it starts).
  for (const auto& [name, shape] : gpt_parameter_shapes(cfg_)) {
    if (shape.size() != 2) continue;
    const Generator::State at = init.state();
    init.advance(uint64_t((shape.numel() + 3) / 4));
    auto it = mine.find(name);
    if (it == mine.end()) continue;  // another stage's
    init_at_[name] = {at, shape};
    if (!it->second.data().storage()->allocated()) continue;  // DeferParameterMemory
    normal_shard_(it->second.data(), shape, gpt_tp_split(name), factory_->part(), factory_->parts(),
                  0.0, init_std(cfg_, name), at);
  }
}

Tensor GPT::initial_values(const std::string& name, IndexRange elements) const {
  if (auto it = init_at_.find(name); it != init_at_.end()) {
    const auto& [at, shape] = it->second;
    return normal_shard_elements(shape, gpt_tp_split(name), factory_->part(), factory_->parts(),
                                 0.0, init_std(cfg_, name), at, elements);
  }
  // The rest are LayerNorm gains (1) and biases (0).
  bool held = false;
  for (const auto& [n, p] : named_parameters()) held = held || n == name;
  FORGE_CHECK(held, "GPT::initial_values: this process holds no parameter '{}'", name);
  return full({elements.size()}, name.ends_with(".weight") ? 1.0 : 0.0);
}

IndexRange GPT::vocab() const {
  FORGE_CHECK(wte, "GPT: only the first and the last stage hold the token embedding");
  return shard_range(cfg_.vocab_size, factory_->parts(), factory_->part());
}

void GPT::check_whole(const char* what) const {
  FORGE_CHECK(factory_->parts() == 1 && first_stage() && last_stage(),
              "GPT: {} needs the whole model in one process (this one holds blocks [{}, {}) of "
              "{}, tensor-parallel part {} of {})",
              what, layers_.begin, layers_.end, cfg_.n_layer, factory_->part(), factory_->parts());
}

Variable GPT::embed(const Tensor& idx, const Tensor& positions) {
  return add(wte->forward(idx), wpe->forward(positions));  // (B, T, C) + (T, C)
}

Variable GPT::run_blocks(Variable x) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    const int unit = block_unit0_ + int(i);
    acquire(unit);
    if (gate_ && i + 1 < blocks.size()) gate_->prefetch(unit + 1);
    const auto& b = blocks[i];
    if (checkpoint_blocks_ && is_training())
      x = checkpoint([b](const Variable& in) { return b->forward(in); }, x, {dropout_gen_});
    else
      x = b->forward(x);
    release(unit);
    x = acquire_for_backward(x, {unit}, i > 0 ? unit - 1 : -1);
  }
  return x;
}

Variable GPT::forward(const Tensor& idx) {
  check_whole("forward(idx)");
  return forward(idx, Variable());
}

Variable GPT::forward(const Tensor& idx, const Variable& hidden) {
  Variable x;
  if (first_stage()) {
    FORGE_CHECK(idx.dim() == 2 && is_integral(idx.dtype()),
                "GPT: expected (B, T) integer tokens, got {} {}", idx.dtype(), idx.shape());
    const int64_t T = idx.size(1);
    FORGE_CHECK(T <= cfg_.block_size, "GPT: sequence of {} tokens is longer than block_size {}", T,
                cfg_.block_size);
    Tensor pos = arange(0, double(T), 1, DType::i64).to(wpe->weight.data().device());
    // The embeddings' backward needs no weights: no acquire_for_backward here.
    acquire(wte_unit_);
    acquire(wpe_unit_);
    x = dropout(embed(idx, pos), cfg_.dropout, is_training(), *dropout_gen_);
    release(wpe_unit_);
    if (!last_stage()) release(wte_unit_);
  } else {
    FORGE_CHECK(
        hidden.defined() && hidden.dim() == 3 && hidden.size(2) == cfg_.n_embd,
        "GPT blocks [{}, {}): expected the previous stage's hidden state (B, T, {}), got {}",
        layers_.begin, layers_.end, cfg_.n_embd, hidden.defined() ? hidden.shape() : Shape{});
    x = hidden;
  }
  x = run_blocks(x);
  if (!last_stage()) return x;
  acquire(lnf_unit_);
  if (!first_stage()) acquire(wte_unit_);  // else held since the embedding
  Variable logits = head(ln_f->forward(x));
  release(lnf_unit_);
  release(wte_unit_);
  return acquire_for_backward(logits, {lnf_unit_, wte_unit_},
                              block_unit0_ + int(blocks.size()) - 1);
}

Variable GPT::loss(const Variable& logits, const Tensor& targets) const {
  FORGE_CHECK(last_stage(), "GPT: the loss is computed on the last stage, not on blocks [{}, {})",
              layers_.begin, layers_.end);
  return factory_->loss(logits, targets, cfg_.vocab_size);
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
  check_whole("forward_cached");
  FORGE_CHECK(idx.dim() == 2 && is_integral(idx.dtype()),
              "GPT: expected (B, T) integer tokens, got {} {}", idx.dtype(), idx.shape());
  const int64_t Tn = idx.size(1), at = cache.length;
  FORGE_CHECK(at + Tn <= cfg_.block_size, "GPT: {} cached + {} new positions exceed block_size {}",
              at, Tn, cfg_.block_size);
  Variable x = embed(idx, arange(double(at), double(at + Tn), 1, DType::i64).to(idx.device()));
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
  check_whole("forward_slots");
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
  Variable x = embed(idx, positions);  // (1, N, C)
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
  return factory_->logits(x, wte->weight);  // the head is wte^T
}

}  // namespace forge
