#include "models/mlp.h"

namespace forge {

MLP::MLP(const std::vector<int64_t>& sizes, Generator& gen, Activation act) : sizes_(sizes) {
  FORGE_CHECK(sizes.size() >= 2, "MLP: needs at least an input and an output size, got {}", sizes);
  layers_ = register_module("layers", std::make_shared<Sequential>());
  int index = 0;
  for (size_t i = 0; i + 1 < sizes.size(); ++i) {
    layers_->add(std::to_string(index++),
                 std::make_shared<Linear>(sizes[i], sizes[i + 1], true, gen));
    if (i + 2 == sizes.size()) break;
    std::shared_ptr<Module> a;
    switch (act) {
      case Activation::relu:
        a = std::make_shared<ReLU>();
        break;
      case Activation::gelu:
        a = std::make_shared<GELU>();
        break;
      case Activation::tanh:
        a = std::make_shared<Tanh>();
        break;
    }
    layers_->add(std::to_string(index++), a);
  }
}

}  // namespace forge
