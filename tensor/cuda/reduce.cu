// Reduction kernels: sum and max/argmax over any set of dims of a strided tensor, and the
// all-finite check.
//
// The input is (outputs) x (R reduced elements), both enumerated through sizes and strides
// (kernels_nn.h ReduceLayout). Two shapes of work:
//   by rows:    one block of 256 threads per output; thread t takes elements t, t+256, ... of its
//               chunk, then the block combines the 256 partials in a fixed tree;
//   by columns: one thread per output walks its chunk in order (adjacent threads read adjacent
//               outputs: coalesced when the outputs are the contiguous dim).
// With splits > 1, grid.y cuts R into chunks whose partial results go to a workspace; a second
// kernel combines each output's partials in chunk order. The order of every addition is fixed by
// the shape, so sums are the same from run to run. max picks the first maximum (a NaN is the
// maximum, the first NaN wins): a total order, so its result does not depend on the order at all.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "tensor/cuda/device_types.cuh"
#include "tensor/cuda/kernels_nn.h"

namespace forge::cuda::kernels {

namespace {

constexpr int kThreads = 256;

template <class T>
using sum_t = std::conditional_t<std::is_integral_v<T>, int64_t, compute_t<T>>;

// Offset (elements) of row-major index i over `dims` sizes with the given strides.
__device__ int64_t offset(int dims, const int64_t* sizes, const int64_t* strides, int64_t i) {
  int64_t off = 0;
  for (int d = dims - 1; d >= 0; --d) {
    off += (i % sizes[d]) * strides[d];
    i /= sizes[d];
  }
  return off;
}

// ---- The two reductions as (identity, element, combine, write) ----

template <class T>
struct SumOp {
  using Acc = sum_t<T>;
  __device__ static Acc identity() { return Acc(0); }
  __device__ static Acc element(const T* p, int64_t) { return Acc(load(p)); }
  // a holds elements before b's.
  __device__ static Acc combine(Acc a, Acc b) { return a + b; }
  struct Out {
    void* values;
    bool out_i64;
  };
  __device__ static void write(const Out& out, int64_t o, Acc a) {
    if constexpr (std::is_integral_v<T>) {
      if (out.out_i64) {
        static_cast<int64_t*>(out.values)[o] = a;
        return;
      }
    }
    store(static_cast<T*>(out.values) + o, a);
  }
};

template <class T>
struct MaxOp {
  using C = compute_t<T>;
  struct Acc {
    C v;
    int64_t i;  // -1: no element yet
  };
  __device__ static Acc identity() { return {C(0), -1}; }
  __device__ static Acc element(const T* p, int64_t r) { return {load(p), r}; }
  // The larger; NaN above everything; ties (and two NaNs) to the smaller index.
  __device__ static Acc combine(Acc a, Acc b) {
    if (a.i < 0) return b;
    if (b.i < 0) return a;
    bool a_nan = a.v != a.v, b_nan = b.v != b.v;
    if (a_nan != b_nan) return a_nan ? a : b;
    if (!a_nan) {
      if (a.v > b.v) return a;
      if (b.v > a.v) return b;
    }
    return a.i < b.i ? a : b;
  }
  struct Out {
    void* values;
    int64_t* indices;
  };
  __device__ static void write(const Out& out, int64_t o, Acc a) {
    store(static_cast<T*>(out.values) + o, a.v);
    if (out.indices) out.indices[o] = a.i;
  }
};

// One block per (output blockIdx.x, chunk blockIdx.y). kFinal: write the output, else the partial.
template <class Op, class T, bool kFinal>
__global__ void reduce_rows_kernel(ReduceLayout l, const T* in, typename Op::Out out,
                                   typename Op::Acc* partial) {
  using Acc = typename Op::Acc;
  __shared__ Acc sh[kThreads];
  const int64_t o = blockIdx.x, split = blockIdx.y;
  const T* base = in + offset(l.kept_dims, l.kept_sizes, l.kept_strides, o);
  const int64_t r0 = split * l.chunk, r1 = min(l.R, r0 + l.chunk);
  Acc acc = Op::identity();
  for (int64_t r = r0 + threadIdx.x; r < r1; r += kThreads)
    acc =
        Op::combine(acc, Op::element(base + offset(l.red_dims, l.red_sizes, l.red_strides, r), r));
  sh[threadIdx.x] = acc;
  __syncthreads();
  // A fixed tree over the 256 partials (max's combine keys on the index, so any order would do).
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (int(threadIdx.x) < s) sh[threadIdx.x] = Op::combine(sh[threadIdx.x], sh[threadIdx.x + s]);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if constexpr (kFinal)
      Op::write(out, o, sh[0]);
    else
      partial[o * l.splits + split] = sh[0];
  }
}

// One thread per output (blockIdx.x * 256 + threadIdx.x) and chunk (blockIdx.y).
template <class Op, class T, bool kFinal>
__global__ void reduce_columns_kernel(ReduceLayout l, const T* in, typename Op::Out out,
                                      typename Op::Acc* partial) {
  using Acc = typename Op::Acc;
  const int64_t o = blockIdx.x * int64_t(kThreads) + threadIdx.x, split = blockIdx.y;
  if (o >= l.outputs) return;
  const T* base = in + offset(l.kept_dims, l.kept_sizes, l.kept_strides, o);
  const int64_t r0 = split * l.chunk, r1 = min(l.R, r0 + l.chunk);
  Acc acc = Op::identity();
  for (int64_t r = r0; r < r1; ++r)
    acc =
        Op::combine(acc, Op::element(base + offset(l.red_dims, l.red_sizes, l.red_strides, r), r));
  if constexpr (kFinal)
    Op::write(out, o, acc);
  else
    partial[o * l.splits + split] = acc;
}

// Each output's partials, combined in chunk order.
template <class Op>
__global__ void reduce_finish_kernel(int64_t outputs, int64_t splits,
                                     const typename Op::Acc* partial, typename Op::Out out) {
  const int64_t o = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (o >= outputs) return;
  typename Op::Acc acc = Op::identity();
  for (int64_t s = 0; s < splits; ++s) acc = Op::combine(acc, partial[o * splits + s]);
  Op::write(out, o, acc);
}

unsigned blocks_for(int64_t n) {
  return unsigned((n + kThreads - 1) / kThreads);
}

template <class Op, class T>
int reduce(const ReduceLayout& l, const T* in, typename Op::Out out, void* workspace,
           cudaStream_t stream) {
  using Acc = typename Op::Acc;
  static_assert(sizeof(Acc) <= 16, "reduce_workspace_bytes allows 16 bytes per partial");
  if (l.outputs == 0) return 0;
  // Grid limits: x < 2^31, y <= 65535 (the host refuses more outputs; splits <= 4096).
  dim3 grid(l.by_column ? blocks_for(l.outputs) : unsigned(l.outputs), unsigned(l.splits));
  Acc* partial = static_cast<Acc*>(workspace);
  if (l.splits == 1) {
    if (l.by_column)
      reduce_columns_kernel<Op, T, true><<<grid, kThreads, 0, stream>>>(l, in, out, nullptr);
    else
      reduce_rows_kernel<Op, T, true><<<grid, kThreads, 0, stream>>>(l, in, out, nullptr);
    return int(cudaGetLastError());
  }
  if (l.by_column)
    reduce_columns_kernel<Op, T, false><<<grid, kThreads, 0, stream>>>(l, in, out, partial);
  else
    reduce_rows_kernel<Op, T, false><<<grid, kThreads, 0, stream>>>(l, in, out, partial);
  reduce_finish_kernel<Op>
      <<<blocks_for(l.outputs), kThreads, 0, stream>>>(l.outputs, l.splits, partial, out);
  return int(cudaGetLastError());
}

template <class T>
__global__ void any_nonfinite_kernel(Strided s, const T* in, uint8_t* flag) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < s.numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    auto v = load(in + (s.contiguous ? i : offset(s.dims, s.sizes, s.strides[1], i)));
    if (!isfinite(v)) *flag = 1;  // every writer writes the same byte: no race on the result
  }
}

// Calls f.template operator()<T>() with T the element type of `dtype` (floating only unless
// kIntegers).
template <bool kIntegers, class F>
int with_type(int dtype, F&& f) {
  switch (dtype) {
    case f32:
      return f.template operator()<float>();
    case f64:
      return f.template operator()<double>();
    case bf16:
      return f.template operator()<__nv_bfloat16>();
    case f16:
      return f.template operator()<__half>();
    default:
      break;
  }
  if constexpr (kIntegers) {
    switch (dtype) {
      case i8:
        return f.template operator()<int8_t>();
      case u8:
        return f.template operator()<uint8_t>();
      case i32:
        return f.template operator()<int32_t>();
      case i64:
        return f.template operator()<int64_t>();
      default:
        break;
    }
  }
  return int(cudaErrorInvalidValue);
}

}  // namespace

int reduce_sum(int dtype, const ReduceLayout& l, void* out, bool out_i64, const void* in,
               void* workspace, void* stream) {
  return with_type<true>(dtype, [&]<class T>() {
    return reduce<SumOp<T>>(l, static_cast<const T*>(in), {out, out_i64}, workspace,
                            cudaStream_t(stream));
  });
}

int reduce_max(int dtype, const ReduceLayout& l, void* values, int64_t* indices, const void* in,
               void* workspace, void* stream) {
  return with_type<true>(dtype, [&]<class T>() {
    return reduce<MaxOp<T>>(l, static_cast<const T*>(in), {values, indices}, workspace,
                            cudaStream_t(stream));
  });
}

int any_nonfinite(int dtype, const Strided& s, const void* in, uint8_t* flag, void* stream) {
  if (s.numel == 0) return 0;
  int64_t blocks = (s.numel + kThreads - 1) / kThreads;
  dim3 grid(unsigned(blocks > 4096 ? 4096 : blocks));
  return with_type<false>(dtype, [&]<class T>() {
    any_nonfinite_kernel<T>
        <<<grid, kThreads, 0, cudaStream_t(stream)>>>(s, static_cast<const T*>(in), flag);
    return int(cudaGetLastError());
  });
}

}  // namespace forge::cuda::kernels
