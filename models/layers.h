// The building blocks: Linear, Embedding, LayerNorm, Dropout, activations, Sequential.
//
//   Generator gen(0);
//   auto net = std::make_shared<Sequential>();
//   net->add("0", std::make_shared<Linear>(784, 256, true, gen));
//   net->add("1", std::make_shared<ReLU>());
//   net->add("2", std::make_shared<Linear>(256, 10, true, gen));
//   Variable logits = net->forward(x);   // x: (N, 784)
//
// Initialisation follows PyTorch's defaults so the same seed-free recipe trains the same way:
// Linear weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)); Embedding ~ N(0, 1); LayerNorm 1 and 0.
#pragma once

#include "autograd/functions.h"
#include "models/module.h"

namespace forge {

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen);
  // Zero weights, for a caller that initialises them itself (the GPT).
  Linear(int64_t in_features, int64_t out_features, bool bias);
  Variable forward(const Variable& x) override;  // (..., in) -> (..., out)
  Variable weight, bias;                         // (out, in), (out) or undefined
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

  // Quantization (quant/quantize.h) changes a layer's arithmetic, not the layer: it installs a
  // module that forward() runs instead of the f32 product (fake quantization while training with
  // QAT, an int8 or int4 kernel once converted), registered as the child "quant" in this layer's
  // training mode. The layer keeps its name and place, so every model, GPT's typed members
  // included, runs quantized unchanged. With `release_weights` (integer kernels, which hold their
  // own copy) the f32 weight and bias are dropped: they become empty tensors, so the memory goes
  // and nothing can save or train stale f32 values by mistake.
  void set_quantized(std::shared_ptr<Module> m, bool release_weights = false);
  const std::shared_ptr<Module>& quantized() const { return quantized_; }

  // Inference on the CPU: the weight's matrix-product panels packed once (tensor/ops.h
  // PackedWeight) and used while gradients are off; the same results bit for bit, without
  // repacking the weight at every call. `false` drops them. The panels are a copy of the weight
  // as it is now: a forward after the weight tensor was replaced falls back to the plain product,
  // and one after an in-place change would use stale panels, so pack again after changing it.
  void set_prepacked(bool on);
  bool prepacked() const { return packed_.panels != nullptr; }

 protected:
  // x W^T without the bias, through the prepacked panels when they apply (tensor parallelism's
  // row-parallel layer adds its bias after summing over the group).
  Variable product(const Variable& x);

 private:
  int64_t in_features_, out_features_;
  std::shared_ptr<Module> quantized_;
  PackedWeight packed_;
};

// set_prepacked on every Linear layer of `model` that runs the f32 product (not quantized);
// returns how many.
int set_prepacked(Module& model, bool on);

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, Generator& gen);
  // Zero weights (rows [0, num) of a table of `num` rows), for a caller that initialises them.
  Embedding(int64_t num, int64_t dim);
  virtual Variable forward(const Tensor& indices);  // (...) integers -> (..., dim)
  Variable weight;                                  // (num, dim)
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, bool bias = true, double eps = 1e-5);
  Variable forward(const Variable& x) override;
  Variable weight, bias;
  double eps;
};

class Dropout : public Module {
 public:
  // Masks are drawn from `gen`, which the caller owns (its state goes in checkpoints).
  Dropout(double p, Generator& gen) : p_(p), gen_(&gen) {}
  Variable forward(const Variable& x) override { return dropout(x, p_, is_training(), *gen_); }

 private:
  double p_;
  Generator* gen_;
};

class ReLU : public Module {
 public:
  Variable forward(const Variable& x) override { return relu(x); }
};

class GELU : public Module {
 public:
  explicit GELU(GeluApprox approx = GeluApprox::tanh) : approx_(approx) {}
  Variable forward(const Variable& x) override { return gelu(x, approx_); }

 private:
  GeluApprox approx_;
};

class Tanh : public Module {
 public:
  Variable forward(const Variable& x) override { return tanh(x); }
};

// A named group of submodules with no computation of its own (torch.nn.ModuleDict): it gives
// their parameters a common prefix, e.g. transformer.h.0.ln_1.weight.
class ModuleDict : public Module {
 public:
  template <class M>
  std::shared_ptr<M> add(const std::string& name, std::shared_ptr<M> m) {
    return register_module(name, std::move(m));
  }
};

class Sequential : public Module {
 public:
  void add(const std::string& name, std::shared_ptr<Module> m) {
    register_module(name, std::move(m));
  }
  Variable forward(const Variable& x) override;
};

}  // namespace forge
