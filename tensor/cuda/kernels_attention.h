// Launchers of the attention kernels (tensor/cuda/attention.cu), plain C++ signatures like
// tensor/cuda/kernels.h: each returns the launch status (a cudaError_t as int, 0 for success).
//
// Element types: f32 (computed in f32) and f64 (in f64), the dtypes of the CPU attention, by
// scalar kernels; bf16 and f16 on tensor cores (products in 16 bits with f32 sums, softmax in f32)
// where attention_tensor_cores(dtype, hs) says so. lse and delta are in the element type for
// f32/f64 and in f32 for bf16/f16.
#pragma once

#include <cstdint>

namespace forge::cuda::kernels {

// Where the heads of q, k, v and the output lie: head h of batch b starts at
// base + b * batch_stride + h * hs, and position t of it at + t * row_stride (elements; columns are
// contiguous). For causal self-attention all three read the one qkv (B, T, 3C) with row stride 3C.
struct HeadLayout {
  int64_t row_stride = 0, batch_stride = 0;
};

// Attention dropout: the weights P become P' = P * mask * keep before the product with V. `mask`
// (B, NH, Tq, L) u8, contiguous, nonzero = kept (dropout_mask's bits); keep = 1 / (1 - p). A null
// mask: no dropout.
struct Dropout {
  const uint8_t* mask = nullptr;
  double keep = 1.0;
};

// Whether the kernels take `dtype` (a DType code) with head size hs on tensor cores, on the current
// GPU: bf16 and f16 with hs 32, 64 or 128, on sm_80 or newer with room for the tiles (hs 128 needs
// ~121 KiB of shared memory) and a build whose code for it has the kernels. Other 16-bit cases are
// the caller's to widen to f32.
bool attention_tensor_cores(int dtype, int64_t hs);

// Forward, flash-attention style: out = softmax(Q K^T / sqrt(hs), causal) V without the (Tq, L)
// matrix. Query i (of Tq) is at position offset + i and sees keys 0 .. offset + i (of L). Writes
// lse (B, NH, Tq) = log sum_j exp(s_ij), the softmax's normaliser for the backward, if not null.
// bf16/f16 (tensor cores) take only offset 0 and Tq = L (causal self-attention).
int attention_forward(int dtype, int64_t B, int64_t NH, int64_t Tq, int64_t L, int64_t hs,
                      int64_t offset, const void* q, HeadLayout ql, const void* k, const void* v,
                      HeadLayout kvl, void* out, HeadLayout ol, void* lse, Dropout dropout,
                      void* stream);

// Backward of causal self-attention (offset 0, Tq = L = T) from the forward's lse: recomputes
// P = exp(S - lse) row by row; writes dq, dk, dv (all of `dqkv`'s layout, e.g. the three column
// blocks of dqkv (B, T, 3C)); `delta` is scratch of B * NH * T elements of the dtype
// (delta_i = sum_j P_ij dP_ij, dP the masked one with dropout); `dropout` the forward's.
int attention_backward(int dtype, int64_t B, int64_t NH, int64_t T, int64_t hs, const void* q,
                       const void* k, const void* v, HeadLayout qkvl, const void* dout,
                       HeadLayout dl, const void* lse, void* delta, void* dq, void* dk, void* dv,
                       HeadLayout dqkvl, Dropout dropout, void* stream);

}  // namespace forge::cuda::kernels
