// Neural-network ops, each forward beside its backward: softmax, log_softmax, layer norm,
// embedding, cross-entropy. Rows are the last dim; other dims are moved there and back.
#include <cmath>
#include <cstring>
#include <limits>

#include "tensor/cpu/lanes.h"
#include "tensor/cpu/vec_math.h"
#include "tensor/cuda/cuda_misc.h"
#include "tensor/cuda/cuda_nn.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace forge {

namespace {

// The checks of every op below run before the dispatch on device, so a mistake gets the same
// message on the CPU and on a GPU; the CUDA host code (tensor/cuda/cuda_nn.cpp) checks only what
// its kernels add (dimension and grid limits, indices on the device).
void check_float(const Tensor& a, const char* op) {
  FORGE_CHECK(a.defined(), "{}: undefined tensor", op);
  FORGE_CHECK(is_floating(a.dtype()), "{}: expected a floating tensor, got {} {}", op, a.dtype(),
              a.shape());
}

// Runs `rows_fn(x_rows, ...)` on a contiguous copy with `dim` moved last, then moves it back.
template <class F>
Tensor along_last(const Tensor& a, int d, F rows_fn) {
  if (d == a.dim() - 1) return rows_fn(a.contiguous());
  Tensor moved = a.transpose(d, -1).contiguous();
  return rows_fn(moved).transpose(d, -1).contiguous();
}

int64_t rows_of(const Tensor& t) {
  return t.dim() == 0 ? 1 : t.numel() / t.size(-1);
}
int64_t cols_of(const Tensor& t) {
  return t.dim() == 0 ? 1 : t.size(-1);
}
int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
}

}  // namespace

// ============================================================================================
// softmax / log_softmax over a dim.
//   y = exp(x - max) / sum(exp(x - max))            log y = x - max - log(sum(exp(x - max)))
//   dx = y * (g - sum(g * y))                        dx = g - exp(log y) * sum(g)

namespace {
// One row of softmax (kLog false) or log_softmax (kLog true) in the compute type.
template <bool kLog, class T>
void softmax_row(const T* xr, T* yr, int64_t C, std::vector<compute_t<T>>& buf,
                 std::vector<compute_t<T>>& tmp) {
  using A = compute_t<T>;
  const A* x = cpu::row_in_compute_type(xr, C, buf);
  A m = cpu::lanes_max(x, C);
  tmp.resize(size_t(C));
  for (int64_t c = 0; c < C; ++c) tmp[c] = cpu::vexp(x[c] - m);
  A s = cpu::lanes_sum(tmp.data(), C);
  if constexpr (kLog) {
    A lse = m + std::log(s);
    for (int64_t c = 0; c < C; ++c) store(yr + c, x[c] - lse);
  } else {
    A inv = A(1) / s;
    for (int64_t c = 0; c < C; ++c) store(yr + c, tmp[c] * inv);
  }
}

// `d` is a wrapped dim of a (any value for a 0-d a).
template <bool kLog>
Tensor softmax_impl(const Tensor& a, int d, const char* op) {
  if (a.dim() == 0) return kLog ? zeros({}, a.dtype()) : ones({}, a.dtype());
  return along_last(a, d, [op](const Tensor& x) {
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    int64_t R = rows_of(x), C = cols_of(x);
    dispatch_float(x.dtype(), op, [&]<class T>() {
      const T* px = x.data<T>();
      T* py = y.data<T>();
      parallel_for(0, R, row_grain(C), [&](int64_t b, int64_t e) {
        std::vector<compute_t<T>> buf, tmp;
        for (int64_t r = b; r < e; ++r) softmax_row<kLog>(px + r * C, py + r * C, C, buf, tmp);
      });
    });
    return y;
  });
}

// The dim softmax runs over, checked; a 0-d tensor has one element and takes any dim.
int softmax_dim(const Tensor& a, int dim, const char* op) {
  return a.dim() == 0 ? 0 : wrap_dim(dim, a.dim(), op);
}
}  // namespace

Tensor softmax(const Tensor& a, int dim) {
  check_float(a, "softmax");
  int d = softmax_dim(a, dim, "softmax");
  if (a.device().is_cuda()) return cuda::softmax(a, d, false);
  return softmax_impl<false>(a, d, "softmax");
}
Tensor log_softmax(const Tensor& a, int dim) {
  check_float(a, "log_softmax");
  int d = softmax_dim(a, dim, "log_softmax");
  if (a.device().is_cuda()) return cuda::softmax(a, d, true);
  return softmax_impl<true>(a, d, "log_softmax");
}

namespace {
// Checks of softmax_backward and log_softmax_backward; returns the wrapped dim.
int check_softmax_backward(const Tensor& grad, const Tensor& y, int dim, const char* op) {
  check_float(grad, op);
  check_float(y, op);
  check_same_device(grad, y, op);
  FORGE_CHECK(grad.shape() == y.shape() && grad.dtype() == y.dtype(),
              "{}: grad {} {} and output {} {} differ", op, grad.shape(), grad.dtype(), y.shape(),
              y.dtype());
  return softmax_dim(y, dim, op);
}

template <bool kLog>
Tensor softmax_backward_impl(const Tensor& grad, const Tensor& y_in, int d, const char* op) {
  if (y_in.dim() == 0) return zeros({}, grad.dtype());
  Tensor g = grad.transpose(d, -1).contiguous(), y = y_in.transpose(d, -1).contiguous();
  Tensor dx = Tensor::empty(g.shape(), g.dtype());
  int64_t R = rows_of(g), C = cols_of(g);
  dispatch_float(g.dtype(), op, [&]<class T>() {
    using A = compute_t<T>;
    const T *pg = g.data<T>(), *py = y.data<T>();
    T* pd = dx.data<T>();
    parallel_for(0, R, row_grain(C), [&](int64_t b, int64_t e) {
      std::vector<A> gbuf, ybuf;
      for (int64_t r = b; r < e; ++r) {
        const A* gr = cpu::row_in_compute_type(pg + r * C, C, gbuf);
        const A* yr = cpu::row_in_compute_type(py + r * C, C, ybuf);
        A dot = kLog ? cpu::lanes_sum(gr, C) : cpu::lanes_dot(gr, yr, C);
        T* dr = pd + r * C;
        if constexpr (kLog)
          for (int64_t c = 0; c < C; ++c) store(dr + c, gr[c] - cpu::vexp(yr[c]) * dot);
        else
          for (int64_t c = 0; c < C; ++c) store(dr + c, yr[c] * (gr[c] - dot));
      }
    });
  });
  return d == y_in.dim() - 1 ? dx : dx.transpose(d, -1).contiguous();
}
}  // namespace

Tensor softmax_backward(const Tensor& grad, const Tensor& y, int dim) {
  int d = check_softmax_backward(grad, y, dim, "softmax_backward");
  if (grad.device().is_cuda()) return cuda::softmax_backward(grad, y, d, false);
  return softmax_backward_impl<false>(grad, y, d, "softmax_backward");
}
Tensor log_softmax_backward(const Tensor& grad, const Tensor& y, int dim) {
  int d = check_softmax_backward(grad, y, dim, "log_softmax_backward");
  if (grad.device().is_cuda()) return cuda::softmax_backward(grad, y, d, true);
  return softmax_backward_impl<true>(grad, y, d, "log_softmax_backward");
}

// ============================================================================================
// Layer norm over the last dim (C):
//   mean = sum(x)/C, var = sum((x-mean)^2)/C, rstd = 1/sqrt(var + eps)
//   xhat = (x - mean) * rstd,  y = xhat * w + b
// Backward, with dxhat = dy * w:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
//   dw = sum over rows of dy * xhat,  db = sum over rows of dy

namespace {
// The layer-norm weight or bias as a vector in the compute type (`fill` when absent).
template <class T>
std::vector<compute_t<T>> affine_in_compute_type(const Tensor& p, int64_t C, double fill) {
  std::vector<compute_t<T>> v(static_cast<size_t>(C), compute_t<T>(fill));
  if (p.defined()) {
    Tensor c = p.contiguous();
    for (int64_t i = 0; i < C; ++i) v[i] = load(c.data<T>() + i);
  }
  return v;
}
}  // namespace

LayerNormResult layer_norm(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                           double eps) {
  check_float(x_in, "layer_norm");
  FORGE_CHECK(x_in.dim() >= 1, "layer_norm: expected at least 1-d input, got {}", x_in.shape());
  int64_t C = x_in.size(-1);
  for (const Tensor* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    FORGE_CHECK(p->dim() == 1 && p->size(0) == C && p->dtype() == x_in.dtype(),
                "layer_norm: weight/bias {} {} should be [{}] {} for input {}", p->shape(),
                p->dtype(), C, x_in.dtype(), x_in.shape());
    check_same_device(x_in, *p, "layer_norm");
  }
  if (x_in.device().is_cuda()) return cuda::layer_norm(x_in, weight, bias, eps);
  Tensor x = x_in.contiguous();
  int64_t R = rows_of(x);
  DType stat = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Shape stat_shape = x.shape();
  stat_shape.erase(x.dim() - 1);
  LayerNormResult res{Tensor::empty(x.shape(), x.dtype()), Tensor::empty(stat_shape, stat),
                      Tensor::empty(stat_shape, stat)};
  dispatch_float(x.dtype(), "layer_norm", [&]<class T>() {
    using A = compute_t<T>;
    const T* px = x.data<T>();
    std::vector<A> w = affine_in_compute_type<T>(weight, C, 1),
                   bb = affine_in_compute_type<T>(bias, C, 0);
    T* py = res.y.data<T>();
    A* pm = static_cast<A*>(res.mean.raw_data());
    A* ps = static_cast<A*>(res.rstd.raw_data());
    parallel_for(0, R, row_grain(C), [&](int64_t b, int64_t e) {
      std::vector<A> buf, d(static_cast<size_t>(C));
      for (int64_t r = b; r < e; ++r) {
        const A* xr = cpu::row_in_compute_type(px + r * C, C, buf);
        A m = cpu::lanes_sum(xr, C) / A(C);
        for (int64_t c = 0; c < C; ++c) d[c] = xr[c] - m;
        A rs = A(1) / std::sqrt(cpu::lanes_dot(d.data(), d.data(), C) / A(C) + A(eps));
        pm[r] = m;
        ps[r] = rs;
        T* yr = py + r * C;
        for (int64_t c = 0; c < C; ++c) store(yr + c, d[c] * rs * w[c] + bb[c]);
      }
    });
  });
  return res;
}

LayerNormGrads layer_norm_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& weight,
                                   const Tensor& mean, const Tensor& rstd, bool need_dx,
                                   bool need_dweight) {
  const char* op = "layer_norm_backward";
  check_float(dy_in, op);
  check_float(x_in, op);
  check_same_device(dy_in, x_in, op);
  FORGE_CHECK(dy_in.shape() == x_in.shape() && dy_in.dtype() == x_in.dtype(),
              "layer_norm_backward: grad {} and input {} differ", dy_in.shape(), x_in.shape());
  FORGE_CHECK(x_in.dim() >= 1, "layer_norm_backward: expected at least 1-d input, got {}",
              x_in.shape());
  // mean and rstd are read as flat arrays of the statistics' type, one value per row.
  DType stat = x_in.dtype() == DType::f64 ? DType::f64 : DType::f32;
  for (const Tensor* s : {&mean, &rstd}) {
    check_same_device(x_in, *s, op);
    FORGE_CHECK(s->dtype() == stat && s->numel() == rows_of(x_in) && s->is_contiguous(),
                "layer_norm_backward: mean/rstd {} {} should be {} contiguous values ({}) for "
                "input {}",
                s->shape(), s->dtype(), rows_of(x_in), stat, x_in.shape());
  }
  if (weight.defined()) {
    check_same_device(x_in, weight, op);
    FORGE_CHECK(
        weight.dim() == 1 && weight.size(0) == x_in.size(-1) && weight.dtype() == x_in.dtype(),
        "layer_norm_backward: weight {} {} should be [{}] {}", weight.shape(), weight.dtype(),
        x_in.size(-1), x_in.dtype());
  }
  if (x_in.device().is_cuda())
    return cuda::layer_norm_backward(dy_in, x_in, weight, mean, rstd, need_dx, need_dweight);
  Tensor dy = dy_in.contiguous(), x = x_in.contiguous();
  int64_t R = rows_of(x), C = cols_of(x);
  LayerNormGrads g;
  if (need_dx) g.dx = Tensor::empty(x.shape(), x.dtype());
  // dw and db: partial sums over fixed blocks of rows, added in block order (thread-count free).
  constexpr int64_t kRowsPerBlock = 32;
  int64_t blocks = fixed_chunks(R, kRowsPerBlock);
  bool want_w = need_dweight && weight.defined();
  DType acc_dtype = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor part_w, part_b;
  if (need_dweight) {
    part_w = zeros({blocks, C}, acc_dtype);
    part_b = zeros({blocks, C}, acc_dtype);
  }
  dispatch_float(x.dtype(), "layer_norm_backward", [&]<class T>() {
    using A = compute_t<T>;
    const T *px = x.data<T>(), *pdy = dy.data<T>();
    std::vector<A> w = affine_in_compute_type<T>(weight, C, 1);
    const A* pm = static_cast<const A*>(mean.raw_data());
    const A* ps = static_cast<const A*>(rstd.raw_data());
    T* pdx = need_dx ? g.dx.data<T>() : nullptr;
    A* ppw = need_dweight ? static_cast<A*>(part_w.raw_data()) : nullptr;
    A* ppb = need_dweight ? static_cast<A*>(part_b.raw_data()) : nullptr;
    parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<A> xbuf, dybuf, xhat(static_cast<size_t>(C)), dxhat(static_cast<size_t>(C));
      for (int64_t blk = b0; blk < b1; ++blk) {
        for (int64_t r = blk * kRowsPerBlock; r < std::min(R, (blk + 1) * kRowsPerBlock); ++r) {
          const A* xr = cpu::row_in_compute_type(px + r * C, C, xbuf);
          const A* dyr = cpu::row_in_compute_type(pdy + r * C, C, dybuf);
          // x was saved by the forward long ago and comes from memory (dy was just written):
          // its rows a few ahead are asked for now, so that their misses overlap this row's work.
          if (r + 4 < R)
            for (int64_t c = 0; c < C; c += 64 / int64_t(sizeof(T)))
              __builtin_prefetch(px + (r + 4) * C + c);
          A m = pm[r], rs = ps[r];
          for (int64_t c = 0; c < C; ++c) {
            xhat[c] = (xr[c] - m) * rs;
            dxhat[c] = dyr[c] * w[c];
          }
          if (need_dweight) {
            A* pwr = ppw + blk * C;
            A* pbr = ppb + blk * C;
            for (int64_t c = 0; c < C; ++c) {
              pwr[c] += dyr[c] * xhat[c];
              pbr[c] += dyr[c];
            }
          }
          if (!need_dx) continue;
          A mean_dxhat = cpu::lanes_sum(dxhat.data(), C) / A(C);
          A mean_dxhat_xhat = cpu::lanes_dot(dxhat.data(), xhat.data(), C) / A(C);
          T* dxr = pdx + r * C;
          for (int64_t c = 0; c < C; ++c)
            store(dxr + c, rs * (dxhat[c] - mean_dxhat - xhat[c] * mean_dxhat_xhat));
        }
      }
    });
  });
  if (need_dweight) {
    g.dbias = sum(part_b, {0}).to(x.dtype());
    if (want_w) g.dweight = sum(part_w, {0}).to(x.dtype());
  }
  return g;
}

// ============================================================================================
// Embedding: out[..., :] = weight[idx[...], :]; backward scatter-adds rows of grad.

namespace {
template <class I>
void check_indices(const I* idx, int64_t n, int64_t V, const char* op) {
  for (int64_t i = 0; i < n; ++i)
    FORGE_CHECK(idx[i] >= 0 && int64_t(idx[i]) < V,
                "{}: index {} at position {} is out of range for {} rows", op, int64_t(idx[i]), i,
                V);
}
}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  check_float(weight, "embedding");
  FORGE_CHECK(weight.dim() == 2, "embedding: weight must be (num, dim), got {}", weight.shape());
  FORGE_CHECK(indices.defined(), "embedding: undefined tensor");
  FORGE_CHECK(is_integral(indices.dtype()), "embedding: indices must be integers, got {}",
              indices.dtype());
  check_same_device(weight, indices, "embedding");
  if (weight.device().is_cuda()) return cuda::embedding(weight, indices);
  Tensor w = weight.contiguous(), idx = indices.contiguous();
  int64_t V = w.size(0), C = w.size(1), n = idx.numel();
  Shape out_shape = idx.shape();
  out_shape.push_back(C);
  Tensor out = Tensor::empty(out_shape, w.dtype());
  dispatch_index(idx.dtype(), "embedding", [&]<class I>() {
    const I* pi = idx.data<I>();
    check_indices(pi, n, V, "embedding");
    const char* pw = static_cast<const char*>(w.raw_data());
    char* po = static_cast<char*>(out.raw_data());
    size_t row = size_t(C) * w.itemsize();
    parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) std::memcpy(po + i * row, pw + int64_t(pi[i]) * row, row);
    });
  });
  return out;
}

Tensor embedding_backward(const Tensor& grad, const Tensor& indices, int64_t num_weights) {
  const char* op = "embedding_backward";
  check_float(grad, op);
  FORGE_CHECK(indices.defined(), "embedding_backward: undefined tensor");
  FORGE_CHECK(is_integral(indices.dtype()), "embedding_backward: indices must be integers, got {}",
              indices.dtype());
  check_same_device(grad, indices, op);
  FORGE_CHECK(grad.dim() >= 1, "embedding_backward: grad must be (..., dim), got {}", grad.shape());
  FORGE_CHECK(grad.numel() == indices.numel() * grad.size(-1),
              "embedding_backward: grad {} does not match indices {}", grad.shape(),
              indices.shape());
  if (grad.device().is_cuda()) return cuda::embedding_backward(grad, indices, num_weights);
  Tensor g = grad.contiguous(), idx = indices.contiguous();
  int64_t C = g.size(-1), n = idx.numel();
  Tensor dw = zeros({num_weights, C}, g.dtype());
  dispatch_index(idx.dtype(), "embedding_backward", [&]<class I>() {
    const I* pi = idx.data<I>();
    check_indices(pi, n, num_weights, "embedding_backward");
    dispatch_float(g.dtype(), "embedding_backward", [&]<class T>() {
      const T* pg = g.data<T>();
      T* pd = dw.data<T>();
      // Threads split the columns; each column adds its tokens in order: deterministic.
      constexpr int64_t kCols = 32;
      parallel_for(0, fixed_chunks(C, kCols), 1, [&](int64_t b, int64_t e) {
        int64_t c0 = b * kCols, c1 = std::min(C, e * kCols);
        for (int64_t i = 0; i < n; ++i) {
          T* dr = pd + int64_t(pi[i]) * C;
          const T* gr = pg + i * C;
          for (int64_t c = c0; c < c1; ++c) store(dr + c, load(dr + c) + load(gr + c));
        }
      });
    });
  });
  return dw;
}

// ============================================================================================
// Cross-entropy: loss_i = lse(x_i) - x_i[t_i]; loss = mean over rows with t_i != ignore_index.
//   d loss / d x_ic = (softmax(x_i)_c - [c == t_i]) / count

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets,
                                 int64_t ignore_index) {
  check_float(logits, "cross_entropy");
  FORGE_CHECK(logits.dim() == 2, "cross_entropy: logits must be (N, C), got {}", logits.shape());
  FORGE_CHECK(targets.defined(), "cross_entropy: undefined tensor");
  FORGE_CHECK(
      is_integral(targets.dtype()) && targets.dim() == 1 && targets.size(0) == logits.size(0),
      "cross_entropy: targets must be integers of shape [{}], got {} {}", logits.size(0),
      targets.dtype(), targets.shape());
  check_same_device(logits, targets, "cross_entropy");
  // Targets out of range are found where they live: here on the host, there on the device.
  if (logits.device().is_cuda()) return cuda::cross_entropy(logits, targets, ignore_index);
  Tensor x = logits.contiguous(), t = targets.to(DType::i64).contiguous();
  int64_t N = x.size(0), C = x.size(1);
  DType acc = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  CrossEntropyResult res;
  res.lse = Tensor::empty({N}, acc);
  Tensor per_row = Tensor::empty({N}, acc);
  const int64_t* pt = t.data<int64_t>();
  for (int64_t i = 0; i < N; ++i) {
    if (pt[i] == ignore_index) continue;
    FORGE_CHECK(pt[i] >= 0 && pt[i] < C,
                "cross_entropy: target {} at row {} is out of range for {} classes", pt[i], i, C);
    ++res.count;
  }
  dispatch_float(x.dtype(), "cross_entropy", [&]<class T>() {
    using A = compute_t<T>;
    const T* px = x.data<T>();
    A* pl = static_cast<A*>(res.lse.raw_data());
    A* pr = static_cast<A*>(per_row.raw_data());
    parallel_for(0, N, row_grain(C), [&](int64_t b, int64_t e) {
      std::vector<A> buf, tmp(static_cast<size_t>(C));
      for (int64_t i = b; i < e; ++i) {
        const A* xr = cpu::row_in_compute_type(px + i * C, C, buf);
        A m = cpu::lanes_max(xr, C);
        for (int64_t c = 0; c < C; ++c) tmp[c] = cpu::vexp(xr[c] - m);
        pl[i] = m + std::log(cpu::lanes_sum(tmp.data(), C));
        pr[i] = pt[i] == ignore_index ? A(0) : pl[i] - xr[pt[i]];
      }
    });
  });
  res.loss = mul(sum(per_row), res.count ? 1.0 / double(res.count) : 0.0);
  return res;
}

Tensor cross_entropy_backward(const Tensor& grad_loss, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, int64_t count, int64_t ignore_index) {
  const char* op = "cross_entropy_backward";
  check_float(logits, op);
  FORGE_CHECK(logits.dim() == 2, "cross_entropy_backward: logits must be (N, C), got {}",
              logits.shape());
  const int64_t N = logits.size(0);
  FORGE_CHECK(targets.defined() && lse.defined() && grad_loss.defined(), "{}: undefined tensor",
              op);
  FORGE_CHECK(is_integral(targets.dtype()) && targets.dim() == 1 && targets.size(0) == N,
              "cross_entropy_backward: targets must be integers of shape [{}], got {} {}", N,
              targets.dtype(), targets.shape());
  DType acc = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  FORGE_CHECK(lse.dtype() == acc && lse.numel() == N && lse.is_contiguous(),
              "cross_entropy_backward: lse {} {} should be {} contiguous values ({})", lse.shape(),
              lse.dtype(), N, acc);
  FORGE_CHECK(grad_loss.numel() == 1,
              "cross_entropy_backward: grad_loss must have one element, got {}", grad_loss.shape());
  // grad_loss may live anywhere (a GPU op reads one on the host as a scalar argument).
  check_same_device(logits, targets, op);
  check_same_device(logits, lse, op);
  if (logits.device().is_cuda())
    return cuda::cross_entropy_backward(grad_loss, logits, targets, lse, count, ignore_index);
  Tensor x = logits.contiguous(), t = targets.to(DType::i64).contiguous();
  int64_t C = x.size(1);
  Tensor dx = Tensor::empty(x.shape(), x.dtype());
  double scale = grad_loss.item() / double(std::max<int64_t>(count, 1));
  dispatch_float(x.dtype(), "cross_entropy_backward", [&]<class T>() {
    using A = compute_t<T>;
    const T* px = x.data<T>();
    const A* pl = static_cast<const A*>(lse.raw_data());
    const int64_t* pt = t.data<int64_t>();
    T* pd = dx.data<T>();
    A s = A(scale);
    parallel_for(0, N, row_grain(C), [&](int64_t b, int64_t e) {
      std::vector<A> buf;
      for (int64_t i = b; i < e; ++i) {
        T* dr = pd + i * C;
        if (pt[i] == ignore_index) {
          for (int64_t c = 0; c < C; ++c) store(dr + c, A(0));
          continue;
        }
        const A* xr = cpu::row_in_compute_type(px + i * C, C, buf);
        A l = pl[i];
        for (int64_t c = 0; c < C; ++c) store(dr + c, cpu::vexp(xr[c] - l) * s);
        store(dr + pt[i], A(load(dr + pt[i])) - s);
      }
    });
  });
  return dx;
}

// ============================================================================================
// index_select, concat, split

Tensor index_select(const Tensor& a, const Tensor& indices) {
  FORGE_CHECK(a.defined() && indices.defined(), "index_select: undefined tensor");
  FORGE_CHECK(a.dim() >= 1, "index_select: expected at least 1-d input, got {}", a.shape());
  FORGE_CHECK(is_integral(indices.dtype()) && indices.dim() == 1,
              "index_select: indices must be 1-d integers, got {} {}", indices.dtype(),
              indices.shape());
  check_same_device(a, indices, "index_select");
  // Indices out of range are checked on the host on both devices (cuda copies them there).
  if (a.device().is_cuda()) return cuda::index_select(a, indices);
  Tensor x = a.contiguous(), idx = indices.contiguous();
  int64_t rows = x.size(0), n = idx.numel();
  Shape out_shape = x.shape();
  out_shape[0] = n;
  Tensor out = Tensor::empty(out_shape, x.dtype());
  size_t row = rows ? x.nbytes() / size_t(rows) : 0;
  dispatch_index(idx.dtype(), "index_select", [&]<class I>() {
    const I* pi = idx.data<I>();
    check_indices(pi, n, rows, "index_select");
    const char* src = static_cast<const char*>(x.raw_data());
    char* dst = static_cast<char*>(out.raw_data());
    // Rows picked at random from a large table miss every cache level, and a copy stalls on
    // each; asking for the rows a few ahead first keeps several misses in flight at once. Past
    // its first 4 KiB a row is a sequential stream the hardware prefetcher follows by itself.
    constexpr int64_t kAhead = 4;
    const size_t ask = std::min<size_t>(row, 4096);
    parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        if (i + kAhead < e) {
          const char* next = src + int64_t(pi[i + kAhead]) * row;
          for (size_t off = 0; off < ask; off += 64) __builtin_prefetch(next + off, 0, 0);
        }
        std::memcpy(dst + i * row, src + int64_t(pi[i]) * row, row);
      }
    });
  });
  return out;
}

Tensor concat(const std::vector<Tensor>& parts, int dim) {
  FORGE_CHECK(!parts.empty(), "concat: no tensors given");
  const Tensor& first = parts[0];
  int d = wrap_dim(dim, first.dim(), "concat");
  int64_t total = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const Tensor& p = parts[i];
    FORGE_CHECK(p.dim() == first.dim() && p.dtype() == first.dtype(),
                "concat: tensor {} is {} {}, tensor 0 is {} {}", i, p.shape(), p.dtype(),
                first.shape(), first.dtype());
    for (int k = 0; k < first.dim(); ++k)
      FORGE_CHECK(
          k == d || p.size(k) == first.size(k),
          "concat: tensor {} has shape {}, tensor 0 has {} (they may differ only in dim {})", i,
          p.shape(), first.shape(), d);
    total += p.size(d);
  }
  if (first.device().is_cuda()) return cuda::concat(parts, d);
  Shape shape = first.shape();
  shape[d] = total;
  Tensor out = Tensor::empty(shape, first.dtype());
  int64_t at = 0;
  for (const Tensor& p : parts) {
    out.narrow(d, at, p.size(d)).copy_(p);
    at += p.size(d);
  }
  return out;
}

std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int dim) {
  int d = wrap_dim(dim, a.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    FORGE_CHECK(s >= 0, "split: negative size in {}", sizes);
    total += s;
  }
  FORGE_CHECK(total == a.size(d), "split: sizes {} add up to {}, dim {} of {} has {}", sizes, total,
              d, a.shape(), a.size(d));
  std::vector<Tensor> out;
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(a.narrow(d, at, s));
    at += s;
  }
  return out;
}

}  // namespace forge
