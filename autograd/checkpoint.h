// Activation checkpointing: run a piece of the model without keeping its activations, and run it
// again in backward to get them (the memory of one input instead of every intermediate).
//
//   x = checkpoint([&](const Variable& in) { return block->forward(in); }, x, {&dropout_gen});
//
// The generators listed are set back, for the recomputation, to their states at the forward, so
// dropout draws the same masks; afterwards they continue from where the backward found them. The
// gradients are those of the plain run, bit for bit. The recomputation runs under the autocast
// setting of the forward (autograd/autocast.h), wherever backward is called. Parameters used inside
// `fn` get their gradients from the recomputation's own backward (their grad-ready hooks fire
// there); `fn` must not capture non-leaf variables of the enclosing graph, and modules must stay
// in the mode (train/eval) they had at the forward. Without grad mode, or when `x` needs no
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
