// Launchers of the CUDA kernels (the .cu files), with plain C++ signatures: no CUDA or library
// headers here, so host code of either compiler includes it. Each returns the launch status (a
// cudaError_t as int, 0 for success) for the caller to check with FORGE_CUDA_CHECK.
//
// Element types: kernels take the dtype code of tensor/dtype.h (DType as int) and compute in f32
// (f64 for f64), as the CPU kernels do: bf16 and f16 are storage types.
#pragma once

#include <cstdint>

namespace forge::cuda::kernels {

constexpr int kMaxDims = 8;

// Up to kMaxDims dimensions of an output and its operands: sizes, and each operand's strides in
// elements (0 where it is broadcast). numel = product of sizes.
struct Strided {
  int dims = 0;
  int64_t numel = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[3][kMaxDims] = {};  // [0] output, [1] first operand, [2] second operand
  bool contiguous = false;            // every operand contiguous with the output's shape
};

enum class Binary : int { add, sub, mul, div, maximum };
enum class Unary : int { neg, exp, log, sqrt, tanh, sigmoid, relu, abs, gelu_tanh, gelu_erf };

// out = a op b, all of dtype `dtype`.
int binary(Binary op, int dtype, const Strided& s, void* out, const void* a, const void* b,
           void* stream);
// out = f(a) (unary ops ignore strides[2]).
int unary(Unary op, int dtype, const Strided& s, void* out, const void* a, void* stream);
// out = a * scale + shift, elementwise (a affine map: mul and add by scalars).
int affine(int dtype, const Strided& s, void* out, const void* a, double scale, double shift,
           void* stream);
// out = a ^ exponent, elementwise, on floating dtypes: as the CPU's pow, x * x for exponent 2, x
// for 1, else pow(x, exponent) with the exponent rounded to the compute type (f32, f64 for f64);
// IEEE pow's special cases (a negative base to a non-integer power is NaN, pow(0, -1) is inf,
// pow(x, 0) is 1). (Not named pow: that would hide the math function inside this namespace.)
int pow_scalar(int dtype, const Strided& s, void* out, const void* a, double exponent,
               void* stream);
// Fills n contiguous elements with value.
int fill(int dtype, int64_t n, void* out, double value, void* stream);

}  // namespace forge::cuda::kernels
