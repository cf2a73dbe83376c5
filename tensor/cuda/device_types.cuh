// Element access shared by the CUDA kernels (.cu files only): the type each element type computes
// in, and loads and stores that convert as the CPU kernels do (tensor/dtype.h).
//
//   compute_t<__nv_bfloat16> x = load(p);   // float
//   store(q, x * 2);                         // rounded to bf16 once, to nearest even
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace forge::cuda::kernels {

// The DType codes of tensor/dtype.h, as the launchers receive them.
enum Code { f32 = 0, f64 = 1, bf16 = 2, f16 = 3, i8 = 4, u8 = 5, i32 = 6, i64 = 7 };

// bf16 and f16 are storage types computed in f32; 8-bit integers compute in 32 bits; the rest in
// themselves.
template <class T>
struct Compute {
  using type = T;
};
template <>
struct Compute<__nv_bfloat16> {
  using type = float;
};
template <>
struct Compute<__half> {
  using type = float;
};
template <>
struct Compute<int8_t> {
  using type = int32_t;
};
template <>
struct Compute<uint8_t> {
  using type = int32_t;
};
template <class T>
using compute_t = typename Compute<T>::type;

template <class T>
__device__ inline compute_t<T> load(const T* p) {
  return *p;
}
template <>
__device__ inline float load(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
template <>
__device__ inline float load(const __half* p) {
  return __half2float(*p);
}

// As the CPU's store(): a 16-bit float from any value goes through f32 first.
template <class T, class C>
__device__ inline void store(T* p, C v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    *p = __float2bfloat16_rn(float(v));
  else if constexpr (std::is_same_v<T, __half>)
    *p = __float2half_rn(float(v));
  else
    *p = T(v);
}

}  // namespace forge::cuda::kernels
