#include "parallel/zero.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "tensor/ops.h"

namespace forge {

ZeroAdamW::ZeroAdamW(std::vector<ParamGroup> groups, AdamWOptions options,
                     std::shared_ptr<Communicator> dp, int64_t bucket_bytes)
    : Optimizer(groups, options.lr), dp_(std::move(dp)) {
  FORGE_CHECK(dp_, "ZeroAdamW: no data-parallel group");
  const int N = dp_->size(), me = dp_->rank();
  for (const ParamGroup& g : groups) {
    FORGE_CHECK(g.names.size() == g.params.size(),
                "ZeroAdamW: every parameter needs a name (ParamGroup::names)");
    for (size_t i = 0; i < g.params.size(); ++i) {
      const Variable& p = g.params[i];
      FORGE_CHECK(p.dtype() == DType::f32 && p.data().device().is_cpu() && p.data().is_contiguous(),
                  "ZeroAdamW: parameter '{}' is {} on {}; ZeRO needs contiguous f32 on the CPU",
                  g.names[i], p.dtype(), p.data().device().str());
      starts_.push_back(numel_);
      numel_ += p.numel();
      params_.push_back(p);
      names_.push_back(g.names[i]);
    }
  }
  // Every rank starts from rank 0's weights, as DDP does.
  for (Variable& p : params_) dp_->broadcast(p.data(), 0);
  part_ = (numel_ + N - 1) / N;
  begin_ = std::min(numel_, int64_t(me) * part_);
  end_ = std::min(numel_, begin_ + part_);
  chunk_ = std::max<int64_t>(1, std::min(part_, bucket_bytes / int64_t(sizeof(float)) / N));
  // The pieces of parameters inside [begin_, end_), in their groups, as AdamW's parameters.
  std::vector<ParamGroup> pieces;
  size_t k = 0;
  for (const ParamGroup& g : groups) {
    ParamGroup pg({}, g.weight_decay, {});
    for (size_t i = 0; i < g.params.size(); ++i, ++k) {
      const int64_t lo = std::max(begin_, starts_[k]);
      const int64_t hi = std::min(end_, starts_[k] + params_[k].numel());
      if (lo >= hi) continue;
      const int64_t off = lo - starts_[k];
      Variable piece(params_[k].data().reshape({-1}).narrow(0, off, hi - lo), true);
      piece_vars_.push_back(piece);  // its gradient: set by reduce_scatter_gradients
      pg.params.push_back(piece);
      pg.names.push_back(fmt::format("{}[{}:{}]", names_[k], off, off + (hi - lo)));
      pieces_.push_back({k, off, hi - lo});
    }
    pieces.push_back(std::move(pg));
  }
  opt_ = std::make_unique<AdamW>(std::move(pieces), options);
}

template <class F>
void ZeroAdamW::for_range(int64_t flat, int64_t count, F&& fn) const {
  // The parameter holding `flat`, then each parameter's segment of the range in turn.
  size_t i = size_t(std::upper_bound(starts_.begin(), starts_.end(), flat) - starts_.begin());
  i = i == 0 ? 0 : i - 1;
  int64_t done = 0;
  while (done < count && flat + done < numel_) {
    const int64_t at = flat + done, off = at - starts_[i];
    const int64_t n = std::min(count - done, params_[i].numel() - off);
    if (n > 0) fn(i, off, done, n);
    done += std::max<int64_t>(n, 0);
    ++i;
  }
}

void ZeroAdamW::gather_grads(int64_t flat, int64_t count, float* dst) const {
  std::memset(dst, 0, size_t(count) * sizeof(float));
  for_range(flat, count, [&](size_t i, int64_t off, int64_t pos, int64_t n) {
    const Tensor& g = params_[i].grad();
    if (!g.defined()) return;
    const Tensor gc = g.contiguous();
    std::memcpy(dst + pos, gc.data<float>() + off, size_t(n) * sizeof(float));
  });
}

void ZeroAdamW::read_params(int64_t flat, int64_t count, float* dst) const {
  std::memset(dst, 0, size_t(count) * sizeof(float));
  for_range(flat, count, [&](size_t i, int64_t off, int64_t pos, int64_t n) {
    std::memcpy(dst + pos, params_[i].data().data<float>() + off, size_t(n) * sizeof(float));
  });
}

void ZeroAdamW::write_params(int64_t flat, int64_t count, const float* src) {
  for_range(flat, count, [&](size_t i, int64_t off, int64_t pos, int64_t n) {
    std::memcpy(params_[i].data().data<float>() + off, src + pos, size_t(n) * sizeof(float));
  });
}

void ZeroAdamW::reduce_scatter_gradients() {
  const int N = dp_->size(), me = dp_->rank();
  for (Variable& p : params_)
    if (!p.grad().defined()) {
      MemoryTagScope tag(MemoryTag::gradients);
      p.set_grad(zeros(p.shape()));
    }
  {
    // Chunk k: every rank's k-th slice of its partition, in rank order, reduce-scattered; this
    // rank's average goes back into its own slice of the gradients (which no later chunk reads).
    MemoryTagScope tag(MemoryTag::other);  // buckets
    for (int64_t k = 0; k < part_; k += chunk_) {
      const int64_t c = std::min(chunk_, part_ - k);
      Tensor bucket = Tensor::empty({int64_t(N) * c}), mine = Tensor::empty({c});
      for (int r = 0; r < N; ++r)
        gather_grads(int64_t(r) * part_ + k, c, bucket.data<float>() + r * c);
      dp_->reduce_scatter_async(mine, bucket, ReduceOp::avg).wait();
      for_range(int64_t(me) * part_ + k, c, [&](size_t i, int64_t off, int64_t pos, int64_t n) {
        std::memcpy(params_[i].grad().data<float>() + off, mine.data<float>() + pos,
                    size_t(n) * sizeof(float));
      });
    }
  }
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

void ZeroAdamW::step() {
  opt_->set_lr(lr());
  opt_->step();
  const int N = dp_->size(), me = dp_->rank();
  MemoryTagScope tag(MemoryTag::other);  // buckets
  for (int64_t k = 0; k < part_; k += chunk_) {
    const int64_t c = std::min(chunk_, part_ - k);
    Tensor mine = Tensor::empty({c}), all = Tensor::empty({int64_t(N) * c});
    read_params(int64_t(me) * part_ + k, c, mine.data<float>());
    dp_->all_gather_async(all, mine).wait();
    for (int r = 0; r < N; ++r)
      if (r != me) write_params(int64_t(r) * part_ + k, c, all.data<float>() + r * c);
  }
}

NamedTensors ZeroAdamW::full_state() const {
  // Every rank writes its pieces' moments into zeroed flat buffers; a sum over the group joins
  // them (each element is one rank's).
  const NamedTensors mine = opt_->state();
  std::map<std::string, Tensor> by_key(mine.begin(), mine.end());
  Tensor flat = zeros({2, std::max<int64_t>(numel_, 1)});
  float* m = flat.data<float>();
  float* v = m + flat.size(1);
  int64_t steps = 0;
  for (const Piece& pc : pieces_) {
    const std::string name =
        fmt::format("{}[{}:{}]", names_[pc.param], pc.offset, pc.offset + pc.count);
    auto mi = by_key.find("adamw.m." + name), vi = by_key.find("adamw.v." + name);
    if (mi == by_key.end()) continue;  // not stepped yet
    std::memcpy(m + starts_[pc.param] + pc.offset, mi->second.data<float>(),
                size_t(pc.count) * sizeof(float));
    std::memcpy(v + starts_[pc.param] + pc.offset, vi->second.data<float>(),
                size_t(pc.count) * sizeof(float));
  }
  dp_->all_reduce(flat, ReduceOp::sum);
  // The step count: every piece steps at every step(), so each parameter's count is the
  // optimizer's (a rank without pieces learns it from the others).
  Tensor t = full({1}, double(opt_->steps()), DType::f64);
  dp_->all_reduce(t, ReduceOp::max);
  steps = int64_t(t.item());
  NamedTensors out{{"adamw.step", from_vector<int64_t>({steps})}};
  if (steps == 0) return out;
  for (size_t i = 0; i < params_.size(); ++i) {
    MemoryTagScope tag(MemoryTag::optimizer);
    const int64_t n = params_[i].numel();
    out.emplace_back(
        "adamw.m." + names_[i],
        flat.select(0, 0).narrow(0, starts_[i], n).reshape(params_[i].shape()).clone());
    out.emplace_back(
        "adamw.v." + names_[i],
        flat.select(0, 1).narrow(0, starts_[i], n).reshape(params_[i].shape()).clone());
    out.emplace_back("adamw.t." + names_[i], from_vector<int64_t>({steps}));
  }
  return out;
}

void ZeroAdamW::load_state(const NamedTensors& state) {
  const bool pieces = std::any_of(state.begin(), state.end(), [](const auto& e) {
    return e.first.find('[') != std::string::npos;
  });
  if (pieces) {
    opt_->load_state(state);
    return;
  }
  // Whole tensors by parameter name: this partition's pieces of them.
  std::map<std::string, Tensor> by_key(state.begin(), state.end());
  NamedTensors mine;
  if (auto it = by_key.find("adamw.step"); it != by_key.end()) mine.emplace_back(*it);
  for (const Piece& pc : pieces_) {
    const std::string& name = names_[pc.param];
    const std::string piece = fmt::format("{}[{}:{}]", name, pc.offset, pc.offset + pc.count);
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

}  // namespace forge
