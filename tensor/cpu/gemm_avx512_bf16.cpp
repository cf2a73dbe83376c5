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
// GCC 12's unpack and shuffle intrinsics start from _mm512_undefined_epi32() (`__m512i __Y = __Y`),
// which -Wmaybe-uninitialized reports once inlined; nothing here reads an undefined value.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

#include "tensor/cpu/avx512_traits.h"
#include "tensor/cpu/gemm_kernels.h"
#include "tensor/cpu/gemm_microkernel.h"

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
  prefetch_c_tile<MR, NR>(c, ldc);

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

  store_tile<Avx512, MR, NV>(acc, c, ldc, alpha, beta);  // the f32 kernels' epilogue
}

inline uint32_t pair(uint16_t lo, uint16_t hi) {
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

inline __mmask16 low_lanes(int64_t n) {
  return __mmask16((1u << n) - 1);
}

// In place: r[i] word j becomes r[j] word i.
inline void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] =
        _mm512_unpacklo_epi32(r[i], r[i + 1]);  // per 128-bit lane: r_i[0] r_i+1[0] r_i[1] r_i+1[1]
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // r[i + c], lane L: rows i..i+3 of column 4L + c
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int c = 0; c < 4; ++c) {  // 4 x 4 transpose of the 128-bit lanes of r[c], r[4+c], ...
    const __m512i ab_lo = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x44);
    const __m512i ab_hi = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xEE);
    const __m512i cd_lo = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x44);
    const __m512i cd_hi = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xEE);
    t[c] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0x88);
    t[4 + c] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0xDD);
    t[8 + c] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0x88);
    t[12 + c] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// `lanes` (<= 16) rows contiguous along k (row i at src + i * lds; rows from `valid` on read as
// zero), written as pairs across: dst[q * ldd + i] = (row i's elements 2q, 2q + 1). Sixteen pairs
// of sixteen rows at a time through a register transpose; the odd last element alone.
void transpose_pairs(const uint16_t* src, int64_t lds, int64_t valid, int lanes, int64_t kc,
                     uint32_t* dst, int64_t ldd) {
  const int64_t full = kc / 2;
  const __mmask16 store = low_lanes(lanes);
  __m512i r[16];
  for (int64_t q = 0; q < full; q += 16) {
    const int64_t n = std::min<int64_t>(16, full - q);
    const __mmask16 load = low_lanes(n);
    for (int i = 0; i < 16; ++i)
      r[i] = i < valid ? _mm512_maskz_loadu_epi32(load, src + i * lds + 2 * q)
                       : _mm512_setzero_si512();
    transpose16x16(r);
    for (int t = 0; t < n; ++t) _mm512_mask_storeu_epi32(dst + (q + t) * ldd, store, r[t]);
  }
  if (kc % 2) {
    uint32_t* out = dst + full * ldd;
    for (int i = 0; i < lanes; ++i) out[i] = i < valid ? pair(src[i * lds + kc - 1], 0) : 0;
  }
}

// Two rows contiguous across (`valid` of `lanes` <= 16 elements; `hi` null: zeros), interleaved
// into pairs: out[i] = (lo[i], hi[i]).
inline void interleave_rows(const uint16_t* lo, const uint16_t* hi, int64_t valid, int lanes,
                            uint32_t* out) {
  const __mmask16 m = low_lanes(valid);
  __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, lo));
  if (hi)
    w = _mm512_or_si512(
        w, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, hi)), 16));
  _mm512_mask_storeu_epi32(out, low_lanes(lanes), w);
}

// An A sliver: rows [r0, r0 + MR) x columns [p0, p0 + kc) of op(A), as pairs along k. Only bf16
// inputs come here (gemm_mixed routes the others to the f32 kernels).
void pack_a(GemmElem, bool trans_a, const void* A_, int64_t lda, int64_t m, int64_t r0, int64_t p0,
            int64_t kc, int mr, float* dst_) {
  const auto* A = static_cast<const uint16_t*>(A_);
  auto* dst = reinterpret_cast<uint32_t*>(dst_);
  const int64_t rows = std::min<int64_t>(mr, m - r0), pairs = (kc + 1) / 2;
  if (!trans_a) {  // row r holds its pairs side by side
    transpose_pairs(A + r0 * lda + p0, lda, rows, mr, kc, dst, mr);
    return;
  }
  // op(A)(r, p) = A[p * lda + r]: a pair comes from two rows of A.
  for (int64_t q = 0; q < pairs; ++q) {
    const uint16_t* lo = A + (p0 + 2 * q) * lda + r0;
    interleave_rows(lo, 2 * q + 1 < kc ? lo + lda : nullptr, rows, mr, dst + q * mr);
  }
}

// A B sliver: rows [p0, p0 + kc) x columns [c0, c0 + NR) of op(B), as pairs along k.
void pack_b(GemmElem, bool trans_b, const void* B_, int64_t ldb, int64_t n, int64_t c0, int64_t p0,
            int64_t kc, int nr, float* dst_) {
  const auto* B = static_cast<const uint16_t*>(B_);
  auto* dst = reinterpret_cast<uint32_t*>(dst_);
  const int64_t cols = std::min<int64_t>(nr, n - c0), pairs = (kc + 1) / 2;
  if (trans_b) {  // op(B)(p, c) = B[c * ldb + p]: column c's pairs side by side in row c of B
    for (int g = 0; g < nr; g += 16)
      transpose_pairs(B + (c0 + g) * ldb + p0, ldb, std::clamp<int64_t>(cols - g, 0, 16), 16, kc,
                      dst + g, nr);
    return;
  }
  const __m512i idx_lo =
      _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                       37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i idx_hi =
      _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55, 23, 54,
                       22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
  for (int64_t q = 0; q < pairs; ++q) {
    const uint16_t* lo = B + (p0 + 2 * q) * ldb + c0;
    const uint16_t* hi = 2 * q + 1 < kc ? lo + ldb : nullptr;
    uint32_t* out = dst + q * nr;
    if (hi && cols == NR && nr == NR) {
      // Two rows of B, 32 columns each, interleaved: the first 16 columns' pairs, then the rest.
      const __m512i l = _mm512_loadu_si512(lo), h = _mm512_loadu_si512(hi);
      _mm512_storeu_si512(out, _mm512_permutex2var_epi16(l, idx_lo, h));
      _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi16(l, idx_hi, h));
    } else {
      for (int g = 0; g < nr; g += 16)
        interleave_rows(lo + g, hi ? hi + g : nullptr, std::clamp<int64_t>(cols - g, 0, 16),
                        std::min(16, nr - g), out + g);
    }
  }
}

const forge::cpu::GemmKernelInfo kInfo{"avx512_bf16 12x32", MR, NR, kernel_12x32, pack_a, pack_b};

}  // namespace

namespace forge::cpu {
const GemmKernelInfo* gemm_kernel_avx512_bf16() {
  return &kInfo;
}
}  // namespace forge::cpu
