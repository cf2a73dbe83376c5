// The register-blocked inner kernel of the packed f32 GEMM, written once for every vector width.
//
// Included only by gemm_avx2.cpp and gemm_avx512.cpp, each compiled for its instruction set with a
// traits struct V (reg, W lanes, zero/load/store/broadcast/fma/mul), and by
// gemm_avx512_bf16.cpp for prefetch_c_tile and store_tile. Everything here has internal linkage and
// uses no library code (only the type std::integer_sequence, to list the kernel tables), so nothing
// compiled for AVX-512 can be picked by the linker for use elsewhere.
//
//   C[MR x NR] = alpha * sum_p A[p][0..MR) (x) B[p][0..NR) + beta * C      (beta == 0: C not read)
//
// A is a packed sliver (kc x MR, one column of MR values per p) or an f32 A's MR rows in place, B a
// packed sliver (kc x NR). Each accumulator sums its products in p order with one fused
// multiply-add per p: the order never depends on how the caller split the work across threads, nor
// on where A was read from.
#pragma once

#include <utility>

#include "tensor/cpu/gemm_kernels.h"

namespace {

// A kernel's C tile (MR rows of NR floats, ldc apart: as many pages once C is wide) is read or
// written only after its kc products: ask for its lines at the start, into L2, so that their
// misses overlap the arithmetic rather than follow it (into L1 they would evict the B sliver).
template <int MR, int NR>
inline void prefetch_c_tile(const float* c, long ldc) {
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    __builtin_prefetch(c + i * ldc, 0, 2);
    __builtin_prefetch(c + i * ldc + NR - 1, 0, 2);
  }
}

// C tile = alpha * acc + beta * C (beta 0: C not read), the one epilogue of every kernel (the bf16
// one's too). With alpha 1 (every product but attention's scores) and beta 0 or 1 (a later K
// block's) the multiplications by alpha and beta are left out: multiplying by 1 is exact, so the
// bits are the general form's, NaN payloads included (test_gemm_bf16 checks them).
template <class V, int MR, int NV>
inline __attribute__((always_inline)) void store_tile(const typename V::reg (&acc)[MR][NV],
                                                      float* c, long ldc, float alpha, float beta) {
  constexpr int W = V::W;
  if (alpha == 1.0f && beta == 0.0f) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) V::store(c + i * ldc + j * W, acc[i][j]);
    return;
  }
  if (alpha == 1.0f && beta == 1.0f) {
    // A fused multiply-add by 1, not an add: of two NaNs it keeps the one the general form keeps
    // (an add's operands commute, and the compiler picks their order).
    const typename V::reg one = V::broadcast(1.0f);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        float* cp = c + i * ldc + j * W;
        V::store(cp, V::fma(one, acc[i][j], V::load(cp)));
      }
    return;
  }
  typename V::reg va = V::broadcast(alpha);
  if (beta == 0.0f) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) V::store(c + i * ldc + j * W, V::mul(va, acc[i][j]));
  } else {
    typename V::reg vb = V::broadcast(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        float* cp = c + i * ldc + j * W;
        V::store(cp, V::fma(va, acc[i][j], V::mul(vb, V::load(cp))));
      }
  }
}

// The tile's arithmetic, with A's value for depth p and row i read by a_at(p, i): from a packed
// sliver or from A's rows in place (below), the same products in the same order either way.
template <class V, int MR, int NV, class AAt>
inline __attribute__((always_inline)) void tile_kernel(long kc, AAt a_at, const float* __restrict b,
                                                       long ldb, float* c, long ldc, float alpha,
                                                       float beta) {
  constexpr int W = V::W;
  constexpr int NR = NV * W;
  typename V::reg acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = V::zero();
  prefetch_c_tile<MR, NR>(c, ldc);

#pragma GCC unroll 4
  for (long p = 0; p < kc; ++p) {
    typename V::reg bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = V::load(b + p * ldb + j * W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      typename V::reg av = V::broadcast(a_at(p, i));
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
    }
  }

  store_tile<V, MR, NV>(acc, c, ldc, alpha, beta);
}

// AS: the A sliver's stride per p (MR for a full sliver; a sliver of MR rows read for its first
// rows only by an edge kernel: see GemmKernelInfo::edge_kernels).
template <class V, int MR, int NV, int AS = MR>
void microkernel(long kc, const float* __restrict a, const float* __restrict b, float* c, long ldc,
                 float alpha, float beta) {
  tile_kernel<V, MR, NV>(
      kc, [a](long p, int i) { return a[p * AS + i]; }, b, NV * V::W, c, ldc, alpha, beta);
}

// The same tile (or its first MR rows of a wider one) with an f32 A read in place, unpacked: stored
// along k (TA false: row i of the tile at a + i * lda, its depths contiguous) or across k (TA: the
// tile's MR values of depth p contiguous at a + p * lda, as in a packed sliver, lda apart).
template <class V, int MR, int NV, bool TA>
void microkernel_a_in_place(long kc, const float* __restrict a, long lda, const float* __restrict b,
                            long ldb, float* c, long ldc, float alpha, float beta) {
  tile_kernel<V, MR, NV>(
      kc, [a, lda](long p, int i) { return TA ? a[p * lda + i] : a[i * lda + p]; }, b, ldb, c, ldc,
      alpha, beta);
}

// A family's a_in_place kernels (GemmKernelInfo::a_in_place_kernels[TA]): the MR x NR tile's
// kernel for 1 .. MR rows of A in place, indexed by the row count (0 unused).
template <class V, int NV, bool TA, class Rows>
struct AInPlaceTable;
template <class V, int NV, bool TA, int... I>
struct AInPlaceTable<V, NV, TA, std::integer_sequence<int, I...>> {
  static constexpr forge::cpu::GemmAInPlaceKernel kernels[] = {
      nullptr, microkernel_a_in_place<V, I + 1, NV, TA>...};
};
template <class V, int MR, int NV, bool TA>
constexpr const forge::cpu::GemmAInPlaceKernel* a_in_place_kernels =
    AInPlaceTable<V, NV, TA, std::make_integer_sequence<int, MR>>::kernels;

// One row of the tile kernel above (MR = 1) with B read in place instead of from a packed sliver:
// B[p][j] = b[p * ldb + j], or with trans_b b[j * ldb + p] (B^T's rows, as attention's keys are
// stored), turned W x W in registers by V::transpose. Each accumulator takes the same products in
// the same p order as the packed kernel's, so the results are its bits. The NR columns must all
// exist (the driver packs an edge sliver instead).
template <class V, int NV>
void row_kernel_in_place(long kc, const float* __restrict a, const float* __restrict b, long ldb,
                         bool trans_b, float* c, float alpha, float beta) {
  constexpr int W = V::W;
  typename V::reg acc[1][NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) acc[0][j] = V::zero();
  if (!trans_b) {
    for (long p = 0; p < kc; ++p) {
      typename V::reg av = V::broadcast(a[p]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[0][j] = V::fma(av, V::load(b + p * ldb + j * W), acc[0][j]);
    }
  } else {
    for (long p = 0; p < kc; p += W) {
      const long q_end = kc - p < W ? kc - p : W;  // a last block of fewer than W depths
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        typename V::reg r[W];
        if (q_end == W) {
#pragma GCC unroll 16
          for (int i = 0; i < W; ++i) r[i] = V::load(b + (j * W + i) * ldb + p);
        } else {
          alignas(64) float part[W * W] = {};
          for (int i = 0; i < W; ++i)
            for (long q = 0; q < q_end; ++q) part[i * W + q] = b[(j * W + i) * ldb + p + q];
          for (int i = 0; i < W; ++i) r[i] = V::load(part + i * W);
        }
        V::transpose(r);  // r[q]: B[p + q][j * W .. j * W + W)
        for (long q = 0; q < q_end; ++q)
          acc[0][j] = V::fma(V::broadcast(a[p + q]), r[q], acc[0][j]);
      }
    }
  }
  store_tile<V, 1, NV>(acc, c, 0, alpha, beta);
}

}  // namespace
