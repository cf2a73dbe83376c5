// Module: a named tree of parameters and submodules, like torch.nn.Module.
//
//   struct Net : Module {
//     std::shared_ptr<Linear> fc1, fc2;
//     Net(Generator& g) {
//       fc1 = register_module("fc1", std::make_shared<Linear>(784, 256, true, g));
//       fc2 = register_module("fc2", std::make_shared<Linear>(256, 10, true, g));
//     }
//     Variable forward(const Variable& x) override { return fc2->forward(relu(fc1->forward(x))); }
//   };
//   net.named_parameters()   // {"fc1.weight", ...}, {"fc1.bias", ...}, ... in registration order
//   net.state_dict()         // the same names -> tensors, for checkpoints
//
// Parameters are allocated under MemoryTag::parameters, so the allocator can tell them apart.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/variable.h"

namespace forge {

// While one lives on this thread, modules register their parameters without memory: each
// parameter's storage is freed as it is registered, so a model is built with one parameter in
// memory at a time. ZeRO-3 then fills only its partition of them (GPT::initial_values); nothing
// may read such a parameter before it has memory again.
class DeferParameterMemory {
 public:
  DeferParameterMemory();
  ~DeferParameterMemory();
  DeferParameterMemory(const DeferParameterMemory&) = delete;
  DeferParameterMemory& operator=(const DeferParameterMemory&) = delete;
  static bool active();

 private:
  bool was_;
};

class Module {
 public:
  virtual ~Module() = default;

  // The module's computation, for modules that map one variable to one variable (Sequential
  // composes those). Others define their own forward with other arguments.
  virtual Variable forward(const Variable& x);

  std::vector<std::pair<std::string, Variable>> named_parameters() const;
  std::vector<Variable> parameters() const;
  int64_t num_parameters() const;
  NamedTensors state_dict() const;
  // Copies tensors into the parameters of the same names. Every parameter must be present, with its
  // shape and dtype; unexpected names are an error too. Errors name the parameter.
  void load_state_dict(const NamedTensors& state);

  // Moves every parameter (and its gradient, if any) of this module and its submodules to
  // `device`, in place: the Variables stay the same objects, so optimizers built on them keep
  // working (SGD's and AdamW's state follows on their next step). Like torch's module.to(device).
  void to(Device device);
  Device device() const;  // where the parameters are (the first one's device; cpu without any)

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  void zero_grad();

  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const {
    return children_;
  }
  // Every submodule below this one, depth first in registration order, with its dotted name
  // ("transformer.h.0.attn.c_attn"); this module itself is not listed.
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules() const;

 protected:
  Variable& register_parameter(const std::string& name, Tensor value, bool requires_grad = true);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }
  // Puts `m` in place of the child called `name` (which must exist).
  void replace_module(const std::string& name, std::shared_ptr<Module> m);

 private:
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Variable>>& out) const;

  std::vector<std::pair<std::string, Variable>> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace forge
