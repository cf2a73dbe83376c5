// CPU matrix products behind the `matmul` op, BLAS-style.
//
//   // C (m, n) = alpha * op(A) @ op(B) + beta * C, all row-major with leading dims lda, ldb, ldc;
//   // op(A) is A (m, k) or, with trans_a, the transpose of a stored (k, m). beta 0: C not read.
//   cpu::gemm<float>(false, true, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
//
// Two implementations sit behind it:
//  - packed (f32, default): our own. Panels of A and B are packed into cache-sized blocks and a
//    register-blocked microkernel (AVX-512 12x32, AVX2 6x16, or portable 4x8, chosen at run time,
//    see cpu_features.h) computes each tile. K is cut into blocks whose size depends only on K, and
//    each output element is summed in k order inside one tile, so the result is the same whatever
//    the thread count; threads split the tiles.
//  - eigen (f64 always; f32 with FORGE_GEMM=eigen or set_gemm_backend): Eigen's product on our
//    buffers through Eigen::Map, in fixed column blocks, single-threaded per block.
#pragma once

#include <cstdint>
#include <memory>

namespace forge::cpu {

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// Causal attention's products of one head (T x T probabilities P and their gradient dS, zero above
// the diagonal; scores S and dP wanted on and below it only): which part the packed f32 kernels
// may skip. a_lower: op(A)(i, p) is 0 for p > i (P V, dS K); a_upper: op(A)(i, p) is 0 for p < i
// (P^T dO, dS^T Q); each tile then sums only the depths its rows can see, in the same order, and
// the products it leaves out are exact zeros, so for a finite B the result is the full product's,
// bit for bit. c_lower (beta 0): C(i, j) is wanted for j <= i only (Q K^T, dO V^T); tiles wholly
// above the diagonal are set to 0 instead of computed, the others computed whole (so entries
// above the diagonal hold 0 or their product). With T = 64 and 12 x 32 tiles this leaves out a
// sixth of the tiles of S and dP and a third to a half of the depths of the other four products.
enum class Causal : uint8_t { none, a_lower, a_upper, c_lower };
void gemm_causal(Causal causal, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                 float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                 float* C, int64_t ldc);

// Element types the packed kernels read: 16-bit inputs are widened to f32 as they are packed, and
// the products accumulate in f32 (exact widening: the result is, bit for bit, the f32 product of
// the widened inputs).
enum class GemmElem : uint8_t { f32, bf16, f16 };

// C (f32) = alpha * op(A) @ op(B) + beta * C with A and B each f32, bf16 or f16 (bf16/f16 given as
// their 16-bit patterns). Always the packed kernels. Both bf16, on a processor with AVX512_BF16
// and the avx512 family in use: the native bf16 kernel (vdpbf16ps, two products per f32 lane and
// instruction; denormal inputs read as zero and denormal sums flushed, as the instruction does),
// unless bf16_gemm() is widen (FORGE_BF16_GEMM=widen).
void gemm_mixed(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                const void* A, GemmElem a_elem, int64_t lda, const void* B, GemmElem b_elem,
                int64_t ldb, float beta, float* C, int64_t ldc);

// op(B) (k x n, f32) packed once into the packed kernels' panels, for products that reuse the
// same B many times (a model's weights during inference): the per-call packing of B, as costly as
// the product itself when A has a few rows, is skipped. The result is bit for bit that of
// gemm_packed with B itself (packing moves data only; the blocking depends on k and n alone).
//
//   PackedB w = PackedB::pack(/*trans_b=*/true, W, /*ldb=*/k, k, n);   // W (n, k): x @ W^T
//   gemm_prepacked(m, 1.0f, x, k, w, 0.0f, y, n);                      // y (m, n)
class PackedB {
 public:
  static PackedB pack(bool trans_b, const float* B, int64_t ldb, int64_t k, int64_t n);
  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  size_t bytes() const { return floats_ * sizeof(float); }
  // Whether the packed kernels it was laid out for are still the ones in use (the ISA or the
  // backend can be switched at run time, e.g. by tests).
  bool current() const;
  const char* kernel_name() const;

 private:
  friend void gemm_prepacked(int64_t m, float alpha, const float* A, int64_t lda, const PackedB& B,
                             float beta, float* C, int64_t ldc);
  const void* kernel_ = nullptr;  // the GemmKernelInfo it was packed for
  int64_t k_ = 0, n_ = 0;
  size_t floats_ = 0;
  std::shared_ptr<float> data_;  // from the CPU allocator (aligned; counted as parameters)
};
// C (m, n) = alpha * A (m, k) @ op(B) + beta * C, A f32 row-major (not transposed). Throws when
// B is not current().
void gemm_prepacked(int64_t m, float alpha, const float* A, int64_t lda, const PackedB& B,
                    float beta, float* C, int64_t ldc);

// The scratch a packed product of this shape takes from the allocator (tagged `other`) while it
// runs: its A block and B panel, sized by the kernel in use (an f32 A read in place, a few rows
// of it or any with B at most 1024 wide, takes no A block; with the latter, a B stored across k
// takes at most an edge sliver), for contiguous operands. The memory planner (recipes/plan.h)
// counts it at the step's peak.
int64_t gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, bool trans_a = false,
                             bool trans_b = false);

// How bf16 x bf16 products run: native (the AVX512_BF16 kernel, where the processor has it and
// the avx512 family is in use; else as widen) or widen (to f32 as they are packed, the f32
// kernels).
enum class Bf16Gemm { native, widen };
Bf16Gemm bf16_gemm();
void set_bf16_gemm(Bf16Gemm mode);    // FORGE_BF16_GEMM=native|widen sets the initial one
bool bf16_native_supported();         // the processor has AVX512_BF16 and the build its kernel
const char* gemm_bf16_kernel_name();  // the kernel a bf16 x bf16 product uses now

// Whether the packed kernels pack an f32 operand: automatic (A read in place, unpacked, where B is
// at most 1024 columns wide, and then a B stored across k read in place too; else packed) or
// always (for measuring one against the other: the same bits).
enum class Packing { automatic, always };
Packing gemm_a_packing();
void set_gemm_a_packing(Packing mode);  // FORGE_GEMM_A=auto|packed sets the initial one
Packing gemm_b_packing();
void set_gemm_b_packing(Packing mode);  // FORGE_GEMM_B=auto|packed sets the initial one

enum class GemmBackend { packed, eigen };
GemmBackend gemm_backend();
void set_gemm_backend(GemmBackend b);  // FORGE_GEMM=eigen|packed sets the initial one
const char* gemm_kernel_name();        // e.g. "avx2 6x16", for benchmark headers

// The two implementations, callable directly (tests compare them).
void gemm_packed(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc);
template <class T>
void gemm_eigen(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace forge::cpu
