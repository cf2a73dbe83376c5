#include "autograd/checkpoint.h"

#include <memory>

namespace forge {

Variable checkpoint(const std::function<Variable(const Variable&)>& fn, const Variable& x,
                    const std::vector<Generator*>& generators) {
  if (!grad_enabled() || !x.requires_grad()) return fn(x);
  std::vector<Generator::State> at_forward;
  for (const Generator* g : generators) at_forward.push_back(g->state());
  Tensor out;
  {
    NoGradGuard no_grad;
    out = fn(x.detach()).data();
  }
  Tensor input = x.data();  // the one activation kept
  return make_variable(
      std::move(out), "checkpoint", {&x},
      [fn, input, generators, at_forward](const Tensor& grad_out) -> std::vector<Tensor> {
        std::vector<Generator::State> now;
        for (size_t i = 0; i < generators.size(); ++i) {
          now.push_back(generators[i]->state());
          generators[i]->set_state(at_forward[i]);
        }
        Variable in(input, /*requires_grad=*/true);
        {
          EnableGradGuard grad;
          Variable y = fn(in);
          run_backward({y}, {grad_out});
        }
        for (size_t i = 0; i < generators.size(); ++i) generators[i]->set_state(now[i]);
        return {in.grad()};
      });
}

}  // namespace forge
