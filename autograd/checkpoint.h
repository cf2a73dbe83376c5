// Activation checkpointing: run a piece of the model without keeping its activations, and run it
// again in backward to get them (the memory of one input instead of every intermediate).
//
//   x = checkpoint([&](const Variable& in) { return block->forward(in); }, x, {&dropout_gen});
//
// The generators listed are set back, for the recomputation, to their states at the forward, so
// dropout draws the same masks; afterwards they continue from where the backward found them. The
// gradients are those of the plain run, bit for bit. Parameters used inside `fn` get their
// gradients from the recomputation's own backward. Without grad mode, or when `x` needs no
// gradient, it is simply fn(x).
#pragma once

#include <functional>
#include <vector>

#include "autograd/variable.h"
#include "tensor/random.h"

namespace forge {

Variable checkpoint(const std::function<Variable(const Variable&)>& fn, const Variable& x,
                    const std::vector<Generator*>& generators = {});

}  // namespace forge
