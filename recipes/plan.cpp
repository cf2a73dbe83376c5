#include "recipes/plan.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <set>

#include "io/text_data.h"
#include "tensor/cpu/gemm.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

namespace forge {

// ---------------------------------------------------------------------------------------------
// Layouts

std::string PlanLayout::str() const {
  return fmt::format("dp{} tp{} pp{} mb{} {} z{} ckpt-{}", dp, tp, pp, micro_batches,
                     pipeline_schedule_name(schedule), zero,
                     activation_checkpointing_name(checkpoint));
}

std::string PlanLayout::flags() const {
  return fmt::format(
      "--dp {} --tp {} --pp {} --micro-batches {} --schedule {} --zero {} --checkpoint {}", dp, tp,
      pp, micro_batches, pipeline_schedule_name(schedule), zero,
      activation_checkpointing_name(checkpoint));
}

namespace {

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> d;
  for (int64_t i = 1; i <= n; ++i)
    if (n % i == 0) d.push_back(i);
  return d;
}

// Why the planner itself leaves a layout out ("" when it does not): what only a set of layouts
// can say, not one run.
std::string planner_refusal(const PlanLayout& l, int64_t global_batch) {
  if (global_batch % l.dp != 0)
    return fmt::format("dp {} does not divide the global batch of {} sequences", l.dp,
                       global_batch);
  if (l.zero > 0 && l.dp == 1)
    return fmt::format(
        "zero {} over one data-parallel rank partitions nothing (the same as zero 0)", l.zero);
  if (l.schedule == PipelineSchedule::gpipe && l.pp == 1 && l.micro_batches == 1)
    return "gpipe with one stage and one micro-batch is the 1f1b layout";
  return "";
}

}  // namespace

std::vector<PlanCandidate> enumerate_layouts(const GptTrainConfig& base, int64_t world,
                                             int64_t global_batch) {
  FORGE_CHECK(world >= 1, "plan: --world must be at least 1, got {}", world);
  FORGE_CHECK(global_batch >= 1, "plan: --global-batch must be at least 1, got {}", global_batch);
  std::vector<PlanCandidate> out;
  for (int64_t dp : divisors(world))
    for (int64_t tp : divisors(world / dp)) {
      const int64_t pp = world / dp / tp;
      // Micro-batch counts: the divisors of the per-replica batch when dp divides the global
      // batch, else 1 (the layout is refused anyway).
      const int64_t rows = global_batch % dp == 0 ? global_batch / dp : 1;
      for (int64_t mb : divisors(rows))
        for (PipelineSchedule schedule : {PipelineSchedule::one_f_one_b, PipelineSchedule::gpipe})
          for (int64_t zero = 0; zero <= 3; ++zero)
            for (ActivationCheckpointing ckpt :
                 {ActivationCheckpointing::none, ActivationCheckpointing::blocks}) {
              PlanCandidate c;
              c.layout = {dp, tp, pp, mb, schedule, zero, ckpt};
              c.config = base;
              c.config.dp = dp;
              c.config.tp = tp;
              c.config.pp = pp;
              c.config.micro_batches = mb;
              c.config.schedule = schedule;
              c.config.zero = zero;
              c.config.checkpoint = ckpt;
              c.config.batch_size = rows;
              c.refused = planner_refusal(c.layout, global_batch);
              if (c.refused.empty()) {
                try {
                  c.config.validate();
                } catch (const Error& e) {
                  c.refused = e.what();
                }
              }
              out.push_back(std::move(c));
            }
    }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Memory: one rank's step replayed against the allocator's counters

namespace {

constexpr size_t kTags = size_t(MemoryTag::count);

// The allocator's counters for a replayed sequence of allocations: live bytes by tag, the peak,
// and the split at the peak (tensor/allocator.h's MemoryStats), with the moment of the peak.
class Ledger {
 public:
  using Id = size_t;
  Id alloc(MemoryTag tag, int64_t bytes) {
    const int64_t b = int64_t(cpu_allocator().accounted(size_t(std::max<int64_t>(bytes, 0))));
    blocks_.push_back({tag, b, true});
    if (cap_ > 0 && peak_.fits && live_ + b > cap_) {
      peak_.fits = false;
      peak_.overflow = tag;
      peak_.overflow_where = where_;
    }
    live_ += b;
    by_tag_[size_t(tag)] += b;
    if (live_ > peak_.peak_bytes) {
      peak_.peak_bytes = live_;
      peak_.by_tag = by_tag_;
      peak_.where = where_;
    }
    return blocks_.size() - 1;
  }
  void free(Id id) {
    Block& b = blocks_.at(id);
    FORGE_ASSERT(b.live);
    b.live = false;
    live_ -= b.bytes;
    by_tag_[size_t(b.tag)] -= b.bytes;
  }
  void retag(Id id, MemoryTag to) {
    Block& b = blocks_.at(id);
    by_tag_[size_t(b.tag)] -= b.bytes;
    by_tag_[size_t(to)] += b.bytes;
    b.tag = to;
  }
  int64_t bytes(Id id) const { return blocks_.at(id).bytes; }
  // Memory held only while an operation runs (a product's packing scratch).
  void transient(MemoryTag tag, int64_t bytes) { free(alloc(tag, bytes)); }
  void at(std::string where) { where_ = std::move(where); }
  void set_cap(int64_t bytes) { cap_ = bytes; }
  // A new peak window (reset_peak_memory at the step's start): peak := live.
  void reset_peak() {
    peak_.peak_bytes = live_;
    peak_.by_tag = by_tag_;
    peak_.where = where_;
  }
  const MemoryPrediction& peak() const { return peak_; }

 private:
  struct Block {
    MemoryTag tag;
    int64_t bytes;
    bool live;
  };
  std::vector<Block> blocks_;
  int64_t live_ = 0, cap_ = 0;
  std::array<int64_t, kTags> by_tag_{};
  MemoryPrediction peak_;
  std::string where_ = "start-up";
};

using Id = Ledger::Id;
constexpr int64_t kF32 = 4, kF64 = 8, kI64 = 8, kHalf = 2;
// Products' transposition (MachineProfile::Gemm::trans).
constexpr int kPlain = 0, kTransA = 1, kTransB = 2;

// One rank's training step: (pipeline stage, tensor-parallel rank), data-parallel rank 0 (every
// data-parallel rank holds the same sizes: ZeRO's shares are equal by construction).
class StepReplay {
 public:
  StepReplay(const GptTrainConfig& cfg, const CorpusSize& corpus, int stage, int tp_rank,
             int64_t cap_bytes, const MachineProfile* profile = nullptr,
             std::set<std::array<int64_t, 4>>* shapes = nullptr)
      : cfg_(cfg), m_(cfg.model), corpus_(corpus), stage_(stage), prof_(profile), shapes_(shapes) {
    L_.set_cap(cap_bytes);
    const int stages = int(cfg.pp);
    layers_ = gpt_stage_layers(m_, stage, stages);
    first_ = layers_.begin == 0;
    last_ = layers_.end == m_.n_layer;
    for (const auto& [name, shape] : gpt_parameter_shapes(m_))
      if (gpt_stage_holds(m_, name, stage, stages)) {
        params_.push_back(
            {name, shard_shape(shape, gpt_tp_split(name), tp_rank, int(cfg.tp)).numel()});
        index_[name] = params_.size() - 1;
      }
    build_units();
    if (prof_) {
      int64_t weights = 0, block = 0;
      for (const Param& p : params_) {
        weights += p.numel;
        if (p.name.starts_with(block_name(layers_.begin))) block += p.numel;
      }
      block_bytes_ = 2 * block * kF32;
      // The step's working set, beside the other ranks' on this machine: weights and gradients,
      // and the activations live at the rank's peak (what its forwards saved for their
      // backwards, and the temporaries of the moment), from a replay of its memory alone.
      // Between a weight's two reads, or an activation's write and read, the rest of it passes
      // through the cache. (That replay keeps attention's probabilities as the CPU does: the
      // GPU profiles have no cold curve to read it with.)
      if (!prof_->cold_curve.empty() || prof_->cold_gbs > 0) {
        const int64_t live =
            StepReplay(cfg, corpus, stage, tp_rank, 0).run().memory.tag(MemoryTag::activations);
        cold_s_per_byte_ = prof_->cold_seconds_per_byte(2 * weights * kF32 + live, ranks());
      }
    }
    C_ = m_.n_embd;
    const int64_t tp = cfg.tp;
    Cl_ = C_ / tp;
    F_ = 4 * C_ / tp;
    Hl_ = m_.n_head / tp;
    Vl_ = shard_range(m_.vocab_size, int(tp), tp_rank).size();
    T_ = m_.block_size;
    b_ = cfg.batch_size / cfg.micro_batches;
    M_ = b_ * T_;
  }

  // What one rank's step costs: the memory peak, and with a profile the seconds of one
  // micro-batch's forward and backward on this stage (tensor-parallel collectives included),
  // and what the data-parallel side and the optimizer have to do.
  struct Result {
    MemoryPrediction memory;
    double forward_s = 0, backward_s = 0, tp_comm_s = 0, optimizer_s = 0;
    double forward_tp_s = 0, backward_tp_s = 0;  // the collectives inside forward_s, backward_s
    std::vector<int64_t> grad_buckets;  // DDP's / ZeRO's reduce units, bytes, in ready order
    std::vector<int64_t> unit_bytes;    // ZeRO: each unit's whole bytes (gathers)
    int64_t ops = 0;                    // ops (allocations) of one micro-batch's forward+backward
  };
  Result run() {
    persistent();
    step();
    Result r;
    r.memory = L_.peak();
    r.forward_s = forward_s_;
    r.backward_s = backward_s_;
    r.tp_comm_s = tp_comm_s_;
    r.forward_tp_s = fwd_tp_;
    r.backward_tp_s = bwd_tp_;
    r.ops = ops_fwd_ + ops_bwd_;
    // AdamW reads parameter, gradient and both moments and writes three: 28 bytes an element,
    // one pass per tensor; then the gradient norm reads each gradient once more.
    int64_t updated = 0;
    if (cfg_.zero > 0)
      for (const Unit& u : units_) updated += u.share;
    else
      for (const Param& p : params_) updated += p.numel;
    if (prof_) {
      r.optimizer_s = double(updated) * (28 + 4) / (prof_->bandwidth_gbs * 1e9) +
                      2.0 * double(params_.size()) * prof_->op_overhead_us * 1e-6;
      // Autocast's 16-bit copy of each weight, made once per step (its cast cache).
      if (half_)
        for (const Param& p : params_) r.optimizer_s += pass_seconds(6.0 * double(p.numel));
    }
    for (const Unit& u : units_)
      if (u.numel > 0) r.unit_bytes.push_back(N() * u.share * kF32);
    // DDP's buckets; ZeRO reduces each unit, backward finishing them last unit first.
    r.grad_buckets = cfg_.zero == 0
                         ? ddp_bucket_bytes_
                         : std::vector<int64_t>(r.unit_bytes.rbegin(), r.unit_bytes.rend());
    return r;
  }

 private:
  struct Param {
    std::string name;
    int64_t numel;
  };
  struct Unit {
    std::vector<size_t> params;
    int64_t numel = 0, share = 0;
    std::optional<Id> gathered;  // ZeRO-3: the whole unit, between acquire and release
    int holders = 0, backward_holds = 0;
    int final_params = 0;  // parameters whose gradient is final in this backward
  };
  // What one micro-batch's forward left for its backward.
  struct BlockSaved {
    std::vector<Id> ids;    // freed by the block's backward (its ops' saved tensors)
    std::vector<Id> masks;  // dropout's: of the probabilities, attention's output, the MLP's
    Id input = 0, out = 0;  // the block's input (the previous block's out) and output
  };
  struct MicroBatch {
    std::vector<BlockSaved> blocks;
    std::vector<Id> embed, head;   // saved by the embeddings and by the head and loss
    std::optional<Id> embed_mask;  // the embeddings' dropout mask
    std::optional<Id> recv;        // a later stage's input from the previous stage
    std::optional<Id> sent;        // the output sent to the next stage (not on the last)
    Id last_out = 0;               // the last block's output (or the input, with no blocks)
    Id loss = 0;
  };

  const GptTrainConfig& cfg_;
  const GPTConfig& m_;
  CorpusSize corpus_;
  int stage_;
  IndexRange layers_;
  bool first_ = false, last_ = false;
  std::vector<Param> params_;
  std::map<std::string, size_t> index_;
  std::vector<Unit> units_;
  std::vector<int> unit_of_;
  int wte_unit_ = -1, wpe_unit_ = -1, block_unit0_ = -1, lnf_unit_ = -1;
  int64_t C_ = 0, Cl_ = 0, F_ = 0, Hl_ = 0, Vl_ = 0, T_ = 0, b_ = 0, M_ = 0;
  Ledger L_;
  const MachineProfile* prof_;
  bool cpu_ = Device::parse(cfg_.device).is_cpu();  // the packed CPU kernels' scratch
  // Attention writes and keeps its probabilities (the CPU's; see gpu_attention_materialized).
  bool materialized_ = cpu_ || (prof_ && prof_->gpu_attention_materialized);
  bool half_ = cfg_.mixed_precision();  // 16-bit products, and autocast's 16-bit saved copies
  bool drop_ = m_.dropout > 0;          // dropout's masks and passes
  int64_t threads_ = cfg_.threads > 0 ? cfg_.threads : get_num_threads();  // attention's scratch
  double cold_s_per_byte_ = 0;  // weights out of cache (MachineProfile::cold_seconds_per_byte)
  // A recomputed block's weights and activations, read again by its backward: between the two
  // lie that block's weights, gradients and activations (see backward()).
  double recomputed_cold_s_per_byte_ = 0;
  int64_t block_bytes_ = 0;  // one block's weights and gradients
  bool recomputed_ = false;  // in the backward of a just recomputed block
  std::set<std::array<int64_t, 4>>* shapes_;
  double t_ = 0;  // seconds of the ops replayed so far (with a profile)
  double forward_s_ = 0, backward_s_ = 0, tp_comm_s_ = 0, fwd_tp_ = 0, bwd_tp_ = 0;
  int64_t ops_ = 0, ops_fwd_ = 0, ops_bwd_ = 0;
  std::vector<int64_t> ddp_bucket_bytes_;
  std::map<std::string, Id> casts_;  // autocast's 16-bit weight copies (its cast cache) this step
  // Gradients: DDP's bucket views exist all along; otherwise backward creates them.
  std::vector<std::optional<Id>> grad_;
  std::vector<int> contributions_;         // per parameter: gradients backward handed it so far
  std::vector<Id> last_step_grads_;        // the previous step's, until zero_grad
  std::deque<std::pair<Id, Id>> reduces_;  // ZeRO 2-3 buckets in flight (bucket, out)
  // Sent gradients not yet known to be received (the runtime's backward sends), oldest first, and
  // the previous stage's order, to tell when its forwards prove them received.
  std::deque<Id> gradient_sends_;
  std::vector<bool> previous_;
  size_t previous_at_ = 0;

  int64_t N() const { return cfg_.dp; }
  int64_t ranks() const { return cfg_.dp * cfg_.tp * cfg_.pp; }  // the layout's, on this machine
  bool ddp() const { return cfg_.zero == 0 && cfg_.dp > 1; }
  bool bias() const { return m_.bias; }
  std::string block_name(int64_t l) const { return fmt::format("transformer.h.{}.", l); }

  // ZeRO's units, as GPT::parameter_units: wte, wpe, each block, ln_f (those held).
  void build_units() {
    unit_of_.assign(params_.size(), -1);
    auto unit = [&](const std::string& prefix) {
      Unit u;
      for (size_t k = 0; k < params_.size(); ++k)
        if (params_[k].name.rfind(prefix, 0) == 0) {
          u.params.push_back(k);
          unit_of_[k] = int(units_.size());
          u.numel += params_[k].numel;
        }
      u.share = (u.numel + cfg_.dp - 1) / cfg_.dp;
      units_.push_back(u);
      return int(units_.size()) - 1;
    };
    if (first_ || last_) wte_unit_ = unit("transformer.wte.");
    if (first_) wpe_unit_ = unit("transformer.wpe.");
    for (int64_t l = layers_.begin; l < layers_.end; ++l) {
      const int u = unit(block_name(l));
      if (l == layers_.begin) block_unit0_ = u;
    }
    if (last_) lnf_unit_ = unit("transformer.ln_f.");
  }

  // What lives before the step: the corpus, parameters, optimizer state, persistent gradients.
  void persistent() {
    L_.at("before the step");
    L_.alloc(MemoryTag::other, corpus_.train_tokens * kI64);
    L_.alloc(MemoryTag::other, corpus_.val_tokens * kI64);
    grad_.assign(params_.size(), std::nullopt);
    contributions_.assign(params_.size(), 0);
    if (cfg_.zero == 0) {
      for (const Param& p : params_) L_.alloc(MemoryTag::parameters, p.numel * kF32);
      if (ddp()) ddp_buckets();
      for (const Param& p : params_)
        for (int i = 0; i < 2; ++i) L_.alloc(MemoryTag::optimizer, p.numel * kF32);
    } else {
      zero_partitions();
    }
    // The previous step's gradients, still there when the step starts (zero_grad drops them
    // after the batch is drawn); DDP's live in its buckets, ZeRO-2/3 drop them in backward.
    if (!ddp() && cfg_.zero <= 1)
      for (const Param& p : params_)
        last_step_grads_.push_back(L_.alloc(MemoryTag::gradients, p.numel * kF32));
  }

  // DDP's gradient buckets, in reverse parameter order, each closed once it reaches bucket_mb;
  // the parameters' gradients are views into them.
  void ddp_buckets() {
    const int64_t bucket_bytes = std::max<int64_t>(1, int64_t(cfg_.bucket_mb * (1 << 20)));
    int64_t total = 0;  // elements in the open bucket
    auto close = [&] {
      L_.alloc(MemoryTag::gradients, total * kF32);
      ddp_bucket_bytes_.push_back(total * kF32);
      total = 0;
    };
    for (size_t i = params_.size(); i-- > 0;) {
      if (total > 0 && total * kF32 >= bucket_bytes) close();
      total += params_[i].numel;
    }
    if (total > 0) close();
    for (size_t k = 0; k < params_.size(); ++k) grad_[k] = kView;
  }

  // ZeRO: each unit flattened (stages 1-2: whole, the parameters are views into it; 3: rank 0's
  // share only), stages 2-3 the share's gradient, and AdamW's moments for the pieces of
  // parameters inside rank 0's share of each unit.
  void zero_partitions() {
    for (const Unit& u : units_) {
      if (u.numel == 0) continue;
      L_.alloc(MemoryTag::parameters, (cfg_.zero == 3 ? 1 : N()) * u.share * kF32);
      if (cfg_.zero >= 2) L_.alloc(MemoryTag::gradients, u.share * kF32);
    }
    for (const Unit& u : units_) {
      int64_t offset = 0;
      for (size_t k : u.params) {
        const int64_t lo = std::max<int64_t>(0, offset);
        const int64_t hi = std::min(u.share, offset + params_[k].numel);
        if (hi > lo)
          for (int i = 0; i < 2; ++i) L_.alloc(MemoryTag::optimizer, (hi - lo) * kF32);
        offset += params_[k].numel;
      }
    }
  }

  static constexpr Id kView = ~Id(0);  // a gradient that is a view into DDP's bucket

  // The gradient backward computed for parameter `name` (an activations temporary `g`): adopted
  // as the parameter's gradient, or added into the one there and freed (engine's accumulate_leaf).
  void gradient(const std::string& name, Id g) {
    const size_t k = index_.at(name);
    if (grad_[k]) {
      // A later micro-batch's gradient is added into the one kept (two read, one written).
      if (prof_) t_ += pass_seconds(3.0 * double(params_[k].numel * kF32));
      L_.free(g);
    } else {
      L_.retag(g, MemoryTag::gradients);
      grad_[k] = g;
    }
    // The tied wte of a stage holding both ends gets two: the head's and the embedding's.
    const int uses = params_[k].name == "transformer.wte.weight" && first_ && last_ ? 2 : 1;
    if (++contributions_[k] < uses) return;
    contributions_[k] = 0;
    Unit& u = units_[size_t(unit_of_[k])];
    if (++u.final_params == int(u.params.size())) unit_ready(unit_of_[k]);
  }

  // ZeRO: a unit's gradients are final for this backward.
  void unit_ready(int unit) {
    Unit& u = units_[size_t(unit)];
    u.final_params = 0;
    if (cfg_.zero >= 2 && u.numel > 0) launch_reduce(u, /*drop_grads=*/true);
    if (u.backward_holds > 0) {
      --u.backward_holds;
      release(unit);
    }
  }

  void launch_reduce(Unit& u, bool drop_grads) {
    Id bucket = L_.alloc(MemoryTag::other, N() * u.share * kF32);
    Id out = L_.alloc(MemoryTag::other, u.share * kF32);
    if (drop_grads)
      for (size_t k : u.params)
        if (grad_[k]) {
          L_.free(*grad_[k]);
          grad_[k].reset();
        }
    reduces_.emplace_back(bucket, out);
    while (reduces_.size() > 2) finish_reduce();
  }
  void finish_reduce() {
    L_.free(reduces_.front().first);
    L_.free(reduces_.front().second);
    reduces_.pop_front();
  }

  // ZeRO-3's gathers of whole units.
  void gather(int unit) {
    if (cfg_.zero < 3 || unit < 0) return;
    Unit& u = units_[size_t(unit)];
    if (!u.gathered && u.numel > 0)
      u.gathered = L_.alloc(MemoryTag::parameters, N() * u.share * kF32);
  }
  void acquire(int unit) {
    if (cfg_.zero < 3 || unit < 0) return;
    gather(unit);
    ++units_[size_t(unit)].holders;
  }
  void acquire_for_backward(int unit) {
    if (cfg_.zero < 3 || unit < 0) return;
    acquire(unit);
    ++units_[size_t(unit)].backward_holds;
  }
  void release(int unit) {
    if (cfg_.zero < 3 || unit < 0) return;
    Unit& u = units_[size_t(unit)];
    if (--u.holders > 0) return;
    if (u.gathered) L_.free(*u.gathered);
    u.gathered.reset();
  }

  // One memory-bound op moving `bytes` (read and written), with a profile.
  double pass_seconds(double bytes) const {
    return prof_->op_overhead_us * 1e-6 + bytes / (prof_->bandwidth_gbs * 1e9);
  }
  // An op's output (an elementwise op, a reduction: memory-bound, about three times its output's
  // bytes moved) or a tensor saved beside it; `stored` bytes of it kept when they are fewer (a
  // result computed in f32 and stored in 16 bits).
  Id act(int64_t bytes, std::optional<int64_t> stored = std::nullopt) {
    ++ops_;
    if (prof_) t_ += pass_seconds(3.0 * double(bytes));
    return L_.alloc(MemoryTag::activations, stored.value_or(bytes));
  }
  // A product op(A) (m, k) @ op(B) (k, n): its packing scratch while it runs, and its result.
  // Linear's forward is x @ W^T, its backward g @ W and g^T @ x.
  Id product(int64_t m, int64_t n, int64_t k, int trans) {
    if (shapes_) shapes_->insert({m, n, k, trans});
    ++ops_;
    if (prof_) t_ += prof_->op_overhead_us * 1e-6 + prof_->gemm_seconds(m, n, k, trans, half_);
    Id out = L_.alloc(MemoryTag::activations, m * n * kF32);
    if (cpu_)
      L_.transient(MemoryTag::other,
                   cpu::gemm_workspace_bytes(m, n, k, trans & kTransA, trans & kTransB));
    return out;
  }
  // Autocast rounds an f32 tensor to 16 bits (a product's operand, an input kept for backward)
  // or widens a kept one back: read 4 bytes and write 2 an element, or the reverse. The time; the
  // copies' memory is allocated where they are made.
  void cast_time(int64_t elements) {
    if (!prof_ || !half_) return;
    ++ops_;
    t_ += pass_seconds(6.0 * double(elements));
  }
  // A linear layer's forward x (M, in) @ W^T (out, in): under autocast x is rounded first, and
  // the weight's 16-bit copy is made at its first use in the step and kept to the step's end.
  Id linear(const std::string& weight, int64_t out, int64_t in) {
    cast_time(M_ * in);
    if (half_ && !casts_.count(weight))
      casts_[weight] = L_.alloc(MemoryTag::parameters, out * in * kHalf);
    cold_time(1.0 * double(out * in) * kF32);  // W read
    return product(M_, out, in, kTransB);
  }
  // What a product keeps of its input x (`elements`) for backward: x itself, or under autocast
  // its 16-bit copy (x is then held only as long as the forward code holds it).
  Id saved_input(Id x, int64_t elements) {
    return half_ ? L_.alloc(MemoryTag::activations, elements * kHalf) : x;
  }
  // Where the forward code lets an f32 tensor go: under autocast it is freed there; otherwise it
  // is the saved tensor itself, which backward frees.
  void drop_f32(Id x) {
    if (half_) L_.free(x);
  }
  // A weight (or its gradient) streamed from memory when the stage's do not stay in cache.
  void cold_time(double bytes) { t_ += bytes * cold_s_per_byte_; }
  // What a forward saves for its backward, when the step's working set does not stay in cache:
  // written into memory last touched a step ago (read for ownership, later written back), and
  // read again by the backward (a just recomputed block's, written a moment before, from cache).
  double bytes_of(Id id) const { return double(L_.bytes(id)); }
  double bytes_of(const std::vector<Id>& ids) const {
    double bytes = 0;
    for (Id id : ids) bytes += bytes_of(id);
    return bytes;
  }
  template <class... Saved>
  double total_bytes(const Saved&... saved) const {
    return (bytes_of(saved) + ...);
  }
  template <class... Saved>
  void saved_written(const Saved&... saved) {
    cold_time(2.0 * total_bytes(saved...));
  }
  template <class... Saved>
  void saved_read(const Saved&... saved) {
    t_ += total_bytes(saved...) * (recomputed_ ? recomputed_cold_s_per_byte_ : cold_s_per_byte_);
  }
  // A weight's backward reads it again (just after a checkpointed block's recomputation read it
  // too); the product g^T @ x writes its gradient: into memory out of cache (read for
  // ownership, written back) when it is the parameter's first, or into a recycled, cache-hot
  // buffer that gradient() then adds into the one kept, a streaming pass charged there.
  void weight_backward_cold(const std::string& name, int64_t elements) {
    const double bytes = double(elements) * kF32;
    t_ += bytes * (recomputed_ ? recomputed_cold_s_per_byte_ : cold_s_per_byte_);
    if (!grad_[index_.at(name)]) cold_time(2.0 * bytes);
  }
  // Dropout draws a mask of `elements`, one uniform and one byte each, that its backward keeps.
  Id dropout_mask(int64_t elements) {
    ++ops_;
    if (prof_)
      t_ +=
          prof_->op_overhead_us * 1e-6 +
          double(elements) * std::max(prof_->dropout_ns * 1e-9, 1.0 / (prof_->bandwidth_gbs * 1e9));
    return L_.alloc(MemoryTag::activations, elements);
  }
  // Dropout of a hidden state x (M, C): its mask kept in `masks`; x gives way to x * mask / (1-p).
  Id dropped(Id x, std::vector<Id>& masks) {
    masks.push_back(dropout_mask(M_ * C_));
    Id y = act(M_ * C_ * kF32);
    L_.free(x);
    return y;
  }
  // Dropout's backward: the gradient times the mask (a new tensor); the mask goes with its node.
  Id dropped_backward(Id mask) {
    Id d = act(M_ * C_ * kF32);
    L_.free(mask);
    return d;
  }
  // Inside the attention ops, with dropout: P' = P * mask / (1-p) per (batch, head), `passes`
  // times (forward once; backward P' again and dP). Materialized, each pass reads P and the mask
  // and writes P'; a GPU's fused kernels apply the mask to P as they compute it: its read only.
  void attention_dropout_time(double passes) {
    const double bytes = materialized_ ? 2 * kF32 + 1 : 1;
    if (prof_ && drop_)
      t_ += passes * double(b_ * Hl_ * T_ * T_) * bytes / (prof_->bandwidth_gbs * 1e9);
  }
  // The attention ops' per-thread scratch of `slices` (T, T) slices while they run (CPU).
  void attention_scratch(int64_t slices) {
    if (cpu_)
      L_.transient(MemoryTag::activations,
                   threads_ * std::max<int64_t>(1, slices * T_ * T_) * kF32);
  }
  void gelu_time(double factor) {
    if (prof_) t_ += factor * double(M_ * F_) * prof_->gelu_ns * 1e-9;
  }
  // Causal attention over this rank's heads: QK^T and PV over the lower triangle, 2 b H T^2 hd
  // multiply-adds; backward twice that.
  // A GPU's fused kernels take 16-bit inputs on tensor cores at some head sizes only.
  void attention_time(double factor) {
    if (!prof_) return;
    const double flops = 2.0 * double(b_ * Hl_) * double(T_ * T_) * double(C_ / m_.n_head);
    const bool half = half_ && (materialized_ || gpu_attention_direct());
    t_ += factor * flops / prof_->attention_rate(half);
  }

  // A linear layer's backward (x (M, in), W (out, in)): dx, then dW and db, handed to the
  // parameters; the saved input freed by the caller.
  Id linear_backward(const std::string& name, int64_t in, int64_t out) {
    const std::optional<Id> g16 = rounded(M_ * out);  // g
    weight_backward_cold(name + ".weight", out * in);
    Id dx = product(M_, in, out, kPlain);         // g @ W
    const Id dw = product(out, in, M_, kTransA);  // g^T @ x
    const std::optional<Id> db = bias() ? std::optional<Id>(act(out * kF32)) : std::nullopt;
    if (g16) L_.free(*g16);          // the node's 16-bit g goes when it returns; then the engine
    gradient(name + ".weight", dw);  // hands the gradients on
    if (db) gradient(name + ".bias", *db);
    return dx;
  }
  // Under autocast, a backward's output gradient (`elements`) rounded to 16 bits (its time
  // charged), the copy held while the node runs.
  std::optional<Id> rounded(int64_t elements) {
    if (!half_) return std::nullopt;
    cast_time(elements);
    return L_.alloc(MemoryTag::activations, elements * kHalf);
  }
  // Under autocast, a 16-bit kept input widened back to f32 for an op (attention, GELU's
  // backward), held while it runs.
  std::optional<Id> widened(int64_t elements) {
    if (!half_) return std::nullopt;
    cast_time(elements);
    return L_.alloc(MemoryTag::activations, elements * kF32);
  }
  // A layer norm's backward: dx, dweight (and dbias).
  Id layer_norm_backward(const std::string& name) {
    Id dx = act(M_ * C_ * kF32);
    gradient(name + ".weight", act(C_ * kF32));
    if (bias()) gradient(name + ".bias", act(C_ * kF32));
    return dx;
  }
  // Tensor parallelism sums a column-parallel layer's input gradient over the group (a new
  // tensor) and its row-parallel output in forward.
  Id tp_summed(Id x, int64_t bytes) {
    if (cfg_.tp == 1) return x;
    if (prof_) {
      const double c = prof_->collective_seconds("all_reduce", int(cfg_.tp), bytes) +
                       prof_->inline_sync_us * 1e-6;
      t_ += c;
      tp_comm_s_ += c;
    }
    Id s = act(bytes);
    L_.free(x);
    return s;
  }

  // Causal attention's forward, materialized (the CPU's, tensor/ops_attention.cpp) from the saved
  // qkv: its output (f32) and the probabilities (b, H/t, T, T) it keeps for backward, f32 or
  // under autocast 16-bit (the pass that writes them charged as an f32 op's either way); with
  // dropout their mask, drawn inside, goes into `masks`.
  std::pair<Id, Id> attention_forward(std::vector<Id>& masks) {
    const std::optional<Id> wide = widened(M_ * 3 * Cl_);  // for the f32 attention
    attention_time(1.0);
    const Id y = act(M_ * Cl_ * kF32);
    const int64_t pn = b_ * Hl_ * T_ * T_;
    const Id probs = act(pn * kF32, pn * (half_ ? kHalf : kF32));
    if (drop_) {
      masks.push_back(dropout_mask(pn));
      attention_dropout_time(1.0);
    }
    attention_scratch((drop_ ? 1 : 0) + (half_ ? 1 : 0));
    if (wide) L_.free(*wide);
    return {y, probs};
  }
  // Its backward: d qkv (f32), the saved qkv widened for it under autocast.
  Id attention_backward() {
    attention_time(2.0);
    attention_dropout_time(2.0);
    const std::optional<Id> qkv32 = widened(M_ * 3 * Cl_);
    const Id dqkv = act(M_ * 3 * Cl_ * kF32);
    attention_scratch(1 + (drop_ ? 1 : 0) + (half_ ? 1 : 0));
    if (qkv32) L_.free(*qkv32);
    return dqkv;
  }
  // Whether a GPU's attention takes autocast's 16-bit qkv as it is (tensor cores, head size 32,
  // 64 or 128: cuda::kernels::attention_tensor_cores) rather than a widened f32 copy. The kernels
  // also need sm_80 or later and, at 128, about 121 KiB of shared memory a block: an A100 or
  // H100 (the shipped GPU profiles) has both; on a GPU without them (a V100, or an sm_86/89 card
  // at 128) the runtime widens where this says it does not, and memory and time come out low.
  bool gpu_attention_direct() const {
    const int64_t hs = C_ / m_.n_head;
    return !half_ || hs == 32 || hs == 64 || hs == 128;
  }
  // Causal attention's forward on a GPU (flash-attention style, tensor/cuda/attention.cu): no
  // (T, T) matrix is kept, and none is scratch; it keeps the rows' log-sum-exp (b, H/t, T), in
  // f32, from which backward recomputes the probabilities. The dropout mask is drawn before the
  // kernel, which reads it. Under autocast the output comes back 16-bit and is widened to f32
  // (the model's dtype). Returns (output, log-sum-exp).
  std::pair<Id, Id> gpu_attention_forward(std::vector<Id>& masks) {
    if (drop_) masks.push_back(dropout_mask(b_ * Hl_ * T_ * T_));
    const bool direct = gpu_attention_direct();
    const std::optional<Id> wide = direct ? std::nullopt : widened(M_ * 3 * Cl_);
    attention_time(1.0);
    attention_dropout_time(1.0);
    Id out = act(M_ * Cl_ * (half_ && direct ? kHalf : kF32));
    const Id lse = act(b_ * Hl_ * T_ * kF32);
    if (wide) L_.free(*wide);
    if (!half_) return {out, lse};
    if (!direct) out = cast(out, M_ * Cl_, kHalf);  // back to qkv's 16 bits
    return {cast(out, M_ * Cl_, kF32), lse};
  }
  // Its backward: the gradient rounded under autocast, d qkv in the kernels' dtype with the
  // delta (b, H/t, T) as scratch, then d qkv widened to f32. Returns d qkv (f32).
  Id gpu_attention_backward() {
    attention_time(2.0);
    attention_dropout_time(2.0);
    const bool direct = gpu_attention_direct();
    const std::optional<Id> g16 = rounded(M_ * Cl_);
    // Not direct: the kernels run on f32 copies of the gradient and qkv, held to the statement's
    // end (after d qkv is rounded back).
    const std::optional<Id> g32 = direct ? std::nullopt : widened(M_ * Cl_);
    const std::optional<Id> qkv32 = direct ? std::nullopt : widened(M_ * 3 * Cl_);
    Id dqkv = act(M_ * 3 * Cl_ * (half_ && direct ? kHalf : kF32));
    L_.free(L_.alloc(MemoryTag::activations, b_ * Hl_ * T_ * kF32));  // delta
    if (!half_) return dqkv;
    if (!direct) {
      const Id d16 = cast(dqkv, M_ * 3 * Cl_, kHalf, /*free_input=*/false);
      for (Id id : {*g32, *qkv32, dqkv}) L_.free(id);
      dqkv = d16;
    }
    dqkv = cast(dqkv, M_ * 3 * Cl_, kF32);
    L_.free(*g16);
    return dqkv;
  }
  // A cast of `elements` to `bytes` each (a new tensor); the input freed unless told not to.
  Id cast(Id x, int64_t elements, int64_t bytes, bool free_input = true) {
    cast_time(elements);
    const Id y = L_.alloc(MemoryTag::activations, elements * bytes);
    if (free_input) L_.free(x);
    return y;
  }

  // One block's forward with a graph: the tensors its ops save.
  BlockSaved block_forward(int64_t l, Id x) {
    BlockSaved s;
    s.input = x;
    auto keep = [&](Id id) {
      s.ids.push_back(id);
      return id;
    };
    // Under autocast the products, attention and GELU keep 16-bit copies of their inputs; the
    // f32 tensors live as long as Block::forward and the layers' forward hold them.
    const std::string b = block_name(l);
    const Id a = act(M_ * C_ * kF32);  // ln_1 out
    const Id mean = act(M_ * kF32), rstd = act(M_ * kF32);
    keep(saved_input(a, M_ * C_));  // ... as c_attn keeps it
    keep(mean);
    keep(rstd);
    Id qkv = linear(b + "attn.c_attn.weight", 3 * Cl_, C_);
    cast_time(M_ * 3 * Cl_);  // qkv rounded, as attention keeps it
    keep(saved_input(qkv, M_ * 3 * Cl_));
    const auto [y, probs] =
        materialized_ ? attention_forward(s.masks) : gpu_attention_forward(s.masks);
    keep(saved_input(y, M_ * Cl_));  // attention out as c_proj keeps it
    keep(probs);
    Id p = tp_summed(linear(b + "attn.c_proj.weight", C_, Cl_), M_ * C_ * kF32);
    if (drop_) p = dropped(p, s.masks);
    drop_f32(y);  // CausalSelfAttention::forward returns
    drop_f32(qkv);
    keep(act(M_ * C_ * kF32));  // h = x + attn
    L_.free(p);
    const Id n2 = act(M_ * C_ * kF32);  // ln_2 out
    const Id mean2 = act(M_ * kF32), rstd2 = act(M_ * kF32);
    keep(saved_input(n2, M_ * C_));  // ... as c_fc keeps it
    keep(mean2);
    keep(rstd2);
    Id fc = linear(b + "mlp.c_fc.weight", F_, C_);  // c_fc out (GELU's input)
    gelu_time(1.0);
    Id gl = act(M_ * F_ * kF32);  // GELU out
    cast_time(M_ * F_);           // GELU's input rounded, as it keeps it
    keep(saved_input(fc, M_ * F_));
    drop_f32(fc);                    // the statement with gelu(c_fc(x)) ends
    keep(saved_input(gl, M_ * F_));  // c_proj keeps it
    Id o = tp_summed(linear(b + "mlp.c_proj.weight", C_, F_), M_ * C_ * kF32);
    if (drop_) o = dropped(o, s.masks);
    drop_f32(gl);                 // GPTMLP::forward returns
    s.out = act(M_ * C_ * kF32);  // h + mlp
    L_.free(o);
    drop_f32(n2);  // Block::forward returns
    drop_f32(a);
    return s;
  }

  // The same block without a graph (activation checkpointing's forward): only its output stays.
  Id block_forward_no_grad(int64_t l, Id x) {
    BlockSaved s = block_forward(l, x);
    for (Id id : s.ids) L_.free(id);
    for (Id id : s.masks) L_.free(id);
    return s.out;
  }

  // One block's backward from the gradient of its output; frees what its forward saved (the
  // input too) and returns the gradient of its input.
  // `leaf_input`: the input is a leaf (a later stage's received input, or checkpointing's
  // recomputation): its gradient is a copy of the residual's, counted as gradients, into which
  // ln_1's is added; otherwise the two are summed into a new tensor for the previous op.
  Id block_backward(int64_t l, const BlockSaved& s, Id g_out, bool leaf_input, bool free_input) {
    const std::string b = block_name(l);
    L_.at(fmt::format("backward of block {}", l));
    // In the order of the engine (latest node first); s.ids in block_forward's order.
    const auto& v = s.ids;
    saved_read(v, s.masks, s.input);
    // With dropout, each branch's dropout runs its backward before the product under it.
    const Id dmlp = drop_ ? dropped_backward(s.masks[2]) : g_out;
    Id dgl = linear_backward(b + "mlp.c_proj", F_, C_);
    if (drop_) L_.free(dmlp);
    L_.free(v[11]);  // GELU out
    gelu_time(2.0);
    const std::optional<Id> x32 = widened(M_ * F_);  // GELU's saved input
    Id dfc = act(M_ * F_ * kF32);                    // GELU backward
    if (x32) L_.free(*x32);
    L_.free(dgl);
    L_.free(v[10]);  // GELU's input
    Id dn = tp_summed(linear_backward(b + "mlp.c_fc", C_, F_), M_ * C_ * kF32);
    L_.free(dfc);
    L_.free(v[7]);  // ln_2 out
    Id dh = layer_norm_backward(b + "ln_2");
    L_.free(dn);
    for (int i : {6, 8, 9}) L_.free(v[size_t(i)]);  // h, mean, rstd
    Id g1 = act(M_ * C_ * kF32);                    // the residual's gradient: g_out + dh
    L_.free(g_out);
    L_.free(dh);
    std::optional<Id> gin;
    if (leaf_input) gin = L_.alloc(MemoryTag::gradients, M_ * C_ * kF32);
    const Id dattn = drop_ ? dropped_backward(s.masks[1]) : g1;
    if (drop_ && leaf_input) L_.free(g1);
    Id dy = linear_backward(b + "attn.c_proj", Cl_, C_);
    if (drop_)
      L_.free(dattn);
    else if (leaf_input)
      L_.free(g1);
    L_.free(v[4]);
    Id dqkv = materialized_ ? attention_backward() : gpu_attention_backward();
    L_.free(dy);
    L_.free(v[3]);
    L_.free(v[5]);
    if (drop_) L_.free(s.masks[0]);
    Id da = tp_summed(linear_backward(b + "attn.c_attn", C_, 3 * Cl_), M_ * C_ * kF32);
    L_.free(dqkv);
    L_.free(v[0]);
    Id dx = layer_norm_backward(b + "ln_1");
    L_.free(da);
    if (free_input) L_.free(s.input);
    L_.free(v[1]);
    L_.free(v[2]);
    if (leaf_input) {
      L_.free(dx);  // added into the input's gradient
      return *gin;
    }
    Id g0 = act(M_ * C_ * kF32);  // g1 + dx
    L_.free(g1);
    L_.free(dx);
    return g0;
  }

  MicroBatch forward(int m) {
    L_.at(fmt::format("forward of micro-batch {}", m));
    MicroBatch f;
    Id x;
    if (first_) {
      acquire(wte_unit_);
      acquire(wpe_unit_);
      f.embed.push_back(act(T_ * kI64));  // positions (saved by wpe's lookup)
      if (cfg_.tp > 1) {
        // The vocabulary-parallel lookup keeps its local indices and the mask of the others.
        f.embed.push_back(act(M_ * kI64));
        f.embed.push_back(act(M_));
      }
      Id tok = act(M_ * C_ * kF32), pos = act(T_ * C_ * kF32);
      if (cfg_.tp > 1) {
        Id masked = act(M_ * C_ * kF32);
        L_.free(tok);
        tok = tp_summed(masked, M_ * C_ * kF32);
      }
      x = act(M_ * C_ * kF32);
      L_.free(tok);
      L_.free(pos);
      if (drop_) {
        std::vector<Id> mask;
        x = dropped(x, mask);
        f.embed_mask = mask[0];
      }
      release(wpe_unit_);
      if (!last_) release(wte_unit_);
    } else {
      x = act(M_ * C_ * kF32);  // received
      f.recv = x;
      // The previous stage ran this forward after the backwards before it in its order: the
      // gradients this stage sent for those have arrived, and their sends let go.
      for (; !previous_[previous_at_]; ++previous_at_) {
        L_.free(gradient_sends_.front());
        gradient_sends_.pop_front();
      }
      ++previous_at_;
    }
    const bool ckpt = cfg_.checkpoint == ActivationCheckpointing::blocks;
    for (int64_t l = layers_.begin; l < layers_.end; ++l) {
      const int unit = block_unit0_ + int(l - layers_.begin);
      acquire(unit);
      if (l + 1 < layers_.end) gather(unit + 1);
      BlockSaved s;
      if (l == layers_.begin) saved_written(x);  // the embeddings' output or the received
      if (ckpt) {
        s.input = x;
        s.out = block_forward_no_grad(l, x);
        saved_written(s.out);  // the next checkpoint
      } else {
        s = block_forward(l, x);
        saved_written(s.ids, s.masks, s.out);
      }
      release(unit);
      x = s.out;
      f.blocks.push_back(std::move(s));
    }
    f.last_out = x;
    if (last_) {
      acquire(lnf_unit_);
      if (!first_) acquire(wte_unit_);
      const Id lnf = act(M_ * C_ * kF32);  // ln_f out
      const Id mean = act(M_ * kF32), rstd = act(M_ * kF32);
      f.head.push_back(saved_input(lnf, M_ * C_));  // ... as the head keeps it
      f.head.push_back(mean);
      f.head.push_back(rstd);
      f.head.push_back(linear("transformer.wte.weight", Vl_, C_));  // logits
      drop_f32(lnf);                                      // the statement with head(ln_f(x)) ends
      if (cfg_.tp > 1) f.head.push_back(act(M_ * kI64));  // the targets, marked
      f.head.push_back(act(M_ * (cfg_.tp > 1 ? kF64 : kF32)));  // log-sum-exp
      f.loss = act(kF32);
      saved_written(f.head);
      release(lnf_unit_);
      release(wte_unit_);
    } else {
      f.sent = x;  // sent to the next stage; let go with the micro-batch, after its backward
    }
    return f;
  }

  void backward(MicroBatch& f, int m) {
    L_.at(fmt::format("backward of micro-batch {}", m));
    Id g;
    if (last_) {
      g = act(kF32);  // the loss's seed
      acquire_for_backward(lnf_unit_);
      acquire_for_backward(wte_unit_);
      gather(block_unit0_ + int(f.blocks.size()) - 1);
      L_.at(fmt::format("backward of the head (micro-batch {})", m));
      saved_read(f.head, f.last_out);
      Id dlogits = act(M_ * Vl_ * kF32);
      L_.free(g);
      L_.free(f.loss);
      const size_t n = f.head.size();
      L_.free(f.head[3]);  // logits
      for (size_t i = 4; i < n; ++i) L_.free(f.head[i]);
      const std::optional<Id> g16 = rounded(M_ * Vl_);  // dlogits
      weight_backward_cold("transformer.wte.weight", Vl_ * C_);
      Id dx = product(M_, C_, Vl_, kPlain);
      const Id dw = product(Vl_, C_, M_, kTransA);
      if (g16) L_.free(*g16);
      gradient("transformer.wte.weight", dw);
      L_.free(dlogits);
      L_.free(f.head[0]);
      if (cfg_.tp > 1) dx = tp_summed(dx, M_ * C_ * kF32);
      g = layer_norm_backward("transformer.ln_f");
      L_.free(dx);
      L_.free(f.head[1]);
      L_.free(f.head[2]);
      L_.free(f.last_out);  // ln_f's saved input
    } else {
      g = act(M_ * C_ * kF32);  // received from the next stage
    }
    const bool ckpt = cfg_.checkpoint == ActivationCheckpointing::blocks;
    for (size_t i = f.blocks.size(); i-- > 0;) {
      const int64_t l = layers_.begin + int64_t(i);
      const int unit = block_unit0_ + int(i);
      acquire_for_backward(unit);
      if (i > 0) gather(unit - 1);
      BlockSaved& s = f.blocks[i];
      // A later stage's input lives until the micro-batch is dropped.
      const bool received = i == 0 && !first_;
      if (ckpt) {
        // Recomputed with a graph from the kept input, then backward through it.
        L_.at(fmt::format("recompute of block {}", l));
        saved_read(s.input);
        BlockSaved again = block_forward(l, s.input);  // into cache-hot memory, just freed
        if (prof_)
          recomputed_cold_s_per_byte_ = prof_->cold_seconds_per_byte(
              block_bytes_ + int64_t(total_bytes(again.ids, again.masks, again.input)), ranks());
        recomputed_ = true;
        Id gx = block_backward(l, again, g, /*leaf_input=*/true, /*free_input=*/false);
        recomputed_ = false;
        L_.free(again.out);
        if (!received) L_.free(s.input);  // the checkpoint's one saved tensor
        g = gx;
      } else {
        g = block_backward(l, s, g, /*leaf_input=*/received, /*free_input=*/!received);
      }
    }
    if (first_) {
      L_.at(fmt::format("backward of the embeddings (micro-batch {})", m));
      if (f.embed_mask) {
        Id d = dropped_backward(*f.embed_mask);
        L_.free(g);
        g = d;
      }
      Id dpos = act(T_ * C_ * kF32);  // the broadcast's sum over the batch
      gradient("transformer.wpe.weight", act(T_ * C_ * kF32));
      L_.free(dpos);
      gradient("transformer.wte.weight", act(Vl_ * C_ * kF32));
      L_.free(g);
      for (Id id : f.embed) L_.free(id);
    } else {
      // The input's gradient (a leaf's), sent back and held until the previous stage has it;
      // the input goes with the micro-batch.
      gradient_sends_.push_back(g);
      L_.free(*f.recv);
    }
    // The output's send let go when the gradient came back; the output goes with the micro-batch.
    if (f.sent) L_.free(*f.sent);
  }

  void step() {
    L_.reset_peak();
    L_.at("batch");
    const int64_t rows = cfg_.batch_size, T = T_;
    Id bx = act(cfg_.dp * rows * T * kI64), by = act(cfg_.dp * rows * T * kI64);
    if (cfg_.dp > 1) {
      Id x = act(rows * T * kI64), y = act(rows * T * kI64);
      L_.free(bx);
      L_.free(by);
      bx = x;
      by = y;
    }
    // zero_grad: the last step's gradients go.
    for (Id id : last_step_grads_) L_.free(id);
    last_step_grads_.clear();
    const int M = int(cfg_.micro_batches), P = int(cfg_.pp), s = stage_;
    if (s > 0) previous_ = pipeline_order(cfg_.schedule, P, s - 1, M);
    previous_at_ = 0;
    std::deque<MicroBatch> in_flight;
    int forwards = 0, backwards = 0;
    // Times are the mean over the step's micro-batches (the first backward has no gradients
    // to add into, the later ones do); ops are the first micro-batch's.
    auto forward_one = [&] {
      const double t0 = t_, c0 = tp_comm_s_;
      const int64_t n0 = ops_;
      in_flight.push_back(forward(forwards++));
      forward_s_ += (t_ - t0) / M, fwd_tp_ += (tp_comm_s_ - c0) / M;
      if (forwards == 1) ops_fwd_ = ops_ - n0;
    };
    auto backward_one = [&] {
      MicroBatch f = std::move(in_flight.front());
      in_flight.pop_front();
      const double t0 = t_, c0 = tp_comm_s_;
      const int64_t n0 = ops_;
      backward(f, backwards++);
      backward_s_ += (t_ - t0) / M, bwd_tp_ += (tp_comm_s_ - c0) / M;
      if (backwards == 1) ops_bwd_ = ops_ - n0;
    };
    for (bool forward : pipeline_order(cfg_.schedule, P, s, M))
      forward ? forward_one() : backward_one();
    tp_comm_s_ = fwd_tp_ + bwd_tp_;  // one micro-batch's
    // The autocast scope closes: its cast cache goes.
    for (const auto& [name, id] : casts_) L_.free(id);
    casts_.clear();
    L_.at("after backward");
    for (Id id : gradient_sends_) L_.free(id);  // the previous stage's last backwards
    gradient_sends_.clear();
    while (!reduces_.empty()) finish_reduce();
    // ZeRO-1 reduce-scatters every unit now; 2-3 the units backward left.
    if (cfg_.zero == 1)
      for (Unit& u : units_)
        if (u.numel > 0) launch_reduce(u, false);
    while (!reduces_.empty()) finish_reduce();
    // The gradient norm (DDP and serial: each gradient squared, one at a time).
    L_.at("gradient norm");
    if (cfg_.zero == 0)
      for (size_t k = 0; k < params_.size(); ++k)
        if (grad_[k]) L_.transient(MemoryTag::other, params_[k].numel * kF32);
    L_.at("optimizer step");
    if (cfg_.zero == 1 || cfg_.zero == 2) {
      std::deque<Id> sends;
      for (const Unit& u : units_) {
        if (u.numel == 0) continue;
        sends.push_back(L_.alloc(MemoryTag::other, u.share * kF32));
        if (sends.size() > 2) {
          L_.free(sends.front());
          sends.pop_front();
        }
      }
      for (Id id : sends) L_.free(id);
    }
    L_.free(bx);
    L_.free(by);
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Machine profiles

double MachineProfile::gemm_seconds(int64_t m, int64_t n, int64_t k, int trans, bool half) const {
  const double flops = 2.0 * double(m) * double(n) * double(k);
  // The nearest measured shape in log-space: the kernels' efficiency depends on the shape's
  // proportions (small m or n leave the tiles half empty), not only its size.
  const Gemm* best = nullptr;
  double best_d = 0;
  // Among the same transposition when there is one (packing a transposed operand costs more).
  const bool have =
      std::any_of(gemm.begin(), gemm.end(), [&](const Gemm& g) { return g.trans == trans; });
  for (const Gemm& g : gemm) {
    if (have && g.trans != trans) continue;
    const double d = std::pow(std::log(double(m) / double(g.m)), 2) +
                     std::pow(std::log(double(n) / double(g.n)), 2) +
                     std::pow(std::log(double(k) / double(g.k)), 2);
    if (!best || d < best_d) best = &g, best_d = d;
  }
  // 16-bit inputs: the shape's own bf16 figure, else the profile's flat one, else f32's.
  if (half && best && best->gflops16 > 0) return flops / (best->gflops16 * 1e9);
  if (half && gemm16_gflops > 0) return flops / (gemm16_gflops * 1e9);
  if (best) return flops / (best->gflops * 1e9);
  FORGE_CHECK(gemm_gflops > 0, "profile '{}': no matrix-product figures", name);
  return flops / (gemm_gflops * 1e9);
}

bool MachineProfile::has_half_products() const {
  return gemm16_gflops > 0 ||
         std::any_of(gemm.begin(), gemm.end(), [](const Gemm& g) { return g.gflops16 > 0; });
}

double MachineProfile::attention_rate(bool half) const {
  return (half && attention16_gflops > 0 ? attention16_gflops : attention_gflops) * 1e9;
}

double MachineProfile::peak_rate(bool half) const {
  return (half && peak16_gflops > 0 ? peak16_gflops : peak_gflops) * 1e9;
}

double MachineProfile::collective_seconds(const std::string& op, int group, int64_t bytes) const {
  if (group <= 1) return 0;
  auto it = collectives.find(op);
  FORGE_CHECK(it != collectives.end() && !it->second.empty(),
              "profile '{}' has no figures for {} (run plan calibrate under mpirun)", name, op);
  // The measured group size nearest this one; a ring's time scales with (N - 1) / N.
  const auto& sizes = it->second;
  auto near = sizes.begin();
  for (auto s = sizes.begin(); s != sizes.end(); ++s)
    if (std::abs(s->first - group) < std::abs(near->first - group)) near = s;
  const int g0 = near->first;
  const Link& l = near->second;
  const double steps = g0 > 1 ? double(group - 1) / double(g0 - 1) : 1.0;
  const double share = g0 > 1 ? (double(group - 1) / group) / (double(g0 - 1) / g0) : 1.0;
  return l.latency_us * 1e-6 * (op == "send" ? 1.0 : steps) +
         double(bytes) / (l.gbs * 1e9) * (op == "send" ? 1.0 : share);
}

double MachineProfile::cold_seconds_per_byte(int64_t working_set, int64_t ranks) const {
  if (cold_curve.empty())
    return cache_bytes > 0 && cold_gbs > 0 && working_set > cache_bytes ? 1.0 / (cold_gbs * 1e9)
                                                                        : 0.0;
  // Linear in log(bytes) between the measured sizes, flat beyond them.
  const double at = double(working_set) * double(ranks) / double(cold_ranks);
  if (at <= double(cold_curve.front().first)) return cold_curve.front().second;
  for (size_t i = 1; i < cold_curve.size(); ++i) {
    const auto [b1, s1] = cold_curve[i];
    if (at > double(b1)) continue;
    const auto [b0, s0] = cold_curve[i - 1];
    const double f = std::log(at / double(b0)) / std::log(double(b1) / double(b0));
    return s0 + f * (s1 - s0);
  }
  return cold_curve.back().second;
}

std::string MachineProfile::to_json() const {
  nlohmann::ordered_json j;
  j["name"] = name;
  j["source"] = source;
  j["peak_gflops"] = peak_gflops;
  j["gemm_gflops"] = gemm_gflops;
  j["attention_gflops"] = attention_gflops;
  if (peak16_gflops > 0) j["peak16_gflops"] = peak16_gflops;
  if (gemm16_gflops > 0) j["gemm16_gflops"] = gemm16_gflops;
  if (attention16_gflops > 0) j["attention16_gflops"] = attention16_gflops;
  if (cold_gbs > 0) j["cold_gbs"] = cold_gbs;
  if (cache_bytes > 0) j["cache_bytes"] = cache_bytes;
  if (!cold_curve.empty()) {
    j["cold_curve"] = nlohmann::json::array();
    for (const auto& [bytes, s] : cold_curve) j["cold_curve"].push_back({bytes, s});
    j["cold_ranks"] = cold_ranks;
  }
  j["bandwidth_gbs"] = bandwidth_gbs;
  j["op_overhead_us"] = op_overhead_us;
  j["gelu_ns"] = gelu_ns;
  if (dropout_ns > 0) j["dropout_ns"] = dropout_ns;
  if (gpu_attention_materialized) j["gpu_attention"] = "materialized";
  j["overlap"] = overlap;
  j["busy_pace"] = busy_pace;
  if (inline_sync_us > 0) j["inline_sync_us"] = inline_sync_us;
  j["gemm"] = nlohmann::json::array();
  for (const Gemm& g : gemm) {
    nlohmann::ordered_json row = {g.m, g.n, g.k, g.trans, g.gflops};
    if (g.gflops16 > 0) row.push_back(g.gflops16);
    j["gemm"].push_back(row);
  }
  nlohmann::ordered_json c = nlohmann::ordered_json::object();
  for (const auto& [op, sizes] : collectives)
    for (const auto& [n, l] : sizes)
      c[op][std::to_string(n)] = {{"latency_us", l.latency_us}, {"gbs", l.gbs}};
  j["collectives"] = c;
  return j.dump(1);
}

MachineProfile MachineProfile::from_json(const std::string& text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw_error(fmt::format("{}: not a profile (JSON): {}", where, e.what()));
  }
  MachineProfile p;
  try {
    p.name = j.value("name", where);
    p.source = j.value("source", "");
    p.peak_gflops = j.at("peak_gflops").get<double>();
    p.gemm_gflops = j.value("gemm_gflops", 0.0);
    p.attention_gflops = j.at("attention_gflops").get<double>();
    p.peak16_gflops = j.value("peak16_gflops", 0.0);
    p.gemm16_gflops = j.value("gemm16_gflops", 0.0);
    p.attention16_gflops = j.value("attention16_gflops", 0.0);
    p.cold_gbs = j.value("cold_gbs", 0.0);
    p.cache_bytes = j.value("cache_bytes", int64_t(0));
    p.cold_ranks = j.value("cold_ranks", 1);
    FORGE_CHECK(p.cold_ranks >= 1, "{}: cold_ranks {} is not a rank count", where, p.cold_ranks);
    for (const auto& point : j.value("cold_curve", nlohmann::json::array())) {
      p.cold_curve.emplace_back(point.at(0).get<int64_t>(), point.at(1).get<double>());
      const size_t n = p.cold_curve.size();
      FORGE_CHECK(p.cold_curve[n - 1].first > 0 && p.cold_curve[n - 1].second >= 0 &&
                      (n == 1 || (p.cold_curve[n - 1].first > p.cold_curve[n - 2].first &&
                                  p.cold_curve[n - 1].second >= p.cold_curve[n - 2].second)),
                  "{}: cold_curve point {}: sizes must be positive and rise, extras at least 0 and "
                  "not falling",
                  where, n - 1);
    }
    p.bandwidth_gbs = j.at("bandwidth_gbs").get<double>();
    p.op_overhead_us = j.at("op_overhead_us").get<double>();
    p.gelu_ns = j.value("gelu_ns", 0.0);
    p.dropout_ns = j.value("dropout_ns", 0.0);
    const std::string attention = j.value("gpu_attention", "fused");
    FORGE_CHECK(attention == "fused" || attention == "materialized",
                "{}: gpu_attention '{}' is not fused or materialized", where, attention);
    p.gpu_attention_materialized = attention == "materialized";
    p.overlap = j.value("overlap", 1.0);
    p.busy_pace = j.value("busy_pace", 1.0);
    p.inline_sync_us = j.value("inline_sync_us", 0.0);
    const nlohmann::json gemms = j.value("gemm", nlohmann::json::array());
    const nlohmann::json collectives = j.value("collectives", nlohmann::json::object());
    for (const auto& g : gemms)
      p.gemm.push_back({g.at(0).get<int64_t>(), g.at(1).get<int64_t>(), g.at(2).get<int64_t>(),
                        g.at(3).get<int>(), g.at(4).get<double>(),
                        g.size() > 5 ? g.at(5).get<double>() : 0.0});
    for (const auto& [op, sizes] : collectives.items())
      for (const auto& [n, l] : sizes.items())
        p.collectives[op][std::stoi(n)] = {l.at("latency_us").get<double>(),
                                           l.at("gbs").get<double>()};
  } catch (const nlohmann::json::exception& e) {
    throw_error(fmt::format("{}: profile field missing or of the wrong type: {}", where, e.what()));
  }
  FORGE_CHECK(p.peak_gflops > 0 && p.attention_gflops > 0 && p.bandwidth_gbs > 0 &&
                  (p.gemm_gflops > 0 || !p.gemm.empty()),
              "{}: peak_gflops, attention_gflops, bandwidth_gbs and gemm figures must be positive",
              where);
  return p;
}

MachineProfile MachineProfile::load(const std::string& path) {
  return from_json(read_text_file(path), path);
}

// ---------------------------------------------------------------------------------------------
// Prediction

// The pipeline's makespan: each stage runs its schedule's forwards and backwards in order; a
// forward waits for the previous stage's forward of that micro-batch and the transfer, a backward
// for the next stage's backward and the transfer (recv blocks, as the runtime's does).
double pipeline_makespan(const std::vector<double>& F, const std::vector<double>& B, double hop,
                         int M, PipelineSchedule schedule) {
  FORGE_CHECK(!F.empty() && F.size() == B.size() && M >= 1,
              "pipeline_makespan: {} forward and {} backward stage times, {} micro-batches",
              F.size(), B.size(), M);
  const int P = int(F.size());
  std::vector<std::vector<bool>> order;  // per stage: forward?, the runtime's own order
  for (int s = 0; s < P; ++s) order.push_back(pipeline_order(schedule, P, s, M));
  const double kUnset = -1;
  std::vector<std::vector<double>> fdone(size_t(P), std::vector<double>(size_t(M), kUnset));
  std::vector<std::vector<double>> bdone = fdone;
  std::vector<size_t> next(static_cast<size_t>(P), 0);
  std::vector<int> forwards(static_cast<size_t>(P), 0), backwards(forwards);  // done so far
  std::vector<double> free_at(static_cast<size_t>(P), 0);
  // Repeatedly run whichever stage's next op has its inputs ready.
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < P; ++s) {
      auto& i = next[size_t(s)];
      if (i == order[size_t(s)].size()) continue;
      const bool fwd = order[size_t(s)][i];
      const int m = fwd ? forwards[size_t(s)] : backwards[size_t(s)];
      double ready = 0;
      if (fwd && s > 0) {
        if (fdone[size_t(s - 1)][size_t(m)] < 0) continue;
        ready = fdone[size_t(s - 1)][size_t(m)] + hop;
      }
      if (!fwd && s + 1 < P) {
        if (bdone[size_t(s + 1)][size_t(m)] < 0) continue;
        ready = bdone[size_t(s + 1)][size_t(m)] + hop;
      }
      const double start = std::max(free_at[size_t(s)], ready);
      const double end = start + (fwd ? F[size_t(s)] : B[size_t(s)]);
      (fwd ? fdone : bdone)[size_t(s)][size_t(m)] = end;
      free_at[size_t(s)] = end;
      ++(fwd ? forwards : backwards)[size_t(s)];
      ++i;
      progress = true;
    }
  }
  return *std::max_element(free_at.begin(), free_at.end());
}

namespace {

// Reduction buckets overlapped with the backward they come from: bucket i is ready once backward
// has produced its share of the gradients (in ready order), and the reductions run one after
// another. Returns the time past the end of backward.
double exposed_after_backward(const std::vector<int64_t>& buckets, double backward_s,
                              const std::function<double(int64_t)>& cost) {
  const double total = double(std::accumulate(buckets.begin(), buckets.end(), int64_t(0)));
  double produced = 0, end = 0;
  for (int64_t b : buckets) {
    produced += double(b);
    const double ready = total > 0 ? backward_s * produced / total : backward_s;
    end = std::max(end, ready) + cost(b);
  }
  return std::max(0.0, end - backward_s);
}

}  // namespace

PlanPrediction predict(const GptTrainConfig& cfg, const CorpusSize& corpus, int64_t cap_bytes,
                       const MachineProfile* profile) {
  cfg.validate();
  FORGE_CHECK(cfg.model.vocab_size > 0, "plan: the model's vocab_size is not known");
  PlanPrediction out;
  MemoryPrediction& best = out.memory;
  bool any = false;
  std::vector<int64_t> peaks(size_t(cfg.dp * cfg.tp * cfg.pp));
  const int P = int(cfg.pp);
  std::vector<double> F(static_cast<size_t>(P)), B(static_cast<size_t>(P));
  double tp_comm = 0, dp_exposed = 0, optimizer = 0;
  int64_t ops = 0;
  const double pace = profile && cfg.dp * cfg.tp * cfg.pp > 1 ? profile->busy_pace : 1.0;
  for (int stage = 0; stage < P; ++stage)
    for (int r = 0; r < int(cfg.tp); ++r) {
      StepReplay::Result res = StepReplay(cfg, corpus, stage, r, cap_bytes, profile).run();
      MemoryPrediction& p = res.memory;
      // The data-parallel ranks of (stage, r) hold the same sizes (ZeRO's shares are equal).
      for (int64_t d = 0; d < cfg.dp; ++d)
        peaks[size_t((stage * cfg.dp + d) * cfg.tp + r)] = p.peak_bytes;
      // The rank past the cap first, else the highest.
      if (!any || (best.fits && !p.fits) ||
          (best.fits == p.fits && p.peak_bytes > best.peak_bytes)) {
        best = p;
        best.rank = int((int64_t(stage) * cfg.dp) * cfg.tp + r);
        any = true;
      }
      if (!profile || r > 0) continue;  // tensor-parallel ranks run in step
      // With several ranks computing at once, the step goes at the slowest one's pace.
      if (pace != 1) {
        res.forward_s = res.forward_tp_s + pace * (res.forward_s - res.forward_tp_s);
        res.backward_s = res.backward_tp_s + pace * (res.backward_s - res.backward_tp_s);
        res.optimizer_s *= pace;
      }
      F[size_t(stage)] = res.forward_s;
      B[size_t(stage)] = res.backward_s;
      tp_comm = std::max(tp_comm, res.tp_comm_s * double(cfg.micro_batches));
      ops = std::max(ops, res.ops);
      optimizer = std::max(optimizer, res.optimizer_s);
      // The data-parallel side of this stage, after its last backward.
      const int N = int(cfg.dp);
      double exposed = 0;
      auto cost = [&](const char* op) {
        return [=](int64_t bytes) { return profile->collective_seconds(op, N, bytes); };
      };
      if (N > 1) {
        // Communication behind compute hides only as far as the machine overlaps the two
        // (profile.overlap: 1 with spare cores or a separate engine, less when they share cores).
        auto behind = [&](double total, double ideal_exposed) {
          return ideal_exposed + (1.0 - profile->overlap) * std::max(0.0, total - ideal_exposed);
        };
        auto sum = [&](const char* op, const std::vector<int64_t>& sizes) {
          double t = 0;
          for (int64_t b : sizes) t += profile->collective_seconds(op, N, b);
          return t;
        };
        if (cfg.zero == 0) {
          exposed =
              behind(sum("all_reduce", res.grad_buckets),
                     exposed_after_backward(res.grad_buckets, res.backward_s, cost("all_reduce")));
        } else if (cfg.zero == 1) {
          exposed = sum("reduce_scatter", res.grad_buckets);
        } else {
          // Stages 2-3 keep only their share of the gradients, so every micro-batch's backward
          // reduce-scatters its units as they are ready (ZeroAdamW::on_grad_ready): M rounds,
          // each behind the rest of its backward and the next micro-batch's forward and
          // backward, the last one's tail exposed. Each round also fills a zeroed bucket of N
          // shares with the unit's gradients and adds the reduced share into the gradient
          // share: memory passes on the compute thread.
          const double m = double(cfg.micro_batches);
          const double round = sum("reduce_scatter", res.grad_buckets);
          const double ideal =
              exposed_after_backward(res.grad_buckets, res.backward_s, cost("reduce_scatter")) +
              (m - 1) * std::max(0.0, round - (res.forward_s + res.backward_s));
          exposed = behind(m * round, ideal);
          double bucket_bytes = 0;
          for (int64_t b : res.grad_buckets) bucket_bytes += double(b) * (3.0 + 3.0 / N);
          exposed += m * bucket_bytes / (profile->bandwidth_gbs * 1e9);
        }
        // Stages 1-2 gather the updated parameters after the step; 3 gathers each unit before
        // its forward and again before its backward, the next one prefetched behind the current
        // one's compute.
        const double gathers = sum("all_gather", res.unit_bytes);
        if (cfg.zero == 1 || cfg.zero == 2) exposed += gathers;
        if (cfg.zero == 3 && !res.unit_bytes.empty()) {
          const double first = profile->collective_seconds("all_gather", N, res.unit_bytes[0]);
          const double m = double(cfg.micro_batches);
          const double compute = m * (res.forward_s + res.backward_s);
          exposed +=
              behind(2 * m * gathers, 2 * m * first + std::max(0.0, 2 * m * gathers - compute));
        }
      }
      dp_exposed = std::max(dp_exposed, exposed);
    }
  best.rank_peak_bytes = std::move(peaks);
  if (cfg.mixed_precision() && profile && !profile->has_half_products())
    best.caveats.push_back(fmt::format(
        "precision {}: the profile has no 16-bit product figures (f32's are used)", cfg.precision));
  if (!Device::parse(cfg.device).is_cpu())
    best.caveats.push_back("GPU allocators' rounding and workspaces are not modelled");
  if (!profile) return out;

  TimePrediction& t = out.time;
  const int64_t M = cfg.micro_batches;
  const int64_t tokens = cfg.batch_size / M * cfg.model.block_size;
  const double hop =
      P > 1 ? profile->collective_seconds("send", 2, tokens * cfg.model.n_embd * 4) : 0;
  const double makespan = pipeline_makespan(F, B, hop, int(M), cfg.schedule);
  double busiest = 0;
  for (int s = 0; s < P; ++s)
    busiest = std::max(busiest, double(M) * (F[size_t(s)] + B[size_t(s)]));
  // The small all-reduces of every step (loss and inf flag, gradient norm) over the world.
  const int world = int(cfg.dp * cfg.tp * cfg.pp);
  const double small = 2 * profile->collective_seconds("all_reduce", world, 16);
  const double step_s = makespan + dp_exposed + optimizer + small;
  t.ms_per_step = step_s * 1e3;
  t.pipeline_ms = makespan * 1e3;
  t.bubble_ms = std::max(0.0, makespan - busiest) * 1e3;
  t.tp_comm_ms = tp_comm * 1e3;
  t.pp_comm_ms = P > 1 ? 2.0 * double(M) * hop * 1e3 : 0;
  t.dp_exposed_ms = dp_exposed * 1e3;
  t.optimizer_ms = optimizer * 1e3;
  t.ops_per_micro_batch = ops;
  const double step_tokens = double(cfg.dp * cfg.batch_size * cfg.model.block_size);
  t.tokens_per_s = step_tokens / step_s;
  t.mfu = cfg.model.flops_per_token(cfg.model.block_size) * t.tokens_per_s /
          (profile->peak_rate(cfg.mixed_precision()) * double(world));
  return out;
}

MemoryPrediction predict_memory(const GptTrainConfig& cfg, const CorpusSize& corpus,
                                int64_t cap_bytes) {
  return predict(cfg, corpus, cap_bytes, nullptr).memory;
}

std::vector<std::array<int64_t, 4>> gemm_shapes(const GptTrainConfig& cfg) {
  std::set<std::array<int64_t, 4>> shapes;
  for (int stage = 0; stage < int(cfg.pp); ++stage)
    for (int r = 0; r < int(cfg.tp); ++r)
      StepReplay(cfg, CorpusSize{}, stage, r, 0, nullptr, &shapes).run();
  return {shapes.begin(), shapes.end()};
}

}  // namespace forge
