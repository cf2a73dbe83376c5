// AVX-512 instance of the f32 GEMM microkernel: 12 x 32 (24 zmm accumulators).
// Compiled with -mavx512f; called only after cpu_features says the processor has AVX-512.
// GCC 12's unpack and shuffle intrinsics start from _mm512_undefined_ps() (`__m512 __Y = __Y`),
// which -Wmaybe-uninitialized reports once inlined (the transpose); nothing reads an undefined
// value.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "tensor/cpu/avx512_traits.h"
#include "tensor/cpu/gemm_kernels.h"
#include "tensor/cpu/gemm_microkernel.h"

namespace {

void kernel_12x32(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
                  float beta) {
  microkernel<Avx512, 12, 2>(kc, a, b, c, ldc, alpha, beta);
}
void kernel_1x32(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
                 float beta) {
  microkernel<Avx512, 1, 2>(kc, a, b, c, ldc, alpha, beta);
}
template <int R>
void edge_x32(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
              float beta) {
  microkernel<Avx512, R, 2, 12>(kc, a, b, c, ldc, alpha, beta);
}
const forge::cpu::GemmMicrokernel kEdge[12] = {
    nullptr,     edge_x32<1>, edge_x32<2>, edge_x32<3>, edge_x32<4>,  edge_x32<5>,
    edge_x32<6>, edge_x32<7>, edge_x32<8>, edge_x32<9>, edge_x32<10>, edge_x32<11>};

void kernel_1x32_in_place(long kc, const float* a, const float* b, long ldb, bool trans_b, float* c,
                          float alpha, float beta) {
  row_kernel_in_place<Avx512, 2>(kc, a, b, ldb, trans_b, c, alpha, beta);
}

using forge::cpu::GemmElem;

// `lanes` (<= 16) rows of f32 contiguous along k (row i at src + i * lds; rows from `valid` on
// read as zero), written transposed: dst[p * ldd + i] = src[i * lds + p]. Sixteen p of sixteen
// rows at a time through one register transpose (the AVX2 packers take two 8 x 8 ones for eight
// rows, and a whole one for the last four of a 12-row sliver).
//
// Each step reads one line of each of its rows, and those rows' lines come from 16 streams too
// many for the hardware to prefetch: every load waited for the cache below. The packers go on
// to the `lanes` rows after these (the next sliver or its second half), at the same depths, so
// each step asks for those rows' lines first (a prefetch past the matrix's end does not fault).
void transpose_rows(const float* src, long lds, long valid, long lanes, long len, float* dst,
                    long ldd) {
  const __mmask16 store = __mmask16((1u << lanes) - 1);
  const float* next = src + lanes * lds;
  auto ask_next = [&](long p) {
    for (long i = 0; i < lanes; ++i)
      _mm_prefetch(reinterpret_cast<const char*>(next + i * lds + p), _MM_HINT_T0);
  };
  __m512 r[16];
  long p = 0;
  if (valid == 16 && lanes == 16)  // whole blocks without masks
    for (; p + 16 <= len; p += 16) {
      ask_next(p);
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds + p);
      Avx512::transpose(r);
      for (int q = 0; q < 16; ++q) _mm512_storeu_ps(dst + (p + q) * ldd, r[q]);
    }
  for (; p < len; p += 16) {
    ask_next(p);
    const long n = len - p < 16 ? len - p : 16;
    const __mmask16 load = __mmask16((1u << n) - 1);
    for (int i = 0; i < 16; ++i)
      r[i] = i < valid ? _mm512_maskz_loadu_ps(load, src + i * lds + p) : _mm512_setzero_ps();
    Avx512::transpose(r);
    for (long q = 0; q < n; ++q) _mm512_mask_storeu_ps(dst + (p + q) * ldd, store, r[q]);
  }
}

// `len` rows of `width` (<= 32) contiguous f32 (zero past `valid`) copied into rows of `width`:
// one or two vectors a row, masked at the edges.
void copy_rows(const float* src, long lds, long valid, long width, long len, float* dst) {
  auto mask = [](long lanes) {
    return __mmask16(lanes <= 0 ? 0 : lanes >= 16 ? 0xFFFF : (1u << lanes) - 1);
  };
  const __mmask16 load0 = mask(valid), load1 = mask(valid - 16);
  const __mmask16 store0 = mask(width), store1 = mask(width - 16);
  if (valid == 32 && width == 32) {  // whole rows without masks
    for (long p = 0; p < len; ++p, src += lds, dst += width) {
      _mm512_storeu_ps(dst, _mm512_loadu_ps(src));
      _mm512_storeu_ps(dst + 16, _mm512_loadu_ps(src + 16));
    }
    return;
  }
  for (long p = 0; p < len; ++p, src += lds, dst += width) {
    _mm512_mask_storeu_ps(dst, store0, _mm512_maskz_loadu_ps(load0, src));
    if (width > 16) _mm512_mask_storeu_ps(dst + 16, store1, _mm512_maskz_loadu_ps(load1, src + 16));
  }
}

// The packers: f32 operands stored along k (A as it is, B transposed) go through the transpose
// above, the others (stored across k) through the copy; 16-bit inputs are the AVX2 packers'.
void pack_a(GemmElem e, bool ta, const void* A, int64_t lda, int64_t m, int64_t r0, int64_t p0,
            int64_t kc, int MR, float* dst) {
  if (e != GemmElem::f32 || MR > 16)
    return forge::cpu::gemm_pack_a_avx2(e, ta, A, lda, m, r0, p0, kc, MR, dst);
  const long rows = m - r0 < MR ? long(m - r0) : MR;
  const float* a = static_cast<const float*>(A);
  if (ta) return copy_rows(a + p0 * lda + r0, lda, rows, MR, kc, dst);
  transpose_rows(a + r0 * lda + p0, lda, rows, MR, kc, dst, MR);
}

void pack_b(GemmElem e, bool tb, const void* B, int64_t ldb, int64_t n, int64_t c0, int64_t p0,
            int64_t kc, int NR, float* dst) {
  if (e != GemmElem::f32 || NR > 32)
    return forge::cpu::gemm_pack_b_avx2(e, tb, B, ldb, n, c0, p0, kc, NR, dst);
  const long cols = n - c0 < NR ? long(n - c0) : NR;
  if (!tb) return copy_rows(static_cast<const float*>(B) + p0 * ldb + c0, ldb, cols, NR, kc, dst);
  for (long g = 0; g < NR; g += 16) {
    const long valid = cols - g < 0 ? 0 : (cols - g < 16 ? cols - g : 16);
    transpose_rows(static_cast<const float*>(B) + (c0 + g) * ldb + p0, ldb, valid,
                   NR - g < 16 ? NR - g : 16, kc, dst + g, NR);
  }
}

const forge::cpu::GemmKernelInfo kInfo{
    "avx512 12x32",
    12,
    32,
    kernel_12x32,
    pack_a,
    pack_b,
    kernel_1x32,
    kernel_1x32_in_place,
    kEdge,
    {a_in_place_kernels<Avx512, 12, 2, false>, a_in_place_kernels<Avx512, 12, 2, true>}};
}  // namespace

namespace forge::cpu {
const GemmKernelInfo* gemm_kernel_avx512() {
  return &kInfo;
}
}  // namespace forge::cpu
