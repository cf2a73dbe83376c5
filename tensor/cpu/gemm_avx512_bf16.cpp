// AVX512_BF16 instance of the packed GEMM for bf16 x bf16 products: 12 x 32 tiles of f32
// accumulators, each step one vdpbf16ps (two bf16 products per f32 lane) where the f32 kernel
// does one fma (one product per lane): twice the multiply-adds per instruction.
// Compiled with -mavx512bf16; called only after cpu_features says the processor has it.
//
// Packed layout: the driver's K block of kc elements becomes ceil(kc / 2) pairs, a pair being
// one 32-bit word (element 2q in the low half, 2q + 1 in the high half; a missing last element
// is +0). An A sliver holds, pair by pair, MR words (one per row); a B sliver NR words (one per
// column). The words sit in the driver's float buffers (a pair is as wide as a float; a sliver
// takes half the room an f32 one would).
//
// What one step computes, per lane (Intel SDM, VDPBF16PS: "FP32 FMA with daz in, ftz out and
// RNE rounding"; MXCSR neither read nor written):
//   acc = acc + b.hi * a.hi   (one rounding)
//   acc = acc + b.lo * a.lo   (one rounding)
// with denormal inputs read as zero and denormal results flushed to zero. B's pairs are the
// instruction's first source and A's broadcast pair its second (the operand that can come from
// memory, broadcast: vdpbf16ps zmm, zmm, m32bcst); the order decides only which NaN a result
// carries when several inputs are NaN. tests/test_gemm_bf16
// checks the kernels bit for bit against a scalar emulation of exactly this.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "tensor/cpu/gemm_kernels.h"

namespace {

using forge::cpu::GemmElem;

constexpr int MR = 12, NR = 32, NV = NR / 16;

void kernel_12x32(long kc, const float* a_words, const float* b_words, float* c, long ldc,
                  float alpha, float beta) {
  const auto* a = reinterpret_cast<const int32_t*>(a_words);
  const auto* b = reinterpret_cast<const int32_t*>(b_words);
  const long pairs = (kc + 1) / 2;
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();

#pragma GCC unroll 2
  for (long q = 0; q < pairs; ++q) {
    __m512bh bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(b + q * NR + j * 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(a[q * MR + i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], bv[j], av);
    }
  }

  // The epilogue is the f32 kernels' (gemm_microkernel.h).
  const __m512 va = _mm512_set1_ps(alpha);
  if (beta == 0.0f) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) _mm512_storeu_ps(c + i * ldc + j * 16, _mm512_mul_ps(va, acc[i][j]));
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        float* cp = c + i * ldc + j * 16;
        _mm512_storeu_ps(cp, _mm512_fmadd_ps(va, acc[i][j], _mm512_mul_ps(vb, _mm512_loadu_ps(cp))));
      }
  }
}

inline uint32_t pair(uint16_t lo, uint16_t hi) {
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

// An A sliver: rows [r0, r0 + MR) x columns [p0, p0 + kc) of op(A), as pairs along k. Only bf16
// inputs come here (gemm_mixed routes the others to the f32 kernels).
void pack_a(GemmElem, bool trans_a, const void* A_, int64_t lda, int64_t m, int64_t r0, int64_t p0,
            int64_t kc, int mr, float* dst_) {
  const auto* A = static_cast<const uint16_t*>(A_);
  auto* dst = reinterpret_cast<uint32_t*>(dst_);
  const int64_t rows = std::min<int64_t>(mr, m - r0), pairs = (kc + 1) / 2;
  for (int64_t q = 0; q < pairs; ++q) {
    const int64_t p = p0 + 2 * q;
    const bool second = 2 * q + 1 < kc;
    uint32_t* out = dst + q * mr;
    int64_t i = 0;
    if (!trans_a && second) {
      // Row r holds the pair side by side: one 32-bit load.
      for (; i < rows; ++i) std::memcpy(out + i, A + (r0 + i) * lda + p, 4);
    } else if (!trans_a) {
      for (; i < rows; ++i) out[i] = pair(A[(r0 + i) * lda + p], 0);
    } else {
      // op(A)(r, p) = A[p * lda + r]: the pair comes from two rows of A.
      const uint16_t* lo = A + p * lda + r0;
      const uint16_t* hi = lo + lda;
      for (; i < rows; ++i) out[i] = pair(lo[i], second ? hi[i] : 0);
    }
    for (; i < mr; ++i) out[i] = 0;
  }
}

// A B sliver: rows [p0, p0 + kc) x columns [c0, c0 + NR) of op(B), as pairs along k.
void pack_b(GemmElem, bool trans_b, const void* B_, int64_t ldb, int64_t n, int64_t c0, int64_t p0,
            int64_t kc, int nr, float* dst_) {
  const auto* B = static_cast<const uint16_t*>(B_);
  auto* dst = reinterpret_cast<uint32_t*>(dst_);
  const int64_t cols = std::min<int64_t>(nr, n - c0), pairs = (kc + 1) / 2;
  for (int64_t q = 0; q < pairs; ++q) {
    const int64_t p = p0 + 2 * q;
    const bool second = 2 * q + 1 < kc;
    uint32_t* out = dst + q * nr;
    int64_t j = 0;
    if (trans_b && second) {
      // op(B)(p, c) = B[c * ldb + p]: column c's pair is side by side in row c of B.
      for (; j < cols; ++j) std::memcpy(out + j, B + (c0 + j) * ldb + p, 4);
    } else if (trans_b) {
      for (; j < cols; ++j) out[j] = pair(B[(c0 + j) * ldb + p], 0);
    } else if (second && cols == nr && nr == NR) {
      // Two rows of B interleaved, 32 columns at a time.
      const __m512i lo = _mm512_loadu_si512(B + p * ldb + c0);
      const __m512i hi = _mm512_loadu_si512(B + (p + 1) * ldb + c0);
      const __m512i idx_lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9,
                                              40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33,
                                              1, 32, 0);
      const __m512i idx_hi = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57,
                                              25, 56, 24, 55, 23, 54, 22, 53, 21, 52, 20, 51, 19,
                                              50, 18, 49, 17, 48, 16);
      // lo holds 32 bf16 (a whole 512-bit row piece); the first 16 columns' pairs, then the rest.
      _mm512_storeu_si512(out, _mm512_permutex2var_epi16(lo, idx_lo, hi));
      _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi16(lo, idx_hi, hi));
      j = nr;
    } else {
      const uint16_t* lo = B + p * ldb + c0;
      const uint16_t* hi = lo + ldb;
      for (; j < cols; ++j) out[j] = pair(lo[j], second ? hi[j] : 0);
    }
    for (; j < nr; ++j) out[j] = 0;
  }
}

const forge::cpu::GemmKernelInfo kInfo{"avx512_bf16 12x32", MR, NR, kernel_12x32, pack_a,
                                       pack_b};

}  // namespace

namespace forge::cpu {
const GemmKernelInfo* gemm_kernel_avx512_bf16() {
  return &kInfo;
}
}  // namespace forge::cpu
