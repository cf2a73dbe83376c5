// Launchers of the remaining elementwise kernels (tensor/cuda/misc.cu): dtype casts and strided
// copies, comparisons, where, the activation backwards, dropout, the in-place updates, finiteness
// checks and row gathers. Plain C++ signatures like tensor/cuda/kernels.h; each returns the launch
// status (a cudaError_t as int, 0 for success).
#pragma once

#include <cstdint>

#include "tensor/cuda/kernels.h"

namespace forge::cuda::kernels {

// Four strided operands over one shape (where: output, condition, a, b).
struct Strided4 {
  int dims = 0;
  int64_t numel = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[4][kMaxDims] = {};  // elements of each operand's own dtype
};

// out (out_dtype, strides[0]) = a (in_dtype, strides[1]) converted: bf16 and f16 through f32,
// f64 to a 16-bit float through f32 as well (as the CPU's store() does).
int copy_cast(int out_dtype, int in_dtype, const Strided& s, void* out, const void* a,
              void* stream);

enum class Compare : int { eq, gt, lt, ne };
// out (u8, strides[0]) = a op b (dtype, strides[1] and [2]), 1 where true.
int compare(Compare op, int dtype, const Strided& s, void* out, const void* a, const void* b,
            void* stream);

// out = cond != 0 ? a : b; cond u8, out, a and b of dtype (bytes copied as they are).
int where(int dtype, const Strided4& s, void* out, const void* cond, const void* a, const void* b,
          void* stream);

enum class ActivationBackward : int { relu, gelu_tanh, gelu_erf, tanh, sigmoid };
// out = grad * f'(x) (tanh and sigmoid take their outputs y), floating dtypes; strides[1] grad,
// strides[2] x.
int activation_backward(ActivationBackward op, int dtype, const Strided& s, void* out,
                        const void* grad, const void* x, void* stream);

// Dropout's keep-mask, bit for bit the CPU's (tensor/ops_elementwise.cpp dropout_mask): element
// k of the (outer, length * inner) slice is element i = (o * n_dim + start) * inner + j of the
// whole draw, and keeps when uniform(word i % 4 of Philox block first + i / 4) >= p.
struct DropoutGeometry {
  int64_t outer = 1, n_dim = 1, start = 0, length = 1, inner = 1;
};
int dropout_mask(const DropoutGeometry& g, uint64_t seed, uint64_t first, float p, uint8_t* mask,
                 void* stream);
// out[i] = mask[i] ? x[i] * scale : 0 over n contiguous elements (floating dtype; scale is
// 1 / (1 - p) in the compute type).
int dropout_apply(int dtype, int64_t n, void* out, const void* x, const uint8_t* mask, double scale,
                  void* stream);

// In place, a (strides[0]) += alpha * b (strides[2]); alpha == 1 adds b as it is.
int add_scaled_(int dtype, const Strided& s, void* a, const void* b, double alpha, void* stream);
// In place, a (strides[0]) *= s.
int scale_(int dtype, const Strided& s, void* a, double scale, void* stream);

// For n contiguous elements of a floating dtype: sets *flag (an int on the device) to 1 when any
// is inf or NaN, then (when do_scale) multiplies each by scale. One pass: the grad scaler's
// unscale.
int check_finite_and_scale_(int dtype, int64_t n, void* data, double scale, bool do_scale,
                            int* flag, void* stream);

// out row i = a row index[i] (rows of row_elems elements of elem_bytes each; indices i64, already
// checked to be in range).
int gather_rows(int64_t elem_bytes, int64_t row_elems, int64_t n, void* out, const void* a,
                const int64_t* index, void* stream);

}  // namespace forge::cuda::kernels
