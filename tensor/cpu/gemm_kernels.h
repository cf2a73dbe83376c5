// The f32 GEMM building blocks available to the packed driver (gemm.cpp), per instruction set:
// the microkernel, and the two packing routines that lay A and B out for it.
#pragma once

#include <cstdint>

#include "tensor/cpu/gemm.h"

namespace forge::cpu {

// C[mr x nr] (row stride ldc) = alpha * A_packed (kc x mr) . B_packed (kc x nr) + beta * C.
using GemmMicrokernel = void (*)(long kc, const float* a, const float* b, float* c, long ldc,
                                 float alpha, float beta);
// An A sliver: rows [r0, r0+MR) x cols [p0, p0+kc) of op(A) (m rows in all; rows past m are zero),
// widened to f32 and stored p-major: dst[p * MR + i]. A holds elements of type `elem`.
using GemmPackA = void (*)(GemmElem elem, bool trans_a, const void* A, int64_t lda, int64_t m,
                           int64_t r0, int64_t p0, int64_t kc, int MR, float* dst);
// A B sliver: rows [p0, p0+kc) x cols [c0, c0+NR) of op(B) (n cols in all; cols past n are zero),
// widened to f32 and stored p-major: dst[p * NR + j].
using GemmPackB = void (*)(GemmElem elem, bool trans_b, const void* B, int64_t ldb, int64_t n,
                           int64_t c0, int64_t p0, int64_t kc, int NR, float* dst);

// One row of C (nr columns) = alpha * a (kc values, in place) . B + beta * C, with B read in place:
// B[p][j] = b[p * ldb + j], or b[j * ldb + p] with trans_b. Every one of the nr columns must exist.
using GemmRowKernelB = void (*)(long kc, const float* a, const float* b, long ldb, bool trans_b,
                                float* c, float alpha, float beta);

// The tile kernel with an f32 A read in place: op(A)(i, p) at a[i * lda + p], or a[p * lda + i] for
// a transposed A.
using GemmAInPlaceKernel = void (*)(long kc, const float* a, long lda, const float* b, long ldb,
                                    float* c, long ldc, float alpha, float beta);

struct GemmKernelInfo {
  const char* name;
  int mr, nr;
  GemmMicrokernel kernel;
  GemmPackA pack_a;
  GemmPackB pack_b;
  // The same kernel for one row of an f32 A read in place (a[p], stride 1; no packing), with the
  // arithmetic of one row of `kernel`, so its results are those bits. The driver takes it for
  // products of a few rows (a decoding step's), where a full tile would do MR times the work.
  // nullptr: no such kernel (small products then pack and run full tiles).
  GemmMicrokernel row_kernel = nullptr;
  // row_kernel reading an f32 B in place too (attention's products on a KV cache while decoding:
  // no B packing); the same bits. nullptr: B is packed for row_kernel.
  GemmRowKernelB row_kernel_b = nullptr;
  // edge_kernels[r], r = 1 .. mr - 1: `kernel` for the first r rows of a packed sliver (a bottom
  // edge: its other rows are padding), each row with the full kernel's arithmetic, so the same
  // bits, for r / mr of the work. nullptr: edge slivers run the full kernel.
  const GemmMicrokernel* edge_kernels = nullptr;
  // a_in_place_kernels[trans_a][r], r = 1 .. mr: the tile kernel for r rows of an f32 A read in
  // place, stored along k (trans_a 0) or across it (1): no A packing, and each row's arithmetic is
  // the packed kernel's, so the same bits. nullptr: A is packed.
  const GemmAInPlaceKernel* a_in_place_kernels[2] = {nullptr, nullptr};
};

// Defined in gemm_avx2.cpp / gemm_avx512.cpp (compiled with those instruction sets); nullptr
// when the build left them out.
const GemmKernelInfo* gemm_kernel_avx2();
const GemmKernelInfo* gemm_kernel_avx512();
// bf16 x bf16 products on AVX512_BF16 (vdpbf16ps): the same driver and tile (12 x 32), its
// slivers packed as bf16 pairs (see gemm_avx512_bf16.cpp); bf16 inputs only.
const GemmKernelInfo* gemm_kernel_avx512_bf16();

// The driver's K block for a product of depth k: a function of k alone, so each output's
// summation order is too (tests emulating a kernel's arithmetic follow it).
int64_t gemm_k_block(int64_t k);

// The AVX2 packers (8x8 register transposes; F16C and shifts widen 16-bit inputs); the AVX-512
// family uses them too.
void gemm_pack_a_avx2(GemmElem elem, bool trans_a, const void* A, int64_t lda, int64_t m,
                      int64_t r0, int64_t p0, int64_t kc, int MR, float* dst);
void gemm_pack_b_avx2(GemmElem elem, bool trans_b, const void* B, int64_t ldb, int64_t n,
                      int64_t c0, int64_t p0, int64_t kc, int NR, float* dst);

}  // namespace forge::cpu
