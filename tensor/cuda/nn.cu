// Neural-network kernels: softmax and log_softmax with their backwards, layer norm forward and
// backward, embedding gather and its scatter-add, cross-entropy forward and backward.
//
// Row ops run one block per row (kernels_nn.h Rows: any dim of any strides is a row), the block's
// threads striding over the row's columns; sums and maxima over a row are a warp butterfly then
// one across warps (block_reduce), the same order every run. Reductions over rows (layer norm's
// dweight and dbias) are per-block partials added in block order by a second kernel; the
// embedding's scatter-add sorts the indices instead of adding atomically. No float atomics: every
// result is the same from run to run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>

#include "tensor/cuda/device_types.cuh"
#include "tensor/cuda/kernels_nn.h"

namespace forge::cuda::kernels {

namespace {

__device__ int64_t offset(int dims, const int64_t* sizes, const int64_t* strides, int64_t i) {
  int64_t off = 0;
  for (int d = dims - 1; d >= 0; --d) {
    off += (i % sizes[d]) * strides[d];
    i /= sizes[d];
  }
  return off;
}
// Offset of row `row` of operand k.
__device__ int64_t row_offset(const Rows& r, int k, int64_t row) {
  return offset(r.dims, r.sizes, r.strides[k], row);
}
// Offset of element i of the operand s describes with strides[0].
__device__ int64_t element_offset(const Strided& s, int64_t i) {
  return s.contiguous ? i : offset(s.dims, s.sizes, s.strides[0], i);
}

// An integer index of any integer dtype, as i64.
__device__ int64_t load_index(const void* p, int dtype, int64_t off) {
  switch (dtype) {
    case i8:
      return static_cast<const int8_t*>(p)[off];
    case u8:
      return static_cast<const uint8_t*>(p)[off];
    case i32:
      return static_cast<const int32_t*>(p)[off];
    default:
      return static_cast<const int64_t*>(p)[off];
  }
}
// One element of any dtype, as double.
__device__ double load_scalar(const void* p, int dtype) {
  switch (dtype) {
    case f32:
      return *static_cast<const float*>(p);
    case f64:
      return *static_cast<const double*>(p);
    case bf16:
      return load(static_cast<const __nv_bfloat16*>(p));
    case f16:
      return load(static_cast<const __half*>(p));
    default:
      return double(load_index(p, dtype, 0));
  }
}

struct Add {
  template <class A>
  __device__ A operator()(A a, A b) const {
    return a + b;
  }
};
struct Max {  // NaN wins
  template <class A>
  __device__ A operator()(A a, A b) const {
    return a > b || a != a ? a : b;
  }
};

// v combined over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the result. A xor butterfly gives every lane the same bits (each step adds the same two values,
// in either order: commutative), first within each warp, then over the warps' results.
template <class A, class F>
__device__ A block_reduce(A v, A identity, F f) {
  __shared__ A warp_results[32];
  for (int o = 16; o > 0; o /= 2) v = f(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // the previous call's readers are done with warp_results
  if (lane == 0) warp_results[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / 32) ? warp_results[lane] : identity;
  for (int o = 16; o > 0; o /= 2) v = f(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Threads per row: enough warps for the columns, 32 to 512.
int threads_for(int64_t cols) {
  int t = 32;
  while (t < 512 && t < cols) t *= 2;
  return t;
}

// ---- softmax / log_softmax ----
//   y = exp(x - max) / sum(exp(x - max))            log y = x - max - log(sum(exp(x - max)))
//   dx = y * (g - sum(g * y))                        dx = g - exp(log y) * sum(g)

template <class T, bool kLog>
__global__ void softmax_kernel(Rows r, T* out, const T* x) {
  using A = compute_t<T>;
  const int64_t row = blockIdx.x, C = r.cols, xs = r.col_stride[1], ys = r.col_stride[0];
  const T* xr = x + row_offset(r, 1, row);
  T* yr = out + row_offset(r, 0, row);
  A m = -A(INFINITY);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) m = Max()(m, load(xr + c * xs));
  m = block_reduce(m, -A(INFINITY), Max());
  A s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += exp(load(xr + c * xs) - m);
  s = block_reduce(s, A(0), Add());
  if constexpr (kLog) {
    const A lse = m + log(s);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
      store(yr + c * ys, load(xr + c * xs) - lse);
  } else {
    const A inv = A(1) / s;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
      store(yr + c * ys, exp(load(xr + c * xs) - m) * inv);
  }
}

template <class T, bool kLog>
__global__ void softmax_backward_kernel(Rows r, T* dx, const T* grad, const T* y) {
  using A = compute_t<T>;
  const int64_t row = blockIdx.x, C = r.cols;
  const int64_t ds = r.col_stride[0], gs = r.col_stride[1], ys = r.col_stride[2];
  T* dr = dx + row_offset(r, 0, row);
  const T* gr = grad + row_offset(r, 1, row);
  const T* yr = y + row_offset(r, 2, row);
  A dot = 0;  // sum(g) for log_softmax, sum(g * y) for softmax
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    dot += kLog ? load(gr + c * gs) : load(gr + c * gs) * load(yr + c * ys);
  dot = block_reduce(dot, A(0), Add());
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A g = load(gr + c * gs), yv = load(yr + c * ys);
    store(dr + c * ds, kLog ? g - exp(yv) * dot : yv * (g - dot));
  }
}

// ---- layer norm over a row of C ----
//   mean = sum(x)/C, var = sum((x-mean)^2)/C, rstd = 1/sqrt(var + eps)
//   xhat = (x - mean) * rstd,  y = xhat * w + b
// Backward, with dxhat = dy * w:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
//   dw = sum over rows of dy * xhat,  db = sum over rows of dy

template <class T>
__global__ void layer_norm_kernel(Rows r, T* y, const T* x, const T* w, int64_t ws, const T* b,
                                  int64_t bs, compute_t<T>* mean, compute_t<T>* rstd, double eps) {
  using A = compute_t<T>;
  const int64_t row = blockIdx.x, C = r.cols, xs = r.col_stride[1], ys = r.col_stride[0];
  const T* xr = x + row_offset(r, 1, row);
  T* yr = y + row_offset(r, 0, row);
  A s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += load(xr + c * xs);
  const A m = block_reduce(s, A(0), Add()) / A(C);
  A v = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A d = load(xr + c * xs) - m;
    v += d * d;
  }
  const A rs = A(1) / sqrt(block_reduce(v, A(0), Add()) / A(C) + A(eps));
  if (threadIdx.x == 0) {
    mean[row] = m;
    rstd[row] = rs;
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A wc = w ? load(w + c * ws) : A(1), bc = b ? load(b + c * bs) : A(0);
    store(yr + c * ys, (load(xr + c * xs) - m) * rs * wc + bc);
  }
}

template <class T>
__global__ void layer_norm_dx_kernel(Rows r, T* dx, const T* dy, const T* x, const T* w, int64_t ws,
                                     const compute_t<T>* mean, const compute_t<T>* rstd) {
  using A = compute_t<T>;
  const int64_t row = blockIdx.x, C = r.cols;
  const int64_t ds = r.col_stride[0], gs = r.col_stride[1], xs = r.col_stride[2];
  T* dr = dx + row_offset(r, 0, row);
  const T* gr = dy + row_offset(r, 1, row);
  const T* xr = x + row_offset(r, 2, row);
  const A m = mean[row], rs = rstd[row];
  A s1 = 0, s2 = 0;  // sum(dxhat), sum(dxhat * xhat)
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A xhat = (load(xr + c * xs) - m) * rs;
    const A dxhat = load(gr + c * gs) * (w ? load(w + c * ws) : A(1));
    s1 += dxhat;
    s2 += dxhat * xhat;
  }
  const A mean_dxhat = block_reduce(s1, A(0), Add()) / A(C);
  const A mean_dxhat_xhat = block_reduce(s2, A(0), Add()) / A(C);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A xhat = (load(xr + c * xs) - m) * rs;
    const A dxhat = load(gr + c * gs) * (w ? load(w + c * ws) : A(1));
    store(dr + c * ds, rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
  }
}

// Rows per block of the dweight/dbias partial sums: at least 64, at most 4096 blocks (grid.y).
int64_t ln_rows_per_block(int64_t rows) {
  int64_t per = (rows + 4095) / 4096;
  return per < 64 ? 64 : per;
}

// Column c = blockIdx.x * 256 + threadIdx.x over the rows of block blockIdx.y, in order.
template <class T>
__global__ void layer_norm_dw_partial_kernel(Rows r, const T* dy, const T* x,
                                             const compute_t<T>* mean, const compute_t<T>* rstd,
                                             int64_t rows_per_block, compute_t<T>* part_w,
                                             compute_t<T>* part_b) {
  using A = compute_t<T>;
  const int64_t c = blockIdx.x * int64_t(256) + threadIdx.x, blk = blockIdx.y, C = r.cols;
  if (c >= C) return;
  const int64_t r0 = blk * rows_per_block, r1 = min(r.rows, r0 + rows_per_block);
  A sw = 0, sb = 0;
  for (int64_t row = r0; row < r1; ++row) {
    const A g = load(dy + row_offset(r, 1, row) + c * r.col_stride[1]);
    const A xhat = (load(x + row_offset(r, 2, row) + c * r.col_stride[2]) - mean[row]) * rstd[row];
    sw += g * xhat;
    sb += g;
  }
  part_w[blk * C + c] = sw;
  part_b[blk * C + c] = sb;
}

template <class T>
__global__ void layer_norm_dw_finish_kernel(int64_t C, int64_t blocks, const compute_t<T>* part_w,
                                            const compute_t<T>* part_b, T* dweight, T* dbias) {
  using A = compute_t<T>;
  const int64_t c = blockIdx.x * int64_t(256) + threadIdx.x;
  if (c >= C) return;
  A sw = 0, sb = 0;
  for (int64_t k = 0; k < blocks; ++k) {
    sw += part_w[k * C + c];
    sb += part_b[k * C + c];
  }
  if (dweight) store(dweight + c, sw);
  if (dbias) store(dbias + c, sb);
}

// ---- indices: range check, embedding gather and scatter-add ----

__global__ void init_stats_kernel(int64_t* stats, int64_t n) {
  stats[0] = 0;
  stats[1] = n;
}

__global__ void check_indices_kernel(int dtype, Strided s, int64_t n, int64_t limit,
                                     bool has_ignore, int64_t ignore, const void* indices,
                                     int64_t* stats) {
  unsigned long long counted = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = load_index(indices, dtype, element_offset(s, i));
    if (has_ignore && v == ignore) continue;
    if (v < 0 || v >= limit)
      atomicMin(reinterpret_cast<unsigned long long*>(stats + 1), (unsigned long long)i);
    else
      ++counted;
  }
  if (counted) atomicAdd(reinterpret_cast<unsigned long long*>(stats), counted);  // integers
}

// Block i copies row indices[i] of the weight.
template <class T>
__global__ void embedding_kernel(int64_t C, T* out, const T* w, int64_t wr, int64_t wc, int dtype,
                                 Strided idx, const void* indices) {
  const int64_t i = blockIdx.x;
  const T* src = w + load_index(indices, dtype, element_offset(idx, i)) * wr;
  T* dst = out + i * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c * wc];
}

__global__ void embedding_keys_kernel(int64_t n, int dtype, Strided idx, const void* indices,
                                      unsigned long long* keys, int* positions) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    keys[i] = (unsigned long long)load_index(indices, dtype, element_offset(idx, i));
    positions[i] = int(i);
  }
}

// Block j, when j starts a run of equal sorted keys (row v), owns row v of dw: it adds the grad
// rows of the run in position order (the sort is stable), rounding to T after each add.
template <class T>
__global__ void embedding_backward_kernel(int64_t n, int64_t C, T* dw,
                                          const unsigned long long* keys, const int* positions,
                                          Strided g, const T* grad) {
  const int64_t j = blockIdx.x;
  if (j > 0 && keys[j] == keys[j - 1]) return;
  const unsigned long long v = keys[j];
  int64_t end = j + 1;
  while (end < n && keys[end] == v) ++end;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    T acc;
    store(&acc, compute_t<T>(0));
    for (int64_t k = j; k < end; ++k)
      store(&acc, load(&acc) + load(grad + element_offset(g, int64_t(positions[k]) * C + c)));
    dw[int64_t(v) * C + c] = acc;
  }
}

// Bits of the sort keys: indices are in [0, V).
int key_bits(int64_t V) {
  int bits = 1;
  while (bits < 63 && (int64_t(1) << bits) < V) ++bits;
  return bits;
}
int64_t align256(int64_t bytes) {
  return (bytes + 255) / 256 * 256;
}

// ---- cross-entropy: loss_i = lse(x_i) - x_i[t_i] ----

template <class T>
__global__ void cross_entropy_kernel(Rows r, const T* logits, int tdtype, const void* targets,
                                     int64_t ts, int64_t ignore, compute_t<T>* lse,
                                     compute_t<T>* per_row) {
  using A = compute_t<T>;
  const int64_t row = blockIdx.x, C = r.cols, xs = r.col_stride[1];
  const T* xr = logits + row_offset(r, 1, row);
  A m = -A(INFINITY);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) m = Max()(m, load(xr + c * xs));
  m = block_reduce(m, -A(INFINITY), Max());
  A s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += exp(load(xr + c * xs) - m);
  s = block_reduce(s, A(0), Add());
  if (threadIdx.x == 0) {
    const A l = m + log(s);
    const int64_t t = load_index(targets, tdtype, row * ts);  // checked by the host
    lse[row] = l;
    per_row[row] = t == ignore ? A(0) : l - load(xr + t * xs);
  }
}

//   d loss / d x_ic = (softmax(x_i)_c - [c == t_i]) * grad / count, 0 on ignored rows
template <class T>
__global__ void cross_entropy_backward_kernel(Rows r, T* dx, const T* x, int tdtype,
                                              const void* targets, int64_t ts, int64_t ignore,
                                              const compute_t<T>* lse, const void* grad_loss,
                                              int gdtype, double grad_value, int64_t count) {
  using A = compute_t<T>;
  const int64_t row = blockIdx.x, C = r.cols, ds = r.col_stride[0], xs = r.col_stride[1];
  T* dr = dx + row_offset(r, 0, row);
  const T* xr = x + row_offset(r, 1, row);
  const int64_t t = load_index(targets, tdtype, row * ts);
  if (t == ignore) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) store(dr + c * ds, A(0));
    return;
  }
  const double g = grad_loss ? load_scalar(grad_loss, gdtype) : grad_value;
  const A s = A(g / double(count > 1 ? count : 1)), l = lse[row];
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    A v = exp(load(xr + c * xs) - l) * s;
    if (c == t) {  // as the CPU: the softmax term is stored (rounded to T), then s subtracted
      T rounded;
      store(&rounded, v);
      v = load(&rounded) - s;
    }
    store(dr + c * ds, v);
  }
}

// Calls f.template operator()<T>() with T the floating element type of `dtype`.
template <class F>
int with_float(int dtype, F&& f) {
  switch (dtype) {
    case f32:
      f.template operator()<float>();
      break;
    case f64:
      f.template operator()<double>();
      break;
    case bf16:
      f.template operator()<__nv_bfloat16>();
      break;
    case f16:
      f.template operator()<__half>();
      break;
    default:
      return int(cudaErrorInvalidValue);
  }
  return int(cudaGetLastError());
}

unsigned grid_stride_blocks(int64_t n) {
  int64_t b = (n + 255) / 256;
  return unsigned(b < 1 ? 1 : (b > 4096 ? 4096 : b));
}

}  // namespace

// Every row kernel runs on grid (rows); the host keeps rows below 2^31.

int softmax(int dtype, bool log, const Rows& r, void* out, const void* x, void* stream) {
  if (r.rows == 0) return 0;
  return with_float(dtype, [&]<class T>() {
    auto* k = log ? softmax_kernel<T, true> : softmax_kernel<T, false>;
    k<<<unsigned(r.rows), threads_for(r.cols), 0, cudaStream_t(stream)>>>(r, static_cast<T*>(out),
                                                                          static_cast<const T*>(x));
  });
}

int softmax_backward(int dtype, bool log, const Rows& r, void* dx, const void* grad, const void* y,
                     void* stream) {
  if (r.rows == 0) return 0;
  return with_float(dtype, [&]<class T>() {
    auto* k = log ? softmax_backward_kernel<T, true> : softmax_backward_kernel<T, false>;
    k<<<unsigned(r.rows), threads_for(r.cols), 0, cudaStream_t(stream)>>>(
        r, static_cast<T*>(dx), static_cast<const T*>(grad), static_cast<const T*>(y));
  });
}

int layer_norm(int dtype, const Rows& r, void* y, const void* x, const void* weight,
               int64_t w_stride, const void* bias, int64_t b_stride, void* mean, void* rstd,
               double eps, void* stream) {
  if (r.rows == 0) return 0;
  return with_float(dtype, [&]<class T>() {
    using A = compute_t<T>;
    layer_norm_kernel<T><<<unsigned(r.rows), threads_for(r.cols), 0, cudaStream_t(stream)>>>(
        r, static_cast<T*>(y), static_cast<const T*>(x), static_cast<const T*>(weight), w_stride,
        static_cast<const T*>(bias), b_stride, static_cast<A*>(mean), static_cast<A*>(rstd), eps);
  });
}

int64_t layer_norm_backward_workspace(int dtype, const Rows& r) {
  int64_t blocks = (r.rows + ln_rows_per_block(r.rows) - 1) / ln_rows_per_block(r.rows);
  return 2 * blocks * r.cols * (dtype == f64 ? 8 : 4);
}

int layer_norm_backward(int dtype, const Rows& r, void* dx, const void* dy, const void* x,
                        const void* weight, int64_t w_stride, const void* mean, const void* rstd,
                        void* dweight, void* dbias, void* workspace, void* stream) {
  return with_float(dtype, [&]<class T>() {
    using A = compute_t<T>;
    cudaStream_t s = cudaStream_t(stream);
    const A* pm = static_cast<const A*>(mean);
    const A* ps = static_cast<const A*>(rstd);
    if (dx && r.rows > 0)
      layer_norm_dx_kernel<T><<<unsigned(r.rows), threads_for(r.cols), 0, s>>>(
          r, static_cast<T*>(dx), static_cast<const T*>(dy), static_cast<const T*>(x),
          static_cast<const T*>(weight), w_stride, pm, ps);
    if ((dweight || dbias) && r.cols > 0) {
      const int64_t per = ln_rows_per_block(r.rows), blocks = (r.rows + per - 1) / per;
      A* part_w = static_cast<A*>(workspace);
      A* part_b = part_w + blocks * r.cols;
      const unsigned col_blocks = unsigned((r.cols + 255) / 256);
      if (blocks > 0)
        layer_norm_dw_partial_kernel<T><<<dim3(col_blocks, unsigned(blocks)), 256, 0, s>>>(
            r, static_cast<const T*>(dy), static_cast<const T*>(x), pm, ps, per, part_w, part_b);
      layer_norm_dw_finish_kernel<T><<<col_blocks, 256, 0, s>>>(
          r.cols, blocks, part_w, part_b, static_cast<T*>(dweight), static_cast<T*>(dbias));
    }
  });
}

int check_indices(int index_dtype, const Strided& s, const void* indices, int64_t n, int64_t limit,
                  bool has_ignore, int64_t ignore, int64_t* stats, void* stream) {
  cudaStream_t st = cudaStream_t(stream);
  init_stats_kernel<<<1, 1, 0, st>>>(stats, n);
  if (n > 0)
    check_indices_kernel<<<grid_stride_blocks(n), 256, 0, st>>>(index_dtype, s, n, limit,
                                                                has_ignore, ignore, indices, stats);
  return int(cudaGetLastError());
}

int embedding(int dtype, int64_t n, int64_t C, void* out, const void* weight, int64_t w_row_stride,
              int64_t w_col_stride, int index_dtype, const Strided& idx, const void* indices,
              void* stream) {
  if (n == 0 || C == 0) return 0;
  return with_float(dtype, [&]<class T>() {
    embedding_kernel<T><<<unsigned(n), threads_for(C), 0, cudaStream_t(stream)>>>(
        C, static_cast<T*>(out), static_cast<const T*>(weight), w_row_stride, w_col_stride,
        index_dtype, idx, indices);
  });
}

int64_t embedding_backward_workspace(int64_t n, int64_t V) {
  size_t temp = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, temp, static_cast<const unsigned long long*>(nullptr),
                                  static_cast<unsigned long long*>(nullptr),
                                  static_cast<const int*>(nullptr), static_cast<int*>(nullptr),
                                  int(n), 0, key_bits(V));
  return 2 * align256(n * 8) + 2 * align256(n * 4) + align256(int64_t(temp));
}

int embedding_backward(int dtype, int64_t n, int64_t C, int64_t V, void* dw, const Strided& g,
                       const void* grad, int index_dtype, const Strided& idx, const void* indices,
                       void* workspace, int64_t workspace_bytes, void* stream) {
  if (n == 0 || C == 0) return 0;
  cudaStream_t s = cudaStream_t(stream);
  // Workspace: keys in and out (u64), positions in and out (i32), then the sort's scratch.
  char* p = static_cast<char*>(workspace);
  auto* keys_in = reinterpret_cast<unsigned long long*>(p);
  auto* keys_out = reinterpret_cast<unsigned long long*>(p + align256(n * 8));
  auto* pos_in = reinterpret_cast<int*>(p + 2 * align256(n * 8));
  auto* pos_out = reinterpret_cast<int*>(p + 2 * align256(n * 8) + align256(n * 4));
  char* temp = p + 2 * align256(n * 8) + 2 * align256(n * 4);
  size_t temp_bytes = size_t(workspace_bytes - (temp - p));
  embedding_keys_kernel<<<grid_stride_blocks(n), 256, 0, s>>>(n, index_dtype, idx, indices, keys_in,
                                                              pos_in);
  cudaError_t err = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, pos_in,
                                                    pos_out, int(n), 0, key_bits(V), s);
  if (err != cudaSuccess) return int(err);
  return with_float(dtype, [&]<class T>() {
    embedding_backward_kernel<T><<<unsigned(n), threads_for(C), 0, s>>>(
        n, C, static_cast<T*>(dw), keys_out, pos_out, g, static_cast<const T*>(grad));
  });
}

int cross_entropy(int dtype, const Rows& r, const void* logits, int target_dtype,
                  const void* targets, int64_t t_stride, int64_t ignore, void* lse, void* per_row,
                  void* stream) {
  if (r.rows == 0) return 0;
  return with_float(dtype, [&]<class T>() {
    using A = compute_t<T>;
    cross_entropy_kernel<T><<<unsigned(r.rows), threads_for(r.cols), 0, cudaStream_t(stream)>>>(
        r, static_cast<const T*>(logits), target_dtype, targets, t_stride, ignore,
        static_cast<A*>(lse), static_cast<A*>(per_row));
  });
}

int cross_entropy_backward(int dtype, const Rows& r, void* dx, const void* logits, int target_dtype,
                           const void* targets, int64_t t_stride, int64_t ignore, const void* lse,
                           const void* grad_loss, int grad_dtype, double grad_value, int64_t count,
                           void* stream) {
  if (r.rows == 0) return 0;
  return with_float(dtype, [&]<class T>() {
    using A = compute_t<T>;
    cross_entropy_backward_kernel<T>
        <<<unsigned(r.rows), threads_for(r.cols), 0, cudaStream_t(stream)>>>(
            r, static_cast<T*>(dx), static_cast<const T*>(logits), target_dtype, targets, t_stride,
            ignore, static_cast<const A*>(lse), grad_loss, grad_dtype, grad_value, count);
  });
}

}  // namespace forge::cuda::kernels
