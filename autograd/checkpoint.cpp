#include "autograd/checkpoint.h"

#include <memory>
#include <optional>

#include "autograd/autocast.h"

namespace forge {

namespace {

// Sets generators to given states for a scope, and back to where they were at its exit (also when
// the recomputation throws).
class ReplayGenerators {
 public:
  ReplayGenerators(const std::vector<Generator*>& gens, const std::vector<Generator::State>& states)
      : gens_(gens) {
    for (size_t i = 0; i < gens_.size(); ++i) {
      saved_.push_back(gens_[i]->state());
      gens_[i]->set_state(states[i]);
    }
  }
  ~ReplayGenerators() {
    for (size_t i = 0; i < gens_.size(); ++i) gens_[i]->set_state(saved_[i]);
  }
  ReplayGenerators(const ReplayGenerators&) = delete;
  ReplayGenerators& operator=(const ReplayGenerators&) = delete;

 private:
  const std::vector<Generator*>& gens_;
  std::vector<Generator::State> saved_;
};

}  // namespace

Variable checkpoint(const std::function<Variable(const Variable&)>& fn, const Variable& x,
                    const std::vector<Generator*>& generators) {
  if (!grad_enabled() || !x.requires_grad()) return fn(x);
  std::vector<Generator::State> at_forward;
  for (const Generator* g : generators) at_forward.push_back(g->state());
  // The recomputation runs under the forward's autocast setting, whatever is open at backward.
  const std::optional<DType> autocast = autocast_dtype();
  Tensor out;
  {
    NoGradGuard no_grad;
    out = fn(x.detach()).data();
  }
  Tensor input = x.data();  // the one activation kept
  return make_variable(
      std::move(out), "checkpoint", {&x},
      [fn, input, generators, at_forward, autocast](const Tensor& grad_out) -> std::vector<Tensor> {
        ReplayGenerators replay(generators, at_forward);
        std::optional<Autocast> on;
        std::optional<NoAutocast> off;
        if (autocast)
          on.emplace(*autocast);
        else
          off.emplace();
        Variable in(input, /*requires_grad=*/true);
        {
          EnableGradGuard grad;
          Variable y = fn(in);
          run_backward({y}, {grad_out});
        }
        return {in.grad()};
      });
}

}  // namespace forge
