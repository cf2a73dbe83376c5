// Causal attention kernels (launchers in tensor/cuda/kernels_attention.h); the maths is that of
// tensor/ops_attention.cpp, without the (T, T) matrices.
//
// Forward (flash-attention style). One block per (batch, head) and tile of kBlockM queries:
//   load Q tile (kBlockM, hs) into shared memory; O := 0, m := -inf, l := 0 per row
//   for each tile of kBlockN keys that the tile's queries can see (causal: up to the last query):
//     load K, V tiles (kBlockN, hs)
//     S = Q K^T / sqrt(hs), -inf where key > query position or key >= L
//     per row: m' = max(m, max_j S_j); c = exp(m - m'); P_j = exp(S_j - m'); l = l c + sum_j P_j
//     O = O c + P' V, P' = P * mask * keep with dropout, else P   (the online softmax: O / l is
//                                                                  softmax V; l sums P, not P')
//   out = O / l; lse = m + log l
// Every row sees key 0, which is in the first tile: m is finite from the first tile on, so no
// exp(-inf - -inf) ever happens, also for the rows past Tq that pad the last tile.
//
// Backward (recompute, one row at a time): with P_tj = exp(S_tj - lse_t), f_tj = mask_tj * keep
// with dropout (else 1), dP_tj = (dO_t . V_j) f_tj,
//   delta_t = sum_j P_tj dP_tj            (= rowsum(P * dP) of the CPU's dS)
//   dS_tj = P_tj (dP_tj - delta_t)        (j <= t)
//   dQ_t = scale sum_{j<=t} dS_tj K_j        one block per query row t   (also writes delta_t)
//   dK_j = scale sum_{t>=j} dS_tj Q_t, dV_j = sum_{t>=j} P_tj f_tj dO_t   one block per key row j
// Simple rather than fast: each block walks its row's keys (or queries) in chunks of the block's
// threads, one dot product per thread, then the threads sum the chunk over the head dims.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "tensor/cuda/kernels_attention.h"

namespace forge::cuda::kernels {

namespace {

enum Code { f32 = 0, f64 = 1, bf16 = 2, f16 = 3 };  // DType codes of tensor/dtype.h

constexpr int kBlockM = 32;    // queries per forward block
constexpr int kBlockN = 32;    // keys per tile
constexpr int kThreads = 128;  // threads per block, every kernel here (a power of two)

template <class T>
struct ForwardArgs {
  const T *q, *k, *v;
  T* out;
  T* lse;               // may be null
  const uint8_t* mask;  // (B, NH, Tq, L), null without dropout
  int64_t NH, Tq, L, hs, offset;
  HeadLayout ql, kvl, ol;
  T scale, keep;
};

// Shared memory of the forward, in elements of T: Q and O tiles (kBlockM, hs), K tile
// (kBlockN, hs + 1) (the pad puts the 32 keys a warp reads in 32 banks), V tile (kBlockN, hs),
// S (kBlockM, kBlockN + 1), and m, l, c per row.
int64_t forward_smem_elems(int64_t hs) {
  return 2 * kBlockM * hs + kBlockN * (hs + 1) + kBlockN * hs + kBlockM * (kBlockN + 1) +
         3 * kBlockM;
}

template <class T>
__global__ void __launch_bounds__(kThreads) flash_forward_kernel(ForwardArgs<T> a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int64_t hs = a.hs, kp = hs + 1;  // kp: the K tile's padded row pitch
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Os = Qs + kBlockM * hs;
  T* Ks = Os + kBlockM * hs;
  T* Vs = Ks + kBlockN * kp;
  T* S = Vs + kBlockN * hs;
  T* row_max = S + kBlockM * (kBlockN + 1);
  T* row_sum = row_max + kBlockM;
  T* row_corr = row_sum + kBlockM;

  const int64_t bh = blockIdx.x, b = bh / a.NH, h = bh % a.NH;
  const int64_t q0 = int64_t(blockIdx.y) * kBlockM;
  const T* Q = a.q + b * a.ql.batch_stride + h * hs;
  const T* K = a.k + b * a.kvl.batch_stride + h * hs;
  const T* V = a.v + b * a.kvl.batch_stride + h * hs;
  const int tid = threadIdx.x;
  const T neg_inf = T(-INFINITY);

  for (int64_t i = tid; i < kBlockM * hs; i += kThreads) {
    const int64_t r = i / hs, d = i % hs;
    Qs[i] = q0 + r < a.Tq ? Q[(q0 + r) * a.ql.row_stride + d] : T(0);
    Os[i] = T(0);
  }
  for (int r = tid; r < kBlockM; r += kThreads) {
    row_max[r] = neg_inf;
    row_sum[r] = T(0);
  }
  // The last query of the tile (possibly a pad row) is at position offset + q0 + kBlockM - 1.
  const int64_t key_end = min(a.L, a.offset + q0 + kBlockM);
  for (int64_t k0 = 0; k0 < key_end; k0 += kBlockN) {
    __syncthreads();  // the previous tile's readers are done with Ks, Vs, S
    for (int64_t i = tid; i < kBlockN * hs; i += kThreads) {
      const int64_t r = i / hs, d = i % hs;
      const bool in = k0 + r < a.L;  // zeros past the end: 0 * V, never 0 * garbage
      Ks[r * kp + d] = in ? K[(k0 + r) * a.kvl.row_stride + d] : T(0);
      Vs[i] = in ? V[(k0 + r) * a.kvl.row_stride + d] : T(0);
    }
    __syncthreads();
    for (int i = tid; i < kBlockM * kBlockN; i += kThreads) {  // S, masked
      const int r = i / kBlockN, c = i % kBlockN;
      const int64_t key = k0 + c, pos = a.offset + q0 + r;
      T s = neg_inf;
      if (key < a.L && key <= pos) {
        T acc = T(0);
        for (int64_t d = 0; d < hs; ++d) acc += Qs[r * hs + d] * Ks[c * kp + d];
        s = acc * a.scale;
      }
      S[r * (kBlockN + 1) + c] = s;
    }
    __syncthreads();
    for (int r = tid; r < kBlockM; r += kThreads) {  // online softmax, a thread per row
      T* row = S + r * (kBlockN + 1);
      T mx = row_max[r];
      for (int c = 0; c < kBlockN; ++c) mx = row[c] > mx ? row[c] : mx;
      const T corr = exp(row_max[r] - mx);  // 0 on the first tile (m was -inf, mx is finite)
      // Dropout: l sums the undropped weights (the softmax's normaliser), O the dropped ones.
      const uint8_t* drop =
          a.mask && q0 + r < a.Tq ? a.mask + ((bh * a.Tq + q0 + r) * a.L + k0) : nullptr;
      T sum = T(0);
      for (int c = 0; c < kBlockN; ++c) {
        T p = exp(row[c] - mx);  // 0 where masked
        sum += p;
        if (drop) p = k0 + c < a.L && drop[c] ? p * a.keep : T(0);
        row[c] = p;
      }
      row_sum[r] = row_sum[r] * corr + sum;
      row_max[r] = mx;
      row_corr[r] = corr;
    }
    __syncthreads();
    // O = O c + P V; each thread keeps the same elements of O on every tile.
    for (int64_t i = tid; i < kBlockM * hs; i += kThreads) {
      const int64_t r = i / hs, d = i % hs;
      const T* p = S + r * (kBlockN + 1);
      T acc = Os[i] * row_corr[r];
      for (int c = 0; c < kBlockN; ++c) acc += p[c] * Vs[c * hs + d];
      Os[i] = acc;
    }
  }
  __syncthreads();
  T* O = a.out + b * a.ol.batch_stride + h * hs;
  for (int64_t i = tid; i < kBlockM * hs; i += kThreads) {
    const int64_t r = i / hs, d = i % hs;
    if (q0 + r < a.Tq) O[(q0 + r) * a.ol.row_stride + d] = Os[i] / row_sum[r];
  }
  if (a.lse) {
    for (int r = tid; r < kBlockM; r += kThreads)
      if (q0 + r < a.Tq) a.lse[bh * a.Tq + q0 + r] = row_max[r] + log(row_sum[r]);
  }
}

template <class T>
struct BackwardArgs {
  const T *q, *k, *v, *dout, *lse;
  T *delta, *dq, *dk, *dv;
  const uint8_t* mask;  // (B, NH, T, T), null without dropout
  int64_t NH, T_, hs;
  HeadLayout qkvl, dl, dqkvl;
  T scale, keep;
};

// The dropout factor of weight (t, j) of head bh: mask * keep, 1 without dropout.
template <class T>
__device__ T drop_factor(const BackwardArgs<T>& a, int64_t bh, int64_t t, int64_t j) {
  if (!a.mask) return T(1);
  return a.mask[(bh * a.T_ + t) * a.T_ + j] ? a.keep : T(0);
}

template <class T>
__device__ T dot(const T* x, const T* y, int64_t n) {
  T acc = T(0);
  for (int64_t d = 0; d < n; ++d) acc += x[d] * y[d];
  return acc;
}

// Sum over the block; every thread gets it. `red` holds kThreads elements.
template <class T>
__device__ T block_sum(T v, T* red) {
  const int tid = threadIdx.x;
  red[tid] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (tid < half) red[tid] += red[tid + half];
    __syncthreads();
  }
  const T total = red[0];
  __syncthreads();  // everyone has read red[0] before it is written again
  return total;
}

// One block per (batch, head, query row t): delta_t, then dQ_t. Shared: q_t, dO_t, the dQ
// accumulator (hs each), dS of a chunk and the reduction buffer (kThreads each).
template <class T>
__global__ void __launch_bounds__(kThreads) backward_dq_kernel(BackwardArgs<T> a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int64_t hs = a.hs, Tn = a.T_;
  T* qs = reinterpret_cast<T*>(smem_raw);
  T* dos = qs + hs;
  T* acc = dos + hs;
  T* ds = acc + hs;
  T* red = ds + kThreads;

  const int64_t bh = blockIdx.x / Tn, t = blockIdx.x % Tn, b = bh / a.NH, h = bh % a.NH;
  const int64_t qrow = a.qkvl.row_stride;
  const T* Q = a.q + b * a.qkvl.batch_stride + h * hs;
  const T* K = a.k + b * a.qkvl.batch_stride + h * hs;
  const T* V = a.v + b * a.qkvl.batch_stride + h * hs;
  const T* dO = a.dout + b * a.dl.batch_stride + h * hs;
  const int tid = threadIdx.x;
  for (int64_t d = tid; d < hs; d += kThreads) {
    qs[d] = Q[t * qrow + d];
    dos[d] = dO[t * a.dl.row_stride + d];
    acc[d] = T(0);
  }
  __syncthreads();
  const T lse = a.lse[bh * Tn + t];

  T part = T(0);  // delta_t = sum_j P_tj dP_tj, dP = (dO V^T) * mask * keep
  for (int64_t j = tid; j <= t; j += kThreads) {
    const T p = exp(dot(qs, K + j * qrow, hs) * a.scale - lse);
    part += p * dot(dos, V + j * qrow, hs) * drop_factor(a, bh, t, j);
  }
  const T delta = block_sum(part, red);

  for (int64_t j0 = 0; j0 <= t; j0 += kThreads) {
    const int64_t j = j0 + tid;
    T dsj = T(0);
    if (j <= t) {
      const T p = exp(dot(qs, K + j * qrow, hs) * a.scale - lse);
      dsj = p * (dot(dos, V + j * qrow, hs) * drop_factor(a, bh, t, j) - delta);
    }
    ds[tid] = dsj;
    __syncthreads();
    const int64_t n = min(int64_t(kThreads), t + 1 - j0);
    for (int64_t d = tid; d < hs; d += kThreads) {
      T sum = T(0);
      for (int64_t jj = 0; jj < n; ++jj) sum += ds[jj] * K[(j0 + jj) * qrow + d];
      acc[d] += sum;
    }
    __syncthreads();  // ds is rewritten by the next chunk
  }
  T* dQ = a.dq + b * a.dqkvl.batch_stride + h * hs;
  for (int64_t d = tid; d < hs; d += kThreads) dQ[t * a.dqkvl.row_stride + d] = acc[d] * a.scale;
  if (tid == 0) a.delta[bh * Tn + t] = delta;
}

// One block per (batch, head, key row j): dK_j and dV_j over the queries t >= j. Shared: k_j, v_j,
// the dK and dV accumulators (hs each), P' and dS of a chunk (kThreads each).
template <class T>
__global__ void __launch_bounds__(kThreads) backward_dkv_kernel(BackwardArgs<T> a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int64_t hs = a.hs, Tn = a.T_;
  T* ks = reinterpret_cast<T*>(smem_raw);
  T* vs = ks + hs;
  T* dk = vs + hs;
  T* dv = dk + hs;
  T* ps = dv + hs;
  T* ds = ps + kThreads;

  const int64_t bh = blockIdx.x / Tn, j = blockIdx.x % Tn, b = bh / a.NH, h = bh % a.NH;
  const int64_t qrow = a.qkvl.row_stride, drow = a.dl.row_stride;
  const T* Q = a.q + b * a.qkvl.batch_stride + h * hs;
  const T* K = a.k + b * a.qkvl.batch_stride + h * hs;
  const T* V = a.v + b * a.qkvl.batch_stride + h * hs;
  const T* dO = a.dout + b * a.dl.batch_stride + h * hs;
  const T* lse = a.lse + bh * Tn;
  const T* delta = a.delta + bh * Tn;
  const int tid = threadIdx.x;
  for (int64_t d = tid; d < hs; d += kThreads) {
    ks[d] = K[j * qrow + d];
    vs[d] = V[j * qrow + d];
    dk[d] = T(0);
    dv[d] = T(0);
  }
  __syncthreads();
  for (int64_t t0 = j; t0 < Tn; t0 += kThreads) {
    const int64_t t = t0 + tid;
    T p = T(0), dst = T(0);
    if (t < Tn) {
      p = exp(dot(Q + t * qrow, ks, hs) * a.scale - lse[t]);
      const T f = drop_factor(a, bh, t, j);
      dst = p * (dot(dO + t * drow, vs, hs) * f - delta[t]);
      p *= f;  // dV takes P' = P * mask * keep
    }
    ps[tid] = p;
    ds[tid] = dst;
    __syncthreads();
    const int64_t n = min(int64_t(kThreads), Tn - t0);
    for (int64_t d = tid; d < hs; d += kThreads) {
      T sv = T(0), sk = T(0);
      for (int64_t tt = 0; tt < n; ++tt) {
        sv += ps[tt] * dO[(t0 + tt) * drow + d];
        sk += ds[tt] * Q[(t0 + tt) * qrow + d];
      }
      dv[d] += sv;
      dk[d] += sk;
    }
    __syncthreads();  // ps, ds are rewritten by the next chunk
  }
  T* dK = a.dk + b * a.dqkvl.batch_stride + h * hs;
  T* dV = a.dv + b * a.dqkvl.batch_stride + h * hs;
  for (int64_t d = tid; d < hs; d += kThreads) {
    dK[j * a.dqkvl.row_stride + d] = dk[d] * a.scale;
    dV[j * a.dqkvl.row_stride + d] = dv[d];
  }
}

// Lets `kernel` take `bytes` of dynamic shared memory (over 48 KiB needs the opt-in); an error
// when the device has less.
template <class K>
cudaError_t allow_smem(K kernel, size_t bytes) {
  int device = 0, optin = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return e;
  if (bytes > size_t(optin)) return cudaErrorInvalidValue;
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

template <class T>
int forward(int64_t B, int64_t NH, int64_t Tq, int64_t L, int64_t hs, int64_t offset, const void* q,
            HeadLayout ql, const void* k, const void* v, HeadLayout kvl, void* out, HeadLayout ol,
            void* lse, Dropout dropout, cudaStream_t stream) {
  ForwardArgs<T> a{static_cast<const T*>(q),
                   static_cast<const T*>(k),
                   static_cast<const T*>(v),
                   static_cast<T*>(out),
                   static_cast<T*>(lse),
                   dropout.mask,
                   NH,
                   Tq,
                   L,
                   hs,
                   offset,
                   ql,
                   kvl,
                   ol,
                   T(1.0 / std::sqrt(double(hs))),
                   T(dropout.keep)};
  const size_t smem = size_t(forward_smem_elems(hs)) * sizeof(T);
  cudaError_t e = allow_smem(flash_forward_kernel<T>, smem);
  if (e != cudaSuccess) return int(e);
  const dim3 grid(unsigned(B * NH), unsigned((Tq + kBlockM - 1) / kBlockM));
  flash_forward_kernel<T><<<grid, kThreads, smem, stream>>>(a);
  return int(cudaGetLastError());
}

template <class T>
int backward(int64_t B, int64_t NH, int64_t Tn, int64_t hs, const void* q, const void* k,
             const void* v, HeadLayout qkvl, const void* dout, HeadLayout dl, const void* lse,
             void* delta, void* dq, void* dk, void* dv, HeadLayout dqkvl, Dropout dropout,
             cudaStream_t stream) {
  BackwardArgs<T> a{static_cast<const T*>(q),
                    static_cast<const T*>(k),
                    static_cast<const T*>(v),
                    static_cast<const T*>(dout),
                    static_cast<const T*>(lse),
                    static_cast<T*>(delta),
                    static_cast<T*>(dq),
                    static_cast<T*>(dk),
                    static_cast<T*>(dv),
                    dropout.mask,
                    NH,
                    Tn,
                    hs,
                    qkvl,
                    dl,
                    dqkvl,
                    T(1.0 / std::sqrt(double(hs))),
                    T(dropout.keep)};
  const size_t smem = size_t(3 * hs + 2 * kThreads) * sizeof(T);     // dq kernel
  const size_t smem_kv = size_t(4 * hs + 2 * kThreads) * sizeof(T);  // dkv kernel
  cudaError_t e = allow_smem(backward_dq_kernel<T>, smem);
  if (e == cudaSuccess) e = allow_smem(backward_dkv_kernel<T>, smem_kv);
  if (e != cudaSuccess) return int(e);
  const unsigned blocks = unsigned(B * NH * Tn);
  backward_dq_kernel<T><<<blocks, kThreads, smem, stream>>>(a);  // writes delta ...
  e = cudaGetLastError();
  if (e != cudaSuccess) return int(e);
  backward_dkv_kernel<T><<<blocks, kThreads, smem_kv, stream>>>(a);  // ... read here
  return int(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------
// bf16 / f16 on tensor cores (flash-attention-2 style; nvcuda::wmma 16x16x16 fragments, f32
// accumulators). Tiles of kTc = 64 queries by 64 keys, 4 warps a block; warp w owns the 16 rows
// [16w, 16w + 16) of every 64-row product. Q, K, V, dO tiles are staged in shared memory (rows
// past T are zeros), with the row pitch HS + 8 (a multiple of 8 elements: wmma's ldm for 16-bit
// types; every fragment pointer is a multiple of 16 rows and 16 columns from a 128-byte aligned
// base, so 32-byte aligned). f32 tiles have the pitch 64 + 4 or HS + 4.
//
// Forward (one block per (batch, head) and tile of 64 queries), over the key tiles 0 .. the
// diagonal one (the tiles above the diagonal are skipped, the diagonal one masked):
//   S = Q K^T (wmma, f32 in shared); per row (a thread each): scale, mask, the online softmax in
//   f32 (m, l, corr), P' = P (* mask * keep with dropout) rounded to 16 bits; O (f32, shared)
//   *= corr row by row; O += P' V (wmma, the accumulators loaded from and stored to O).
//   out = O / l in 16 bits, lse = m + log l (f32).
// Backward, deterministic (no atomics), in two kernels:
//   dq: one block per (batch, head, query tile), two passes over the key tiles to the diagonal:
//     pass 1  P = exp(S - lse), dP = (dO V^T) (* mask * keep): delta = rowsum(P * dP) (f32, also
//             written out for the dkv kernel);
//     pass 2  dS = P * (dP - delta) in 16 bits; dQ += dS K (fragments in registers).
//     dQ * scale is written in 16 bits.
//   dkv: one block per (batch, head, key tile), over the query tiles from the diagonal one on:
//     P, dP as above with the saved delta, P' = P (* mask * keep), dS; dV += P'^T dO,
//     dK += dS^T Q (fragments in registers); dK * scale and dV written in 16 bits.
// Every row that pads a tile (position >= T) gets P = 0 and is never written.

constexpr int kTc = 64;           // queries and keys per tile
constexpr int kTcThreads = 128;   // 4 warps
constexpr int kSPitch = kTc + 4;  // f32 (64, 64) tiles
constexpr int kPPitch = kTc + 8;  // 16-bit (64, 64) tiles

template <class T16>
__device__ inline T16 from_f32(float x);
template <>
__device__ inline __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ inline __half from_f32<__half>(float x) {
  return __float2half(x);
}

// Bytes of `n` elements of U rounded up to 128, so each shared buffer starts 128-byte aligned.
template <class U>
constexpr size_t smem_bytes(size_t n) {
  return (n * sizeof(U) + 127) / 128 * 128;
}

// Carves consecutive buffers out of dynamic shared memory.
struct SmemCarver {
  unsigned char* p;
  template <class U>
  __device__ U* take(size_t n) {
    U* r = reinterpret_cast<U*>(p);
    p += smem_bytes<U>(n);
    return r;
  }
};

struct TcArgs {
  const void *q, *k, *v, *dout;
  void *out, *dq, *dk, *dv;
  float* lse_out;       // the forward's
  const float* lse;     // the backward's
  float* delta;         // the backward's scratch
  const uint8_t* mask;  // (B, NH, T, T), null without dropout
  int64_t NH, T_;
  HeadLayout qkvl, dl, dqkvl;  // the forward writes out with dl's layout
  float scale, keep;
  bool vec;  // every head row starts 16-byte aligned: load 8 elements at a time
};

// dst (64, HS) pitch HS + 8 = rows r0 .. r0 + 63 of the head at src (row stride `stride`), zeros
// for rows >= T.
template <class T16, int HS>
__device__ void load_tile(T16* dst, const T16* src, int64_t stride, int64_t r0, int64_t T,
                          bool vec) {
  constexpr int kPitch = HS + 8, kChunks = HS / 8;
  for (int i = threadIdx.x; i < kTc * kChunks; i += kTcThreads) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    T16* d = dst + r * kPitch + c;
    const int64_t row = r0 + r;
    if (row >= T) {
      for (int e = 0; e < 8; ++e) d[e] = from_f32<T16>(0.0f);
    } else if (vec) {
      *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(src + row * stride + c);
    } else {
      for (int e = 0; e < 8; ++e) d[e] = src[row * stride + c + e];
    }
  }
}

// C (64, 64) f32 pitch kSPitch = A B^T, A and B (64, HS) 16-bit tiles of pitch HS + 8; each warp
// its 16 rows.
template <class T16, int HS>
__device__ void tile_abt(float* C, const T16* A, const T16* B) {
  namespace w = nvcuda::wmma;
  constexpr int kPitch = HS + 8;
  const int wr = (threadIdx.x / 32) * 16;
  for (int c = 0; c < kTc; c += 16) {
    w::fragment<w::accumulator, 16, 16, 16, float> acc;
    w::fill_fragment(acc, 0.0f);
#pragma unroll
    for (int kk = 0; kk < HS; kk += 16) {
      w::fragment<w::matrix_a, 16, 16, 16, T16, w::row_major> fa;
      w::fragment<w::matrix_b, 16, 16, 16, T16, w::col_major> fb;  // B^T: column j is row j of B
      w::load_matrix_sync(fa, A + wr * kPitch + kk, kPitch);
      w::load_matrix_sync(fb, B + c * kPitch + kk, kPitch);
      w::mma_sync(acc, fa, fb, acc);
    }
    w::store_matrix_sync(C + wr * kSPitch + c, acc, kSPitch, w::mem_row_major);
  }
}

// acc[n] (the warp's 16 rows, columns [16n, 16n + 16) of a (64, HS) result) += A B, A (64, 64)
// 16-bit pitch kPPitch, B (64, HS) pitch HS + 8. With `a_transposed`, A^T in place of A (A then
// holds the transpose: element (i, j) of the product's left factor is A[j][i]).
template <class T16, int HS, bool a_transposed>
__device__ void tile_acc(
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> (&acc)[HS / 16],
    const T16* A, const T16* B) {
  namespace w = nvcuda::wmma;
  constexpr int kPitch = HS + 8;
  using ALayout = std::conditional_t<a_transposed, w::col_major, w::row_major>;
  const int wr = (threadIdx.x / 32) * 16;
#pragma unroll
  for (int kk = 0; kk < kTc; kk += 16) {
    w::fragment<w::matrix_a, 16, 16, 16, T16, ALayout> fa;
    // Row-major: rows wr.., columns kk..; column-major (A^T): element (i, j) at A[(kk + j) * pitch
    // + wr + i].
    w::load_matrix_sync(fa, a_transposed ? A + kk * kPPitch + wr : A + wr * kPPitch + kk, kPPitch);
#pragma unroll
    for (int n = 0; n < HS / 16; ++n) {
      w::fragment<w::matrix_b, 16, 16, 16, T16, w::row_major> fb;
      w::load_matrix_sync(fb, B + kk * kPitch + n * 16, kPitch);
      w::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
}

// The dropout factor of (query q, key j): mask * keep, 1 without dropout (both in range).
__device__ inline float tc_drop(const TcArgs& a, int64_t bh, int64_t q, int64_t j) {
  if (!a.mask) return 1.0f;
  return a.mask[(bh * a.T_ + q) * a.T_ + j] ? a.keep : 0.0f;
}

template <class T16, int HS>
size_t tc_forward_smem() {
  return 3 * smem_bytes<T16>(size_t(kTc) * (HS + 8)) + smem_bytes<float>(kTc * kSPitch) +
         smem_bytes<T16>(kTc * kPPitch) + smem_bytes<float>(size_t(kTc) * (HS + 4)) +
         3 * smem_bytes<float>(kTc);
}

template <class T16, int HS>
__global__ void __launch_bounds__(kTcThreads) tc_forward_kernel(TcArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace w = nvcuda::wmma;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int kPitch = HS + 8, kOPitch = HS + 4;
  SmemCarver sm{smem_raw};
  T16* Qs = sm.take<T16>(size_t(kTc) * kPitch);
  T16* Ks = sm.take<T16>(size_t(kTc) * kPitch);
  T16* Vs = sm.take<T16>(size_t(kTc) * kPitch);
  float* S = sm.take<float>(kTc * kSPitch);
  T16* P = sm.take<T16>(kTc * kPPitch);
  float* O = sm.take<float>(size_t(kTc) * kOPitch);
  float* row_max = sm.take<float>(kTc);
  float* row_sum = sm.take<float>(kTc);
  float* row_corr = sm.take<float>(kTc);

  const int64_t Tn = a.T_, bh = blockIdx.x, b = bh / a.NH, h = bh % a.NH;
  const int64_t q0 = int64_t(blockIdx.y) * kTc;
  const int64_t in_off = b * a.qkvl.batch_stride + h * HS;
  const T16* Q = static_cast<const T16*>(a.q) + in_off;
  const T16* K = static_cast<const T16*>(a.k) + in_off;
  const T16* V = static_cast<const T16*>(a.v) + in_off;
  const int tid = threadIdx.x;

  load_tile<T16, HS>(Qs, Q, a.qkvl.row_stride, q0, Tn, a.vec);
  for (int i = tid; i < kTc * HS; i += kTcThreads) O[(i / HS) * kOPitch + i % HS] = 0.0f;
  for (int r = tid; r < kTc; r += kTcThreads) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
  }
  // Tiles are aligned (queries and keys both by 64): the key tiles 0 .. q0 / 64, the last the
  // diagonal one; none past T since q0 < T.
  for (int64_t k0 = 0; k0 <= q0; k0 += kTc) {
    __syncthreads();  // the previous tile's readers are done with Ks, Vs, P; Qs, O are ready
    load_tile<T16, HS>(Ks, K, a.qkvl.row_stride, k0, Tn, a.vec);
    load_tile<T16, HS>(Vs, V, a.qkvl.row_stride, k0, Tn, a.vec);
    __syncthreads();
    tile_abt<T16, HS>(S, Qs, Ks);
    __syncthreads();
    if (tid < kTc) {  // the online softmax, a thread per row
      const int r = tid;
      const int64_t pos = q0 + r;
      float* row = S + r * kSPitch;
      float mx = row_max[r];
      for (int c = 0; c < kTc; ++c) {
        const int64_t key = k0 + c;
        const float s = key <= pos && key < Tn ? row[c] * a.scale : -INFINITY;
        row[c] = s;
        mx = fmaxf(mx, s);
      }
      // mx is finite: key 0 is in the first tile and every row (pad rows too) sees it.
      const float corr = __expf(row_max[r] - mx);  // 0 on the first tile
      float sum = 0.0f;
      for (int c = 0; c < kTc; ++c) {
        float p = __expf(row[c] - mx);  // 0 where masked
        sum += p;
        if (a.mask && pos < Tn && k0 + c < Tn) p *= tc_drop(a, bh, pos, k0 + c);
        P[r * kPPitch + c] = from_f32<T16>(p);
      }
      row_sum[r] = row_sum[r] * corr + sum;
      row_max[r] = mx;
      row_corr[r] = corr;
    }
    __syncthreads();
    for (int i = tid; i < kTc * HS; i += kTcThreads)
      O[(i / HS) * kOPitch + i % HS] *= row_corr[i / HS];
    __syncthreads();
    {  // O += P' V, each warp its 16 rows
      const int wr = (tid / 32) * 16;
      w::fragment<w::accumulator, 16, 16, 16, float> acc[HS / 16];
#pragma unroll
      for (int n = 0; n < HS / 16; ++n)
        w::load_matrix_sync(acc[n], O + wr * kOPitch + n * 16, kOPitch, w::mem_row_major);
      tile_acc<T16, HS, false>(acc, P, Vs);
#pragma unroll
      for (int n = 0; n < HS / 16; ++n)
        w::store_matrix_sync(O + wr * kOPitch + n * 16, acc[n], kOPitch, w::mem_row_major);
    }
  }
  __syncthreads();
  T16* Out = static_cast<T16*>(a.out) + b * a.dl.batch_stride + h * HS;
  for (int i = tid; i < kTc * HS; i += kTcThreads) {
    const int r = i / HS, d = i % HS;
    if (q0 + r < Tn)
      Out[(q0 + r) * a.dl.row_stride + d] = from_f32<T16>(O[r * kOPitch + d] / row_sum[r]);
  }
  for (int r = tid; r < kTc; r += kTcThreads)
    if (q0 + r < Tn) a.lse_out[bh * Tn + q0 + r] = row_max[r] + logf(row_sum[r]);
#endif
}

template <class T16, int HS>
size_t tc_backward_smem() {
  return 4 * smem_bytes<T16>(size_t(kTc) * (HS + 8)) + 2 * smem_bytes<float>(kTc * kSPitch) +
         2 * smem_bytes<T16>(kTc * kPPitch) + 2 * smem_bytes<float>(kTc);
}

// The shared buffers of both backward kernels.
template <class T16, int HS>
struct BackwardTiles {
  T16 *Qs, *dOs, *Ks, *Vs;
  float *S, *dP;       // (64, 64) f32: S then P; dO V^T then dP
  T16 *Pd, *dS;        // (64, 64) 16-bit: P' and dS
  float *lse, *delta;  // of the 64 queries
  __device__ explicit BackwardTiles(unsigned char* raw) {
    SmemCarver sm{raw};
    constexpr size_t n = size_t(kTc) * (HS + 8);
    Qs = sm.take<T16>(n);
    dOs = sm.take<T16>(n);
    Ks = sm.take<T16>(n);
    Vs = sm.take<T16>(n);
    S = sm.take<float>(kTc * kSPitch);
    dP = sm.take<float>(kTc * kSPitch);
    Pd = sm.take<T16>(kTc * kPPitch);
    dS = sm.take<T16>(kTc * kPPitch);
    lse = sm.take<float>(kTc);
    delta = sm.take<float>(kTc);
  }
};

// With Qs, dOs, Ks, Vs and lse loaded for the queries q0.. and keys k0..: S := P (0 where key >
// query or past T), dP := (dO V^T) * mask * keep. Starts and ends with every thread past a barrier.
template <class T16, int HS>
__device__ void tc_probs(const TcArgs& a, const BackwardTiles<T16, HS>& t, int64_t bh, int64_t q0,
                         int64_t k0) {
  tile_abt<T16, HS>(t.S, t.Qs, t.Ks);
  tile_abt<T16, HS>(t.dP, t.dOs, t.Vs);
  __syncthreads();
  const int64_t Tn = a.T_;
  for (int i = threadIdx.x; i < kTc * kTc; i += kTcThreads) {
    const int r = i / kTc, c = i % kTc;
    const int64_t pos = q0 + r, key = k0 + c;
    float p = 0.0f, f = 0.0f;
    if (pos < Tn && key <= pos) {  // key < T follows
      p = __expf(t.S[r * kSPitch + c] * a.scale - t.lse[r]);
      f = tc_drop(a, bh, pos, key);
    }
    t.S[r * kSPitch + c] = p;
    t.dP[r * kSPitch + c] *= f;
  }
  __syncthreads();
}

template <class T16, int HS>
__global__ void __launch_bounds__(kTcThreads) tc_backward_dq_kernel(TcArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace w = nvcuda::wmma;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const BackwardTiles<T16, HS> t(smem_raw);
  const int64_t Tn = a.T_, bh = blockIdx.x, b = bh / a.NH, h = bh % a.NH;
  const int64_t q0 = int64_t(blockIdx.y) * kTc;
  const int64_t in_off = b * a.qkvl.batch_stride + h * HS;
  const T16* K = static_cast<const T16*>(a.k) + in_off;
  const T16* V = static_cast<const T16*>(a.v) + in_off;
  const int tid = threadIdx.x;
  load_tile<T16, HS>(t.Qs, static_cast<const T16*>(a.q) + in_off, a.qkvl.row_stride, q0, Tn, a.vec);
  load_tile<T16, HS>(t.dOs, static_cast<const T16*>(a.dout) + b * a.dl.batch_stride + h * HS,
                     a.dl.row_stride, q0, Tn, a.vec);
  for (int r = tid; r < kTc; r += kTcThreads) {
    t.lse[r] = q0 + r < Tn ? a.lse[bh * Tn + q0 + r] : 0.0f;
    t.delta[r] = 0.0f;
  }
  for (int pass = 0; pass < 2; ++pass) {
    w::fragment<w::accumulator, 16, 16, 16, float> acc[HS / 16];
#pragma unroll
    for (int n = 0; n < HS / 16; ++n) w::fill_fragment(acc[n], 0.0f);
    for (int64_t k0 = 0; k0 <= q0; k0 += kTc) {
      __syncthreads();  // readers of the previous tiles are done
      load_tile<T16, HS>(t.Ks, K, a.qkvl.row_stride, k0, Tn, a.vec);
      load_tile<T16, HS>(t.Vs, V, a.qkvl.row_stride, k0, Tn, a.vec);
      __syncthreads();
      tc_probs<T16, HS>(a, t, bh, q0, k0);
      if (pass == 0) {  // delta += rowsum(P * dP), a thread per row
        if (tid < kTc) {
          float s = 0.0f;
          for (int c = 0; c < kTc; ++c) s += t.S[tid * kSPitch + c] * t.dP[tid * kSPitch + c];
          t.delta[tid] += s;
        }
      } else {  // dS = P * (dP - delta); dQ += dS K
        for (int i = tid; i < kTc * kTc; i += kTcThreads) {
          const int r = i / kTc, c = i % kTc;
          t.dS[r * kPPitch + c] =
              from_f32<T16>(t.S[r * kSPitch + c] * (t.dP[r * kSPitch + c] - t.delta[r]));
        }
        __syncthreads();
        tile_acc<T16, HS, false>(acc, t.dS, t.Ks);
      }
    }
    if (pass == 1) {  // dQ * scale, through S (free now) as f32 staging, 16 columns at a time
      __syncthreads();
      const int wr = (tid / 32) * 16;
      T16* dQ = static_cast<T16*>(a.dq) + b * a.dqkvl.batch_stride + h * HS;
#pragma unroll
      for (int n = 0; n < HS / 16; ++n) {
        // Each warp stages its own 16 x 16 block in its own rows of S: no block barrier needed.
        w::store_matrix_sync(t.S + wr * kSPitch, acc[n], kSPitch, w::mem_row_major);
        __syncwarp();
        for (int e = tid % 32; e < 256; e += 32) {
          const int r = wr + e / 16, d = n * 16 + e % 16;
          if (q0 + r < Tn)
            dQ[(q0 + r) * a.dqkvl.row_stride + d] =
                from_f32<T16>(t.S[wr * kSPitch + (e / 16) * kSPitch + e % 16] * a.scale);
        }
        __syncwarp();
      }
    }
  }
  __syncthreads();
  for (int r = tid; r < kTc; r += kTcThreads)
    if (q0 + r < Tn) a.delta[bh * Tn + q0 + r] = t.delta[r];
#endif
}

template <class T16, int HS>
__global__ void __launch_bounds__(kTcThreads) tc_backward_dkv_kernel(TcArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace w = nvcuda::wmma;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const BackwardTiles<T16, HS> t(smem_raw);
  const int64_t Tn = a.T_, bh = blockIdx.x, b = bh / a.NH, h = bh % a.NH;
  const int64_t k0 = int64_t(blockIdx.y) * kTc;
  const int64_t in_off = b * a.qkvl.batch_stride + h * HS;
  const T16* Q = static_cast<const T16*>(a.q) + in_off;
  const T16* dO = static_cast<const T16*>(a.dout) + b * a.dl.batch_stride + h * HS;
  const int tid = threadIdx.x;
  load_tile<T16, HS>(t.Ks, static_cast<const T16*>(a.k) + in_off, a.qkvl.row_stride, k0, Tn, a.vec);
  load_tile<T16, HS>(t.Vs, static_cast<const T16*>(a.v) + in_off, a.qkvl.row_stride, k0, Tn, a.vec);
  w::fragment<w::accumulator, 16, 16, 16, float> dk[HS / 16], dv[HS / 16];
#pragma unroll
  for (int n = 0; n < HS / 16; ++n) {
    w::fill_fragment(dk[n], 0.0f);
    w::fill_fragment(dv[n], 0.0f);
  }
  for (int64_t q0 = k0; q0 < Tn; q0 += kTc) {
    __syncthreads();  // readers of the previous query tile are done
    load_tile<T16, HS>(t.Qs, Q, a.qkvl.row_stride, q0, Tn, a.vec);
    load_tile<T16, HS>(t.dOs, dO, a.dl.row_stride, q0, Tn, a.vec);
    for (int r = tid; r < kTc; r += kTcThreads) {
      const bool in = q0 + r < Tn;
      t.lse[r] = in ? a.lse[bh * Tn + q0 + r] : 0.0f;
      t.delta[r] = in ? a.delta[bh * Tn + q0 + r] : 0.0f;
    }
    __syncthreads();
    tc_probs<T16, HS>(a, t, bh, q0, k0);
    for (int i = tid; i < kTc * kTc; i += kTcThreads) {
      const int r = i / kTc, c = i % kTc;
      const int64_t pos = q0 + r, key = k0 + c;
      const float p = t.S[r * kSPitch + c];
      const float f = pos < Tn && key <= pos ? tc_drop(a, bh, pos, key) : 0.0f;
      t.Pd[r * kPPitch + c] = from_f32<T16>(p * f);
      t.dS[r * kPPitch + c] = from_f32<T16>(p * (t.dP[r * kSPitch + c] - t.delta[r]));
    }
    __syncthreads();
    // dV (keys x HS) += P'^T dO, dK += dS^T Q: the warp's 16 keys are its rows.
    tile_acc<T16, HS, true>(dv, t.Pd, t.dOs);
    tile_acc<T16, HS, true>(dk, t.dS, t.Qs);
  }
  __syncthreads();  // S is free: staging for the stores
  const int wr = (tid / 32) * 16;
  const int64_t out_off = b * a.dqkvl.batch_stride + h * HS;
  T16* dK = static_cast<T16*>(a.dk) + out_off;
  T16* dV = static_cast<T16*>(a.dv) + out_off;
#pragma unroll
  for (int which = 0; which < 2; ++which) {
#pragma unroll
    for (int n = 0; n < HS / 16; ++n) {
      w::store_matrix_sync(t.S + wr * kSPitch, which == 0 ? dk[n] : dv[n], kSPitch,
                           w::mem_row_major);
      __syncwarp();
      for (int e = tid % 32; e < 256; e += 32) {
        const int r = wr + e / 16, d = n * 16 + e % 16;
        const float x = t.S[wr * kSPitch + (e / 16) * kSPitch + e % 16];
        if (k0 + r < Tn) {
          if (which == 0)
            dK[(k0 + r) * a.dqkvl.row_stride + d] = from_f32<T16>(x * a.scale);
          else
            dV[(k0 + r) * a.dqkvl.row_stride + d] = from_f32<T16>(x);
        }
      }
      __syncwarp();
    }
  }
#endif
}

// Whether every head row of the pointer, row and batch strides (elements of 2 bytes) starts
// 16-byte aligned.
bool rows_aligned(const void* p, HeadLayout l) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && l.row_stride % 8 == 0 &&
         l.batch_stride % 8 == 0;
}

template <class T16, int HS>
int tc_forward(const TcArgs& a, int64_t BH, cudaStream_t stream) {
  const size_t smem = tc_forward_smem<T16, HS>();
  cudaError_t e = allow_smem(tc_forward_kernel<T16, HS>, smem);
  if (e != cudaSuccess) return int(e);
  const dim3 grid(unsigned(BH), unsigned((a.T_ + kTc - 1) / kTc));
  tc_forward_kernel<T16, HS><<<grid, kTcThreads, smem, stream>>>(a);
  return int(cudaGetLastError());
}

template <class T16, int HS>
int tc_backward(const TcArgs& a, int64_t BH, cudaStream_t stream) {
  const size_t smem = tc_backward_smem<T16, HS>();
  cudaError_t e = allow_smem(tc_backward_dq_kernel<T16, HS>, smem);
  if (e == cudaSuccess) e = allow_smem(tc_backward_dkv_kernel<T16, HS>, smem);
  if (e != cudaSuccess) return int(e);
  const dim3 grid(unsigned(BH), unsigned((a.T_ + kTc - 1) / kTc));
  tc_backward_dq_kernel<T16, HS><<<grid, kTcThreads, smem, stream>>>(a);  // writes delta ...
  e = cudaGetLastError();
  if (e != cudaSuccess) return int(e);
  tc_backward_dkv_kernel<T16, HS><<<grid, kTcThreads, smem, stream>>>(a);  // ... read here
  return int(cudaGetLastError());
}

// The head sizes with tensor-core kernels.
template <class T16, template <class, int> class Run>
int tc_dispatch(int64_t hs, const TcArgs& a, int64_t BH, cudaStream_t stream) {
  switch (hs) {
    case 32:
      return Run<T16, 32>::run(a, BH, stream);
    case 64:
      return Run<T16, 64>::run(a, BH, stream);
    case 128:
      return Run<T16, 128>::run(a, BH, stream);
    default:
      return int(cudaErrorInvalidValue);
  }
}
template <class T16, int HS>
struct RunForward {
  static int run(const TcArgs& a, int64_t BH, cudaStream_t s) {
    return tc_forward<T16, HS>(a, BH, s);
  }
};
template <class T16, int HS>
struct RunBackward {
  static int run(const TcArgs& a, int64_t BH, cudaStream_t s) {
    return tc_backward<T16, HS>(a, BH, s);
  }
};

template <template <class, int> class Run>
int tc_run(int dtype, int64_t hs, const TcArgs& a, int64_t BH, cudaStream_t stream) {
  return dtype == bf16 ? tc_dispatch<__nv_bfloat16, Run>(hs, a, BH, stream)
                       : tc_dispatch<__half, Run>(hs, a, BH, stream);
}

}  // namespace

// The largest shared memory the tensor-core kernels of head size HS ask for (the same for both
// 16-bit types).
template <int HS>
size_t tc_smem_need() {
  return std::max(tc_forward_smem<__half, HS>(), tc_backward_smem<__half, HS>());
}

bool attention_tensor_cores(int dtype, int64_t hs) {
  if ((dtype != bf16 && dtype != f16) || (hs != 32 && hs != 64 && hs != 128)) return false;
  int device = 0, major = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess)
    return false;
  if (major < 8) return false;  // bf16 wmma: sm_80 on
  // The kernel bodies are compiled for sm_80 on only: a build for an older architecture running
  // on a newer GPU (through its PTX) has empty kernels here.
  cudaFuncAttributes fa{};
  if (cudaFuncGetAttributes(&fa, tc_forward_kernel<__nv_bfloat16, 64>) != cudaSuccess ||
      fa.ptxVersion < 80)
    return false;
  // hs 128 needs ~121 KiB: more than sm_86/89/120 give a block (99 KiB).
  const size_t need = hs == 32   ? tc_smem_need<32>()
                      : hs == 64 ? tc_smem_need<64>()
                                 : tc_smem_need<128>();
  return need <= size_t(optin);
}

int attention_forward(int dtype, int64_t B, int64_t NH, int64_t Tq, int64_t L, int64_t hs,
                      int64_t offset, const void* q, HeadLayout ql, const void* k, const void* v,
                      HeadLayout kvl, void* out, HeadLayout ol, void* lse, Dropout dropout,
                      void* stream) {
  if (B * NH == 0 || Tq == 0) return 0;
  if (dtype == bf16 || dtype == f16) {
    if (!attention_tensor_cores(dtype, hs) || offset != 0 || Tq != L || !lse ||
        ql.row_stride != kvl.row_stride || ql.batch_stride != kvl.batch_stride ||
        B * NH > 0x7fffffff || (Tq + kTc - 1) / kTc > 65535)
      return int(cudaErrorInvalidValue);
    TcArgs a{};
    a.q = q;
    a.k = k;
    a.v = v;
    a.out = out;
    a.lse_out = static_cast<float*>(lse);
    a.mask = dropout.mask;
    a.NH = NH;
    a.T_ = Tq;
    a.qkvl = ql;
    a.dl = ol;
    a.scale = float(1.0 / std::sqrt(double(hs)));
    a.keep = float(dropout.keep);
    a.vec = rows_aligned(q, ql) && rows_aligned(k, ql) && rows_aligned(v, ql);
    return tc_run<RunForward>(dtype, hs, a, B * NH, cudaStream_t(stream));
  }
  // Grid limits: x < 2^31, y <= 65535.
  if (B * NH > 0x7fffffff || (Tq + kBlockM - 1) / kBlockM > 65535 || L < 1)
    return int(cudaErrorInvalidValue);
  auto s = cudaStream_t(stream);
  switch (dtype) {
    case f32:
      return forward<float>(B, NH, Tq, L, hs, offset, q, ql, k, v, kvl, out, ol, lse, dropout, s);
    case f64:
      return forward<double>(B, NH, Tq, L, hs, offset, q, ql, k, v, kvl, out, ol, lse, dropout, s);
    default:
      return int(cudaErrorInvalidValue);
  }
}

int attention_backward(int dtype, int64_t B, int64_t NH, int64_t T, int64_t hs, const void* q,
                       const void* k, const void* v, HeadLayout qkvl, const void* dout,
                       HeadLayout dl, const void* lse, void* delta, void* dq, void* dk, void* dv,
                       HeadLayout dqkvl, Dropout dropout, void* stream) {
  if (B * NH * T == 0) return 0;
  if (dtype == bf16 || dtype == f16) {
    if (!attention_tensor_cores(dtype, hs) || B * NH > 0x7fffffff || (T + kTc - 1) / kTc > 65535)
      return int(cudaErrorInvalidValue);
    TcArgs a{};
    a.q = q;
    a.k = k;
    a.v = v;
    a.dout = dout;
    a.dq = dq;
    a.dk = dk;
    a.dv = dv;
    a.lse = static_cast<const float*>(lse);
    a.delta = static_cast<float*>(delta);
    a.mask = dropout.mask;
    a.NH = NH;
    a.T_ = T;
    a.qkvl = qkvl;
    a.dl = dl;
    a.dqkvl = dqkvl;
    a.scale = float(1.0 / std::sqrt(double(hs)));
    a.keep = float(dropout.keep);
    a.vec = rows_aligned(q, qkvl) && rows_aligned(k, qkvl) && rows_aligned(v, qkvl) &&
            rows_aligned(dout, dl);
    return tc_run<RunBackward>(dtype, hs, a, B * NH, cudaStream_t(stream));
  }
  if (B * NH * T > 0x7fffffff) return int(cudaErrorInvalidValue);
  auto s = cudaStream_t(stream);
  switch (dtype) {
    case f32:
      return backward<float>(B, NH, T, hs, q, k, v, qkvl, dout, dl, lse, delta, dq, dk, dv, dqkvl,
                             dropout, s);
    case f64:
      return backward<double>(B, NH, T, hs, q, k, v, qkvl, dout, dl, lse, delta, dq, dk, dv, dqkvl,
                              dropout, s);
    default:
      return int(cudaErrorInvalidValue);
  }
}

}  // namespace forge::cuda::kernels
