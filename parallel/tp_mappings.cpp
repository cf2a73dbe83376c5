#include "parallel/tp_mappings.h"

#include "tensor/ops.h"

namespace forge {

namespace {

// The sum over the group of each rank's `t` (a fresh tensor: `t` may be shared).
Tensor summed(const Tensor& t, Communicator& tp) {
  Tensor out = t.contiguous().clone();
  tp.all_reduce(out, ReduceOp::sum);
  return out;
}

// Every rank's `t` side by side along the last dim: (..., c) -> (..., R * c).
Tensor gathered_last_dim(const Tensor& t, Communicator& tp) {
  const int R = tp.size();
  const Shape s = t.shape();
  FORGE_CHECK(s.size() >= 1, "gather_from_tp_region: a tensor of at least one dim, got {}", s);
  Tensor flat = Tensor::empty({R * t.numel()}, t.dtype(), t.device());
  tp.all_gather(flat, t.contiguous());
  // flat holds R blocks of shape s: (R, ..., c) -> (..., R, c) -> (..., R * c).
  Shape blocks = s;
  blocks.insert(0, R);
  std::vector<int> order;
  for (int d = 1; d < int(blocks.size()) - 1; ++d) order.push_back(d);
  order.push_back(0);
  order.push_back(int(blocks.size()) - 1);
  Shape out = s;
  out[-1] *= R;
  return flat.view(blocks).permute(order).contiguous().view(out);
}

// This rank's slice of the last dim.
Tensor own_slice(const Tensor& t, const Communicator& tp, const char* op) {
  const int64_t last = t.shape().back(), R = tp.size();
  FORGE_CHECK(last % R == 0, "{}: the last dim ({}) does not split into {} equal slices", op, last,
              R);
  const int64_t c = last / R;
  return t.narrow(t.dim() - 1, tp.rank() * c, c).contiguous();
}

}  // namespace

Variable copy_to_tp_region(const Variable& x, const std::shared_ptr<Communicator>& tp) {
  if (tp->size() == 1) return x;
  return make_variable(x.data(), "copy_to_tp_region", {&x},
                       [tp](const Tensor& g) -> std::vector<Tensor> { return {summed(g, *tp)}; });
}

Variable reduce_from_tp_region(const Variable& x, const std::shared_ptr<Communicator>& tp) {
  if (tp->size() == 1) return x;
  return make_variable(summed(x.data(), *tp), "reduce_from_tp_region", {&x},
                       [](const Tensor& g) -> std::vector<Tensor> { return {g}; });
}

Variable gather_from_tp_region(const Variable& x, const std::shared_ptr<Communicator>& tp) {
  if (tp->size() == 1) return x;
  return make_variable(gathered_last_dim(x.data(), *tp), "gather_from_tp_region", {&x},
                       [tp](const Tensor& g) -> std::vector<Tensor> {
                         return {own_slice(g, *tp, "gather_from_tp_region backward")};
                       });
}

Variable scatter_to_tp_region(const Variable& x, const std::shared_ptr<Communicator>& tp) {
  if (tp->size() == 1) return x;
  return make_variable(
      own_slice(x.data(), *tp, "scatter_to_tp_region"), "scatter_to_tp_region", {&x},
      [tp](const Tensor& g) -> std::vector<Tensor> { return {gathered_last_dim(g, *tp)}; });
}

}  // namespace forge
