#include "optim/optimizer.h"

#include <cmath>
#include <set>
#include <unordered_map>

#include "optim/adamw_cuda.h"
#include "tensor/cuda/cuda.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace forge {

Optimizer::Optimizer(std::vector<ParamGroup> groups, double lr)
    : groups_(std::move(groups)), lr_(lr) {
  std::set<std::string> keys;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& g = groups_[gi];
    FORGE_CHECK(g.names.empty() || g.names.size() == g.params.size(),
                "optimizer: group {} names {} parameters but holds {}", gi, g.names.size(),
                g.params.size());
    for (size_t i = 0; i < g.params.size(); ++i) {
      FORGE_CHECK(g.params[i].defined() && g.params[i].requires_grad() && g.params[i].is_leaf(),
                  "optimizer: parameter '{}' must be a leaf that requires grad",
                  g.params[i].name());
      FORGE_CHECK(keys.insert(key_of(gi, i)).second, "optimizer: two parameters are called '{}'",
                  key_of(gi, i));
    }
  }
}

std::string Optimizer::key_of(size_t group, size_t index) const {
  const ParamGroup& g = groups_[group];
  return g.names.empty() ? fmt::format("{}.{}", group, index) : g.names[index];
}

void Optimizer::zero_grad() {
  for (ParamGroup& g : groups_)
    for (Variable& p : g.params) p.zero_grad();
}

namespace {

Tensor zeros_like_state(const Tensor& p) {
  MemoryTagScope tag(MemoryTag::optimizer);
  return zeros(p.shape(), p.dtype(), p.device());
}

void check_param(const Variable& p, const char* opt) {
  FORGE_CHECK(p.data().is_contiguous() && p.grad().is_contiguous(),
              "{}: parameter '{}' and its gradient must be contiguous", opt, p.name());
  FORGE_CHECK(p.data().dtype() == DType::f32 || p.data().dtype() == DType::f64,
              "{}: parameter '{}' is {}; optimizers update f32 or f64 (master) weights", opt,
              p.name(), p.data().dtype());
  FORGE_CHECK(p.grad().device() == p.data().device(),
              "{}: parameter '{}' is on {}, its gradient on {}", opt, p.name(),
              p.data().device().str(), p.grad().device().str());
}

using StateList = std::vector<std::pair<std::string, Tensor>>;

std::unordered_map<std::string, Tensor> by_name(const StateList& s) {
  std::unordered_map<std::string, Tensor> m;
  for (const auto& [n, t] : s) m[n] = t;
  return m;
}

// Restores one state tensor into `slot` (allocating it), checking it against the parameter.
void restore(Tensor& slot, const std::unordered_map<std::string, Tensor>& state,
             const std::string& name, const Variable& p) {
  auto it = state.find(name);
  if (it == state.end()) {
    slot = Tensor();
    return;
  }
  FORGE_CHECK(it->second.shape() == p.shape() && it->second.dtype() == p.dtype(),
              "optimizer state '{}' is {} {}, parameter '{}' is {} {}", name, it->second.shape(),
              it->second.dtype(), p.name(), p.shape(), p.dtype());
  slot = zeros_like_state(p.data());
  slot.copy_(it->second);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SGD

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions o) : Optimizer(std::move(groups), o.lr), o_(o) {
  FORGE_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0),
              "SGD: nesterov needs momentum > 0 and dampening 0");
  for (const ParamGroup& g : groups_) momentum_.emplace_back(g.params.size());
}

void SGD::step() {
  NoGradGuard ng;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    ParamGroup& group = groups_[gi];
    for (size_t i = 0; i < group.params.size(); ++i) {
      Variable& p = group.params[i];
      if (!p.grad().defined()) continue;
      check_param(p, "SGD");
      Tensor g = p.grad();
      if (group.weight_decay != 0) g = add(g, mul(p.data(), group.weight_decay));
      if (o_.momentum != 0) {
        Tensor& buf = momentum_[gi][i];
        if (!buf.defined()) {
          buf = zeros_like_state(p.data());
          buf.copy_(g);
        } else {
          if (buf.device() != g.device()) buf = buf.to(g.device());  // the parameter moved
          mul_(buf, o_.momentum);
          add_(buf, g, 1.0 - o_.dampening);
        }
        g = o_.nesterov ? add(g, mul(buf, o_.momentum)) : buf;
      }
      add_(p.data(), g, -lr_);
    }
  }
}

StateList SGD::state() const {
  StateList s;
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t i = 0; i < groups_[gi].params.size(); ++i)
      if (momentum_[gi][i].defined())
        s.emplace_back("sgd.momentum." + key_of(gi, i), momentum_[gi][i]);
  return s;
}

void SGD::load_state(const StateList& state) {
  auto m = by_name(state);
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t i = 0; i < groups_[gi].params.size(); ++i)
      restore(momentum_[gi][i], m, "sgd.momentum." + key_of(gi, i), groups_[gi].params[i]);
}

// ---------------------------------------------------------------------------------------------
// AdamW

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions o)
    : Optimizer(std::move(groups), o.lr), o_(o) {
  for (const ParamGroup& g : groups_) {
    m_.emplace_back(g.params.size());
    v_.emplace_back(g.params.size());
    steps_.emplace_back(g.params.size(), 0);
  }
}

namespace {
// One AdamW update of n elements, in the order of PyTorch's single-tensor AdamW. Plain restrict
// pointers and by-value coefficients so the loop vectorises.
template <class T>
void adamw_update(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
                  int64_t n, T lr, T wd, T b1, T b2, T eps, T step_size, T bc2_sqrt) {
  const T decay = T(1) - lr * wd, one_b1 = T(1) - b1, one_b2 = T(1) - b2;
  for (int64_t i = 0; i < n; ++i) {
    T gi = g[i];
    T mi = m[i] * b1 + gi * one_b1;
    T vi = v[i] * b2 + gi * gi * one_b2;
    T denom = std::sqrt(vi) / bc2_sqrt + eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * (mi / denom);
  }
}

template <class T>
void adamw_kernel(T* p, const T* g, T* m, T* v, int64_t n, T lr, T wd, T b1, T b2, T eps,
                  T step_size, T bc2_sqrt) {
  parallel_for(0, n, 1 << 14, [=](int64_t lo, int64_t hi) {
    adamw_update(p + lo, g + lo, m + lo, v + lo, hi - lo, lr, wd, b1, b2, eps, step_size, bc2_sqrt);
  });
}
}  // namespace

void AdamW::step() {
  NoGradGuard ng;
  ++t_;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    ParamGroup& group = groups_[gi];
    for (size_t i = 0; i < group.params.size(); ++i) {
      Variable& p = group.params[i];
      if (!p.grad().defined()) continue;
      check_param(p, "AdamW");
      FORGE_CHECK(p.grad().dtype() == p.dtype(), "AdamW: gradient of '{}' is {}, parameter {}",
                  p.name(), p.grad().dtype(), p.dtype());
      Tensor& m = m_[gi][i];
      Tensor& v = v_[gi][i];
      if (!m.defined()) {
        m = zeros_like_state(p.data());
        v = zeros_like_state(p.data());
      } else if (m.device() != p.data().device()) {
        // The parameter moved (Module::to) or the state was loaded from a file: it follows.
        MemoryTagScope tag(MemoryTag::optimizer);
        m = m.to(p.data().device());
        v = v.to(p.data().device());
      }
      double t = double(++steps_[gi][i]);
      double bc1 = 1.0 - std::pow(o_.beta1, t), bc2 = 1.0 - std::pow(o_.beta2, t);
      double step_size = lr_ / bc1, bc2_sqrt = std::sqrt(bc2);
      if (p.data().device().is_cuda()) {  // the same update, one fused kernel on the device
        const int device = p.data().device().index;
        cuda::check_status(cuda::kernels::adamw_update(
                               int(p.dtype()), p.numel(), p.data().raw_data(), p.grad().raw_data(),
                               m.raw_data(), v.raw_data(), lr_, group.weight_decay, o_.beta1,
                               o_.beta2, o_.eps, step_size, bc2_sqrt, cuda::stream_handle(device)),
                           "AdamW");
        continue;
      }
      dispatch_float(p.dtype(), "AdamW", [&]<class T>() {
        if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
          adamw_kernel<T>(p.data().data<T>(), p.grad().data<T>(), m.data<T>(), v.data<T>(),
                          p.numel(), T(lr_), T(group.weight_decay), T(o_.beta1), T(o_.beta2),
                          T(o_.eps), T(step_size), T(bc2_sqrt));
        }
      });
    }
  }
}

StateList AdamW::state() const {
  StateList s;
  s.emplace_back("adamw.step", from_vector<int64_t>({t_}));
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t i = 0; i < groups_[gi].params.size(); ++i)
      if (m_[gi][i].defined()) {
        s.emplace_back("adamw.m." + key_of(gi, i), m_[gi][i]);
        s.emplace_back("adamw.v." + key_of(gi, i), v_[gi][i]);
        s.emplace_back("adamw.t." + key_of(gi, i), from_vector<int64_t>({steps_[gi][i]}));
      }
  return s;
}

void AdamW::load_state(const StateList& state) {
  load(state, /*merge=*/false);
}

void AdamW::merge_state(const StateList& state) {
  load(state, /*merge=*/true);
}

void AdamW::load(const StateList& state, bool merge) {
  auto m = by_name(state);
  auto it = m.find("adamw.step");
  FORGE_CHECK(merge || it != m.end(), "AdamW state: missing 'adamw.step'");
  if (it != m.end()) {
    FORGE_CHECK(it->second.numel() == 1, "AdamW state: 'adamw.step' is not one count");
    t_ = int64_t(it->second.item());
  }
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
      const Variable& p = groups_[gi].params[i];
      if (merge && !m.count("adamw.m." + key_of(gi, i))) continue;
      restore(m_[gi][i], m, "adamw.m." + key_of(gi, i), p);
      restore(v_[gi][i], m, "adamw.v." + key_of(gi, i), p);
      steps_[gi][i] = 0;
      if (m_[gi][i].defined()) {
        auto ts = m.find("adamw.t." + key_of(gi, i));
        FORGE_CHECK(ts != m.end() && ts->second.numel() == 1,
                    "AdamW state: moments of parameter '{}' without its step count 'adamw.t.{}'",
                    p.name(), key_of(gi, i));
        steps_[gi][i] = int64_t(ts->second.item());
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Gradient clipping

double grad_norm(const std::vector<Variable>& params) {
  double total = 0;
  for (const Variable& p : params)
    if (p.grad().defined()) {
      Tensor g = p.grad();
      total += sum_of_squares(g).item();
    }
  return std::sqrt(total);
}

double clip_grad_norm(const std::vector<Variable>& params, double max_norm) {
  double norm = grad_norm(params);
  clip_grads_to_norm(params, norm, max_norm);
  return norm;
}

void clip_grads_to_norm(const std::vector<Variable>& params, double norm, double max_norm) {
  double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0)
    for (const Variable& p : params)
      if (p.grad().defined()) {
        Tensor g = p.grad();
        mul_(g, coef);
      }
}

}  // namespace forge
