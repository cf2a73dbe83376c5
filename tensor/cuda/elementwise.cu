// Elementwise kernels: binary and unary maps, over contiguous data (one thread per element, a
// grid-stride loop) or over broadcast, strided operands (each thread turns its linear index into
// coordinates, then into each operand's offset). bf16 and f16 load to f32, compute, store back.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "tensor/cuda/device_types.cuh"
#include "tensor/cuda/kernels.h"

namespace forge::cuda::kernels {

namespace {

template <class C>
__device__ C apply(Binary op, C a, C b) {
  switch (op) {
    case Binary::add:
      return a + b;
    case Binary::sub:
      return a - b;
    case Binary::mul:
      return a * b;
    case Binary::div:
      return a / b;
    case Binary::maximum:
      return a > b ? a : b;  // as the CPU: a NaN in `a` gives `b`
  }
  return a;
}

template <class C>
__device__ C apply(Unary op, C x) {
  if constexpr (std::is_floating_point_v<C>) {
    constexpr C k0 = C(0.7978845608028654), k1 = C(0.044715);  // sqrt(2/pi), GELU's tanh form
    switch (op) {
      case Unary::neg:
        return -x;
      case Unary::exp:
        return exp(x);
      case Unary::log:
        return log(x);
      case Unary::sqrt:
        return sqrt(x);
      case Unary::tanh:
        return tanh(x);
      case Unary::sigmoid:
        return C(1) / (C(1) + exp(-x));
      case Unary::relu:
        return x > C(0) ? x : C(0);
      case Unary::abs:
        return fabs(x);
      case Unary::gelu_tanh:
        return C(0.5) * x * (C(1) + tanh(k0 * (x + k1 * x * x * x)));
      case Unary::gelu_erf:
        return C(0.5) * x * (C(1) + erf(x * C(0.7071067811865476)));
    }
  } else {
    switch (op) {
      case Unary::neg:
        return -x;
      case Unary::relu:
        return x > 0 ? x : 0;
      case Unary::abs:
        return x < 0 ? -x : x;
      default:
        return x;  // the host refuses the others on integers
    }
  }
  return x;
}

// Offset (in elements) of linear index i in operand k.
__device__ int64_t offset(const Strided& s, int k, int64_t i) {
  int64_t off = 0;
  for (int d = s.dims - 1; d >= 0; --d) {
    int64_t c = i % s.sizes[d];
    i /= s.sizes[d];
    off += c * s.strides[k][d];
  }
  return off;
}

template <class T>
__global__ void binary_kernel(Binary op, Strided s, T* out, const T* a, const T* b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < s.numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    if (s.contiguous) {
      store(out + i, apply(op, load(a + i), load(b + i)));
    } else {
      store(out + offset(s, 0, i), apply(op, load(a + offset(s, 1, i)), load(b + offset(s, 2, i))));
    }
  }
}

template <class T>
__global__ void unary_kernel(Unary op, Strided s, T* out, const T* a) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < s.numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    if (s.contiguous) {
      store(out + i, apply(op, load(a + i)));
    } else {
      store(out + offset(s, 0, i), apply(op, load(a + offset(s, 1, i))));
    }
  }
}

template <class T>
__global__ void affine_kernel(Strided s, T* out, const T* a, double scale, double shift) {
  using C = typename Compute<T>::type;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < s.numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = s.contiguous ? i : offset(s, 0, i), ia = s.contiguous ? i : offset(s, 1, i);
    store(out + o, load(a + ia) * C(scale) + C(shift));
  }
}

// pow with a scalar exponent, the CPU's cases: x * x for 2, x for 1, else pow in the compute type.
template <class T>
__global__ void pow_kernel(Strided s, T* out, const T* a, double exponent) {
  using C = typename Compute<T>::type;
  const C e = C(exponent);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < s.numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = s.contiguous ? i : offset(s, 0, i), ia = s.contiguous ? i : offset(s, 1, i);
    const C x = load(a + ia);
    C y;
    if (exponent == 2.0) {
      y = x * x;
    } else if (exponent == 1.0) {
      y = x;
    } else if constexpr (std::is_same_v<C, float>) {
      y = powf(x, e);
    } else {
      y = ::pow(x, e);
    }
    store(out + o, y);
  }
}

template <class T>
__global__ void fill_kernel(int64_t n, T* out, double value) {
  using C = typename Compute<T>::type;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store(out + i, C(value));
}

// Enough blocks of 256 threads to cover n, at most 65535 x 8 (the grid-stride loop does the rest).
dim3 grid_for(int64_t n) {
  int64_t blocks = (n + 255) / 256;
  return dim3(unsigned(blocks < 1 ? 1 : (blocks > 524280 ? 524280 : blocks)));
}

// Calls f.template operator()<T>() with T the element type of `dtype`.
template <class F>
int with_type(int dtype, F&& f) {
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
    case i8:
      f.template operator()<int8_t>();
      break;
    case u8:
      f.template operator()<uint8_t>();
      break;
    case i32:
      f.template operator()<int32_t>();
      break;
    case i64:
      f.template operator()<int64_t>();
      break;
    default:
      return int(cudaErrorInvalidValue);
  }
  return int(cudaGetLastError());
}

}  // namespace

int binary(Binary op, int dtype, const Strided& s, void* out, const void* a, const void* b,
           void* stream) {
  if (s.numel == 0) return 0;
  return with_type(dtype, [&]<class T>() {
    binary_kernel<T><<<grid_for(s.numel), 256, 0, cudaStream_t(stream)>>>(
        op, s, static_cast<T*>(out), static_cast<const T*>(a), static_cast<const T*>(b));
  });
}

int unary(Unary op, int dtype, const Strided& s, void* out, const void* a, void* stream) {
  if (s.numel == 0) return 0;
  return with_type(dtype, [&]<class T>() {
    unary_kernel<T><<<grid_for(s.numel), 256, 0, cudaStream_t(stream)>>>(
        op, s, static_cast<T*>(out), static_cast<const T*>(a));
  });
}

int affine(int dtype, const Strided& s, void* out, const void* a, double scale, double shift,
           void* stream) {
  if (s.numel == 0) return 0;
  return with_type(dtype, [&]<class T>() {
    affine_kernel<T><<<grid_for(s.numel), 256, 0, cudaStream_t(stream)>>>(
        s, static_cast<T*>(out), static_cast<const T*>(a), scale, shift);
  });
}

int pow_scalar(int dtype, const Strided& s, void* out, const void* a, double exponent,
               void* stream) {
  if (s.numel == 0) return 0;
  switch (dtype) {  // floating only (the host checks): integers have no pow
    case f32:
    case f64:
    case bf16:
    case f16:
      break;
    default:
      return int(cudaErrorInvalidValue);
  }
  return with_type(dtype, [&]<class T>() {
    if constexpr (std::is_floating_point_v<typename Compute<T>::type>) {
      pow_kernel<T><<<grid_for(s.numel), 256, 0, cudaStream_t(stream)>>>(
          s, static_cast<T*>(out), static_cast<const T*>(a), exponent);
    }
  });
}

int fill(int dtype, int64_t n, void* out, double value, void* stream) {
  if (n == 0) return 0;
  return with_type(dtype, [&]<class T>() {
    fill_kernel<T><<<grid_for(n), 256, 0, cudaStream_t(stream)>>>(n, static_cast<T*>(out), value);
  });
}

}  // namespace forge::cuda::kernels
