// Reductions, views, copies, concat and split as differentiable ops.
#include <algorithm>

#include "autograd/functions.h"

namespace forge {

// ---------------------------------------------------------------------------------------------
// Reductions: the gradient of a sum is the output gradient broadcast back over the summed dims.

Variable sum(const Variable& a) {
  Shape s = a.shape();
  return make_variable(sum(a.data()), "sum", {&a},
                       [s](const Tensor& g) -> std::vector<Tensor> { return {g.expand(s)}; });
}

namespace {
// The shape a reduction over `dims` has with keepdim (those dims set to 1).
Shape kept_shape(const Shape& s, const std::vector<int>& dims) {
  Shape k = s;
  for (int d : dims) k[wrap_dim(d, s.size(), "sum")] = 1;
  return k;
}
}  // namespace

Variable sum(const Variable& a, const std::vector<int>& dims, bool keepdim) {
  Shape s = a.shape(), k = kept_shape(a.shape(), dims);
  return make_variable(
      sum(a.data(), dims, keepdim), "sum_dims", {&a},
      [s, k](const Tensor& g) -> std::vector<Tensor> { return {g.reshape(k).expand(s)}; });
}

Variable mean(const Variable& a) {
  Shape s = a.shape();
  double inv = 1.0 / double(std::max<int64_t>(1, a.numel()));
  return make_variable(
      mean(a.data()), "mean", {&a},
      [s, inv](const Tensor& g) -> std::vector<Tensor> { return {mul(g, inv).expand(s)}; });
}

Variable mean(const Variable& a, const std::vector<int>& dims, bool keepdim) {
  Shape s = a.shape(), k = kept_shape(a.shape(), dims);
  double inv = double(k.numel()) / double(std::max<int64_t>(1, s.numel()));
  return make_variable(mean(a.data(), dims, keepdim), "mean_dims", {&a},
                       [s, k, inv](const Tensor& g) -> std::vector<Tensor> {
                         return {mul(g.reshape(k), inv).expand(s)};
                       });
}

namespace {
// A tensor of `shape` that holds g where `index` (along dim, keepdim layout) points, else 0.
Tensor scatter_to_index(const Tensor& g_kept, const Tensor& index_kept, const Shape& shape,
                        int dim) {
  Shape pos_shape;
  pos_shape.resize(shape.size(), 1);
  pos_shape[dim] = shape[dim];
  Tensor positions =
      arange(0, double(shape[dim]), 1, DType::i64).reshape(pos_shape).to(g_kept.device());
  Tensor hit = eq(positions.expand(shape), index_kept.expand(shape));
  return where(hit, g_kept.expand(shape), zeros({}, g_kept.dtype(), g_kept.device()));
}
}  // namespace

Variable max(const Variable& a, int dim, bool keepdim) {
  int d = wrap_dim(dim, a.dim(), "max");
  MaxResult r = max(a.data(), d, true);
  Shape s = a.shape();
  Tensor idx = r.indices;
  Tensor values = keepdim ? r.values : r.values.squeeze(d);
  return make_variable(values, "max_dim", {&a},
                       [s, idx, d](const Tensor& g) -> std::vector<Tensor> {
                         return {scatter_to_index(g.reshape(idx.shape()), idx, s, d)};
                       });
}

Variable max(const Variable& a) {
  Shape s = a.shape();
  MaxResult r = max(a.data().reshape({-1}), 0, true);
  return make_variable(r.values.reshape({}), "max", {&a},
                       [s, idx = r.indices](const Tensor& g) -> std::vector<Tensor> {
                         Shape flat{s.numel()};
                         return {scatter_to_index(g.reshape({1}), idx, flat, 0).reshape(s)};
                       });
}

// ---------------------------------------------------------------------------------------------
// Views: the gradient is the output gradient seen through the inverse view.

Variable reshape(const Variable& a, const Shape& shape) {
  Shape s = a.shape();
  return make_variable(a.data().reshape(shape), "reshape", {&a},
                       [s](const Tensor& g) -> std::vector<Tensor> { return {g.reshape(s)}; });
}

Variable flatten(const Variable& a, int start_dim, int end_dim) {
  Shape s = a.shape();
  return make_variable(a.data().flatten(start_dim, end_dim), "flatten", {&a},
                       [s](const Tensor& g) -> std::vector<Tensor> { return {g.reshape(s)}; });
}

Variable permute(const Variable& a, const std::vector<int>& order) {
  std::vector<int> inverse(order.size());
  for (size_t i = 0; i < order.size(); ++i)
    inverse[size_t(wrap_dim(order[i], a.dim(), "permute"))] = int(i);
  return make_variable(
      a.data().permute(order), "permute", {&a},
      [inverse](const Tensor& g) -> std::vector<Tensor> { return {g.permute(inverse)}; });
}

Variable transpose(const Variable& a, int d0, int d1) {
  return make_variable(
      a.data().transpose(d0, d1), "transpose", {&a},
      [d0, d1](const Tensor& g) -> std::vector<Tensor> { return {g.transpose(d0, d1)}; });
}

Variable narrow(const Variable& a, int dim, int64_t start, int64_t length) {
  Shape s = a.shape();
  return make_variable(a.data().narrow(dim, start, length), "narrow", {&a},
                       [s, dim, start, length](const Tensor& g) -> std::vector<Tensor> {
                         Tensor full = zeros(s, g.dtype(), g.device());
                         full.narrow(dim, start, length).copy_(g);
                         return {full};
                       });
}

Variable select(const Variable& a, int dim, int64_t index) {
  Shape s = a.shape();
  return make_variable(a.data().select(dim, index), "select", {&a},
                       [s, dim, index](const Tensor& g) -> std::vector<Tensor> {
                         Tensor full = zeros(s, g.dtype(), g.device());
                         full.select(dim, index).copy_(g);
                         return {full};
                       });
}

Variable expand(const Variable& a, const Shape& shape) {
  Shape s = a.shape();
  return make_variable(a.data().expand(shape), "expand", {&a},
                       [s](const Tensor& g) -> std::vector<Tensor> { return {sum_to(g, s)}; });
}

Variable unsqueeze(const Variable& a, int dim) {
  Shape s = a.shape();
  return make_variable(a.data().unsqueeze(dim), "unsqueeze", {&a},
                       [s](const Tensor& g) -> std::vector<Tensor> { return {g.reshape(s)}; });
}

Variable squeeze(const Variable& a, int dim) {
  Shape s = a.shape();
  return make_variable(a.data().squeeze(dim), "squeeze", {&a},
                       [s](const Tensor& g) -> std::vector<Tensor> { return {g.reshape(s)}; });
}

Variable contiguous(const Variable& a) {
  return make_variable(a.data().contiguous(), "contiguous", {&a},
                       [](const Tensor& g) -> std::vector<Tensor> { return {g}; });
}

Variable to(const Variable& a, DType dtype) {
  DType from = a.dtype();
  return make_variable(a.data().to(dtype), "to", {&a},
                       [from](const Tensor& g) -> std::vector<Tensor> { return {g.to(from)}; });
}

// ---------------------------------------------------------------------------------------------
// concat and split

Variable concat(const std::vector<Variable>& parts, int dim) {
  std::vector<Tensor> data;
  std::vector<const Variable*> inputs;
  std::vector<int64_t> sizes;
  for (const Variable& p : parts) {
    data.push_back(p.data());
    inputs.push_back(&p);
  }
  Tensor out = concat(data, dim);
  int d = wrap_dim(dim, out.dim(), "concat");
  for (const Tensor& t : data) sizes.push_back(t.size(d));
  return make_variable(out, "concat", inputs, [sizes, d](const Tensor& g) -> std::vector<Tensor> {
    return split(g, sizes, d);
  });
}

std::vector<Variable> split(const Variable& a, const std::vector<int64_t>& sizes, int dim) {
  int d = wrap_dim(dim, a.dim(), "split");
  split(a.data(), sizes, d);  // checks the sizes
  std::vector<Variable> out;
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(narrow(a, d, at, s));
    at += s;
  }
  return out;
}

}  // namespace forge
