#include "models/module.h"

#include <unordered_map>

namespace forge {

Variable Module::forward(const Variable&) {
  throw_error("forward(Variable) is not defined for this module; call its own forward");
}

namespace {
thread_local bool defer_parameter_memory = false;
}

DeferParameterMemory::DeferParameterMemory() : was_(defer_parameter_memory) {
  defer_parameter_memory = true;
}
DeferParameterMemory::~DeferParameterMemory() {
  defer_parameter_memory = was_;
}
bool DeferParameterMemory::active() {
  return defer_parameter_memory;
}

Variable& Module::register_parameter(const std::string& name, Tensor value, bool requires_grad) {
  for (auto& [n, p] : params_)
    FORGE_CHECK(n != name, "register_parameter: '{}' registered twice", name);
  if (defer_parameter_memory && value.defined()) value.storage()->free_memory();
  Variable v(std::move(value), requires_grad);
  v.set_name(name);
  params_.emplace_back(name, v);
  return params_.back().second;
}

void Module::collect(const std::string& prefix,
                     std::vector<std::pair<std::string, Variable>>& out) const {
  for (const auto& [n, p] : params_) out.emplace_back(prefix + n, p);
  for (const auto& [n, m] : children_) m->collect(prefix + n + ".", out);
}

std::vector<std::pair<std::string, Variable>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Variable>> out;
  collect("", out);
  return out;
}

std::vector<Variable> Module::parameters() const {
  std::vector<Variable> out;
  for (auto& [n, p] : named_parameters()) out.push_back(p);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const Variable& p : parameters()) n += p.numel();
  return n;
}

NamedTensors Module::state_dict() const {
  NamedTensors out;
  for (auto& [n, p] : named_parameters()) out.emplace_back(n, p.data());
  return out;
}

void Module::load_state_dict(const NamedTensors& state) {
  std::unordered_map<std::string, const Tensor*> by_name;
  for (const auto& [n, t] : state) by_name[n] = &t;
  auto params = named_parameters();
  for (auto& [n, p] : params) {
    auto it = by_name.find(n);
    FORGE_CHECK(it != by_name.end(), "load_state_dict: missing parameter '{}'", n);
    const Tensor& t = *it->second;
    FORGE_CHECK(t.shape() == p.shape() && t.dtype() == p.dtype(),
                "load_state_dict: parameter '{}' is {} {} in the model but {} {} in the state", n,
                p.shape(), p.dtype(), t.shape(), t.dtype());
  }
  for (const auto& [n, t] : state) {
    bool known = false;
    for (auto& [pn, p] : params) known |= pn == n;
    FORGE_CHECK(known, "load_state_dict: unexpected parameter '{}'", n);
  }
  for (auto& [n, p] : params) p.data().copy_(*by_name[n]);
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() const {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  for (const auto& [name, m] : children_) {
    out.emplace_back(name, m);
    for (auto& [sub, sm] : m->named_modules()) out.emplace_back(name + "." + sub, sm);
  }
  return out;
}

void Module::replace_module(const std::string& name, std::shared_ptr<Module> m) {
  for (auto& [n, child] : children_) {
    if (n == name) {
      child = std::move(m);
      return;
    }
  }
  throw_error(fmt::format("Module: no submodule called '{}' to replace", name));
}

void Module::to(Device device) {
  for (auto& [name, p] : named_parameters()) {
    if (p.data().device() == device) continue;
    p.data() = p.data().to(device);
    if (p.grad().defined()) p.set_grad(p.grad().to(device));
  }
}

Device Module::device() const {
  auto params = named_parameters();
  return params.empty() ? Device::cpu() : params.front().second.data().device();
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, m] : children_) m->train(on);
}

void Module::zero_grad() {
  for (Variable& p : parameters()) p.zero_grad();
}

}  // namespace forge
