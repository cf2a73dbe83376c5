// Optimizers: SGD and AdamW with PyTorch's update rules, over groups of parameters.
//
//   AdamW opt({{model.parameters(), /*weight_decay=*/0.01}}, {.lr = 1e-3});
//   loss.backward();
//   clip_grad_norm(model.parameters(), 1.0);
//   opt.step();          // parameters without a gradient are skipped
//   opt.zero_grad();
//
// State (momentum buffers, Adam moments, step counts) is allocated under MemoryTag::optimizer and
// can be read and restored by name for checkpoints (state() / load_state()): keyed by the
// parameters' names when the groups give them (adamw.m.transformer.wte.weight), so a checkpoint
// needs no translation between positions and names and survives a change of grouping or layout;
// by position otherwise (adamw.m.<group>.<index>).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "autograd/variable.h"

namespace forge {

struct ParamGroup {
  ParamGroup(std::vector<Variable> params_ = {}, double weight_decay_ = 0.0,
             std::vector<std::string> names_ = {})
      : params(std::move(params_)), weight_decay(weight_decay_), names(std::move(names_)) {}
  std::vector<Variable> params;
  double weight_decay = 0.0;
  std::vector<std::string> names;  // one per parameter (its state's key), or none
};

class Optimizer {
 public:
  explicit Optimizer(std::vector<ParamGroup> groups, double lr);
  virtual ~Optimizer() = default;
  virtual void step() = 0;
  virtual void zero_grad();  // drops every parameter's gradient
  double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }
  const std::vector<ParamGroup>& groups() const { return groups_; }

  // Optimizer state as named tensors ("<kind>.<key>", key_of each parameter), for checkpoints.
  virtual std::vector<std::pair<std::string, Tensor>> state() const = 0;
  // Restores what state() returned; names, shapes and dtypes must match (errors name the entry).
  virtual void load_state(const std::vector<std::pair<std::string, Tensor>>& state) = 0;

  // The key of parameter `index` of group `group` in state(): its name, or "<group>.<index>".
  std::string key_of(size_t group, size_t index) const;

 protected:
  std::vector<ParamGroup> groups_;
  double lr_;
};

struct SGDOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
};

// PyTorch's SGD: g += wd p; buf = momentum buf + (1 - dampening) g (buf = g on the first step);
// g = nesterov ? g + momentum buf : buf; p -= lr g.
class SGD : public Optimizer {
 public:
  SGD(std::vector<ParamGroup> groups, SGDOptions o);
  void step() override;
  std::vector<std::pair<std::string, Tensor>> state() const override;
  void load_state(const std::vector<std::pair<std::string, Tensor>>& state) override;

 private:
  SGDOptions o_;
  std::vector<std::vector<Tensor>> momentum_;  // per group, per param; undefined until first step
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

// PyTorch's AdamW (decoupled weight decay, bias correction):
//   p -= lr wd p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// t counts the steps that parameter took (as PyTorch's per-parameter state['step']): a parameter
// that first gets a gradient late starts at t = 1.
class AdamW : public Optimizer {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamWOptions o);
  void step() override;
  int64_t steps() const { return t_; }
  std::vector<std::pair<std::string, Tensor>> state() const override;
  void load_state(const std::vector<std::pair<std::string, Tensor>>& state) override;
  // Loads the entries `state` has and keeps every other parameter's state (and the step count,
  // when adamw.step is absent): a caller can restore one parameter at a time.
  void merge_state(const std::vector<std::pair<std::string, Tensor>>& state);

 private:
  void load(const std::vector<std::pair<std::string, Tensor>>& state, bool merge);
  AdamWOptions o_;
  int64_t t_ = 0;                            // step() calls
  std::vector<std::vector<int64_t>> steps_;  // per parameter: updates taken
  std::vector<std::vector<Tensor>> m_, v_;
};

// Scales all gradients so their global L2 norm is at most max_norm; returns the norm before
// clipping (PyTorch's clip_grad_norm_: coefficient max_norm / (norm + 1e-6), capped at 1).
double clip_grad_norm(const std::vector<Variable>& params, double max_norm);
// Its second half, for a norm computed elsewhere (a model split over ranks): scales every gradient
// by max_norm / (norm + 1e-6) when that is below 1.
void clip_grads_to_norm(const std::vector<Variable>& params, double norm, double max_norm);
// The global L2 norm of the gradients (accumulated in f64).
double grad_norm(const std::vector<Variable>& params);

}  // namespace forge
