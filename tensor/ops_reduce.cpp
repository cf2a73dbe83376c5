// Reductions: sum, mean, max, argmax, sum_to; and the comparison helpers for tests.
//
// Every reduction sees its input as (outer, R, inner), R the reduced extent, and sums each output
// in a fixed order: contiguous runs in 16 interleaved partial sums, combined in a fixed tree; long
// runs in fixed-size chunks combined in chunk order. Threads only decide who computes which output
// or chunk, never the order of additions, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <limits>

#include "tensor/cuda/cuda_nn.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace forge {

namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per partial sum of a long contiguous run

// Sum of n contiguous values (or of their squares) in 16 lanes, combined pairwise: vectorises and
// is order-fixed. A square is rounded before it is added (no fused multiply-add), so the sum of
// squares is bit for bit sum(mul(x, x)).
template <class T, bool Square = false>
__attribute__((optimize("fp-contract=off"))) compute_t<T> sum_run(const T* x, int64_t n) {
  using C = compute_t<T>;
  auto term = [](C v) { return Square ? v * v : v; };
  C acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += term(load(x + i + j));
  for (int j = 0; i < n; ++i, ++j) acc[j] += term(load(x + i));
  for (int w = 8; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0];
}

// Sum of a long run: fixed chunks summed (in parallel), then combined in chunk order.
template <class T, bool Square = false>
compute_t<T> sum_long_run(const T* x, int64_t n) {
  using C = compute_t<T>;
  int64_t chunks = fixed_chunks(n, kChunk);
  if (chunks <= 1) return sum_run<T, Square>(x, n);
  std::vector<C> partial(static_cast<size_t>(chunks));
  parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c)
      partial[c] = sum_run<T, Square>(x + c * kChunk, std::min(kChunk, n - c * kChunk));
  });
  C total = 0;
  for (C p : partial) total += p;
  return total;
}

// out (outer, inner) = sum over r of x (outer, R, inner); x contiguous.
template <class T>
void sum_kernel(T* out, const T* x, int64_t outer, int64_t R, int64_t inner) {
  using C = compute_t<T>;
  if (inner == 1) {
    if (outer == 1) {
      store(out, sum_long_run(x, R));
      return;
    }
    parallel_for(0, outer, std::max<int64_t>(1, kChunk / std::max<int64_t>(R, 1)),
                 [&](int64_t b, int64_t e) {
                   for (int64_t o = b; o < e; ++o) store(out + o, sum_run(x + o * R, R));
                 });
    return;
  }
  // Columns: each output column accumulates its R values in order, in blocks of 64 rows whose
  // partial sums are then added in order (less rounding error than one long running sum).
  constexpr int64_t kCols = 256, kRows = 64;
  int64_t col_blocks = fixed_chunks(inner, kCols);
  parallel_for(0, outer * col_blocks, 1, [&](int64_t b, int64_t e) {
    C total[kCols], part[kCols];
    for (int64_t task = b; task < e; ++task) {
      int64_t o = task / col_blocks, c0 = (task % col_blocks) * kCols;
      int64_t nc = std::min(kCols, inner - c0);
      std::fill(total, total + nc, C(0));
      for (int64_t r0 = 0; r0 < R; r0 += kRows) {
        std::fill(part, part + nc, C(0));
        for (int64_t r = r0; r < std::min(R, r0 + kRows); ++r) {
          const T* row = x + (o * R + r) * inner + c0;
          for (int64_t c = 0; c < nc; ++c) part[c] += load(row + c);
        }
        for (int64_t c = 0; c < nc; ++c) total[c] += part[c];
      }
      for (int64_t c = 0; c < nc; ++c) store(out + o * inner + c0 + c, total[c]);
    }
  });
}

// Sums dims [d0, d1] (adjacent) of a contiguous tensor; keeps them as size 1.
Tensor sum_adjacent(const Tensor& a, int d0, int d1) {
  // Integers sum in i64 (as in PyTorch: a sum of u8 masks must not wrap at 256).
  Tensor x = is_integral(a.dtype()) ? a.to(DType::i64).contiguous() : a.contiguous();
  int64_t outer = 1, R = 1, inner = 1;
  for (int d = 0; d < x.dim(); ++d) (d < d0 ? outer : d <= d1 ? R : inner) *= x.size(d);
  Shape out_shape = x.shape();
  for (int d = d0; d <= d1; ++d) out_shape[d] = 1;
  Tensor out = Tensor::empty(out_shape, x.dtype());
  dispatch_all(x.dtype(), "sum", [&]<class T>() {
    if (R == 0) {
      out.zero_();
      return;
    }
    sum_kernel<T>(out.data<T>(), x.data<T>(), outer, R, inner);
  });
  return out;
}

std::vector<int> normalize_dims(const std::vector<int>& dims, int ndim, const char* op) {
  std::vector<int> out;
  for (int d : dims) out.push_back(wrap_dim(d, ndim, op));
  std::sort(out.begin(), out.end());
  FORGE_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), "{}: repeated dim in {}", op,
              dims);
  return out;
}

Shape drop_dims(const Shape& s, const std::vector<int>& dims) {
  Shape out;
  for (int d = 0; d < s.size(); ++d)
    if (!std::binary_search(dims.begin(), dims.end(), d)) out.push_back(s[d]);
  return out;
}

// Checked before the dispatch on device, so both devices give the same message; the CUDA host
// code (tensor/cuda/cuda_nn.cpp) checks only its kernels' own limits.
void check_defined(const Tensor& a, const char* op) {
  FORGE_CHECK(a.defined(), "{}: undefined tensor", op);
}

}  // namespace

Tensor sum(const Tensor& a) {
  check_defined(a, "sum");
  if (a.device().is_cuda()) {
    std::vector<int> all;
    for (int d = 0; d < a.dim(); ++d) all.push_back(d);
    return cuda::sum(a, all, false);
  }
  if (a.dim() == 0) return a.clone();
  return sum_adjacent(a.reshape({-1}), 0, 0).reshape({});
}

Tensor sum(const Tensor& a, const std::vector<int>& dims_in, bool keepdim) {
  check_defined(a, "sum");
  // A 0-d tensor sums over no dims, whatever dims say: a copy.
  std::vector<int> dims =
      a.dim() == 0 ? std::vector<int>{} : normalize_dims(dims_in, a.dim(), "sum");
  if (a.device().is_cuda()) return cuda::sum(a, dims, keepdim);
  if (a.dim() == 0) return a.clone();
  // Several runs of dims are reduced one after the other; 16-bit floats keep the partial sums in
  // f32 between them and round once at the end.
  bool half = a.dtype() == DType::bf16 || a.dtype() == DType::f16;
  Tensor out = half ? a.to(DType::f32) : a;
  // Reduce runs of adjacent dims, last run first (so earlier dim indices stay valid).
  for (size_t j = dims.size(); j > 0;) {
    size_t i = j - 1;
    while (i > 0 && dims[i - 1] == dims[i] - 1) --i;
    out = sum_adjacent(out, dims[i], dims[j - 1]);
    j = i;
  }
  if (dims.empty()) out = out.clone();
  if (half) out = out.to(a.dtype());
  return keepdim ? out : out.reshape(drop_dims(a.shape(), dims));
}

Tensor sum_of_squares(const Tensor& a) {
  check_defined(a, "sum_of_squares");
  // f32 and f64 on the CPU in one pass; elsewhere (and 16-bit types, whose product rounds to
  // 16 bits first) the two ops it stands for.
  if (a.device().is_cuda() || (a.dtype() != DType::f32 && a.dtype() != DType::f64))
    return sum(mul(a, a));
  Tensor x = a.contiguous();
  Tensor out = Tensor::empty({}, a.dtype());
  if (a.dtype() == DType::f32)
    out.data<float>()[0] = sum_long_run<float, true>(x.data<float>(), x.numel());
  else
    out.data<double>()[0] = sum_long_run<double, true>(x.data<double>(), x.numel());
  return out;
}

Tensor mean(const Tensor& a) {
  FORGE_CHECK(is_floating(a.dtype()), "mean: expected a floating dtype, got {}", a.dtype());
  return mul(sum(a), 1.0 / double(std::max<int64_t>(a.numel(), 1)));
}

Tensor mean(const Tensor& a, const std::vector<int>& dims, bool keepdim) {
  FORGE_CHECK(is_floating(a.dtype()), "mean: expected a floating dtype, got {}", a.dtype());
  int64_t count = 1;
  for (int d : normalize_dims(dims, a.dim(), "mean")) count *= a.size(d);
  return mul(sum(a, dims, keepdim), 1.0 / double(std::max<int64_t>(count, 1)));
}

MaxResult max(const Tensor& a, int dim, bool keepdim) {
  check_defined(a, "max");
  int d = wrap_dim(dim, a.dim(), "max");
  FORGE_CHECK(a.dim() > 0 && a.size(d) > 0, "max: cannot reduce an empty dim of shape {}",
              a.shape());
  if (a.device().is_cuda()) return cuda::max_dim(a, d, keepdim);
  Tensor x = a.contiguous();
  int64_t outer = 1, R = x.size(d), inner = 1;
  for (int i = 0; i < d; ++i) outer *= x.size(i);
  for (int i = d + 1; i < x.dim(); ++i) inner *= x.size(i);
  Shape out_shape = x.shape();
  out_shape[d] = 1;
  MaxResult r{Tensor::empty(out_shape, x.dtype()), Tensor::empty(out_shape, DType::i64)};
  dispatch_all(x.dtype(), "max", [&]<class T>() {
    const T* px = x.data<T>();
    T* pv = r.values.data<T>();
    int64_t* pi = r.indices.data<int64_t>();
    parallel_for(0, outer * inner, 256, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        int64_t o = t / inner, c = t % inner;
        const T* base = px + o * R * inner + c;
        auto best = load(base);
        int64_t arg = 0;
        for (int64_t k = 1; k < R; ++k) {
          auto v = load(base + k * inner);
          // First maximum wins; a NaN is the maximum (as in PyTorch).
          if (v > best || (v != v && best == best)) {
            best = v;
            arg = k;
          }
        }
        store(pv + t, best);
        pi[t] = arg;
      }
    });
  });
  if (!keepdim) {
    r.values = r.values.squeeze(d);
    r.indices = r.indices.squeeze(d);
  }
  return r;
}

Tensor max(const Tensor& a) {
  check_defined(a, "max");
  FORGE_CHECK(a.numel() > 0, "max: empty tensor");
  if (a.device().is_cuda()) return cuda::max_all(a);
  return max(a.reshape({-1}), 0).values.reshape({});
}

Tensor argmax(const Tensor& a, int dim, bool keepdim) {
  return max(a, dim, keepdim).indices;
}

Tensor sum_to(const Tensor& a, const Shape& shape) {
  if (a.shape() == shape) return a;
  int lead = a.dim() - shape.size();
  FORGE_CHECK(lead >= 0, "sum_to: cannot sum {} down to {}", a.shape(), shape);
  std::vector<int> dims;
  for (int d = 0; d < a.dim(); ++d) {
    if (d < lead)
      dims.push_back(d);
    else if (shape[d - lead] == 1 && a.size(d) != 1)
      dims.push_back(d);
    else
      FORGE_CHECK(shape[d - lead] == a.size(d), "sum_to: cannot sum {} down to {}", a.shape(),
                  shape);
  }
  return sum(a, dims, true).reshape(shape);
}

// ---------------------------------------------------------------------------------------------
// Comparisons for tests

double max_abs_diff(const Tensor& a, const Tensor& b) {
  FORGE_CHECK(a.shape() == b.shape(), "max_abs_diff: shapes {} and {} differ", a.shape(),
              b.shape());
  std::vector<double> x = a.to(DType::f64).to_vector<double>();
  std::vector<double> y = b.to(DType::f64).to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    double d = std::abs(x[i] - y[i]);
    if (d != d) return std::numeric_limits<double>::infinity();
    m = std::max(m, d);
  }
  return m;
}

bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol) {
  if (a.shape() != b.shape()) return false;
  std::vector<double> x = a.to(DType::f64).to_vector<double>();
  std::vector<double> y = b.to(DType::f64).to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i)
    if (!(std::abs(x[i] - y[i]) <= atol + rtol * std::abs(y[i]))) return false;
  return true;
}

bool all_finite(const Tensor& a) {
  check_defined(a, "all_finite");
  if (a.device().is_cuda()) return cuda::all_finite(a);
  if (is_integral(a.dtype())) return true;
  Tensor x = a.contiguous();
  return dispatch_float(x.dtype(), "all_finite", [&]<class T>() {
    const T* p = x.data<T>();
    int64_t n = x.numel();
    int64_t chunks = fixed_chunks(n, kChunk);
    std::vector<uint8_t> bad(size_t(chunks), 0);
    parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        compute_t<T> acc = 0;  // x * 0 is 0 for finite x, NaN for inf and NaN
        for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) acc += load(p + i) * 0;
        bad[c] = acc != 0 || acc != acc;
      }
    });
    return std::none_of(bad.begin(), bad.end(), [](uint8_t v) { return v != 0; });
  });
}

}  // namespace forge
