// The four communication mappings of Megatron-style tensor parallelism, as autograd ops over the
// tensor-parallel group (each a forward/backward pair; see Megatron-LM's mappings.py):
//
//   copy_to_tp_region(x, tp)      forward: identity             backward: all-reduce (sum)
//   reduce_from_tp_region(x, tp)  forward: all-reduce (sum)     backward: identity
//   gather_from_tp_region(x, tp)  forward: all-gather last dim  backward: keep this rank's slice
//   scatter_to_tp_region(x, tp)   forward: keep this rank's     backward: all-gather last dim
//                                          slice of the last dim
//
// A column-parallel linear is copy -> local matmul (-> gather); a row-parallel one is (scatter ->)
// local matmul -> reduce. With a one-rank group every mapping is the identity and records nothing.
// The last dim of a gather/scatter splits into equal slices, rank r holding slice r.
#pragma once

#include <memory>

#include "autograd/variable.h"
#include "parallel/communicator.h"

namespace forge {

Variable copy_to_tp_region(const Variable& x, const std::shared_ptr<Communicator>& tp);
Variable reduce_from_tp_region(const Variable& x, const std::shared_ptr<Communicator>& tp);
Variable gather_from_tp_region(const Variable& x, const std::shared_ptr<Communicator>& tp);
Variable scatter_to_tp_region(const Variable& x, const std::shared_ptr<Communicator>& tp);

}  // namespace forge
