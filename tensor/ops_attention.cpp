// Causal multi-head self-attention, forward and backward in one place (the llm.c shape).
//
// qkv (B, T, 3C) holds q, k, v side by side; head h of each uses columns [h*hs, (h+1)*hs), hs =
// C/NH. Per (batch, head), with Q, K, V the (T, hs) views into qkv (row stride 3C, no copies):
//   pass 1  S = Q K^T / sqrt(hs)                    (T, T)  one matrix product
//   pass 2  P = softmax of each row t over keys 0..t; entries above the diagonal are 0 (no mask
//           tensor: the row loop stops at t)
//   pass 3  P' = P * dropout mask / (1 - p)         (only when dropout is on)
//   pass 4  O = P' V                                (T, hs) written into out (B, T, C) at column
//   h*hs
// Backward, given dO:
//   dP' = dO V^T          dV = P'^T dO
//   dP  = dP' * mask / (1 - p)
//   dS  = P * (dP - rowsum(P * dP))   on and below the diagonal, 0 above
//   dQ  = dS K / sqrt(hs)  dK = dS^T Q / sqrt(hs)
// The (batch, head) pairs are split across threads; each pair's products run single-threaded, so
// results do not depend on the thread count. In f32 the products skip what the causal mask makes
// zero or unneeded (cpu::Causal: S and dP' above the diagonal, the depths a row of P or dS cannot
// see), with the full products' bits; bench/attention_products measures the saving.
//
// On cuda (tensor/cuda/attention.cu) the forward never forms P: a flash-attention kernel keeps a
// running softmax per row, and `probs` of the result holds instead the log-sum-exp of each row,
// lse (B, NH, T) = log sum_j exp(S_tj), in qkv's dtype (f32 for bf16/f16 qkv). The backward takes
// that lse where the CPU takes P and recomputes P_tj = exp(S_tj - lse_t). Dropout draws the CPU's
// mask (the same bits, on the device) and the kernels apply it as the CPU does. On cuda qkv may
// also be bf16 or f16 (the products on tensor cores, the softmax in f32; out in qkv's dtype);
// head sizes the tensor-core kernels do not take are computed in f32.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "tensor/cpu/gemm.h"
#include "tensor/cpu/lanes.h"
#include "tensor/cpu/vec_math.h"
#include "tensor/cuda/cuda.h"
#include "tensor/cuda/cuda_misc.h"
#include "tensor/cuda/kernels_attention.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace forge {

namespace {

void check_qkv(const Tensor& qkv, int n_head, const char* op) {
  FORGE_CHECK(qkv.defined(), "{}: undefined tensor", op);
  FORGE_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0, "{}: qkv must be (B, T, 3C), got {}", op,
              qkv.shape());
  int64_t C = qkv.size(2) / 3;
  FORGE_CHECK(n_head > 0 && C % n_head == 0, "{}: {} channels do not split into {} heads", op, C,
              n_head);
  const bool half = qkv.dtype() == DType::bf16 || qkv.dtype() == DType::f16;
  FORGE_CHECK(
      qkv.dtype() == DType::f32 || qkv.dtype() == DType::f64 || (half && qkv.device().is_cuda()),
      "{}: expected f32 or f64 (or bf16, f16 on cuda), got {}", op, qkv.dtype());
}

// Per-thread scratch of `per_thread` elements each, allocated before the parallel region.
template <class T>
struct Scratch {
  Tensor buf;
  int64_t per_thread;
  Scratch(int64_t n, int64_t elems) : per_thread(elems) {
    buf = Tensor::empty({std::max<int64_t>(n, 1) * std::max<int64_t>(elems, 1)}, dtype_of<T>);
  }
  T* get() const { return buf.data<T>() + int64_t(omp_get_thread_num()) * per_thread; }
};

// Rows of P (pass 2): causal softmax of S (rows x cols) in place; row t sees columns
// 0 .. offset+t, the rest become 0.
//
// The passes run over the visible part rounded up to whole groups of the reductions' 16 lanes,
// its hidden columns set to -inf; the columns past it are set to +0. Each visible element goes to
// the same lane of the reductions as over the visible part alone, -inf never wins the max, e^-inf
// is +0, and adding +0 to a lane changes nothing, so the bits are those of a softmax over the
// visible part; but the loops are whole vectors (attention's T is a multiple of 16), not a
// different length per row with a scalar tail for each, and the hidden groups (half of a causal
// block) are never exponentiated. A row with a NaN score is NaN where visible and 0 past it.
constexpr int64_t kLanes = 16;  // cpu::lanes_*'s
int64_t lane_groups_end(int64_t n, int64_t cols) {
  return std::min(cols, (n + kLanes - 1) / kLanes * kLanes);
}

// The same for f32 rows of whole groups (cols a multiple of 16), each group one vector of the
// reductions' lanes: the hidden columns masked, the exponentials with their sum, and the scaling
// each one pass over the row's visible groups, with no call and no loop set-up per pass. Each
// element takes the same operations in the same lane and order as through lanes_max, vexp and
// lanes_sum above (vexp's products fuse into multiply-adds alike in both, g++ contracting by
// default in C++; test_attention checks the bits): the same bits. (Written once for any T with a
// scalar tail, as exp and sum in one pass, it ran the op about 13% slower than this.)
void causal_softmax_rows_f32(float* S, int64_t rows, int64_t cols, int64_t offset) {
  using V = cpu::lanes_detail::vec_t<float>;
  constexpr float kLow = -std::numeric_limits<float>::infinity();
  V iota;
  for (int l = 0; l < kLanes; ++l) iota[l] = float(l);
  for (int64_t t = 0; t < rows; ++t) {
    float* row = S + t * cols;
    const int64_t n = std::min(cols, offset + t + 1), w = lane_groups_end(n, cols);
    // The last visible group's hidden columns to -inf (j >= n).
    float* last = row + w - kLanes;
    const auto hidden = iota >= float(n - (w - kLanes));
    V v = cpu::lanes_detail::load(last);
    v = hidden ? V{} + kLow : v;
    std::memcpy(last, &v, sizeof v);
    const float m = cpu::lanes_max(row, w);
    V sum = {};
    for (int64_t j = 0; j < w; j += kLanes) {
      float e[kLanes];
      for (int l = 0; l < kLanes; ++l) e[l] = cpu::vexp(row[j + l] - m);
      std::memcpy(row + j, e, sizeof e);
      sum += cpu::lanes_detail::load(e);
    }
    const float inv = 1.0f / cpu::lanes_detail::combine<float>(sum);
    for (int64_t j = 0; j < w; j += kLanes) {
      V x = cpu::lanes_detail::load(row + j) * inv;
      std::memcpy(row + j, &x, sizeof x);
    }
    std::fill(row + n, row + cols, 0.0f);  // +0 already unless the row has a NaN
  }
}
template <class T>
void causal_softmax_rows(T* S, int64_t rows, int64_t cols, int64_t offset = 0) {
  if constexpr (std::is_same_v<T, float>) {
    if (cols % kLanes == 0) return causal_softmax_rows_f32(S, rows, cols, offset);
  }
  for (int64_t t = 0; t < rows; ++t) {
    T* row = S + t * cols;
    const int64_t n = std::min(cols, offset + t + 1), w = lane_groups_end(n, cols);
    for (int64_t j = n; j < w; ++j) row[j] = -std::numeric_limits<T>::infinity();
    std::fill(row + w, row + cols, T(0));
    const T m = cpu::lanes_max(row, w);
    for (int64_t j = 0; j < w; ++j) row[j] = cpu::vexp(row[j] - m);
    const T inv = T(1) / cpu::lanes_sum(row, w);
    for (int64_t j = 0; j < w; ++j) row[j] *= inv;
    std::fill(row + n, row + w, T(0));  // +0 already unless the row has a NaN
  }
}

// One head's product (cpu::gemm's arguments), told which part the causal mask makes zero or
// unneeded (see cpu::Causal): f32 skips it, f64 (Eigen) computes it all.
template <class T>
void head_gemm(cpu::Causal causal, bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
               const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>)
    cpu::gemm_causal(causal, ta, tb, m, n, k, alpha, A, lda, B, ldb, 0.0f, C, ldc);
  else
    cpu::gemm<T>(ta, tb, m, n, k, alpha, A, lda, B, ldb, T(0), C, ldc);
}

// dS = P * (dP - rowsum(P * dP)) on and below the diagonal, 0 above, in place of dP (T x T). Row
// t's probabilities past t are +0, so up to the end of its last group of lanes the dot adds +-0 to
// its lanes past t (the same bits, as in causal_softmax_rows) and the loops run whole vectors;
// past that group dS is 0. f32 rows of whole groups take one vector per group, as the softmax.
template <class T>
void causal_softmax_backward_rows(const T* P, T* dP, int64_t Tn) {
  if constexpr (std::is_same_v<T, float>) {
    if (Tn % kLanes == 0) {
      using V = cpu::lanes_detail::vec_t<float>;
      V iota;
      for (int l = 0; l < kLanes; ++l) iota[l] = float(l);
      for (int64_t t = 0; t < Tn; ++t) {
        const float* p = P + t * Tn;
        float* d = dP + t * Tn;
        const int64_t w = lane_groups_end(t + 1, Tn);
        const float dot = cpu::lanes_dot(p, d, w);
        for (int64_t j = 0; j < w; j += kLanes) {
          V x = cpu::lanes_detail::load(p + j) * (cpu::lanes_detail::load(d + j) - dot);
          x = iota + float(j) <= float(t) ? x : V{};
          std::memcpy(d + j, &x, sizeof x);
        }
        std::fill(d + w, d + Tn, 0.0f);
      }
      return;
    }
  }
  for (int64_t t = 0; t < Tn; ++t) {
    const T* p = P + t * Tn;
    T* d = dP + t * Tn;
    const int64_t w = lane_groups_end(t + 1, Tn);
    const T dot = cpu::lanes_dot(p, d, w);
    for (int64_t j = 0; j < w; ++j) d[j] = j <= t ? p[j] * (d[j] - dot) : T(0);
    std::fill(d + w, d + Tn, T(0));
  }
}

// P' = P * mask / (1 - p) into dst (which may be P itself). The mask restrict: a byte pointer
// may alias anything, and without it the loop stays scalar.
template <class T>
void apply_mask(const T* P, const uint8_t* __restrict mask, T scale, int64_t n, T* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = mask[i] ? P[i] * scale : T(0);
}

// Asks for part `part` of `parts` of head bh's operands towards L2 (q, k, v; with dout, its dO
// too; with probs, its P), while the head before it computes: their rows are short (hs elements)
// and far apart (3C, C), streams the hardware prefetcher does not follow, and in backward they
// come back from memory (written in forward, evicted since). A few percent off the products in
// the `cpu` step (bench/RESULTS.md, 2026-12-08).
template <class T>
void prefetch_head(const T* qkv, const T* dout, const T* probs, int64_t bh, int64_t NH, int64_t Tn,
                   int64_t C, int part, int parts) {
  auto rows = [&](const T* base, int64_t ld, int64_t cols) {
    const int64_t bytes = cols * int64_t(sizeof(T));
    for (int64_t r = Tn * part / parts; r < Tn * (part + 1) / parts; ++r)
      for (int64_t b = 0; b < bytes; b += 64)
        __builtin_prefetch(reinterpret_cast<const char*>(base + r * ld) + b, 0, 2);
  };
  const int64_t b = bh / NH, hs = C / NH, h = bh % NH;
  for (int i = 0; i < 3; ++i) rows(qkv + b * Tn * 3 * C + i * C + h * hs, 3 * C, hs);
  if (dout) rows(dout + b * Tn * C + h * hs, C, hs);
  if (probs) rows(probs + bh * Tn * Tn, Tn, Tn);
}

// How many (batch, head) pairs a thread takes at least, from the multiply-adds of one: a parallel
// region costs microseconds (and far more when another process holds a core and a worker must
// wait for it), so the heads of one decoding step, a few thousand multiply-adds each, stay on one
// thread.
int64_t heads_grain(int64_t work_per_head) {
  constexpr int64_t kMinWork = int64_t(1) << 17;
  return std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, work_per_head));
}

// ---------------------------------------------------------------------------------------------
// cuda

using cuda::kernels::HeadLayout;

bool is_half(DType t) {
  return t == DType::bf16 || t == DType::f16;
}
// The dtype of the saved lse (and of the backward's delta scratch) for qkv of dtype t.
DType lse_dtype(DType t) {
  return is_half(t) ? DType::f32 : t;
}
// Whether the kernels take `qkv` with head size hs as it is; 16-bit qkv they do not take (head
// size, or a GPU without room for the tiles) is widened to f32. Asks about qkv's own GPU.
bool direct(const Tensor& qkv, int64_t hs) {
  if (!is_half(qkv.dtype())) return true;
  cuda::stream_handle(qkv.device().index);  // makes qkv's GPU the current one
  return cuda::kernels::attention_tensor_cores(int(qkv.dtype()), hs);
}

cuda::kernels::Dropout dropout_of(const Tensor& mask, double dropout_p) {
  cuda::kernels::Dropout d;
  if (mask.defined()) {
    d.mask = static_cast<const uint8_t*>(mask.raw_data());
    d.keep = 1.0 / (1.0 - dropout_p);
  }
  return d;
}

// The kernels on a contiguous qkv the kernels take; `mask` the drawn dropout mask or undefined.
AttentionResult attention_forward_cuda(const Tensor& qkv, int64_t NH, const Tensor& mask,
                                       double dropout_p) {
  const int64_t B = qkv.size(0), Tn = qkv.size(1), C = qkv.size(2) / 3;
  const Device dev = qkv.device();
  AttentionResult r;
  r.out = Tensor::empty({B, Tn, C}, qkv.dtype(), dev);
  r.probs = Tensor::empty({B, NH, Tn}, lse_dtype(qkv.dtype()), dev);  // lse, not P (see the top)
  r.mask = mask;
  const HeadLayout in{3 * C, Tn * 3 * C}, out{C, Tn * C};
  const char* base = static_cast<const char*>(qkv.raw_data());
  const size_t col = dtype_size(qkv.dtype()) * size_t(C);  // bytes from q to k, k to v
  cuda::check_status(cuda::kernels::attention_forward(
                         int(qkv.dtype()), B, NH, Tn, Tn, C / NH, 0, base, in, base + col,
                         base + 2 * col, in, r.out.raw_data(), out, r.probs.raw_data(),
                         dropout_of(mask, dropout_p), cuda::stream_handle(dev.index)),
                     "causal_attention");
  return r;
}

AttentionResult causal_attention_cuda(const Tensor& qkv_in, int n_head, double dropout_p,
                                      Generator* gen, HeadSlice heads) {
  const int64_t B = qkv_in.size(0), Tn = qkv_in.size(1), C = qkv_in.size(2) / 3, NH = n_head;
  Tensor mask;
  if (dropout_p > 0) {  // the CPU's draw (see there), made on the device
    const int64_t all = heads.total > 0 ? heads.total : NH;
    mask =
        cuda::dropout_mask({B, all, Tn, Tn}, dropout_p, *gen, 1, heads.first, NH, qkv_in.device());
  }
  const DType dt = qkv_in.dtype();
  if (direct(qkv_in, C / NH))
    return attention_forward_cuda(qkv_in.contiguous(), NH, mask, dropout_p);
  AttentionResult r = attention_forward_cuda(qkv_in.to(DType::f32), NH, mask, dropout_p);
  r.out = r.out.to(dt);
  return r;
}

// The kernels on contiguous qkv and dout of a dtype the kernels take.
Tensor attention_backward_cuda(const Tensor& dout, const Tensor& qkv, const Tensor& lse,
                               const Tensor& mask, int64_t NH, double dropout_p) {
  const int64_t B = qkv.size(0), Tn = qkv.size(1), C = qkv.size(2) / 3;
  const Device dev = qkv.device();
  Tensor dqkv = Tensor::empty(qkv.shape(), qkv.dtype(), dev);
  Tensor delta = Tensor::empty({B, NH, Tn}, lse_dtype(qkv.dtype()), dev);
  const HeadLayout in{3 * C, Tn * 3 * C}, grad{C, Tn * C};
  const size_t col = dtype_size(qkv.dtype()) * size_t(C);
  const char* base = static_cast<const char*>(qkv.raw_data());
  char* dbase = static_cast<char*>(dqkv.raw_data());
  cuda::check_status(
      cuda::kernels::attention_backward(
          int(qkv.dtype()), B, NH, Tn, C / NH, base, base + col, base + 2 * col, in,
          dout.raw_data(), grad, lse.raw_data(), delta.raw_data(), dbase, dbase + col,
          dbase + 2 * col, in, dropout_of(mask, dropout_p), cuda::stream_handle(dev.index)),
      "causal_attention_backward");
  return dqkv;
}

Tensor causal_attention_backward_cuda(const Tensor& dout_in, const Tensor& qkv_in,
                                      const Tensor& lse, const Tensor& mask_in, int n_head,
                                      double dropout_p) {
  const char* op = "causal_attention_backward";
  const int64_t B = qkv_in.size(0), Tn = qkv_in.size(1), C = qkv_in.size(2) / 3, NH = n_head;
  const DType dt = qkv_in.dtype();
  // What the backward saved differs by device (P here, the CPU's (B, NH, T, T) probabilities),
  // so it is checked here and not at the op surface.
  FORGE_CHECK(
      lse.shape() == Shape({B, NH, Tn}) && lse.dtype() == lse_dtype(dt) && lse.is_contiguous(),
      "{}: on cuda the saved probabilities are the forward's log-sum-exp ({}, {}, {}) {}, "
      "got {} {}",
      op, B, NH, Tn, lse_dtype(dt), lse.shape(), lse.dtype());
  Tensor mask = mask_in.defined() ? mask_in.contiguous() : Tensor();
  if (direct(qkv_in, C / NH))
    return attention_backward_cuda(dout_in.contiguous(), qkv_in.contiguous(), lse, mask, NH,
                                   dropout_p);
  return attention_backward_cuda(dout_in.to(DType::f32), qkv_in.to(DType::f32), lse, mask, NH,
                                 dropout_p)
      .to(dt);
}

}  // namespace

AttentionResult causal_attention(const Tensor& qkv_in, int n_head, double dropout_p, Generator* gen,
                                 std::optional<DType> probs_dtype, HeadSlice heads) {
  check_qkv(qkv_in, n_head, "causal_attention");
  FORGE_CHECK(dropout_p >= 0 && dropout_p < 1, "causal_attention: dropout {} not in [0, 1)",
              dropout_p);
  FORGE_CHECK(dropout_p == 0 || gen != nullptr, "causal_attention: dropout needs a generator");
  if (dropout_p > 0) {
    const int64_t all = heads.total > 0 ? heads.total : n_head;
    FORGE_CHECK(heads.first >= 0 && heads.first + n_head <= all,
                "causal_attention: heads [{}, {}) of {}", heads.first, heads.first + n_head, all);
  }
  if (qkv_in.device().is_cuda())
    return causal_attention_cuda(qkv_in, n_head, dropout_p, gen, heads);
  Tensor qkv = qkv_in.contiguous();
  const int64_t B = qkv.size(0), Tn = qkv.size(1), C = qkv.size(2) / 3, NH = n_head;
  const int64_t hs = C / NH;
  AttentionResult r;
  r.out = Tensor::empty({B, Tn, C}, qkv.dtype());
  const DType pdt = probs_dtype.value_or(qkv.dtype());
  const bool narrow_probs = pdt != qkv.dtype();
  FORGE_CHECK(
      !narrow_probs || (qkv.dtype() == DType::f32 && (pdt == DType::bf16 || pdt == DType::f16)),
      "causal_attention: probabilities in {} for qkv {} (expected {}, or bf16/f16 with f32)", pdt,
      qkv.dtype(), qkv.dtype());
  r.probs = Tensor::empty({B, NH, Tn, Tn}, pdt);
  if (dropout_p > 0) {
    // Drawn like dropout's mask (one uniform per element): thread-count free, and with a head
    // slice, this rank's part of the mask of all the heads.
    const int64_t all = heads.total > 0 ? heads.total : NH;
    r.mask = dropout_mask({B, all, Tn, Tn}, dropout_p, *gen, 1, heads.first, NH);
  }
  dispatch_float(qkv.dtype(), "causal_attention", [&]<class T>() {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      const T* pqkv = qkv.data<T>();
      T* pout = r.out.data<T>();
      T* pprobs = narrow_probs ? nullptr : r.probs.data<T>();
      const uint8_t* pmask = r.mask.defined() ? r.mask.data<uint8_t>() : nullptr;
      const T scale = T(1.0 / std::sqrt(double(hs))), keep = T(1.0 / (1.0 - dropout_p));
      // Per thread: P' with dropout; P itself when it is stored narrower.
      Scratch<T> dropped(get_num_threads(), Tn * Tn * ((pmask ? 1 : 0) + (narrow_probs ? 1 : 0)));
      parallel_for(0, B * NH, heads_grain(2 * Tn * Tn * hs), [&](int64_t lo, int64_t hi) {
        for (int64_t bh = lo; bh < hi; ++bh) {
          const int64_t b = bh / NH, h = bh % NH;
          const T* Q = pqkv + b * Tn * 3 * C + h * hs;
          const T* K = Q + C;
          const T* V = Q + 2 * C;
          T* P = narrow_probs ? dropped.get() + (pmask ? Tn * Tn : 0) : pprobs + bh * Tn * Tn;
          // The next head's q, k and v, half before each of this head's two products.
          auto prefetch_next = [&](int part) {
            if (bh + 1 < hi) prefetch_head<T>(pqkv, nullptr, nullptr, bh + 1, NH, Tn, C, part, 2);
          };
          prefetch_next(0);
          head_gemm(cpu::Causal::c_lower, false, true, Tn, Tn, hs, scale, Q, 3 * C, K, 3 * C, P,
                    Tn);  // pass 1
          prefetch_next(1);
          causal_softmax_rows(P, Tn, Tn);  // pass 2
          if (narrow_probs)                // kept for backward in 16 bits; the forward goes on in T
            dispatch_float(pdt, "causal_attention", [&]<class P16>() {
              P16* dst = r.probs.data<P16>() + bh * Tn * Tn;
              for (int64_t i = 0; i < Tn * Tn; ++i) dst[i] = P16(float(P[i]));
            });
          const T* Pd = P;
          if (pmask) {  // pass 3
            T* buf = dropped.get();
            apply_mask(P, pmask + bh * Tn * Tn, keep, Tn * Tn, buf);
            Pd = buf;
          }
          head_gemm(cpu::Causal::a_lower, false, false, Tn, hs, Tn, T(1), Pd, Tn, V, 3 * C,
                    pout + b * Tn * C + h * hs, C);  // pass 4
        }
      });
    }
  });
  return r;
}

Tensor causal_attention_backward(const Tensor& dout_in, const Tensor& qkv_in, const Tensor& probs,
                                 const Tensor& mask, int n_head, double dropout_p) {
  const char* op = "causal_attention_backward";
  check_qkv(qkv_in, n_head, op);
  const int64_t B = qkv_in.size(0), Tn = qkv_in.size(1), C = qkv_in.size(2) / 3, NH = n_head;
  FORGE_CHECK(dout_in.defined() && probs.defined(), "{}: undefined tensor", op);
  check_same_device(qkv_in, dout_in, op);
  check_same_device(qkv_in, probs, op);
  FORGE_CHECK(dout_in.shape() == Shape({B, Tn, C}) && dout_in.dtype() == qkv_in.dtype(),
              "{}: grad {} {} does not match qkv {} {}", op, dout_in.shape(), dout_in.dtype(),
              qkv_in.shape(), qkv_in.dtype());
  if (mask.defined()) {
    check_same_device(qkv_in, mask, op);
    FORGE_CHECK(mask.shape() == Shape({B, NH, Tn, Tn}) && mask.dtype() == DType::u8,
                "{}: dropout mask {} {} does not match ({}, {}, {}, {}) u8", op, mask.shape(),
                mask.dtype(), B, NH, Tn, Tn);
    FORGE_CHECK(dropout_p >= 0 && dropout_p < 1, "{}: dropout {} not in [0, 1)", op, dropout_p);
  }
  if (qkv_in.device().is_cuda())
    return causal_attention_backward_cuda(dout_in, qkv_in, probs, mask, n_head, dropout_p);
  Tensor qkv = qkv_in.contiguous(), dout = dout_in.contiguous();
  const int64_t hs = C / NH;
  FORGE_CHECK(probs.shape() == Shape({B, NH, Tn, Tn}) && probs.is_contiguous(),
              "causal_attention_backward: saved probabilities {} do not match", probs.shape());
  // Probabilities kept in 16 bits (mixed precision) are widened one (b, h) slice at a time.
  const bool narrow_probs = probs.dtype() != qkv.dtype();
  FORGE_CHECK(!narrow_probs || (qkv.dtype() == DType::f32 &&
                                (probs.dtype() == DType::bf16 || probs.dtype() == DType::f16)),
              "causal_attention_backward: probabilities {} for qkv {} (expected {}, or bf16/f16 "
              "with f32)",
              probs.dtype(), qkv.dtype(), qkv.dtype());
  Tensor dqkv = Tensor::empty(qkv.shape(), qkv.dtype());
  dispatch_float(qkv.dtype(), "causal_attention_backward", [&]<class T>() {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      const T* pqkv = qkv.data<T>();
      const T* pdout = dout.data<T>();
      const T* pprobs = narrow_probs ? nullptr : probs.data<T>();
      const uint8_t* pmask = mask.defined() ? mask.data<uint8_t>() : nullptr;
      T* pd = dqkv.data<T>();
      const T scale = T(1.0 / std::sqrt(double(hs))), keep = T(1.0 / (1.0 - dropout_p));
      // Per thread: dP (T x T), with dropout P' (T x T), with 16-bit probabilities P (T x T).
      const int64_t slices = 1 + (pmask ? 1 : 0) + (narrow_probs ? 1 : 0);
      Scratch<T> scratch(get_num_threads(), Tn * Tn * slices);
      parallel_for(0, B * NH, heads_grain(4 * Tn * Tn * hs), [&](int64_t lo, int64_t hi) {
        for (int64_t bh = lo; bh < hi; ++bh) {
          const int64_t b = bh / NH, h = bh % NH;
          const T* Q = pqkv + b * Tn * 3 * C + h * hs;
          const T* K = Q + C;
          const T* V = Q + 2 * C;
          const T* dO = pdout + b * Tn * C + h * hs;
          T* dQ = pd + b * Tn * 3 * C + h * hs;
          T* dK = dQ + C;
          T* dV = dQ + 2 * C;
          T* dP = scratch.get();
          const T* P = narrow_probs ? dP + Tn * Tn * (slices - 1) : pprobs + bh * Tn * Tn;
          // The next head's operands, a part before each of this head's four products.
          auto prefetch_next = [&](int part) {
            if (bh + 1 < hi) prefetch_head(pqkv, pdout, pprobs, bh + 1, NH, Tn, C, part, 4);
          };
          prefetch_next(0);
          if (narrow_probs) {
            T* wide = dP + Tn * Tn * (slices - 1);
            dispatch_float(probs.dtype(), "causal_attention_backward", [&]<class P16>() {
              const P16* src = probs.data<P16>() + bh * Tn * Tn;
              for (int64_t i = 0; i < Tn * Tn; ++i) wide[i] = T(float(src[i]));
            });
          }
          const T* Pd = P;
          if (pmask) {
            T* buf = dP + Tn * Tn;
            apply_mask(P, pmask + bh * Tn * Tn, keep, Tn * Tn, buf);
            Pd = buf;
          }
          head_gemm(cpu::Causal::c_lower, false, true, Tn, Tn, hs, T(1), dO, C, V, 3 * C, dP,
                    Tn);  // dP'
          prefetch_next(1);
          head_gemm(cpu::Causal::a_upper, true, false, Tn, hs, Tn, T(1), Pd, Tn, dO, C, dV,
                    3 * C);  // dV
          prefetch_next(2);
          if (pmask) apply_mask(dP, pmask + bh * Tn * Tn, keep, Tn * Tn, dP);  // dP
          causal_softmax_backward_rows(P, dP, Tn);                             // dS, in place of dP
          head_gemm(cpu::Causal::a_lower, false, false, Tn, hs, Tn, scale, dP, Tn, K, 3 * C, dQ,
                    3 * C);  // dQ
          prefetch_next(3);
          head_gemm(cpu::Causal::a_upper, true, false, Tn, hs, Tn, scale, dP, Tn, Q, 3 * C, dK,
                    3 * C);  // dK
        }
      });
    }
  });
  return dqkv;
}

Tensor cached_attention(const Tensor& q_in, const Tensor& k, const Tensor& v, int n_head,
                        int64_t offset) {
  const char* op = "cached_attention";
  FORGE_CHECK(q_in.dim() == 3 && k.dim() == 3 && v.dim() == 3 && k.shape() == v.shape(),
              "{}: expected q (B, Tq, C) and k, v (B, L, C), got {}, {}, {}", op, q_in.shape(),
              k.shape(), v.shape());
  FORGE_CHECK(q_in.dtype() == DType::f32 && k.dtype() == DType::f32 && v.dtype() == DType::f32,
              "{}: expected f32 tensors", op);
  Tensor q = q_in.contiguous();
  const int64_t B = q.size(0), Tq = q.size(1), C = q.size(2), L = k.size(1), NH = n_head;
  FORGE_CHECK(k.size(0) == B && k.size(2) == C && L == offset + Tq && C % NH == 0,
              "{}: q {} at offset {} does not match cache {} with {} heads", op, q.shape(), offset,
              k.shape(), n_head);
  FORGE_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k.strides() == v.strides(),
              "{}: k and v need unit column strides", op);
  const int64_t hs = C / NH, krow = k.stride(1), kbatch = k.stride(0);
  check_same_device(q, k, op);
  check_same_device(q, v, op);
  if (q.device().is_cuda()) {  // the forward kernel with an offset, no lse
    Tensor out = Tensor::empty({B, Tq, C}, DType::f32, q.device());
    const HeadLayout ql{C, Tq * C}, kvl{krow, kbatch};
    cuda::check_status(
        cuda::kernels::attention_forward(int(DType::f32), B, NH, Tq, L, hs, offset, q.raw_data(),
                                         ql, k.raw_data(), v.raw_data(), kvl, out.raw_data(), ql,
                                         nullptr, {}, cuda::stream_handle(q.device().index)),
        op);
    return out;
  }
  Tensor out = Tensor::empty({B, Tq, C});
  const float *pq = q.data<float>(), *pk = k.data<float>(), *pv = v.data<float>();
  float* po = out.data<float>();
  const float scale = float(1.0 / std::sqrt(double(hs)));
  Scratch<float> scores(get_num_threads(), Tq * L);
  parallel_for(0, B * NH, heads_grain(2 * Tq * L * hs), [&](int64_t lo, int64_t hi) {
    for (int64_t bh = lo; bh < hi; ++bh) {
      const int64_t b = bh / NH, h = bh % NH;
      const float* Q = pq + b * Tq * C + h * hs;
      const float* K = pk + b * kbatch + h * hs;
      const float* V = pv + b * kbatch + h * hs;
      float* S = scores.get();
      cpu::gemm<float>(false, true, Tq, L, hs, scale, Q, C, K, krow, 0.0f, S, L);
      causal_softmax_rows(S, Tq, L, offset);
      cpu::gemm<float>(false, false, Tq, hs, L, 1.0f, S, L, V, krow, 0.0f, po + b * Tq * C + h * hs,
                       C);
    }
  });
  return out;
}

Tensor slot_attention(const Tensor& q_in, const Tensor& k, const Tensor& v, int n_head,
                      const std::vector<SlotSpan>& spans) {
  const char* op = "slot_attention";
  FORGE_CHECK(q_in.dim() == 3 && q_in.size(0) == 1 && k.dim() == 3 && k.shape() == v.shape(),
              "{}: expected q (1, N, C) and k, v (S, L, C), got {}, {}, {}", op, q_in.shape(),
              k.shape(), v.shape());
  FORGE_CHECK(q_in.dtype() == DType::f32 && k.dtype() == DType::f32 && v.dtype() == DType::f32,
              "{}: expected f32 tensors", op);
  const int64_t N = q_in.size(1), C = q_in.size(2), S = k.size(0), L = k.size(1), NH = n_head;
  FORGE_CHECK(k.size(2) == C && NH > 0 && C % NH == 0,
              "{}: q {} does not match the caches {} with {} heads", op, q_in.shape(), k.shape(),
              n_head);
  std::vector<int64_t> first(spans.size());  // each span's first row in q
  int64_t rows = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    const SlotSpan& sp = spans[i];
    FORGE_CHECK(
        sp.slot >= 0 && sp.slot < S && sp.offset >= 0 && sp.count >= 1 && sp.offset + sp.count <= L,
        "{}: span {} reads slot {} of {} at positions {}..{} of {}", op, i, sp.slot, S, sp.offset,
        sp.offset + sp.count - 1, L);
    first[i] = rows;
    rows += sp.count;
  }
  FORGE_CHECK(rows == N, "{}: q has {} rows but the spans count {}", op, N, rows);
  FORGE_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k.strides() == v.strides(),
              "{}: k and v need unit column strides", op);
  check_same_device(q_in, k, op);
  check_same_device(q_in, v, op);
  if (q_in.device().is_cuda()) {  // one launch of the cached kernel per span
    std::vector<Tensor> parts;
    for (size_t i = 0; i < spans.size(); ++i) {
      const SlotSpan& sp = spans[i];
      Tensor kb = k.narrow(0, sp.slot, 1).narrow(1, 0, sp.offset + sp.count);
      Tensor vb = v.narrow(0, sp.slot, 1).narrow(1, 0, sp.offset + sp.count);
      parts.push_back(
          cached_attention(q_in.narrow(1, first[i], sp.count), kb, vb, n_head, sp.offset));
    }
    return concat(parts, 1);
  }
  // As cached_attention, span by span: the same two products and the same softmax.
  Tensor q = q_in.contiguous();
  Tensor out = Tensor::empty({1, N, C});
  const int64_t hs = C / NH, krow = k.stride(1), kslot = k.stride(0);
  const float *pq = q.data<float>(), *pk = k.data<float>(), *pv = v.data<float>();
  float* po = out.data<float>();
  const float scale = float(1.0 / std::sqrt(double(hs)));
  int64_t most = 1;  // the largest scores block of one span
  for (const SlotSpan& sp : spans) most = std::max(most, sp.count * (sp.offset + sp.count));
  Scratch<float> scores(get_num_threads(), most);
  const int64_t n_spans = int64_t(spans.size());
  parallel_for(0, n_spans * NH, heads_grain(2 * most * hs), [&](int64_t lo, int64_t hi) {
    for (int64_t ih = lo; ih < hi; ++ih) {
      const int64_t i = ih / NH, h = ih % NH;
      const SlotSpan& sp = spans[size_t(i)];
      const int64_t Tq = sp.count, n = sp.offset + sp.count;
      const float* Q = pq + first[size_t(i)] * C + h * hs;
      const float* K = pk + sp.slot * kslot + h * hs;
      const float* V = pv + sp.slot * kslot + h * hs;
      float* Sc = scores.get();
      cpu::gemm<float>(false, true, Tq, n, hs, scale, Q, C, K, krow, 0.0f, Sc, n);
      causal_softmax_rows(Sc, Tq, n, sp.offset);
      cpu::gemm<float>(false, false, Tq, hs, n, 1.0f, Sc, n, V, krow, 0.0f,
                       po + first[size_t(i)] * C + h * hs, C);
    }
  });
  return out;
}

}  // namespace forge
