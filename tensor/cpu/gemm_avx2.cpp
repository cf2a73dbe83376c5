// AVX2 + FMA instance of the f32 GEMM: the 6 x 16 microkernel (12 ymm accumulators) and packers
// that transpose 8 x 8 blocks in registers, widening bf16/f16 inputs to f32 on the way (shifts,
// F16C). Compiled with -mavx2 -mfma -mf16c; called only after cpu_features says the processor
// has them. No library code here (see gemm_microkernel.h).
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "tensor/cpu/gemm_kernels.h"
#include "tensor/cpu/gemm_microkernel.h"

namespace {
inline void transpose8x8(__m256 r[8]);

struct Avx2 {
  using reg = __m256;
  static constexpr int W = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg broadcast(float x) { return _mm256_set1_ps(x); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static void transpose(reg r[8]) { transpose8x8(r); }
};

void kernel_6x16(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
                 float beta) {
  microkernel<Avx2, 6, 2>(kc, a, b, c, ldc, alpha, beta);
}
void kernel_1x16(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
                 float beta) {
  microkernel<Avx2, 1, 2>(kc, a, b, c, ldc, alpha, beta);
}
template <int R>
void edge_x16(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
              float beta) {
  microkernel<Avx2, R, 2, 6>(kc, a, b, c, ldc, alpha, beta);
}
const forge::cpu::GemmMicrokernel kEdge[6] = {nullptr,     edge_x16<1>, edge_x16<2>,
                                              edge_x16<3>, edge_x16<4>, edge_x16<5>};

void kernel_1x16_in_place(long kc, const float* a, const float* b, long ldb, bool trans_b, float* c,
                          float alpha, float beta) {
  row_kernel_in_place<Avx2, 2>(kc, a, b, ldb, trans_b, c, alpha, beta);
}

long min_l(long a, long b) {
  return a < b ? a : b;
}

// r[i] holds 8 floats of row i; afterwards r[p] holds column p: (row0[p], ..., row7[p]).
inline void transpose8x8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Stores the first `lanes` floats of v. (No vmaskmovps: it is microcoded and slow on AMD.)
inline void store_lanes(float* dst, __m256 v, long lanes) {
  switch (lanes) {
    case 8:
      _mm256_storeu_ps(dst, v);
      return;
    case 6:
      _mm_storeu_ps(dst, _mm256_castps256_ps128(v));
      _mm_storel_pi(reinterpret_cast<__m64*>(dst + 4), _mm256_extractf128_ps(v, 1));
      return;
    case 4:
      _mm_storeu_ps(dst, _mm256_castps256_ps128(v));
      return;
    default: {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, v);
      for (long i = 0; i < lanes; ++i) dst[i] = tmp[i];
    }
  }
}

// Element loaders: 8 consecutive elements, or one, widened to f32. bf16 is the top half of an f32;
// f16 goes through F16C's vcvtph2ps.
struct LoadF32 {
  using T = float;
  static __m256 load8(const T* p) { return _mm256_loadu_ps(p); }
  static float load1(const T* p) { return *p; }
};
struct LoadBf16 {
  using T = uint16_t;
  static __m256 load8(const T* p) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static float load1(const T* p) {
    return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128(int(uint32_t(*p) << 16))));
  }
};
struct LoadF16 {
  using T = uint16_t;
  static __m256 load8(const T* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float load1(const T* p) { return _cvtsh_ss(*p); }
};

// Gathers `lanes` (<= 8) strided rows of `len` contiguous elements each (rows past `valid` read as
// zero) and writes them transposed, as f32: dst[p * ldd + i] = src[i * lds + p]. Eight p at a time
// through registers, the rest one by one.
template <class L>
void transpose_rows(const typename L::T* src, long lds, long valid, long lanes, long len,
                    float* dst, long ldd) {
  long p = 0;
  for (; p + 8 <= len; p += 8) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i)
      r[i] = i < valid ? L::load8(src + i * lds + p) : _mm256_setzero_ps();
    transpose8x8(r);
    for (int q = 0; q < 8; ++q) store_lanes(dst + (p + q) * ldd, r[q], lanes);
  }
  for (; p < len; ++p)
    for (long i = 0; i < lanes; ++i)
      dst[p * ldd + i] = i < valid ? L::load1(src + i * lds + p) : 0.0f;
}

// Copies `len` rows of W contiguous elements, W known at compile time, as f32: whole vector moves
// (f32: 8, then 4, then 2 floats; 16-bit: 8 at a time, then one by one).
template <class L, long W>
void copy_full_rows(const typename L::T* src, long lds, long len, float* dst) {
  for (long p = 0; p < len; ++p, src += lds, dst += W) {
    long j = 0;
    for (; j + 8 <= W; j += 8) _mm256_storeu_ps(dst + j, L::load8(src + j));
    if constexpr (std::is_same_v<L, LoadF32>) {
      if constexpr (W % 8 >= 4) {
        _mm_storeu_ps(dst + j, _mm_loadu_ps(src + j));
        j += 4;
      }
      if constexpr (W % 4 == 2)
        _mm_storel_pi(reinterpret_cast<__m64*>(dst + j),
                      _mm_loadl_pi(_mm_setzero_ps(), reinterpret_cast<const __m64*>(src + j)));
    } else {
      for (; j < W; ++j) dst[j] = L::load1(src + j);
    }
  }
}

// Copies `len` rows of `width` contiguous elements (zero past `valid`) into f32 rows of `width`.
// The full slivers of the kernels' widths take the vector path; edges the scalar one.
template <class L>
void copy_rows(const typename L::T* src, long lds, long valid, long width, long len, float* dst) {
  if (valid == width) {
    switch (width) {
      case 6:
        return copy_full_rows<L, 6>(src, lds, len, dst);
      case 12:
        return copy_full_rows<L, 12>(src, lds, len, dst);
      case 16:
        return copy_full_rows<L, 16>(src, lds, len, dst);
      case 32:
        return copy_full_rows<L, 32>(src, lds, len, dst);
      default:
        break;
    }
  }
  for (long p = 0; p < len; ++p) {
    const typename L::T* s = src + p * lds;
    float* d = dst + p * width;
    long j = 0;
    for (; j < valid; ++j) d[j] = L::load1(s + j);
    for (; j < width; ++j) d[j] = 0.0f;
  }
}

template <class L>
void pack_a(bool ta, const void* Av, int64_t lda, int64_t m, int64_t r0, int64_t p0, int64_t kc,
            int MR, float* dst) {
  const auto* A = static_cast<const typename L::T*>(Av);
  long rows = min_l(MR, m - r0);
  if (ta) {  // op(A)(r, p) = A[p * lda + r]: each p is MR contiguous values
    copy_rows<L>(A + p0 * lda + r0, lda, rows, MR, kc, dst);
    return;
  }
  // op(A)(r, p) = A[r * lda + p]: rows are contiguous in p; transpose in groups of 8 rows.
  for (long g = 0; g < MR; g += 8) {
    long lanes = min_l(8, MR - g), valid = rows - g < 0 ? 0 : min_l(lanes, rows - g);
    transpose_rows<L>(A + (r0 + g) * lda + p0, lda, valid, lanes, kc, dst + g, MR);
  }
}

template <class L>
void pack_b(bool tb, const void* Bv, int64_t ldb, int64_t n, int64_t c0, int64_t p0, int64_t kc,
            int NR, float* dst) {
  const auto* B = static_cast<const typename L::T*>(Bv);
  long cols = min_l(NR, n - c0);
  if (!tb) {  // op(B)(p, c) = B[p * ldb + c]: each p is NR contiguous values
    copy_rows<L>(B + p0 * ldb + c0, ldb, cols, NR, kc, dst);
    return;
  }
  // op(B)(p, c) = B[c * ldb + p]: columns are contiguous in p; transpose in groups of 8 columns.
  for (long g = 0; g < NR; g += 8) {
    long lanes = min_l(8, NR - g), valid = cols - g < 0 ? 0 : min_l(lanes, cols - g);
    transpose_rows<L>(B + (c0 + g) * ldb + p0, ldb, valid, lanes, kc, dst + g, NR);
  }
}

const forge::cpu::GemmKernelInfo kInfo{
    "avx2 6x16",
    6,
    16,
    kernel_6x16,
    forge::cpu::gemm_pack_a_avx2,
    forge::cpu::gemm_pack_b_avx2,
    kernel_1x16,
    kernel_1x16_in_place,
    kEdge,
    {a_in_place_kernels<Avx2, 6, 2, false>, a_in_place_kernels<Avx2, 6, 2, true>}};
}  // namespace

namespace forge::cpu {

void gemm_pack_a_avx2(GemmElem e, bool ta, const void* A, int64_t lda, int64_t m, int64_t r0,
                      int64_t p0, int64_t kc, int MR, float* dst) {
  switch (e) {
    case GemmElem::f32:
      return pack_a<LoadF32>(ta, A, lda, m, r0, p0, kc, MR, dst);
    case GemmElem::bf16:
      return pack_a<LoadBf16>(ta, A, lda, m, r0, p0, kc, MR, dst);
    case GemmElem::f16:
      return pack_a<LoadF16>(ta, A, lda, m, r0, p0, kc, MR, dst);
  }
}

void gemm_pack_b_avx2(GemmElem e, bool tb, const void* B, int64_t ldb, int64_t n, int64_t c0,
                      int64_t p0, int64_t kc, int NR, float* dst) {
  switch (e) {
    case GemmElem::f32:
      return pack_b<LoadF32>(tb, B, ldb, n, c0, p0, kc, NR, dst);
    case GemmElem::bf16:
      return pack_b<LoadBf16>(tb, B, ldb, n, c0, p0, kc, NR, dst);
    case GemmElem::f16:
      return pack_b<LoadF16>(tb, B, ldb, n, c0, p0, kc, NR, dst);
  }
}

const GemmKernelInfo* gemm_kernel_avx2() {
  return &kInfo;
}

}  // namespace forge::cpu
