// MLP: Linear layers with an activation between them; the Fashion-MNIST classifier.
//
//   Generator gen(seed);
//   MLP net({784, 256, 256, 10}, gen);     // 784 -> 256 -> ReLU -> 256 -> ReLU -> 10
//   Variable logits = net.forward(x);      // x (N, 784) -> (N, 10)
//   // parameters: layers.0.weight, layers.0.bias, layers.2.weight, ...
#pragma once

#include "models/layers.h"

namespace forge {

class MLP : public Module {
 public:
  enum class Activation { relu, gelu, tanh };
  MLP(const std::vector<int64_t>& sizes, Generator& gen, Activation act = Activation::relu);
  Variable forward(const Variable& x) override { return layers_->forward(x); }
  const std::vector<int64_t>& sizes() const { return sizes_; }

 private:
  std::vector<int64_t> sizes_;
  std::shared_ptr<Sequential> layers_;
};

}  // namespace forge
