#include "parallel/zero.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "tensor/ops.h"

namespace forge {

ZeroAdamW::ZeroAdamW(std::vector<ParamGroup> groups, AdamWOptions options,
                     std::shared_ptr<Communicator> dp, ZeroOptions zero)
    : Optimizer(groups, options.lr),
      zero_(std::move(zero)),
      dp_(std::move(dp)),
      self_(std::make_shared<ZeroAdamW*>(this)) {
  FORGE_CHECK(dp_, "ZeroAdamW: no data-parallel group");
  FORGE_CHECK(zero_.stage >= 1 && zero_.stage <= 3, "ZeroAdamW: stage {} (expected 1, 2 or 3)",
              zero_.stage);
  FORGE_CHECK(zero_.max_in_flight >= 1, "ZeroAdamW: max_in_flight {} (at least 1)",
              zero_.max_in_flight);
  FORGE_CHECK(!zero_.init || zero_.stage == 3,
              "ZeroAdamW: parameters without memory (an init function) need stage 3, not {}",
              zero_.stage);
  const int me = dp_->rank();
  for (const ParamGroup& g : groups) {
    FORGE_CHECK(g.names.size() == g.params.size(),
                "ZeroAdamW: every parameter needs a name (ParamGroup::names)");
    for (size_t i = 0; i < g.params.size(); ++i) {
      const Variable& p = g.params[i];
      FORGE_CHECK(p.dtype() == DType::f32 && p.data().device().is_cpu() && p.data().is_contiguous(),
                  "ZeroAdamW: parameter '{}' is {} on {}; ZeRO needs contiguous f32 on the CPU",
                  g.names[i], p.dtype(), p.data().device().str());
      numel_ += p.numel();
      params_.push_back(p);
      names_.push_back(g.names[i]);
    }
  }
  // Every rank starts from rank 0's weights, as DDP does (or from its part of the initial ones).
  if (!zero_.init)
    for (Variable& p : params_) dp_->broadcast(p.data(), 0);
  build_units(zero_);
  for (Unit& u : units_) flatten_unit(u);
  // The pieces of parameters inside this rank's share of each unit, in their groups, as AdamW's
  // parameters: views of the parameters (stages 1-2) or of the share (stage 3).
  std::vector<ParamGroup> pieces;
  size_t k = 0;
  for (const ParamGroup& g : groups) {
    ParamGroup pg({}, g.weight_decay, {});
    for (size_t i = 0; i < g.params.size(); ++i, ++k) {
      Unit& u = units_[size_t(unit_of_[k])];
      const IndexRange r = share_part(k);
      if (r.size() == 0) continue;
      const Piece pc{k, r.begin - unit_offset_[k], r.size()};
      const int64_t at = r.begin - int64_t(me) * u.share;  // in the share
      Tensor data = zero_.stage == 3
                        ? u.master.narrow(0, at, pc.count)
                        : params_[k].data().reshape({-1}).narrow(0, pc.offset, pc.count);
      if (zero_.init) data.copy_(zero_.init(names_[k], {pc.offset, pc.offset + pc.count}));
      Variable piece(data, true);
      if (zero_.stage >= 2) piece.set_grad(u.grad.narrow(0, at, pc.count));
      piece_vars_.push_back(piece);
      pg.params.push_back(piece);
      pg.names.push_back(piece_name(pc));
      pieces_.push_back(pc);
    }
    pieces.push_back(std::move(pg));
  }
  opt_ = std::make_unique<AdamW>(std::move(pieces), options);
  if (zero_.stage >= 2) {
    // A unit's gradient goes out the moment backward has finished all of it.
    std::weak_ptr<ZeroAdamW*> weak = self_;
    for (size_t i = 0; i < params_.size(); ++i)
      params_[i].register_grad_ready_hook([weak, u = unit_of_[i]](Variable&) {
        if (auto self = weak.lock()) (*self)->on_grad_ready(u);
      });
  }
}

ZeroAdamW::~ZeroAdamW() {
  self_.reset();
  // Collectives in flight write into buffers that are about to go.
  for (InFlight& f : in_flight_) {
    try {
      f.work.wait();
    } catch (...) {
    }
  }
  for (Unit& u : units_) {
    try {
      u.gather.wait();
    } catch (...) {
    }
  }
}

IndexRange ZeroAdamW::share_part(size_t k) const {
  const Unit& u = units_[size_t(unit_of_[k])];
  const int64_t mine = int64_t(dp_->rank()) * u.share;
  const int64_t lo = std::max(mine, unit_offset_[k]);
  const int64_t hi = std::min(mine + u.share, unit_offset_[k] + params_[k].numel());
  return {lo, std::max(lo, hi)};
}

std::string ZeroAdamW::piece_name(const Piece& p) const {
  return fmt::format("{}[{}:{}]", names_[p.param], p.offset, p.offset + p.count);
}

void ZeroAdamW::build_units(const ZeroOptions& zero) {
  const int N = dp_->size();
  unit_of_.assign(params_.size(), -1);
  unit_offset_.assign(params_.size(), 0);
  if (!zero.units.empty()) {
    std::map<std::string, size_t> index;
    for (size_t k = 0; k < names_.size(); ++k) index.emplace(names_[k], k);
    for (const auto& names : zero.units) {
      Unit u;
      for (const std::string& name : names) {
        auto it = index.find(name);
        FORGE_CHECK(it != index.end(), "ZeroAdamW: unit {} names '{}', not a parameter here",
                    units_.size(), name);
        FORGE_CHECK(unit_of_[it->second] < 0, "ZeroAdamW: parameter '{}' is in two units", name);
        unit_of_[it->second] = int(units_.size());
        u.params.push_back(it->second);
      }
      units_.push_back(std::move(u));  // empty ones too: the caller's numbering stays
    }
    for (size_t k = 0; k < params_.size(); ++k)
      FORGE_CHECK(unit_of_[k] >= 0, "ZeroAdamW: parameter '{}' is in no unit", names_[k]);
  } else {
    int64_t filled = 0;
    for (size_t k = 0; k < params_.size(); ++k) {
      if (units_.empty() || filled >= zero.bucket_bytes) {
        units_.emplace_back();
        filled = 0;
      }
      unit_of_[k] = int(units_.size()) - 1;
      units_.back().params.push_back(k);
      filled += params_[k].numel() * int64_t(sizeof(float));
    }
  }
  for (Unit& u : units_) {
    for (size_t k : u.params) {
      unit_offset_[k] = u.numel;
      u.numel += params_[k].numel();
    }
    u.share = (u.numel + N - 1) / N;
  }
}

void ZeroAdamW::flatten_unit(Unit& u) {
  const int N = dp_->size(), me = dp_->rank();
  {
    MemoryTagScope tag(MemoryTag::parameters);
    // The parameters, then zeros (with init: no memory until the first gather).
    u.flat =
        zero_.init ? Tensor::unallocated({int64_t(N) * u.share}) : zeros({int64_t(N) * u.share});
  }
  for (size_t k : u.params) {
    Variable& p = params_[k];
    Tensor view = u.flat.narrow(0, unit_offset_[k], p.numel()).view(p.shape());
    if (!zero_.init) view.copy_(p.data());  // (else it has no memory; its pieces come from init)
    p.data() = view;                        // the parameter's own memory goes with its last tensor
  }
  if (zero_.stage >= 2) {
    MemoryTagScope tag(MemoryTag::gradients);
    u.grad = zeros({u.share});
  }
  if (zero_.stage == 3) {
    {
      MemoryTagScope tag(MemoryTag::parameters);
      u.master =
          zero_.init ? zeros({u.share}) : u.flat.narrow(0, int64_t(me) * u.share, u.share).clone();
    }
    u.flat.storage()->free_memory();
    u.gathered = false;
  }
}

void ZeroAdamW::zero_grad() {
  Optimizer::zero_grad();
  // Stage 1: AdamW's pieces hold views of the last step's whole gradients (set by
  // reduce_scatter_gradients); dropping them frees those gradients now, not when the next
  // reduce-scatter replaces them (they stayed through the next backward otherwise).
  if (zero_.stage == 1) opt_->zero_grad();
  for (Unit& u : units_) {
    u.ready = 0;
    if (u.grad.defined()) u.grad.zero_();
  }
}

void ZeroAdamW::on_grad_ready(int unit) {
  Unit& u = units_[size_t(unit)];
  if (++u.ready < int(u.params.size())) return;
  u.ready = 0;
  launch_reduce(unit);
  if (u.backward_holds > 0) {
    --u.backward_holds;
    release(unit);
  }
}

// The unit's gradients (zeros where a parameter has none), in a bucket of N shares,
// reduce-scattered (avg) asynchronously; stages 2-3 drop the parameters' gradients now.
void ZeroAdamW::launch_reduce(int unit) {
  Unit& u = units_[size_t(unit)];
  if (u.numel == 0) return;
  InFlight f{unit, {}, {}, {}};
  {
    MemoryTagScope tag(MemoryTag::other);
    f.bucket = zeros({int64_t(dp_->size()) * u.share});
    f.out = Tensor::empty({u.share});
  }
  float* bucket = f.bucket.data<float>();
  for (size_t k : u.params) {
    Variable& p = params_[k];
    if (!p.grad().defined()) continue;
    const Tensor g = p.grad().contiguous();
    std::memcpy(bucket + unit_offset_[k], g.data<float>(), size_t(p.numel()) * sizeof(float));
    if (zero_.stage >= 2) p.zero_grad();
  }
  f.work = dp_->reduce_scatter_async(f.out, f.bucket, ReduceOp::avg);
  in_flight_.push_back(std::move(f));
  while (int(in_flight_.size()) > zero_.max_in_flight) {
    finish_reduce(in_flight_.front());
    in_flight_.erase(in_flight_.begin());
  }
}

// Stage 1: the average written back into this rank's elements of the parameters' gradients;
// stages 2-3: added into the share's gradient.
void ZeroAdamW::finish_reduce(InFlight& f) {
  f.work.wait();
  Unit& u = units_[size_t(f.unit)];
  const float* avg = f.out.data<float>();
  if (zero_.stage >= 2) {
    float* g = u.grad.data<float>();
    for (int64_t e = 0; e < u.share; ++e) g[e] += avg[e];
    return;
  }
  const int64_t mine = int64_t(dp_->rank()) * u.share;
  for (size_t k : u.params) {
    const IndexRange r = share_part(k);
    if (r.size() == 0) continue;
    std::memcpy(params_[k].grad().data<float>() + (r.begin - unit_offset_[k]),
                avg + (r.begin - mine), size_t(r.size()) * sizeof(float));
  }
}

void ZeroAdamW::reduce_scatter_gradients() {
  if (zero_.stage == 1) {
    for (Variable& p : params_)
      if (!p.grad().defined() || !p.grad().is_contiguous()) {
        MemoryTagScope tag(MemoryTag::gradients);
        p.set_grad(p.grad().defined() ? p.grad().contiguous() : zeros(p.shape()));
      }
    for (int u = 0; u < num_units(); ++u) launch_reduce(u);
  } else {
    // Units backward did not finish (a parameter without a gradient in the last pass), in unit
    // order on every rank; then every hold backward left.
    for (int i = 0; i < num_units(); ++i) {
      Unit& u = units_[size_t(i)];
      u.ready = 0;
      if (std::any_of(u.params.begin(), u.params.end(),
                      [&](size_t k) { return params_[k].grad().defined(); }))
        launch_reduce(i);
      for (; u.backward_holds > 0; --u.backward_holds) release(i);
    }
  }
  for (InFlight& f : in_flight_) finish_reduce(f);
  in_flight_.clear();
  if (zero_.stage == 1)
    // AdamW's pieces take their slices of the parameters' gradients, averaged now.
    for (size_t j = 0; j < pieces_.size(); ++j)
      piece_vars_[j].set_grad(params_[pieces_[j].param].grad().reshape({-1}).narrow(
          0, pieces_[j].offset, pieces_[j].count));
}

double ZeroAdamW::grad_norm_sq_local(const std::function<bool(const std::string&)>& counted) const {
  double total = 0;
  for (size_t j = 0; j < pieces_.size(); ++j) {
    if (counted && !counted(names_[pieces_[j].param])) continue;
    const Tensor& g = piece_vars_[j].grad();
    FORGE_CHECK(g.defined(), "ZeroAdamW: grad_norm before reduce_scatter_gradients");
    const float* p = g.data<float>();
    double sum = 0;
    for (int64_t e = 0; e < pieces_[j].count; ++e) sum += double(p[e]) * double(p[e]);
    total += sum;
  }
  return total;
}

double ZeroAdamW::grad_norm() {
  Tensor t = full({1}, grad_norm_sq_local(), DType::f64);
  dp_->all_reduce(t, ReduceOp::sum);
  return std::sqrt(t.item());
}

void ZeroAdamW::clip_to_norm(double norm, double max_norm) {
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0)
    for (Variable& piece : piece_vars_) {
      Tensor g = piece.grad();
      mul_(g, coef);
    }
}

void ZeroAdamW::sum_gradient_over(const std::string& name, Communicator& group) {
  auto it = std::find(names_.begin(), names_.end(), name);
  FORGE_CHECK(it != names_.end(), "ZeroAdamW: no parameter '{}'", name);
  const size_t k = size_t(it - names_.begin());
  if (zero_.stage == 1) {
    FORGE_CHECK(params_[k].grad().defined(), "ZeroAdamW: '{}' has no gradient", name);
    group.all_reduce(params_[k].grad(), ReduceOp::sum);
    return;
  }
  const Unit& u = units_[size_t(unit_of_[k])];
  const IndexRange r = share_part(k);
  if (r.size() > 0)
    group.all_reduce(u.grad.narrow(0, r.begin - int64_t(dp_->rank()) * u.share, r.size()),
                     ReduceOp::sum);
}

void ZeroAdamW::step() {
  opt_->set_lr(lr());
  opt_->step();
  if (zero_.stage == 3) return;  // the next forward gathers the updated shares
  const int me = dp_->rank();
  MemoryTagScope tag(MemoryTag::other);  // the shares sent
  std::vector<std::pair<Tensor, Work>> sends;
  for (Unit& u : units_) {
    if (u.numel == 0) continue;
    Tensor mine = u.flat.narrow(0, int64_t(me) * u.share, u.share).clone();
    sends.emplace_back(mine, dp_->all_gather_async(u.flat, mine));
    if (int(sends.size()) > zero_.max_in_flight) {
      sends.front().second.wait();
      sends.erase(sends.begin());
    }
  }
  for (auto& s : sends) s.second.wait();
}

int64_t ZeroAdamW::share_numel() const {
  int64_t n = 0;
  for (const Piece& p : pieces_) n += p.count;
  return n;
}

// ---- Stage 3: the parameters' memory while a unit is in use ----

void ZeroAdamW::check_unit(int unit, const char* what) const {
  FORGE_CHECK(unit >= 0 && unit < num_units(), "ZeroAdamW::{}: unit {} of {}", what, unit,
              num_units());
}

void ZeroAdamW::start_gather(Unit& u) {
  u.gathered = true;
  if (u.numel == 0) return;
  u.flat.storage()->allocate_memory();
  u.gather = dp_->all_gather_async(u.flat, u.master);
}

void ZeroAdamW::acquire(int unit) {
  if (zero_.stage < 3) return;
  check_unit(unit, "acquire");
  Unit& u = units_[size_t(unit)];
  if (!u.gathered) start_gather(u);
  u.gather.wait();
  ++u.holders;
}

void ZeroAdamW::release(int unit) {
  if (zero_.stage < 3) return;
  check_unit(unit, "release");
  Unit& u = units_[size_t(unit)];
  FORGE_CHECK(u.holders > 0, "ZeroAdamW: unit {} released more often than acquired", unit);
  if (--u.holders > 0) return;
  u.gather.wait();
  u.flat.storage()->free_memory();
  u.gathered = false;
}

void ZeroAdamW::acquire_for_backward(int unit) {
  if (zero_.stage < 3) return;
  acquire(unit);
  ++units_[size_t(unit)].backward_holds;
}

void ZeroAdamW::prefetch(int unit) {
  if (zero_.stage < 3 || unit < 0 || unit >= num_units()) return;
  Unit& u = units_[size_t(unit)];
  if (!u.gathered) start_gather(u);
}

ZeroAdamW::WholeParameters::WholeParameters(ZeroAdamW& z) : z_(z) {
  for (int u = 0; u < z_.num_units(); ++u) z_.acquire(u);
}

ZeroAdamW::WholeParameters::~WholeParameters() noexcept(false) {
  if (z_.stage() < 3) return;
  const int64_t me = z_.dp_->rank();
  for (int i = 0; i < z_.num_units(); ++i) {
    Unit& u = z_.units_[size_t(i)];
    if (u.numel > 0) u.master.copy_(u.flat.narrow(0, me * u.share, u.share));
    z_.release(i);
  }
}

// ---- Checkpoint state ----

NamedTensors ZeroAdamW::full_state(bool keep) const {
  // The step count: every piece steps at every step(), so each parameter's count is the
  // optimizer's (a rank without pieces learns it from the others).
  Tensor t = full({1}, double(opt_->steps()), DType::f64);
  dp_->all_reduce(t, ReduceOp::max);
  const int64_t steps = int64_t(t.item());
  NamedTensors out{{"adamw.step", from_vector<int64_t>({steps})}};
  if (steps == 0) return keep ? out : NamedTensors{};
  const NamedTensors mine = opt_->state();
  std::map<std::string, Tensor> by_key(mine.begin(), mine.end());
  // One parameter at a time: every rank writes its pieces' moments into a zeroed [2, numel]
  // buffer and a sum over the group joins them (each element is one rank's). A rank that does not
  // keep the result holds one parameter's buffer at most.
  std::vector<std::vector<const Piece*>> pieces_of(params_.size());
  for (const Piece& pc : pieces_) pieces_of[pc.param].push_back(&pc);
  for (size_t i = 0; i < params_.size(); ++i) {
    MemoryTagScope tag(MemoryTag::optimizer);
    const int64_t n = params_[i].numel();
    Tensor mv = zeros({2, n});
    float* m = mv.data<float>();
    for (const Piece* pc : pieces_of[i]) {
      const std::string name = piece_name(*pc);
      auto mi = by_key.find("adamw.m." + name), vi = by_key.find("adamw.v." + name);
      if (mi == by_key.end() || vi == by_key.end()) continue;  // never had a gradient
      std::memcpy(m + pc->offset, mi->second.data<float>(), size_t(pc->count) * sizeof(float));
      std::memcpy(m + n + pc->offset, vi->second.data<float>(), size_t(pc->count) * sizeof(float));
    }
    dp_->all_reduce(mv, ReduceOp::sum);
    if (!keep) continue;
    out.emplace_back("adamw.m." + names_[i], mv.select(0, 0).reshape(params_[i].shape()).clone());
    out.emplace_back("adamw.v." + names_[i], mv.select(0, 1).reshape(params_[i].shape()).clone());
    out.emplace_back("adamw.t." + names_[i], from_vector<int64_t>({steps}));
  }
  return keep ? out : NamedTensors{};
}

void ZeroAdamW::load_state(const NamedTensors& state) {
  const bool pieces = std::any_of(state.begin(), state.end(), [](const auto& e) {
    return e.first.find('[') != std::string::npos;
  });
  if (pieces) {
    opt_->load_state(state);
    return;
  }
  // Whole tensors by parameter name: this share's pieces of them.
  std::map<std::string, Tensor> by_key(state.begin(), state.end());
  NamedTensors mine;
  if (auto it = by_key.find("adamw.step"); it != by_key.end()) mine.emplace_back(*it);
  for (const Piece& pc : pieces_) {
    const std::string& name = names_[pc.param];
    const std::string piece = piece_name(pc);
    auto m = by_key.find("adamw.m." + name);
    if (m == by_key.end()) continue;  // no moments yet
    auto v = by_key.find("adamw.v." + name), t = by_key.find("adamw.t." + name);
    FORGE_CHECK(v != by_key.end() && t != by_key.end() &&
                    m->second.numel() == params_[pc.param].numel() &&
                    v->second.numel() == params_[pc.param].numel(),
                "ZeroAdamW: the state of '{}' is incomplete or not its size", name);
    mine.emplace_back("adamw.m." + piece,
                      m->second.reshape({-1}).narrow(0, pc.offset, pc.count).contiguous());
    mine.emplace_back("adamw.v." + piece,
                      v->second.reshape({-1}).narrow(0, pc.offset, pc.count).contiguous());
    mine.emplace_back("adamw.t." + piece, t->second);
  }
  opt_->load_state(mine);
}

NamedTensors ZeroAdamW::partition_state() const {
  NamedTensors out;
  for (size_t i = 0; i < pieces_.size(); ++i)
    out.emplace_back(piece_name(pieces_[i]), piece_vars_[i].data());
  for (auto& [key, t] : opt_->state())
    if (key != "adamw.step") out.emplace_back(key, t);  // the count, steps(), is the caller's
  return out;
}

void ZeroAdamW::load_checkpoint(const PieceReader& read, int64_t steps) {
  for (size_t k = 0; k < params_.size() && zero_.stage < 3; ++k) {
    Tensor w = read("", names_[k], {0, params_[k].numel()});
    FORGE_CHECK(w.numel() == params_[k].numel(), "ZeroAdamW: '{}' read {} elements, not {}",
                names_[k], w.numel(), params_[k].numel());
    params_[k].data().reshape({-1}).copy_(w);
  }
  // AdamW's state cleared, then filled one piece at a time: no second copy of the moments.
  opt_->load_state({{"adamw.step", from_vector<int64_t>({steps})}});
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const Piece& pc = pieces_[i];
    const std::string& name = names_[pc.param];
    const IndexRange r{pc.offset, pc.offset + pc.count};
    if (zero_.stage == 3) piece_vars_[i].data().copy_(read("", name, r));
    Tensor m = read("m", name, r);
    if (!m.defined()) continue;  // no moments yet
    Tensor v = read("v", name, r), t = read("t", name, {});
    FORGE_CHECK(v.defined() && t.defined() && m.numel() == pc.count && v.numel() == pc.count,
                "ZeroAdamW: the state of '{}' is incomplete or not its size", name);
    const std::string piece = piece_name(pc);
    opt_->merge_state({{"adamw.m." + piece, m}, {"adamw.v." + piece, v}, {"adamw.t." + piece, t}});
  }
}

}  // namespace forge
