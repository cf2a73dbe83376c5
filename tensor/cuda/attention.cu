// Causal attention kernels (launchers in tensor/cuda/kernels_attention.h); the maths is that of
// tensor/ops_attention.cpp, without the (T, T) matrices.
//
// Forward (flash-attention style). One block per (batch, head) and tile of kBlockM queries:
//   load Q tile (kBlockM, hs) into shared memory; O := 0, m := -inf, l := 0 per row
//   for each tile of kBlockN keys that the tile's queries can see (causal: up to the last query):
//     load K, V tiles (kBlockN, hs)
//     S = Q K^T / sqrt(hs), -inf where key > query position or key >= L
//     per row: m' = max(m, max_j S_j); c = exp(m - m'); P_j = exp(S_j - m'); l = l c + sum_j P_j
//     O = O c + P V                                     (the online softmax: O / l is softmax V)
//   out = O / l; lse = m + log l
// Every row sees key 0, which is in the first tile: m is finite from the first tile on, so no
// exp(-inf - -inf) ever happens, also for the rows past Tq that pad the last tile.
//
// Backward (recompute, one row at a time): with P_tj = exp(S_tj - lse_t), dP_tj = dO_t . V_j,
//   delta_t = sum_j P_tj dP_tj            (= rowsum(P * dP) of the CPU's dS)
//   dS_tj = P_tj (dP_tj - delta_t)        (j <= t)
//   dQ_t = scale sum_{j<=t} dS_tj K_j        one block per query row t   (also writes delta_t)
//   dK_j = scale sum_{t>=j} dS_tj Q_t, dV_j = sum_{t>=j} P_tj dO_t   one block per key row j
// Simple rather than fast: each block walks its row's keys (or queries) in chunks of the block's
// threads, one dot product per thread, then the threads sum the chunk over the head dims.
#include <cuda_runtime.h>

#include <cmath>

#include "tensor/cuda/kernels_attention.h"

namespace forge::cuda::kernels {

namespace {

enum Code { f32 = 0, f64 = 1 };  // DType codes of tensor/dtype.h

constexpr int kBlockM = 32;    // queries per forward block
constexpr int kBlockN = 32;    // keys per tile
constexpr int kThreads = 128;  // threads per block, every kernel here (a power of two)

template <class T>
struct ForwardArgs {
  const T *q, *k, *v;
  T* out;
  T* lse;  // may be null
  int64_t NH, Tq, L, hs, offset;
  HeadLayout ql, kvl, ol;
  T scale;
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
  extern __shared__ __align__(16) unsigned char smem_raw[];
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
      T sum = T(0);
      for (int c = 0; c < kBlockN; ++c) {
        const T p = exp(row[c] - mx);  // 0 where masked
        row[c] = p;
        sum += p;
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
  int64_t NH, T_, hs;
  HeadLayout qkvl, dl, dqkvl;
  T scale;
};

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
  extern __shared__ __align__(16) unsigned char smem_raw[];
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

  T part = T(0);  // delta_t = sum_j P_tj dP_tj
  for (int64_t j = tid; j <= t; j += kThreads) {
    const T p = exp(dot(qs, K + j * qrow, hs) * a.scale - lse);
    part += p * dot(dos, V + j * qrow, hs);
  }
  const T delta = block_sum(part, red);

  for (int64_t j0 = 0; j0 <= t; j0 += kThreads) {
    const int64_t j = j0 + tid;
    T dsj = T(0);
    if (j <= t) {
      const T p = exp(dot(qs, K + j * qrow, hs) * a.scale - lse);
      dsj = p * (dot(dos, V + j * qrow, hs) - delta);
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
// the dK and dV accumulators (hs each), P and dS of a chunk (kThreads each).
template <class T>
__global__ void __launch_bounds__(kThreads) backward_dkv_kernel(BackwardArgs<T> a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
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
      dst = p * (dot(dO + t * drow, vs, hs) - delta[t]);
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
            void* lse, cudaStream_t stream) {
  ForwardArgs<T> a{static_cast<const T*>(q),
                   static_cast<const T*>(k),
                   static_cast<const T*>(v),
                   static_cast<T*>(out),
                   static_cast<T*>(lse),
                   NH,
                   Tq,
                   L,
                   hs,
                   offset,
                   ql,
                   kvl,
                   ol,
                   T(1.0 / std::sqrt(double(hs)))};
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
             void* delta, void* dq, void* dk, void* dv, HeadLayout dqkvl, cudaStream_t stream) {
  BackwardArgs<T> a{static_cast<const T*>(q),
                    static_cast<const T*>(k),
                    static_cast<const T*>(v),
                    static_cast<const T*>(dout),
                    static_cast<const T*>(lse),
                    static_cast<T*>(delta),
                    static_cast<T*>(dq),
                    static_cast<T*>(dk),
                    static_cast<T*>(dv),
                    NH,
                    Tn,
                    hs,
                    qkvl,
                    dl,
                    dqkvl,
                    T(1.0 / std::sqrt(double(hs)))};
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

}  // namespace

int attention_forward(int dtype, int64_t B, int64_t NH, int64_t Tq, int64_t L, int64_t hs,
                      int64_t offset, const void* q, HeadLayout ql, const void* k, const void* v,
                      HeadLayout kvl, void* out, HeadLayout ol, void* lse, void* stream) {
  if (B * NH == 0 || Tq == 0) return 0;
  // Grid limits: x < 2^31, y <= 65535.
  if (B * NH > 0x7fffffff || (Tq + kBlockM - 1) / kBlockM > 65535 || L < 1)
    return int(cudaErrorInvalidValue);
  auto s = cudaStream_t(stream);
  switch (dtype) {
    case f32:
      return forward<float>(B, NH, Tq, L, hs, offset, q, ql, k, v, kvl, out, ol, lse, s);
    case f64:
      return forward<double>(B, NH, Tq, L, hs, offset, q, ql, k, v, kvl, out, ol, lse, s);
    default:
      return int(cudaErrorInvalidValue);
  }
}

int attention_backward(int dtype, int64_t B, int64_t NH, int64_t T, int64_t hs, const void* q,
                       const void* k, const void* v, HeadLayout qkvl, const void* dout,
                       HeadLayout dl, const void* lse, void* delta, void* dq, void* dk, void* dv,
                       HeadLayout dqkvl, void* stream) {
  if (B * NH * T == 0) return 0;
  if (B * NH * T > 0x7fffffff) return int(cudaErrorInvalidValue);
  auto s = cudaStream_t(stream);
  switch (dtype) {
    case f32:
      return backward<float>(B, NH, T, hs, q, k, v, qkvl, dout, dl, lse, delta, dq, dk, dv, dqkvl,
                             s);
    case f64:
      return backward<double>(B, NH, T, hs, q, k, v, qkvl, dout, dl, lse, delta, dq, dk, dv, dqkvl,
                              s);
    default:
      return int(cudaErrorInvalidValue);
  }
}

}  // namespace forge::cuda::kernels
