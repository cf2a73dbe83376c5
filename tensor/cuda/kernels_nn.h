// Launchers of the reduction and neural-network kernels (tensor/cuda/reduce.cu, nn.cu), with plain
// C++ signatures as in tensor/cuda/kernels.h: dtype codes of tensor/dtype.h, pointers to the first
// element, strides in elements, the stream as a void*; each returns the launch status (a
// cudaError_t as int, 0 for success). bf16 and f16 compute in f32, f64 in f64, integers in i64.
//
// Every launch configuration depends on the shapes only, and no kernel adds floats atomically, so
// results are the same from run to run.
#pragma once

#include <cstdint>

#include "tensor/cuda/kernels.h"

namespace forge::cuda::kernels {

// ============================================================================================
// Reductions (reduce.cu)

// A reduction's input seen as (kept dims) x (reduced dims): output o (row-major over the kept
// dims, so a contiguous output with or without keepdim) reduces the R elements at
//   offset(o over kept) + offset(r over reduced),  r = 0 .. R-1 (row-major over the reduced dims).
// The host drops size-1 dims and merges neighbours that are one run in memory.
struct ReduceLayout {
  int64_t outputs = 0, R = 0;
  int kept_dims = 0, red_dims = 0;
  int64_t kept_sizes[kMaxDims] = {}, kept_strides[kMaxDims] = {};
  int64_t red_sizes[kMaxDims] = {}, red_strides[kMaxDims] = {};
  // How the work is split (reduce_plan): `by_column` runs one thread per output (adjacent outputs
  // adjacent in memory, or short reductions), else one block of 256 threads per output; `splits`
  // blocks share each output's R elements in chunks of `chunk`, their partial results combined in
  // chunk order by a second kernel.
  bool by_column = false;
  int64_t splits = 1, chunk = 0;
};

// Fills in by_column, splits and chunk from the shape (never from the device).
inline void reduce_plan(ReduceLayout& l) {
  auto cdiv = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  bool kept_unit = l.kept_dims > 0 && l.kept_strides[l.kept_dims - 1] == 1;
  bool red_unit = l.red_dims > 0 && l.red_strides[l.red_dims - 1] == 1;
  l.by_column = (kept_unit && !red_unit) || l.R <= 32;
  int64_t blocks = l.by_column ? cdiv(l.outputs, 256) : l.outputs;
  int64_t per_split = l.by_column ? 64 : 4096;  // fewest elements worth a chunk of its own
  int64_t want = blocks >= 1024 ? 1 : cdiv(1024, blocks > 0 ? blocks : 1);
  int64_t splits = cdiv(l.R, per_split);
  splits = splits < want ? splits : want;
  splits = splits < 1 ? 1 : (splits > 4096 ? 4096 : splits);
  l.chunk = l.R > 0 ? cdiv(l.R, splits) : 0;
  l.splits = l.R > 0 ? cdiv(l.R, l.chunk) : 1;
}

// Bytes of scratch memory a reduction needs (partial results when splits > 1, else 0).
inline int64_t reduce_workspace_bytes(const ReduceLayout& l) {
  return l.splits > 1 ? l.outputs * l.splits * 16 : 0;
}

// out[o] = sum over r. Floating inputs give their own dtype; integers give i64 when `out_i64`,
// else their own dtype (a sum over no dims is a copy).
int reduce_sum(int dtype, const ReduceLayout& l, void* out, bool out_i64, const void* in,
               void* workspace, void* stream);
// values[o] = max over r, indices[o] = its r (i64): the first maximum, a NaN being the maximum.
// `indices` may be null.
int reduce_max(int dtype, const ReduceLayout& l, void* values, int64_t* indices, const void* in,
               void* workspace, void* stream);
// flag[0] = 1 if any of the s.numel elements of a floating operand (strides s.strides[1]) is inf
// or NaN; flag is not touched otherwise (the caller zeroes it).
int any_nonfinite(int dtype, const Strided& s, const void* in, uint8_t* flag, void* stream);

// ============================================================================================
// Neural-network ops (nn.cu)

// Rows of up to three same-shaped operands along one dim (the "columns"), the other dims
// enumerating the rows: element c of row r of operand k is at
//   offset(r over sizes, strides[k]) + c * col_stride[k].
struct Rows {
  int64_t rows = 0, cols = 0;
  int dims = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[3][kMaxDims] = {};
  int64_t col_stride[3] = {};
};

// softmax (log_softmax when `log`) of each row: out = operand 0, x = operand 1.
int softmax(int dtype, bool log, const Rows& r, void* out, const void* x, void* stream);
// dx (operand 0) from grad (1) and y (2): y * (g - sum(g * y)), or g - exp(y) * sum(g) for log.
int softmax_backward(int dtype, bool log, const Rows& r, void* dx, const void* grad, const void* y,
                     void* stream);

// Layer norm of each row of x (operand 1) into y (operand 0); weight and bias (null: 1 and 0) with
// their strides; mean and rstd: one per row, contiguous, f32 (f64 for f64).
int layer_norm(int dtype, const Rows& r, void* y, const void* x, const void* weight,
               int64_t w_stride, const void* bias, int64_t b_stride, void* mean, void* rstd,
               double eps, void* stream);
// dx (operand 0, may be null) from dy (1), x (2); dweight and dbias (either may be null; C
// contiguous elements of x's dtype) summed over rows: per-block partials in `workspace`
// (layer_norm_backward_workspace bytes), then added in block order.
int layer_norm_backward(int dtype, const Rows& r, void* dx, const void* dy, const void* x,
                        const void* weight, int64_t w_stride, const void* mean, const void* rstd,
                        void* dweight, void* dbias, void* workspace, void* stream);
int64_t layer_norm_backward_workspace(int dtype, const Rows& r);

// Checks n integer indices (dtype `index_dtype`, offsets over s.sizes with s.strides[0]) against
// [0, limit): stats[0] = how many are not `ignore` (when has_ignore), stats[1] = the first
// position out of range and not ignored (n when none). stats: two i64 on the device.
int check_indices(int index_dtype, const Strided& s, const void* indices, int64_t n, int64_t limit,
                  bool has_ignore, int64_t ignore, int64_t* stats, void* stream);

// out (n, C) contiguous = weight rows picked by the n indices (checked beforehand).
int embedding(int dtype, int64_t n, int64_t C, void* out, const void* weight, int64_t w_row_stride,
              int64_t w_col_stride, int index_dtype, const Strided& idx, const void* indices,
              void* stream);
// dw (V, C) contiguous, zeroed by the caller, += grad row i at row indices[i]: the indices are
// sorted (stably) with their positions, then one block per distinct row adds its grad rows in
// position order, rounding to the dtype after each add as the CPU does: the CPU's bits.
// grad: element (i, c) at linear index i * C + c of a tensor described by g (sizes, strides[0]).
int embedding_backward(int dtype, int64_t n, int64_t C, int64_t V, void* dw, const Strided& g,
                       const void* grad, int index_dtype, const Strided& idx, const void* indices,
                       void* workspace, int64_t workspace_bytes, void* stream);
int64_t embedding_backward_workspace(int64_t n, int64_t V);

// Cross-entropy rows of logits (operand 1 of r, (N, C)): lse[i] = log-sum-exp, per_row[i] = lse -
// x[i, t_i], 0 where t_i == ignore. lse, per_row: f32 (f64 for f64), contiguous.
int cross_entropy(int dtype, const Rows& r, const void* logits, int target_dtype,
                  const void* targets, int64_t t_stride, int64_t ignore, void* lse, void* per_row,
                  void* stream);
// dx (operand 0, (N, C)) = (exp(x - lse) - onehot(t)) * scale, 0 on ignored rows; scale =
// grad_loss / max(count, 1), grad_loss read on the device (a one-element tensor of dtype
// grad_dtype) or given as `grad_value` when grad_loss is null.
int cross_entropy_backward(int dtype, const Rows& r, void* dx, const void* logits, int target_dtype,
                           const void* targets, int64_t t_stride, int64_t ignore, const void* lse,
                           const void* grad_loss, int grad_dtype, double grad_value, int64_t count,
                           void* stream);

}  // namespace forge::cuda::kernels
