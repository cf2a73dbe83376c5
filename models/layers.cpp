#include "models/layers.h"

#include <cmath>

namespace forge {

namespace {
Tensor uniform_tensor(const Shape& shape, double bound, Generator& gen) {
  MemoryTagScope tag(MemoryTag::parameters);
  Tensor t = Tensor::empty(shape);
  uniform_(t, -bound, bound, gen);
  return t;
}
}  // namespace

Linear::Linear(int64_t in_features, int64_t out_features, bool has_bias, Generator& gen)
    : in_features_(in_features), out_features_(out_features) {
  FORGE_CHECK(in_features > 0 && out_features > 0, "Linear: sizes must be positive, got {} -> {}",
              in_features, out_features);
  double bound = 1.0 / std::sqrt(double(in_features));
  weight = register_parameter("weight", uniform_tensor({out_features, in_features}, bound, gen));
  if (has_bias) bias = register_parameter("bias", uniform_tensor({out_features}, bound, gen));
}

Linear::Linear(int64_t in_features, int64_t out_features, bool has_bias)
    : in_features_(in_features), out_features_(out_features) {
  FORGE_CHECK(in_features > 0 && out_features > 0, "Linear: sizes must be positive, got {} -> {}",
              in_features, out_features);
  MemoryTagScope tag(MemoryTag::parameters);
  weight = register_parameter("weight", zeros({out_features, in_features}));
  if (has_bias) bias = register_parameter("bias", zeros({out_features}));
}

Variable Linear::forward(const Variable& x) {
  if (quantized_) return quantized_->forward(x);
  if (!grad_enabled() && weight.defined() && packed_.packs(weight.data()))
    return Variable(linear(x.data(), packed_, bias.defined() ? bias.data() : Tensor()));
  return linear(x, weight, bias);
}

Variable Linear::product(const Variable& x) {
  FORGE_CHECK(!quantized_, "Linear: a quantized layer computes its bias in its own product");
  if (!grad_enabled() && weight.defined() && packed_.packs(weight.data()))
    return Variable(linear(x.data(), packed_, Tensor()));
  return linear(x, weight, Variable());
}

void Linear::set_prepacked(bool on) {
  packed_ = on ? pack_weight(weight.data()) : PackedWeight{};  // no panels unless f32 on the CPU
}

int set_prepacked(Module& model, bool on) {
  std::vector<Linear*> linears;
  if (auto* self = dynamic_cast<Linear*>(&model)) linears.push_back(self);
  for (auto& [name, m] : model.named_modules())
    if (auto* l = dynamic_cast<Linear*>(m.get())) linears.push_back(l);
  int n = 0;
  for (Linear* l : linears)
    if (!l->quantized()) {
      l->set_prepacked(on);
      n += l->prepacked() ? 1 : 0;
    }
  return n;
}

void Linear::set_quantized(std::shared_ptr<Module> m, bool release_weights) {
  FORGE_CHECK(m, "Linear::set_quantized: no module given");
  m->train(is_training());
  if (quantized_) {
    replace_module("quant", m);
  } else {
    register_module("quant", m);
  }
  quantized_ = std::move(m);
  if (release_weights) {
    weight.data() = Tensor::empty({0});
    if (bias.defined()) bias.data() = Tensor::empty({0});
  }
}

Embedding::Embedding(int64_t num, int64_t dim, Generator& gen) {
  MemoryTagScope tag(MemoryTag::parameters);
  weight = register_parameter("weight", randn({num, dim}, gen));
}

Embedding::Embedding(int64_t num, int64_t dim) {
  MemoryTagScope tag(MemoryTag::parameters);
  weight = register_parameter("weight", zeros({num, dim}));
}

Variable Embedding::forward(const Tensor& indices) {
  return embedding(weight, indices);
}

LayerNorm::LayerNorm(int64_t dim, bool has_bias, double eps_) : eps(eps_) {
  MemoryTagScope tag(MemoryTag::parameters);
  weight = register_parameter("weight", ones({dim}));
  if (has_bias) bias = register_parameter("bias", zeros({dim}));
}

Variable LayerNorm::forward(const Variable& x) {
  return layer_norm(x, weight, bias, eps);
}

Variable Sequential::forward(const Variable& x) {
  Variable h = x;
  for (auto& [name, m] : children()) h = m->forward(h);
  return h;
}

}  // namespace forge
