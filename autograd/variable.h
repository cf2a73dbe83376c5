// Reverse-mode autograd: variables, the graph they build, and backward.
//
//   Variable w(randn({3, 2}), /*requires_grad=*/true);
//   Variable x(randn({4, 3}));
//   Variable loss = sum(relu(matmul(x, w)));   // ops in autograd/functions.h record the graph
//   loss.backward();                           // w.grad() now holds d loss / d w
//
// Each differentiable op computes its output tensor and a closure that maps the output's gradient
// to its inputs' gradients; the closure lives in a Node that the output points to. backward() walks
// the nodes from the loss in reverse order of creation, sums the gradients that meet at a node, and
// adds the ones that reach a leaf into its .grad() (gradients accumulate across backward calls
// until zero_grad()). After backward the graph is freed, with the tensors its closures saved.
//
// A leaf's grad-ready hooks run the moment its gradient for this backward is final, while the rest
// of backward goes on: data-parallel training starts its all-reduce from there.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace forge {

struct Node;
struct VariableImpl;

class Variable {
 public:
  using Hook = std::function<void(Variable&)>;

  Variable() = default;
  explicit Variable(Tensor data, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& data() const;
  Tensor& data();  // mutable: optimizers update parameters in place
  const Tensor& grad() const;
  Tensor& grad();
  void set_grad(Tensor g);
  bool requires_grad() const;
  void set_requires_grad(bool r);
  bool is_leaf() const;
  const std::shared_ptr<Node>& grad_fn() const;
  const std::string& name() const;
  void set_name(std::string n);

  // Shortcuts to the data's metadata.
  const Shape& shape() const { return data().shape(); }
  int64_t size(int d) const { return data().size(d); }
  int dim() const { return data().dim(); }
  int64_t numel() const { return data().numel(); }
  DType dtype() const { return data().dtype(); }
  double item() const { return data().item(); }

  // Backpropagates from this variable. A scalar needs no `grad`; anything else needs one of its
  // shape. With retain_graph the graph stays for another backward.
  void backward(const Tensor& grad = {}, bool retain_graph = false) const;
  // Keep this non-leaf variable's gradient in grad() after backward.
  void retain_grad();
  void zero_grad();  // drops the gradient (set to undefined)
  // The same data, cut off from the graph.
  Variable detach() const;
  // Runs `hook` each time this leaf's gradient is final within a backward.
  void register_grad_ready_hook(Hook hook);

  VariableImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<VariableImpl>& shared_impl() const { return impl_; }
  explicit Variable(std::shared_ptr<VariableImpl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<VariableImpl> impl_;
};

struct VariableImpl {
  Tensor data;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;  // null for leaves
  bool requires_grad = false;
  bool retains_grad = false;
  std::string name;
  std::vector<Variable::Hook> hooks;
};

// Where a gradient goes: the node that made a non-leaf input, or the leaf itself.
struct Edge {
  std::shared_ptr<Node> node;
  std::shared_ptr<VariableImpl> leaf;
  bool valid() const { return node || leaf; }
};

// Maps d loss/d output to d loss/d input, one tensor per input (undefined where not needed).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out)>;

struct Node {
  const char* name = "";
  std::vector<Edge> next;  // one per input of the op
  BackwardFn backward;
  uint64_t sequence = 0;               // creation order: backward visits later nodes first
  std::weak_ptr<VariableImpl> output;  // for retain_grad
};

// Records the op that produced `out` from `inputs`: returns the output variable, with a node that
// runs `backward` when any input requires a gradient and grad mode is on.
Variable make_variable(Tensor out, const char* name, const std::vector<const Variable*>& inputs,
                       BackwardFn backward);

// ---- Grad mode ----
bool grad_enabled();
// Inside this scope ops record nothing (evaluation, optimizer steps).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool saved_;
};

// Turns grad mode on for a scope (inside a backward, which runs with it off: recomputation).
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool saved_;
};

// Backward from several roots at once (e.g. the outputs of a pipeline stage and their gradients).
void run_backward(const std::vector<Variable>& roots, const std::vector<Tensor>& grads,
                  bool retain_graph = false);

}  // namespace forge
