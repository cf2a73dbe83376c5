// Host side of the CUDA reductions and neural-network ops: shapes and strides turned into a
// kernels::ReduceLayout or kernels::Rows, scratch memory from the device's caching allocator, then
// the launcher on the device's stream with its status checked.
//
// Arguments are validated at the op surface (tensor/ops_*.cpp) before dispatch; only CUDA-specific
// limits are checked here (dimensions and grid sizes the kernels take, indices on the device).
#include "tensor/cuda/cuda_nn.h"

#include <algorithm>
#include <limits>

#include "tensor/cuda/cuda.h"
#include "tensor/cuda/host_util.h"
#include "tensor/cuda/kernels_nn.h"

namespace forge::cuda {

namespace {

using kernels::kMaxDims;
constexpr int64_t kMaxGrid = std::numeric_limits<int32_t>::max();  // grid.x limit

// Scratch memory on t's device (undefined when no bytes are needed). Freed blocks go back to the
// caching allocator, which hands them out again only for work queued after this on the stream.
Tensor scratch(int64_t bytes, const Tensor& t) {
  return bytes > 0 ? Tensor::empty({bytes}, DType::u8, t.device()) : Tensor();
}
void* ptr(const Tensor& t) {
  return t.defined() ? t.raw_data() : nullptr;
}

// Appends a dim of (size, stride) to a list, dropping size 1 and merging it into the previous dim
// when the two are one run in memory.
void append_dim(int& n, int64_t* sizes, int64_t* strides, int64_t size, int64_t stride) {
  if (size == 1) return;
  if (n > 0 && strides[n - 1] == stride * size) {
    sizes[n - 1] *= size;
    strides[n - 1] = stride;
    return;
  }
  sizes[n] = size;
  strides[n] = stride;
  ++n;
}

kernels::ReduceLayout reduce_layout(const Tensor& a, const std::vector<int>& dims, const char* op) {
  check_dims(a, op);
  kernels::ReduceLayout l;
  l.outputs = 1;
  l.R = 1;
  for (int d = 0; d < a.dim(); ++d) {
    if (std::binary_search(dims.begin(), dims.end(), d)) {
      append_dim(l.red_dims, l.red_sizes, l.red_strides, a.size(d), a.stride(d));
      l.R *= a.size(d);
    } else {
      append_dim(l.kept_dims, l.kept_sizes, l.kept_strides, a.size(d), a.stride(d));
      l.outputs *= a.size(d);
    }
  }
  kernels::reduce_plan(l);
  FORGE_CHECK(l.by_column || l.outputs <= kMaxGrid, "{}: {} outputs of shape {} on cuda", op,
              l.outputs, a.shape());
  return l;
}

// The shape of a reduction's result: dims set to 1 (keepdim) or dropped.
Shape reduced_shape(const Tensor& a, const std::vector<int>& dims, bool keepdim) {
  Shape out;
  for (int d = 0; d < a.dim(); ++d) {
    bool reduced = std::binary_search(dims.begin(), dims.end(), d);
    if (!reduced)
      out.push_back(a.size(d));
    else if (keepdim)
      out.push_back(1);
  }
  return out;
}

// An operand as a kernels::Strided (its own sizes, strides in strides[k]).
kernels::Strided strided(const Tensor& t, int k, const char* op) {
  check_dims(t, op);
  kernels::Strided s;
  s.dims = t.dim();
  s.numel = t.numel();
  s.contiguous = t.is_contiguous();
  for (int d = 0; d < t.dim(); ++d) {
    s.sizes[d] = t.size(d);
    s.strides[k][d] = t.stride(d);
  }
  return s;
}

// Rows of same-shaped operands (up to 3) along dim d.
kernels::Rows rows_along(int d, const std::vector<const Tensor*>& operands, const char* op) {
  const Tensor& ref = *operands[0];
  check_dims(ref, op);
  kernels::Rows r;
  r.cols = ref.size(d);
  r.rows = 1;
  for (int k = 0; k < ref.dim(); ++k) {
    if (k == d) continue;
    r.sizes[r.dims] = ref.size(k);
    for (size_t j = 0; j < operands.size(); ++j) r.strides[j][r.dims] = operands[j]->stride(k);
    r.rows *= ref.size(k);
    ++r.dims;
  }
  for (size_t j = 0; j < operands.size(); ++j) r.col_stride[j] = operands[j]->stride(d);
  FORGE_CHECK(r.rows <= kMaxGrid, "{}: {} rows of shape {} on cuda (at most {})", op, r.rows,
              ref.shape(), kMaxGrid);
  return r;
}

// Element `pos` (row-major) of an integer tensor on the device, read back.
int64_t read_index(const Tensor& idx, int64_t pos) {
  int64_t off = 0;
  for (int d = idx.dim() - 1; d >= 0; --d) {
    off += (pos % idx.size(d)) * idx.stride(d);
    pos /= idx.size(d);
  }
  Tensor one = Tensor::empty({}, idx.dtype());
  copy_bytes(one.raw_data(), Device::cpu(),
             static_cast<const char*>(idx.raw_data()) + off * int64_t(idx.itemsize()), idx.device(),
             idx.itemsize());
  return int64_t(one.item());
}

struct IndexCheck {
  int64_t counted = 0;  // indices that are not ignore_index
  int64_t bad = -1;     // first position out of range, -1 when none
};
// Checks every index of `idx` against [0, limit) on the device (ignoring `ignore` when
// has_ignore) and reads the verdict back.
IndexCheck check_indices(const Tensor& idx, int64_t limit, bool has_ignore, int64_t ignore,
                         const char* op) {
  Tensor stats = Tensor::empty({2}, DType::i64, idx.device());
  int64_t n = idx.numel();
  check_status(
      kernels::check_indices(int(idx.dtype()), strided(idx, 0, op), idx.raw_data(), n, limit,
                             has_ignore, ignore, stats.data<int64_t>(), stream_of(idx)),
      op);
  std::vector<int64_t> s = stats.to_vector<int64_t>();
  return {s[0], s[1] < n ? s[1] : -1};
}

}  // namespace

// ============================================================================================
// Reductions

Tensor sum(const Tensor& a, const std::vector<int>& dims, bool keepdim) {
  kernels::ReduceLayout l = reduce_layout(a, dims, "sum");
  bool out_i64 = is_integral(a.dtype()) && !dims.empty();
  Tensor out =
      Tensor::empty(reduced_shape(a, dims, keepdim), out_i64 ? DType::i64 : a.dtype(), a.device());
  Tensor ws = scratch(kernels::reduce_workspace_bytes(l), a);
  check_status(kernels::reduce_sum(int(a.dtype()), l, out.raw_data(), out_i64, a.raw_data(),
                                   ptr(ws), stream_of(a)),
               "sum");
  return out;
}

MaxResult max_dim(const Tensor& a, int d, bool keepdim) {
  std::vector<int> dims{d};
  kernels::ReduceLayout l = reduce_layout(a, dims, "max");
  Shape shape = reduced_shape(a, dims, keepdim);
  MaxResult r{Tensor::empty(shape, a.dtype(), a.device()),
              Tensor::empty(shape, DType::i64, a.device())};
  Tensor ws = scratch(kernels::reduce_workspace_bytes(l), a);
  check_status(kernels::reduce_max(int(a.dtype()), l, r.values.raw_data(),
                                   r.indices.data<int64_t>(), a.raw_data(), ptr(ws), stream_of(a)),
               "max");
  return r;
}

Tensor max_all(const Tensor& a) {
  std::vector<int> dims;
  for (int d = 0; d < a.dim(); ++d) dims.push_back(d);
  kernels::ReduceLayout l = reduce_layout(a, dims, "max");
  Tensor out = Tensor::empty({}, a.dtype(), a.device());
  Tensor ws = scratch(kernels::reduce_workspace_bytes(l), a);
  check_status(kernels::reduce_max(int(a.dtype()), l, out.raw_data(), nullptr, a.raw_data(),
                                   ptr(ws), stream_of(a)),
               "max");
  return out;
}

bool all_finite(const Tensor& a) {
  if (is_integral(a.dtype())) return true;
  kernels::Strided s = strided(a, 1, "all_finite");
  Tensor flag = zeros({1}, DType::u8, a.device());
  check_status(
      kernels::any_nonfinite(int(a.dtype()), s, a.raw_data(), flag.data<uint8_t>(), stream_of(a)),
      "all_finite");
  return flag.item() == 0;
}

// ============================================================================================
// softmax / log_softmax

Tensor softmax(const Tensor& a, int d, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  if (a.dim() == 0) return full({}, log ? 0.0 : 1.0, a.dtype(), a.device());
  Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device());
  kernels::Rows r = rows_along(d, {&y, &a}, op);
  check_status(kernels::softmax(int(a.dtype()), log, r, y.raw_data(), a.raw_data(), stream_of(a)),
               op);
  return y;
}

Tensor softmax_backward(const Tensor& grad, const Tensor& y, int d, bool log) {
  const char* op = log ? "log_softmax_backward" : "softmax_backward";
  if (y.dim() == 0) return zeros({}, grad.dtype(), grad.device());
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  kernels::Rows r = rows_along(d, {&dx, &grad, &y}, op);
  check_status(kernels::softmax_backward(int(y.dtype()), log, r, dx.raw_data(), grad.raw_data(),
                                         y.raw_data(), stream_of(y)),
               op);
  return dx;
}

// ============================================================================================
// Layer norm over the last dim

LayerNormResult layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  DType stat = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Shape stat_shape = x.shape();
  stat_shape.erase(x.dim() - 1);
  LayerNormResult res{Tensor::empty(x.shape(), x.dtype(), x.device()),
                      Tensor::empty(stat_shape, stat, x.device()),
                      Tensor::empty(stat_shape, stat, x.device())};
  kernels::Rows r = rows_along(x.dim() - 1, {&res.y, &x}, "layer_norm");
  check_status(kernels::layer_norm(int(x.dtype()), r, res.y.raw_data(), x.raw_data(), ptr(weight),
                                   weight.defined() ? weight.stride(0) : 0, ptr(bias),
                                   bias.defined() ? bias.stride(0) : 0, res.mean.raw_data(),
                                   res.rstd.raw_data(), eps, stream_of(x)),
               "layer_norm");
  return res;
}

LayerNormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                   const Tensor& mean, const Tensor& rstd, bool need_dx,
                                   bool need_dweight) {
  const char* op = "layer_norm_backward";
  const int64_t C = x.size(-1);
  LayerNormGrads g;
  if (need_dx) g.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (need_dweight) {
    g.dbias = Tensor::empty({C}, x.dtype(), x.device());
    if (weight.defined()) g.dweight = Tensor::empty({C}, x.dtype(), x.device());
  }
  // Operand 0 is dx; without it, dy stands in (its strides are then never used).
  kernels::Rows r = rows_along(x.dim() - 1, {need_dx ? &g.dx : &dy, &dy, &x}, op);
  Tensor ws = need_dweight ? scratch(kernels::layer_norm_backward_workspace(int(x.dtype()), r), x)
                           : Tensor();
  check_status(kernels::layer_norm_backward(
                   int(x.dtype()), r, ptr(g.dx), dy.raw_data(), x.raw_data(), ptr(weight),
                   weight.defined() ? weight.stride(0) : 0, mean.raw_data(), rstd.raw_data(),
                   ptr(g.dweight), ptr(g.dbias), ptr(ws), stream_of(x)),
               op);
  return g;
}

// ============================================================================================
// Embedding

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  int64_t V = weight.size(0), C = weight.size(1), n = indices.numel();
  FORGE_CHECK(n <= kMaxGrid, "embedding: {} indices on cuda (at most {})", n, kMaxGrid);
  IndexCheck check = check_indices(indices, V, false, 0, "embedding");
  if (check.bad >= 0)
    throw_error(fmt::format("embedding: index {} at position {} is out of range for {} rows",
                            read_index(indices, check.bad), check.bad, V));
  Shape out_shape = indices.shape();
  out_shape.push_back(C);
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  check_status(
      kernels::embedding(int(weight.dtype()), n, C, out.raw_data(), weight.raw_data(),
                         weight.stride(0), weight.stride(1), int(indices.dtype()),
                         strided(indices, 0, "embedding"), indices.raw_data(), stream_of(weight)),
      "embedding");
  return out;
}

Tensor embedding_backward(const Tensor& grad, const Tensor& indices, int64_t num_weights) {
  const char* op = "embedding_backward";
  check_dims(grad, op);
  int64_t C = grad.size(-1), n = indices.numel();
  FORGE_CHECK(n <= kMaxGrid, "embedding_backward: {} indices on cuda (at most {})", n, kMaxGrid);
  IndexCheck check = check_indices(indices, num_weights, false, 0, op);
  if (check.bad >= 0)
    throw_error(
        fmt::format("embedding_backward: index {} at position {} is out of range for {} "
                    "rows",
                    read_index(indices, check.bad), check.bad, num_weights));
  Tensor dw = zeros({num_weights, C}, grad.dtype(), grad.device());
  int64_t bytes = kernels::embedding_backward_workspace(n, num_weights);
  Tensor ws = scratch(bytes, grad);
  check_status(kernels::embedding_backward(int(grad.dtype()), n, C, num_weights, dw.raw_data(),
                                           strided(grad, 0, op), grad.raw_data(),
                                           int(indices.dtype()), strided(indices, 0, op),
                                           indices.raw_data(), ptr(ws), bytes, stream_of(grad)),
               op);
  return dw;
}

// ============================================================================================
// Cross-entropy

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets,
                                 int64_t ignore_index) {
  int64_t N = logits.size(0), C = logits.size(1);
  IndexCheck check = check_indices(targets, C, true, ignore_index, "cross_entropy");
  if (check.bad >= 0)
    throw_error(fmt::format("cross_entropy: target {} at row {} is out of range for {} classes",
                            read_index(targets, check.bad), check.bad, C));
  DType acc = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  CrossEntropyResult res;
  res.count = check.counted;
  res.lse = Tensor::empty({N}, acc, logits.device());
  Tensor per_row = Tensor::empty({N}, acc, logits.device());
  kernels::Rows r = rows_along(1, {&logits, &logits}, "cross_entropy");
  check_status(
      kernels::cross_entropy(int(logits.dtype()), r, logits.raw_data(), int(targets.dtype()),
                             targets.raw_data(), targets.stride(0), ignore_index,
                             res.lse.raw_data(), per_row.raw_data(), stream_of(logits)),
      "cross_entropy");
  res.loss = forge::mul(forge::sum(per_row), res.count ? 1.0 / double(res.count) : 0.0);
  return res;
}

Tensor cross_entropy_backward(const Tensor& grad_loss, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, int64_t count, int64_t ignore_index) {
  const char* op = "cross_entropy_backward";
  // A grad on this GPU is read by the kernel (no synchronisation); one on the host is passed in.
  bool grad_here = grad_loss.device() == logits.device();
  Tensor dx = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  kernels::Rows r = rows_along(1, {&dx, &logits}, op);
  check_status(kernels::cross_entropy_backward(
                   int(logits.dtype()), r, dx.raw_data(), logits.raw_data(), int(targets.dtype()),
                   targets.raw_data(), targets.stride(0), ignore_index, lse.raw_data(),
                   grad_here ? grad_loss.raw_data() : nullptr, int(grad_loss.dtype()),
                   grad_here ? 0.0 : grad_loss.item(), count, stream_of(logits)),
               op);
  return dx;
}

}  // namespace forge::cuda
