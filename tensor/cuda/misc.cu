// The remaining elementwise kernels: casts and strided copies, comparisons, where, the activation
// backwards, dropout (Philox on the device, the CPU's bits), in-place updates, finiteness checks
// and row gathers. Every kernel is a grid-stride loop, one element per step; strided operands turn
// the linear index into coordinates, then into each operand's offset. bf16 and f16 compute in f32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "tensor/cuda/device_types.cuh"
#include "tensor/cuda/kernels_misc.h"

namespace forge::cuda::kernels {

namespace {

// Offset (in elements) of linear index i in operand k, for any of the strided descriptions.
template <class S>
__device__ int64_t offset(const S& s, int k, int64_t i) {
  int64_t off = 0;
  for (int d = s.dims - 1; d >= 0; --d) {
    int64_t c = i % s.sizes[d];
    i /= s.sizes[d];
    off += c * s.strides[k][d];
  }
  return off;
}

__device__ int64_t first_index() {
  return blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
}
__device__ int64_t grid_stride() {
  return int64_t(gridDim.x) * blockDim.x;
}

// Enough blocks of 256 threads to cover n, at most 524280 (the grid-stride loop does the rest).
dim3 grid_for(int64_t n) {
  int64_t blocks = (n + 255) / 256;
  return dim3(unsigned(blocks < 1 ? 1 : (blocks > 524280 ? 524280 : blocks)));
}
constexpr int kThreads = 256;

// Calls f.template operator()<T>() with T the element type of `dtype`; false for an unknown code.
template <class F>
bool with_type(int dtype, F&& f) {
  switch (dtype) {
    case f32:
      f.template operator()<float>();
      return true;
    case f64:
      f.template operator()<double>();
      return true;
    case bf16:
      f.template operator()<__nv_bfloat16>();
      return true;
    case f16:
      f.template operator()<__half>();
      return true;
    case i8:
      f.template operator()<int8_t>();
      return true;
    case u8:
      f.template operator()<uint8_t>();
      return true;
    case i32:
      f.template operator()<int32_t>();
      return true;
    case i64:
      f.template operator()<int64_t>();
      return true;
    default:
      return false;
  }
}
template <class F>
bool with_float_type(int dtype, F&& f) {
  switch (dtype) {
    case f32:
      f.template operator()<float>();
      return true;
    case f64:
      f.template operator()<double>();
      return true;
    case bf16:
      f.template operator()<__nv_bfloat16>();
      return true;
    case f16:
      f.template operator()<__half>();
      return true;
    default:
      return false;
  }
}
int status(bool dispatched) {
  return dispatched ? int(cudaGetLastError()) : int(cudaErrorInvalidValue);
}

// ---------------------------------------------------------------------------------------------
// Casts

template <class D, class S>
__global__ void copy_cast_kernel(Strided s, D* out, const S* a) {
  for (int64_t i = first_index(); i < s.numel; i += grid_stride()) {
    const int64_t o = s.contiguous ? i : offset(s, 0, i), ia = s.contiguous ? i : offset(s, 1, i);
    if constexpr (std::is_same_v<D, S>)
      out[o] = a[ia];
    else
      store(out + o, load(a + ia));
  }
}

// ---------------------------------------------------------------------------------------------
// Comparisons, where

template <class T>
__global__ void compare_kernel(Compare op, Strided s, uint8_t* out, const T* a, const T* b) {
  for (int64_t i = first_index(); i < s.numel; i += grid_stride()) {
    const bool c = s.contiguous;
    const auto x = load(a + (c ? i : offset(s, 1, i))), y = load(b + (c ? i : offset(s, 2, i)));
    bool r = false;
    switch (op) {
      case Compare::eq:
        r = x == y;
        break;
      case Compare::gt:
        r = x > y;
        break;
      case Compare::lt:
        r = x < y;
        break;
      case Compare::ne:
        r = x != y;
        break;
    }
    out[c ? i : offset(s, 0, i)] = uint8_t(r);
  }
}

template <class T>
__global__ void where_kernel(Strided4 s, T* out, const uint8_t* cond, const T* a, const T* b) {
  for (int64_t i = first_index(); i < s.numel; i += grid_stride())
    out[offset(s, 0, i)] = cond[offset(s, 1, i)] != 0 ? a[offset(s, 2, i)] : b[offset(s, 3, i)];
}

// ---------------------------------------------------------------------------------------------
// Activation backwards: grad * f'(x), the CPU's formulas (tensor/ops_elementwise.cpp).

template <class C>
__device__ C activation_grad(ActivationBackward op, C g, C v) {
  constexpr C k0 = C(0.7978845608028654);  // sqrt(2/pi)
  constexpr C kInvSqrt2 = C(0.7071067811865476), kInvSqrt2Pi = C(0.3989422804014327);
  switch (op) {
    case ActivationBackward::relu:
      return v > C(0) ? g : C(0);
    case ActivationBackward::gelu_tanh: {
      // s = 0.5 (1 + tanh(u)), q = exp(-2|u|), r = 1 / (1 + q): s = r or q r, s (1 - s) = q r^2
      C v2 = v * v;
      C u = k0 * (v + C(0.044715) * v2 * v);
      C q = exp(C(-2) * fabs(u));
      C r = C(1) / (C(1) + q);
      C s = u < C(0) ? q * r : r;
      C du = k0 * (C(1) + C(3 * 0.044715) * v2);
      return g * (s + C(2) * (q * r * r * v) * du);
    }
    case ActivationBackward::gelu_erf: {
      C cdf = C(0.5) * (C(1) + erf(v * kInvSqrt2));
      C pdf = kInvSqrt2Pi * exp(C(-0.5) * v * v);
      return g * (cdf + v * pdf);
    }
    case ActivationBackward::tanh:
      return g * (C(1) - v * v);
    case ActivationBackward::sigmoid:
      return g * v * (C(1) - v);
  }
  return g;
}

template <class T>
__global__ void activation_backward_kernel(ActivationBackward op, Strided s, T* out, const T* grad,
                                           const T* x) {
  for (int64_t i = first_index(); i < s.numel; i += grid_stride()) {
    const bool c = s.contiguous;
    store(out + (c ? i : offset(s, 0, i)),
          activation_grad(op, load(grad + (c ? i : offset(s, 1, i))),
                          load(x + (c ? i : offset(s, 2, i)))));
  }
}

// ---------------------------------------------------------------------------------------------
// Dropout

// Philox4x32-10 of tensor/random.cpp: counter (c0, c1, 0, 0), 64-bit key; word w of the block.
__device__ uint32_t philox_word(uint64_t counter, uint64_t key, int w) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kM0, c0), lo0 = kM0 * c0;
    const uint32_t hi1 = __umulhi(kM1, c2), lo1 = kM1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return w == 0 ? c0 : w == 1 ? c1 : w == 2 ? c2 : c3;
}

__global__ void dropout_mask_kernel(DropoutGeometry g, uint64_t seed, uint64_t first, float p,
                                    uint8_t* mask) {
  const int64_t run = g.length * g.inner, n = g.outer * run;
  for (int64_t k = first_index(); k < n; k += grid_stride()) {
    const int64_t o = k / run, j = k % run;
    const int64_t i = (o * g.n_dim + g.start) * g.inner + j;  // index in the whole draw
    const uint32_t bits = philox_word(first + uint64_t(i / 4), seed, int(i % 4));
    const float u = float(bits >> 8) * (1.0f / 16777216.0f);  // uniform_from_bits
    mask[k] = uint8_t(u >= p);
  }
}

template <class T>
__global__ void dropout_apply_kernel(int64_t n, T* out, const T* x, const uint8_t* mask,
                                     compute_t<T> scale) {
  for (int64_t i = first_index(); i < n; i += grid_stride())
    store(out + i, mask[i] ? load(x + i) * scale : compute_t<T>(0));
}

// ---------------------------------------------------------------------------------------------
// In place

template <class T>
__global__ void add_scaled_kernel(Strided s, T* a, const T* b, compute_t<T> alpha, bool unit) {
  for (int64_t i = first_index(); i < s.numel; i += grid_stride()) {
    const bool c = s.contiguous;
    T* pa = a + (c ? i : offset(s, 0, i));
    const auto y = load(b + (c ? i : offset(s, 2, i)));
    if (unit)
      store(pa, load(pa) + y);
    else
      store(pa, load(pa) + alpha * y);
  }
}

template <class T>
__global__ void scale_kernel(Strided s, T* a, compute_t<T> scale) {
  for (int64_t i = first_index(); i < s.numel; i += grid_stride()) {
    T* pa = a + (s.contiguous ? i : offset(s, 0, i));
    store(pa, load(pa) * scale);
  }
}

template <class T>
__global__ void check_finite_and_scale_kernel(int64_t n, T* data, compute_t<T> scale, bool do_scale,
                                              int* flag) {
  bool bad = false;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const compute_t<T> x = load(data + i);
    bad = bad || !isfinite(x);
    if (do_scale) store(data + i, x * scale);
  }
  if (bad) *flag = 1;  // every writer writes the same value: no atomic needed
}

// ---------------------------------------------------------------------------------------------
// Gathers

template <class W>
__global__ void gather_rows_kernel(int64_t row_elems, int64_t n, W* out, const W* a,
                                   const int64_t* index) {
  const int64_t total = n * row_elems;
  for (int64_t i = first_index(); i < total; i += grid_stride()) {
    const int64_t r = i / row_elems, c = i % row_elems;
    out[i] = a[index[r] * row_elems + c];
  }
}

}  // namespace

int copy_cast(int out_dtype, int in_dtype, const Strided& s, void* out, const void* a,
              void* stream) {
  if (s.numel == 0) return 0;
  bool ok = false;
  with_type(out_dtype, [&]<class D>() {
    ok = with_type(in_dtype, [&]<class S>() {
      copy_cast_kernel<D, S><<<grid_for(s.numel), kThreads, 0, cudaStream_t(stream)>>>(
          s, static_cast<D*>(out), static_cast<const S*>(a));
    });
  });
  return status(ok);
}

int compare(Compare op, int dtype, const Strided& s, void* out, const void* a, const void* b,
            void* stream) {
  if (s.numel == 0) return 0;
  return status(with_type(dtype, [&]<class T>() {
    compare_kernel<T><<<grid_for(s.numel), kThreads, 0, cudaStream_t(stream)>>>(
        op, s, static_cast<uint8_t*>(out), static_cast<const T*>(a), static_cast<const T*>(b));
  }));
}

int where(int dtype, const Strided4& s, void* out, const void* cond, const void* a, const void* b,
          void* stream) {
  if (s.numel == 0) return 0;
  return status(with_type(dtype, [&]<class T>() {
    where_kernel<T><<<grid_for(s.numel), kThreads, 0, cudaStream_t(stream)>>>(
        s, static_cast<T*>(out), static_cast<const uint8_t*>(cond), static_cast<const T*>(a),
        static_cast<const T*>(b));
  }));
}

int activation_backward(ActivationBackward op, int dtype, const Strided& s, void* out,
                        const void* grad, const void* x, void* stream) {
  if (s.numel == 0) return 0;
  return status(with_float_type(dtype, [&]<class T>() {
    activation_backward_kernel<T><<<grid_for(s.numel), kThreads, 0, cudaStream_t(stream)>>>(
        op, s, static_cast<T*>(out), static_cast<const T*>(grad), static_cast<const T*>(x));
  }));
}

int dropout_mask(const DropoutGeometry& g, uint64_t seed, uint64_t first, float p, uint8_t* mask,
                 void* stream) {
  const int64_t n = g.outer * g.length * g.inner;
  if (n == 0) return 0;
  dropout_mask_kernel<<<grid_for(n), kThreads, 0, cudaStream_t(stream)>>>(g, seed, first, p, mask);
  return int(cudaGetLastError());
}

int dropout_apply(int dtype, int64_t n, void* out, const void* x, const uint8_t* mask, double scale,
                  void* stream) {
  if (n == 0) return 0;
  return status(with_float_type(dtype, [&]<class T>() {
    dropout_apply_kernel<T><<<grid_for(n), kThreads, 0, cudaStream_t(stream)>>>(
        n, static_cast<T*>(out), static_cast<const T*>(x), mask, compute_t<T>(scale));
  }));
}

int add_scaled_(int dtype, const Strided& s, void* a, const void* b, double alpha, void* stream) {
  if (s.numel == 0) return 0;
  return status(with_type(dtype, [&]<class T>() {
    // The CPU's coefficient: compute_t<T>(alpha) (an integer alpha truncates for integer T).
    add_scaled_kernel<T><<<grid_for(s.numel), kThreads, 0, cudaStream_t(stream)>>>(
        s, static_cast<T*>(a), static_cast<const T*>(b), compute_t<T>(alpha), alpha == 1.0);
  }));
}

int scale_(int dtype, const Strided& s, void* a, double scale, void* stream) {
  if (s.numel == 0) return 0;
  return status(with_type(dtype, [&]<class T>() {
    scale_kernel<T><<<grid_for(s.numel), kThreads, 0, cudaStream_t(stream)>>>(s, static_cast<T*>(a),
                                                                              compute_t<T>(scale));
  }));
}

int check_finite_and_scale_(int dtype, int64_t n, void* data, double scale, bool do_scale,
                            int* flag, void* stream) {
  if (n == 0) return 0;
  return status(with_float_type(dtype, [&]<class T>() {
    check_finite_and_scale_kernel<T><<<grid_for(n), kThreads, 0, cudaStream_t(stream)>>>(
        n, static_cast<T*>(data), compute_t<T>(scale), do_scale, flag);
  }));
}

int gather_rows(int64_t elem_bytes, int64_t row_elems, int64_t n, void* out, const void* a,
                const int64_t* index, void* stream) {
  if (n == 0 || row_elems == 0) return 0;
  auto launch = [&]<class W>() {
    gather_rows_kernel<W><<<grid_for(n * row_elems), kThreads, 0, cudaStream_t(stream)>>>(
        row_elems, n, static_cast<W*>(out), static_cast<const W*>(a), index);
  };
  switch (elem_bytes) {
    case 1:
      launch.template operator()<uint8_t>();
      break;
    case 2:
      launch.template operator()<uint16_t>();
      break;
    case 4:
      launch.template operator()<uint32_t>();
      break;
    case 8:
      launch.template operator()<uint64_t>();
      break;
    default:
      return int(cudaErrorInvalidValue);
  }
  return int(cudaGetLastError());
}

}  // namespace forge::cuda::kernels
