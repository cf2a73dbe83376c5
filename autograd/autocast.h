// Mixed precision: a scope in which matrix products take bf16 or f16 inputs and accumulate in f32.
//
//   {
//     Autocast ac(DType::bf16);                  // f16 wants a GradScaler (optim/)
//     Variable loss = model.loss(model.forward(x), y);  // linear, attention, GELU: the policy
//     scaler.scale(loss).backward();             // gradients arrive in f32 (master weights)
//   }                                            // the outermost scope drops the cast cache
//
// The policy, per op (autograd/ops_*.cpp):
//  - linear: input and weight rounded to the autocast dtype, product accumulated in f32, output
//  f32;
//    both saved for backward in the 16-bit dtype. In backward the output gradient is rounded too
//    (where f16 gradients underflow without a loss scale), the products again accumulate in f32,
//    and the weight's gradient is f32.
//  - causal attention: qkv rounded (its products take 16-bit inputs), computed in f32; qkv saved
//    in the 16-bit dtype.
//  - GELU: computed in f32, its input saved in the 16-bit dtype.
//  - softmax, layer norm, reductions, the loss: f32, unchanged.
// Parameters stay f32. Their 16-bit copies are made once per scope (the cast cache, keyed by the
// parameter and the buffer, shape and strides of its data), not once per use. Writes in place are
// not seen: open the scope around forward and backward of one step, not across optimizer steps.
#pragma once

#include <optional>

#include "autograd/variable.h"

namespace forge {

class Autocast {
 public:
  explicit Autocast(DType dtype);  // bf16 or f16; scopes nest (the innermost dtype applies)
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  std::optional<DType> saved_;
};

// Turns autocast off for a scope (inside an autocast scope); restores it at exit.
class NoAutocast {
 public:
  NoAutocast();
  ~NoAutocast();
  NoAutocast(const NoAutocast&) = delete;
  NoAutocast& operator=(const NoAutocast&) = delete;

 private:
  std::optional<DType> saved_;
};

// The dtype of the innermost open scope on this thread, or nullopt.
std::optional<DType> autocast_dtype();

// The dtype an op under the policy rounds `t` to: the innermost scope's, when one is open and `t`
// is f32 (other dtypes are left as they are), else nullopt.
std::optional<DType> autocast_dtype_for(const Tensor& t);
// A leaf's data in `dtype` through the cast cache: the first use in a scope converts, later uses
// of the same leaf share that copy. Non-leaves are simply rounded.
Tensor autocast_weight(const Variable& v, DType dtype);
// Number of tensors in the cast cache (tests).
size_t autocast_cache_size();

}  // namespace forge
