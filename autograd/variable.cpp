#include "autograd/variable.h"

#include <atomic>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "tensor/ops.h"

namespace forge {

// ---------------------------------------------------------------------------------------------
// Grad mode

namespace {
thread_local bool g_grad_enabled = true;
std::atomic<uint64_t> g_sequence{0};
}  // namespace

bool grad_enabled() {
  return g_grad_enabled;
}
NoGradGuard::NoGradGuard() : saved_(g_grad_enabled) {
  g_grad_enabled = false;
}
NoGradGuard::~NoGradGuard() {
  g_grad_enabled = saved_;
}
EnableGradGuard::EnableGradGuard() : saved_(g_grad_enabled) {
  g_grad_enabled = true;
}
EnableGradGuard::~EnableGradGuard() {
  g_grad_enabled = saved_;
}

// ---------------------------------------------------------------------------------------------
// Variable

Variable::Variable(Tensor data, bool requires_grad) : impl_(std::make_shared<VariableImpl>()) {
  FORGE_CHECK(!requires_grad || is_floating(data.dtype()),
              "only floating tensors can require gradients, got {}", data.dtype());
  impl_->data = std::move(data);
  impl_->requires_grad = requires_grad;
}

namespace {
VariableImpl& checked(const std::shared_ptr<VariableImpl>& p) {
  FORGE_CHECK(p != nullptr, "use of an undefined Variable");
  return *p;
}
}  // namespace

const Tensor& Variable::data() const {
  return checked(impl_).data;
}
Tensor& Variable::data() {
  return checked(impl_).data;
}
const Tensor& Variable::grad() const {
  return checked(impl_).grad;
}
Tensor& Variable::grad() {
  return checked(impl_).grad;
}
void Variable::set_grad(Tensor g) {
  checked(impl_).grad = std::move(g);
}
bool Variable::requires_grad() const {
  return checked(impl_).requires_grad;
}
void Variable::set_requires_grad(bool r) {
  FORGE_CHECK(is_leaf() || r, "set_requires_grad(false) on a non-leaf variable; use detach()");
  FORGE_CHECK(!r || is_floating(data().dtype()),
              "only floating tensors can require gradients, got {}", data().dtype());
  impl_->requires_grad = r;
}
bool Variable::is_leaf() const {
  return checked(impl_).grad_fn == nullptr;
}
const std::shared_ptr<Node>& Variable::grad_fn() const {
  return checked(impl_).grad_fn;
}
const std::string& Variable::name() const {
  return checked(impl_).name;
}
void Variable::set_name(std::string n) {
  checked(impl_).name = std::move(n);
}
void Variable::retain_grad() {
  checked(impl_).retains_grad = true;
}
void Variable::zero_grad() {
  checked(impl_).grad = Tensor();
}
Variable Variable::detach() const {
  return Variable(data(), false);
}

void Variable::register_grad_ready_hook(Hook hook) {
  FORGE_CHECK(is_leaf(), "grad-ready hooks go on leaf variables (parameters)");
  checked(impl_).hooks.push_back(std::move(hook));
}

void Variable::backward(const Tensor& grad, bool retain_graph) const {
  run_backward({*this}, {grad}, retain_graph);
}

Variable make_variable(Tensor out, const char* name, const std::vector<const Variable*>& inputs,
                       BackwardFn backward) {
  auto impl = std::make_shared<VariableImpl>();
  impl->data = std::move(out);
  if (!g_grad_enabled) return Variable(impl);
  bool needs = false;
  for (const Variable* v : inputs) needs |= v->defined() && v->requires_grad();
  if (!needs) return Variable(impl);
  auto node = std::make_shared<Node>();
  node->name = name;
  node->backward = std::move(backward);
  node->sequence = g_sequence++;
  node->next.reserve(inputs.size());
  for (const Variable* v : inputs) {
    Edge e;
    if (v->defined() && v->requires_grad()) {
      if (v->is_leaf())
        e.leaf = v->shared_impl();
      else
        e.node = v->grad_fn();
    }
    node->next.push_back(std::move(e));
  }
  node->output = impl;
  impl->requires_grad = true;
  impl->grad_fn = std::move(node);
  return Variable(impl);
}

// ---------------------------------------------------------------------------------------------
// The backward engine

namespace {

// Whether nothing but `t` refers to its storage, which it covers contiguously: its buffer may be
// written in place (the same tensor may have been handed to several inputs, e.g. by add's
// backward, and then it may not).
bool held_alone(const Tensor& t) {
  return t.storage().use_count() == 1 && t.is_contiguous();
}

// Takes `g` as the buffer of a gradient when it holds its whole storage alone; copies otherwise.
Tensor own(Tensor g) {
  if (held_alone(g) && g.offset_bytes() == 0 && g.nbytes() == g.storage()->nbytes()) return g;
  return g.clone();
}

void accumulate_leaf(VariableImpl& leaf, Tensor g) {
  FORGE_ASSERT(g.shape() == leaf.data.shape());
  FORGE_CHECK(g.dtype() == leaf.data.dtype(), "gradient of '{}' is {}, its data is {}", leaf.name,
              g.dtype(), leaf.data.dtype());
  if (!leaf.grad.defined()) {
    MemoryTagScope tag(MemoryTag::gradients);
    leaf.grad = own(std::move(g));
    leaf.grad.storage()->set_tag(MemoryTag::gradients);  // an adopted backward temporary
  } else {
    add_(leaf.grad, g);
  }
}

// A node's gradient from one more consumer: summed into the one pending when that is a buffer
// nothing else refers to (the residual stream's, from two branches), else into a new one. The sum
// is the same either way, element by element.
void accumulate_pending(Tensor& pending, Tensor g) {
  if (!pending.defined()) {
    pending = std::move(g);
    return;
  }
  if (held_alone(pending) && pending.shape() == g.shape() && pending.dtype() == g.dtype())
    add_(pending, g);
  else
    pending = add(pending, g);
}

struct LaterFirst {
  bool operator()(const Node* a, const Node* b) const { return a->sequence < b->sequence; }
};

}  // namespace

void run_backward(const std::vector<Variable>& roots, const std::vector<Tensor>& grads,
                  bool retain_graph) {
  FORGE_CHECK(roots.size() == grads.size(), "backward: {} roots but {} gradients", roots.size(),
              grads.size());
  NoGradGuard no_grad;  // backward closures compute with tensors; record nothing

  // 1. Count the edges into every node and leaf reachable from the roots.
  //    `graph` holds every node until the end, since freeing a node's edges may free its inputs.
  std::unordered_map<Node*, int> deps;
  std::unordered_map<VariableImpl*, int> leaf_deps;
  std::vector<std::shared_ptr<Node>> graph;
  std::unordered_set<Node*> seen;
  for (const Variable& r : roots)
    if (r.grad_fn() && seen.insert(r.grad_fn().get()).second) graph.push_back(r.grad_fn());
  for (size_t i = 0; i < graph.size(); ++i) {
    for (const Edge& e : graph[i]->next) {
      if (e.node) {
        ++deps[e.node.get()];
        if (seen.insert(e.node.get()).second) graph.push_back(e.node);
      } else if (e.leaf) {
        ++leaf_deps[e.leaf.get()];
      }
    }
  }

  // 2. Seed the roots' gradients.
  std::unordered_map<Node*, Tensor> pending;
  std::priority_queue<Node*, std::vector<Node*>, LaterFirst> ready;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Variable& r = roots[i];
    FORGE_CHECK(r.requires_grad(), "backward: the variable does not require grad (no graph)");
    Tensor g = grads[i];
    if (!g.defined()) {
      FORGE_CHECK(r.numel() == 1, "backward: a non-scalar of shape {} needs an explicit gradient",
                  r.shape());
      g = ones(r.shape(), r.dtype(), r.data().device());
    }
    FORGE_CHECK(g.shape() == r.shape(), "backward: gradient {} does not match the variable {}",
                g.shape(), r.shape());
    if (r.is_leaf()) {
      accumulate_leaf(*r.impl(), g);
      for (auto& h : r.impl()->hooks) {
        Variable v = r;
        h(v);
      }
      continue;
    }
    Node* n = r.grad_fn().get();
    Tensor& p = pending[n];
    p = p.defined() ? add(p, g) : g;
  }
  for (auto& [n, g] : pending)
    if (deps[n] == 0) ready.push(n);

  // 3. Walk the nodes, latest first, each once all its consumers have passed it their gradients.
  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    Tensor g;
    if (auto it = pending.find(n); it != pending.end()) {
      g = std::move(it->second);
      pending.erase(it);
    }
    if (auto out = n->output.lock(); out && out->retains_grad && g.defined())
      out->grad = out->grad.defined() ? add(out->grad, g) : g.clone();
    std::vector<Tensor> grads_in;
    if (g.defined()) {
      FORGE_CHECK(n->backward != nullptr,
                  "backward through the graph a second time ({}): pass retain_graph=true to the "
                  "first backward",
                  n->name);
      grads_in = n->backward(g);
      FORGE_ASSERT(grads_in.size() <= n->next.size());
    }
    grads_in.resize(n->next.size());
    for (size_t i = 0; i < n->next.size(); ++i) {
      const Edge& e = n->next[i];
      Tensor& gi = grads_in[i];
      if (e.node) {
        Node* m = e.node.get();
        if (gi.defined()) accumulate_pending(pending[m], std::move(gi));
        if (--deps[m] == 0) ready.push(m);
      } else if (e.leaf) {
        VariableImpl& leaf = *e.leaf;
        if (gi.defined()) accumulate_leaf(leaf, std::move(gi));
        if (--leaf_deps[&leaf] == 0 && !leaf.hooks.empty()) {
          Variable v(e.leaf);
          for (auto& h : leaf.hooks) h(v);
        }
      }
    }
    if (!retain_graph) n->backward = nullptr;  // frees the tensors the closure saved
  }
  if (!retain_graph)
    for (auto& n : graph) n->next.clear();
}

}  // namespace forge
