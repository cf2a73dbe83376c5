// The packed f32 GEMM driver (the BLIS loop structure) and backend selection.
//
//   for jc over N in steps of NC:               B panel (KC x NC) lives in L3
//     for pc over K in steps of KC:             KC depends on K only (fixes the summation order)
//       pack B[pc:pc+kc, jc:jc+nc]              threads split its NR-wide slivers (read in
//                                               place instead where A is and B is stored across k)
//       for ic over M in steps of MC:           A block (MC x KC) lives in L2
//         pack A[ic:ic+mc, pc:pc+kc]            threads split its MR-high slivers (an f32 A
//                                               times a B <= 1024 wide is read in place instead)
//         for each (jr, ir) tile: microkernel   threads split the tiles; a B sliver stays in L1
//
// Where B is the narrower operand, threads split an A block by rows instead: each packs its own
// A slivers and computes all their tiles (see gemm_driver).
//
// Tiles at the bottom edge run the kernel family's edge kernel for their rows (the same
// arithmetic on fewer rows), straight into C; tiles at the right edge run into a scratch tile
// (the packed panels are zero-padded), then the valid part is combined into C.
#include "tensor/cpu/gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tensor/allocator.h"
#include "tensor/cpu/cpu_features.h"
#include "tensor/cpu/gemm_kernels.h"
#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

namespace forge::cpu {

// ---------------------------------------------------------------------------------------------
// Backend selection

namespace {
// The setting environment variable `name` picks between two choices: the first when unset, and
// anything else refused with both names.
template <class E>
E env_choice(const char* name, const char* first, E first_value, const char* second,
             E second_value) {
  const char* env = std::getenv(name);
  if (!env || std::strcmp(env, first) == 0) return first_value;
  if (std::strcmp(env, second) == 0) return second_value;
  throw_error(fmt::format("{}={}: expected '{}' or '{}'", name, env, first, second));
}

GemmBackend g_backend =
    env_choice("FORGE_GEMM", "packed", GemmBackend::packed, "eigen", GemmBackend::eigen);

// a * b + c rounded once, as the vector kernels' fma, where the target has the instruction; said
// explicitly rather than left to the compiler's contraction (GCC contracts only from -O2, and
// then may pick either product of alpha * acc + beta * c to fuse).
inline float madd(float a, float b, float c) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// The portable microkernel: plain loops, 4 x 8, the same arithmetic order as the vector ones.
void kernel_portable(long kc, const float* a, const float* b, float* c, long ldc, float alpha,
                     float beta) {
  constexpr int MR = 4, NR = 8;
  float acc[MR][NR] = {};
  for (long p = 0; p < kc; ++p)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = madd(a[p * MR + i], b[p * NR + j], acc[i][j]);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      c[i * ldc + j] =
          beta == 0.0f ? alpha * acc[i][j] : madd(alpha, acc[i][j], beta * c[i * ldc + j]);
}
void pack_a_portable(GemmElem e, bool ta, const void* A, int64_t lda, int64_t m, int64_t r0,
                     int64_t p0, int64_t kc, int MR, float* dst);
void pack_b_portable(GemmElem e, bool tb, const void* B, int64_t ldb, int64_t n, int64_t c0,
                     int64_t p0, int64_t kc, int NR, float* dst);
const GemmKernelInfo kPortable{"portable 4x8", 4, 8, kernel_portable, pack_a_portable,
                               pack_b_portable};

const GemmKernelInfo& kernel_for(Isa isa) {
  const GemmKernelInfo* k = nullptr;
  if (isa == Isa::avx512) k = gemm_kernel_avx512();
  if (isa == Isa::avx2) k = gemm_kernel_avx2();
  return k ? *k : kPortable;
}
}  // namespace

namespace {
Bf16Gemm g_bf16 =
    env_choice("FORGE_BF16_GEMM", "native", Bf16Gemm::native, "widen", Bf16Gemm::widen);
Packing g_a_packing =
    env_choice("FORGE_GEMM_A", "auto", Packing::automatic, "packed", Packing::always);
Packing g_b_packing =
    env_choice("FORGE_GEMM_B", "auto", Packing::automatic, "packed", Packing::always);

// The kernel for a product of these element types.
const GemmKernelInfo& kernel_for(GemmElem ea, GemmElem eb) {
  if (ea == GemmElem::bf16 && eb == GemmElem::bf16 && g_bf16 == Bf16Gemm::native &&
      cpu_isa() == Isa::avx512 && bf16_native_supported())
    return *gemm_kernel_avx512_bf16();
  return kernel_for(cpu_isa());
}
}  // namespace

Bf16Gemm bf16_gemm() {
  return g_bf16;
}
Packing gemm_a_packing() {
  return g_a_packing;
}
void set_gemm_a_packing(Packing mode) {
  g_a_packing = mode;
}
Packing gemm_b_packing() {
  return g_b_packing;
}
void set_gemm_b_packing(Packing mode) {
  g_b_packing = mode;
}
void set_bf16_gemm(Bf16Gemm mode) {
  g_bf16 = mode;
}
bool bf16_native_supported() {
  return gemm_kernel_avx512_bf16() != nullptr && isa_supported(Isa::avx512) &&
         cpu_has_avx512_bf16();
}
const char* gemm_bf16_kernel_name() {
  return kernel_for(GemmElem::bf16, GemmElem::bf16).name;
}

GemmBackend gemm_backend() {
  return g_backend;
}
void set_gemm_backend(GemmBackend b) {
  g_backend = b;
}
const char* gemm_kernel_name() {
  return kernel_for(cpu_isa()).name;
}

template <>
void gemm<float>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_causal(Causal::none, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm<double>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* A,
                  int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_eigen<double>(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

// ---------------------------------------------------------------------------------------------
// Packing

namespace {

constexpr int64_t kMaxKC = 256;  // K block: a B sliver (KC x NR) and an A sliver stay in L1
constexpr int64_t kMC = 240;     // rows per A block: a multiple of every MR (4, 6, 12)
constexpr int64_t kNC = 3072;    // columns per B panel: a multiple of every NR (8, 16, 32)

// Element readers for the portable packers: element i of a buffer, widened to f32.
struct ReadF32 {
  static float at(const void* p, int64_t i) { return static_cast<const float*>(p)[i]; }
};
struct ReadBf16 {
  static float at(const void* p, int64_t i) {
    return bf16_bits_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
};
struct ReadF16 {
  static float at(const void* p, int64_t i) {
    return f16_bits_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
};

// Calls f.template operator()<Reader>() for the element type.
template <class F>
void with_reader(GemmElem e, F&& f) {
  switch (e) {
    case GemmElem::f32:
      return f.template operator()<ReadF32>();
    case GemmElem::bf16:
      return f.template operator()<ReadBf16>();
    case GemmElem::f16:
      return f.template operator()<ReadF16>();
  }
}

// The portable packers (see GemmPackA / GemmPackB in gemm_kernels.h).
void pack_a_portable(GemmElem e, bool ta, const void* A, int64_t lda, int64_t m, int64_t r0,
                     int64_t p0, int64_t kc, int MR, float* dst) {
  int64_t rows = std::min<int64_t>(MR, m - r0);
  with_reader(e, [&]<class R>() {
    for (int64_t p = 0; p < kc; ++p)
      for (int64_t i = 0; i < MR; ++i) {
        // op(A)(r, p) is A[p * lda + r] with ta, A[r * lda + p] without.
        int64_t r = r0 + i, q = p0 + p;
        dst[p * MR + i] = i < rows ? R::at(A, ta ? q * lda + r : r * lda + q) : 0.0f;
      }
  });
}

void pack_b_portable(GemmElem e, bool tb, const void* B, int64_t ldb, int64_t n, int64_t c0,
                     int64_t p0, int64_t kc, int NR, float* dst) {
  int64_t cols = std::min<int64_t>(NR, n - c0);
  with_reader(e, [&]<class R>() {
    for (int64_t p = 0; p < kc; ++p)
      for (int64_t j = 0; j < NR; ++j) {
        // op(B)(p, c) is B[c * ldb + p] with tb, B[p * ldb + c] without.
        int64_t c = c0 + j, q = p0 + p;
        dst[p * NR + j] = j < cols ? R::at(B, tb ? c * ldb + q : q * ldb + c) : 0.0f;
      }
  });
}

// Scratch buffers from the caching allocator, for one call; none when nothing is packed (A and B
// read in place: the allocator's locks and look-ups cost an attention head's product ~10%).
struct Workspace {
  float* p = nullptr;
  size_t bytes = 0;
  explicit Workspace(size_t n) : bytes(n * sizeof(float)) {
    if (n) p = static_cast<float*>(cpu_allocator().allocate(bytes, MemoryTag::other));
  }
  ~Workspace() {
    if (p) cpu_allocator().deallocate(p, bytes, MemoryTag::other);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};

}  // namespace

void gemm_packed(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_mixed(ta, tb, m, n, k, alpha, A, GemmElem::f32, lda, B, GemmElem::f32, ldb, beta, C, ldc);
}

namespace {

// K blocks of (nearly) equal size, a function of k alone (this fixes each output's summation
// order); B panels of NC columns.
int64_t k_block(int64_t k) {
  const int64_t k_blocks = (k + kMaxKC - 1) / kMaxKC;
  return (k + k_blocks - 1) / k_blocks;
}
}  // namespace

int64_t gemm_k_block(int64_t k) {
  return k_block(k);
}

namespace {
int64_t n_block(int64_t n, int NR) {
  return std::min<int64_t>(kNC, (n + NR - 1) / NR * NR);
}

// A few rows of a plain f32 A (a decoding step's activations): each row runs the one-row kernel
// on A in place, with no A packing and no padded rows.
bool rows_in_place(const GemmKernelInfo& K, bool ta, GemmElem ea, int64_t m) {
  return K.row_kernel && !ta && ea == GemmElem::f32 && m * 3 <= K.mr;
}

// An f32 A (stored either way) with more rows than that, times a B at most kAUnpackedMaxN wide: the
// family's a_in_place kernels read its tiles in place, so A is never packed. Packing A costs a pass
// over it per product, amortized over B's n columns: at the `cpu` preset's n (65 to 512) the step
// is ~6% faster without it (along k: a layer's input in forward, the output gradient in the input
// gradient's product; across k: the output gradient in the weight gradient's); at 2048^3, reading
// 12 rows 8 KB apart lost 1-4% (AVX-512 and AVX2) to the packed sliver's contiguous reads
// (bench/RESULTS.md, 2026-12-07 evening). Rows a multiple of 4 KB apart are packed all the same:
// their lines all fall in one set of L1 (64 sets of 64-byte lines), which holds 12 of them at most
// (Zen 5; 8 on older cores), so the tile's rows evict each other (1024^3 ran at 0.87 of packed).
// FORGE_GEMM_A=packed always packs (the same bits).
constexpr int64_t kAUnpackedMaxN = 1024;
bool one_l1_set(int64_t ld) {
  return ld % 1024 == 0;  // f32 rows a multiple of 4 KB apart
}
bool a_read_unpacked(const GemmKernelInfo& K, bool ta, GemmElem ea, int64_t n, int64_t lda) {
  return g_a_packing == Packing::automatic && K.a_in_place_kernels[ta] && ea == GemmElem::f32 &&
         !one_l1_set(lda) && n <= kAUnpackedMaxN;
}

// With A in place, an f32 B given per call (attention's keys and values while decoding) is read in
// place too, all but an edge sliver (fewer than NR columns), which is packed on its own.
bool b_in_place(const GemmKernelInfo& K, bool a_in_place, GemmElem eb, bool prepacked) {
  return a_in_place && !prepacked && eb == GemmElem::f32 && K.row_kernel_b != nullptr;
}

// With A read unpacked, an f32 B stored across k (B(p, j) at B[p * ldb + j]: a linear layer's
// weight in its input gradient's product, its input in the weight gradient's, attention's values)
// is read in place by the same kernels, B's stride for the packed sliver's: the same products in
// the same order. Packing B costs a pass over it per A block and, at the `cpu` preset's shapes,
// more than the kernels lose to reading B's rows ldb apart (bench/RESULTS.md, 2026-12-07 night).
// A B stored along k (B^T's rows: the weight in the forward product) is still packed: the kernel
// would have to transpose it for every tile. Rows 4 KB apart are packed, as A's are (above).
// FORGE_GEMM_B=packed always packs (the same bits).
bool b_read_unpacked(bool a_unpacked, GemmElem eb, bool tb, bool prepacked, int64_t ldb) {
  return a_unpacked && g_b_packing == Packing::automatic && eb == GemmElem::f32 && !tb &&
         !prepacked && !one_l1_set(ldb);
}

// The floats of the driver's B workspace: every sliver of a panel, or the edge sliver alone (B
// read in place), or nothing (B in place, no edge).
int64_t b_pack_floats(const GemmKernelInfo& K, int64_t n, int64_t KC, bool b_read_in_place,
                      bool b_unpacked) {
  if (b_unpacked) return n % K.nr ? K.nr * KC : 0;
  return (b_read_in_place ? K.nr : n_block(n, K.nr)) * KC;
}

// Where the B panels come from: packed per call from (eb, tb, B, ldb), or already packed (then
// `prepacked` holds every (jc, pc) panel, jc-major, each as the packers lay it out).
struct BSource {
  GemmElem eb = GemmElem::f32;
  bool tb = false;
  const void* B = nullptr;
  int64_t ldb = 0;
  const float* prepacked = nullptr;
};

// Asks for part `part` of `parts` of the source lines of the B sliver at column `col` (NR columns,
// K rows pc .. pc + kc), towards L2, ahead of its packing.
void prefetch_b_part(const BSource& src, int64_t n, int64_t col, int64_t pc, int64_t kc, int NR,
                     int64_t part, int64_t parts) {
  const int64_t elem = src.eb == GemmElem::f32 ? 4 : 2;
  const int64_t cols = std::min<int64_t>(NR, n - col);
  const auto* B = static_cast<const char*>(src.B);
  // Lines of (rows, bytes per row): B (k, n) gives kc rows of the sliver's columns; B^T (n, k)
  // gives its columns' rows, kc elements each.
  const int64_t rows = src.tb ? cols : kc, row_bytes = (src.tb ? kc : cols) * elem;
  const int64_t r0 = rows * part / parts, r1 = rows * (part + 1) / parts;
  for (int64_t r = r0; r < r1; ++r) {
    const char* p =
        src.tb ? B + ((col + r) * src.ldb + pc) * elem : B + ((pc + r) * src.ldb + col) * elem;
    for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(p + b, 0, 2);
    __builtin_prefetch(p + row_bytes - 1, 0, 2);
  }
}

// How many threads a product gets, and whether they split its B slivers. Threads only pay off
// with enough work: about 2^21 multiply-adds each; a product inside another parallel region
// (a batched product's parallel_for) runs on one. A read in place (a few rows) is never split so.
//
// Where B is at least as wide as A is tall and every thread gets two slivers or more, each thread
// takes its share of every B panel's slivers, packs them and the whole A block for itself, and
// computes its columns of tiles: no barrier in the product and nothing packed on another core,
// for A packed once per thread rather than once (m <= n, so A is the smaller operand).
struct Team {
  int threads = 1;
  bool split_cols = false;
};
Team team_for(const GemmKernelInfo& K, int64_t m, int64_t n, int64_t k, bool a_in_place) {
  Team team;
  const double work = double(m) * double(n) * double(k);
  team.threads = int(std::min<double>(get_num_threads(), std::max(1.0, work / double(1 << 21))));
  if (omp_in_parallel()) team.threads = 1;
  team.split_cols = team.threads > 1 && !a_in_place && n >= m &&
                    n_block(n, K.nr) / K.nr >= 2 * int64_t(team.threads);
  return team;
}

// The BLIS loops (see the top of this file) for either B source.
void gemm_driver(const GemmKernelInfo& K, bool ta, int64_t m, int64_t n, int64_t k, float alpha,
                 const void* A, GemmElem ea, int64_t lda, const BSource& src, float beta, float* C,
                 int64_t ldc, Causal causal) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  const int MR = K.mr, NR = K.nr;
  const int64_t KC = k_block(k);
  const int64_t MC = std::min<int64_t>(kMC, (m + MR - 1) / MR * MR);
  const int64_t NC = n_block(n, NR);
  const bool a_in_place = rows_in_place(K, ta, ea, m);
  const bool a_unpacked = !a_in_place && a_read_unpacked(K, ta, ea, n, lda);
  const bool b_read_in_place = b_in_place(K, a_in_place, src.eb, src.prepacked != nullptr);
  const bool b_unpacked =
      b_read_unpacked(a_unpacked, src.eb, src.tb, src.prepacked != nullptr, src.ldb);
  // With B unpacked, whether its sliver at column col is read in place (a whole one) or packed
  // on its own at the workspace's start (the edge).
  auto sliver_in_place = [&](int64_t col) { return b_unpacked && col + NR <= n; };
  const Team team = team_for(K, m, n, k, a_in_place);
  const int threads = team.threads;
  const bool split_cols = team.split_cols;
  // With one thread and one A block (m <= MC), each B sliver is used by that block's tiles only:
  // it is packed just before them, into one place that stays in cache, while the next sliver's
  // source is asked for a part per tile. B then streams in under the arithmetic instead of in a
  // pass of its own (a wide B read once, as the LM head's, waited for memory there), and its
  // packed panel no longer passes through memory. Same packed bits, same arithmetic.
  const bool lazy_b = threads == 1 && !a_in_place && !src.prepacked && m <= MC;
  Workspace a_pack(a_in_place || a_unpacked ? 0 : size_t(MC * KC) * (split_cols ? threads : 1));
  Workspace b_pack(src.prepacked ? 0
                                 : size_t(b_pack_floats(K, n, KC, b_read_in_place, b_unpacked)));

  // The work is split by hand among a team of `nt` threads (this one is number `t`), each with
  // a static share of every loop, and `sync()` where one thread's writes are another's reads. A
  // product of one thread (a small one, or one called inside another region: a batched
  // product's parallel_for) runs serially with no OpenMP region at all, since even a region of
  // one goes through libgomp, and that costs more than a small product (a decoding step's, an
  // attention head's).
  //
  // With split_cols (see team_for), each thread packs its own B slivers and its own copy of A,
  // and computes their column of tiles. Else each A block is split by rows where B is the
  // narrower operand and every thread gets a few slivers: each thread packs its own A slivers
  // and computes their whole row of tiles, so A never crosses to another core and no thread
  // waits for another's packing. Else its tiles are split, (jr, ir) in order, so that each
  // thread uses part of B and all of A.
  auto run = [&](int64_t t, int64_t nt) {
    auto part = [&](int64_t count) { return std::pair{count * t / nt, count * (t + 1) / nt}; };
    auto sync = [&] {
      if (nt > 1) {
#pragma omp barrier
      }
    };
    float scratch[12 * 32];              // an edge tile: MR x NR of the widest kernel
    const float* panel = src.prepacked;  // the next prepacked (jc, pc) panel
    float* Ap = a_pack.p + (split_cols ? t * MC * KC : 0);  // this thread's A block
    // Packs the A slivers [s0, s1) of the block at row ic (nothing to do when A is read in place).
    auto pack_a = [&](int64_t ic, int64_t pc, int64_t kc, int64_t s0, int64_t s1) {
      if (!a_unpacked)
        for (int64_t s = s0; s < s1; ++s)
          K.pack_a(ea, ta, A, lda, m, ic + s * MR, pc, kc, MR, Ap + s * kc * MR);
    };
    for (int64_t jc = 0; jc < n; jc += NC) {
      const int64_t nc = std::min(NC, n - jc);
      const int64_t b_slivers = (nc + NR - 1) / NR;
      // Under split_cols no thread waits for another between panels: a thread's B slivers keep
      // their places from one K block to the next (KC apart, whatever kc is), so that it never
      // overwrites a sliver the other may still be reading, until a last, narrower panel moves
      // the shares (then all wait once).
      if (split_cols && jc > 0 && b_slivers != NC / NR) sync();
      for (int64_t pc = 0; pc < k; pc += KC) {
        const int64_t kc = std::min(KC, k - pc);
        const int64_t b_stride = split_cols && !src.prepacked ? KC * NR : kc * NR;
        const float beta_eff = pc == 0 ? beta : 1.0f;
        const float* Bp = panel;
        if (src.prepacked) {
          panel += b_slivers * kc * NR;
        } else if (b_read_in_place) {
          const int64_t edge = (n - jc) / NR;  // the sliver past the whole ones, if any
          if (edge < b_slivers) {
            if (t == 0)
              K.pack_b(src.eb, src.tb, src.B, src.ldb, n, jc + edge * NR, pc, kc, NR, b_pack.p);
            sync();
          }
        } else if (!lazy_b) {
          Bp = b_pack.p;
          const auto [s0, s1] = part(b_slivers);
          for (int64_t s = s0; s < s1; ++s)
            if (!sliver_in_place(jc + s * NR))
              K.pack_b(src.eb, src.tb, src.B, src.ldb, n, jc + s * NR, pc, kc, NR,
                       b_pack.p + (b_unpacked ? 0 : s * b_stride));
          if (!split_cols) sync();
        } else {
          Bp = b_pack.p;  // packed sliver by sliver, in the first A block's tiles
        }
        // One tile: rows x cols of C at (row, col), where kernel(c, ldc, alpha, beta) computes
        // kernel_rows x NR of them (straight into C when the tile is whole).
        auto tile_out = [&](auto kernel, int64_t kernel_rows, int64_t row, int64_t col,
                            int64_t rows) {
          const int64_t cols = std::min<int64_t>(NR, n - col);
          float* c = C + row * ldc + col;
          if (rows == kernel_rows && cols == NR) {
            kernel(c, long(ldc), alpha, beta_eff);
            return;
          }
          kernel(scratch, long(NR), 1.0f, 0.0f);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) {
              const float v = scratch[i * NR + j];  // combined as the kernels combine
              c[i * ldc + j] =
                  beta_eff == 0.0f ? alpha * v : madd(alpha, v, beta_eff * c[i * ldc + j]);
            }
        };
        if (a_in_place) {
          const auto [t0, t1] = part(m * b_slivers);
          for (int64_t tile = t0; tile < t1; ++tile) {
            const int64_t jr = tile / m, row = tile % m, col = jc + jr * NR;
            const float* a = static_cast<const float*>(A) + row * lda + pc;
            // The one-row kernel on a B sliver packed at b.
            auto row_tile = [&](const float* b) {
              tile_out([&](float* c, long l, float al,
                           float be) { K.row_kernel(kc, a, b, c, l, al, be); },
                       1, row, col, 1);
            };
            if (!b_read_in_place) {
              row_tile(Bp + jr * kc * NR);
            } else if (col + NR <= n) {
              const float* b = static_cast<const float*>(src.B) +
                               (src.tb ? col * src.ldb + pc : pc * src.ldb + col);
              K.row_kernel_b(long(kc), a, b, long(src.ldb), src.tb, C + row * ldc + col, alpha,
                             beta_eff);
            } else {
              row_tile(b_pack.p);  // the edge, packed above
            }
          }
          sync();
          continue;
        }
        // Tile (ir, jr) of the A block at row ic: the family's kernel for its rows (a bottom
        // edge's first rows only), on A's rows in place or its packed sliver.
        auto tile = [&](int64_t ic, int64_t ir, int64_t jr) {
          const int64_t row = ic + ir * MR, rows = std::min<int64_t>(MR, m - row);
          const int64_t col = jc + jr * NR;
          // The depths [p0, p1) of this K block the tile takes (see Causal): the others' products
          // are exact zeros, which leave its sums' bits as they are.
          int64_t p0 = 0, p1 = kc;
          if (causal == Causal::a_lower) p1 = std::clamp<int64_t>(row + rows - pc, 0, kc);
          if (causal == Causal::a_upper) p0 = std::clamp<int64_t>(row - pc, 0, kc);
          if (causal == Causal::c_lower && col >= row + rows) {  // wholly above the diagonal
            if (pc == 0)
              for (int64_t i = row; i < row + rows; ++i)
                std::fill_n(C + i * ldc + col, std::min<int64_t>(NR, n - col), 0.0f);
            return;
          }
          const float* b = (lazy_b || b_unpacked ? Bp : Bp + jr * b_stride) + p0 * NR;
          if (a_unpacked) {
            const int64_t p = pc + p0;
            const float* a = static_cast<const float*>(A) + (ta ? p * lda + row : row * lda + p);
            const GemmAInPlaceKernel kernel = K.a_in_place_kernels[ta][rows];
            long ldb = NR;
            if (sliver_in_place(col)) {
              b = static_cast<const float*>(src.B) + p * src.ldb + col;
              ldb = long(src.ldb);
            }
            tile_out([&](float* c, long l, float al,
                         float be) { kernel(p1 - p0, a, long(lda), b, ldb, c, l, al, be); },
                     rows, row, col, rows);
            return;
          }
          const float* a = Ap + ir * kc * MR + p0 * MR;
          GemmMicrokernel kernel = K.kernel;
          int64_t kernel_rows = MR;
          if (rows < MR && K.edge_kernels) {
            kernel = K.edge_kernels[rows];  // the first rows of the sliver only
            kernel_rows = rows;
          }
          tile_out(
              [&](float* c, long l, float al, float be) { kernel(p1 - p0, a, b, c, l, al, be); },
              kernel_rows, row, col, rows);
        };
        if (split_cols) {
          const auto [s0, s1] = part(b_slivers);
          for (int64_t ic = 0; ic < m; ic += MC) {
            const int64_t a_slivers = (std::min(MC, m - ic) + MR - 1) / MR;
            pack_a(ic, pc, kc, 0, a_slivers);
            for (int64_t jr = s0; jr < s1; ++jr)
              for (int64_t ir = 0; ir < a_slivers; ++ir) tile(ic, ir, jr);
          }
          continue;
        }
        int64_t unsynced = 0;  // the sliver count of a row-split A block not yet synced after
        for (int64_t ic = 0; ic < m; ic += MC) {
          const int64_t mc = std::min(MC, m - ic);
          const int64_t a_slivers = (mc + MR - 1) / MR;
          // Another split of the slivers: their packed places may still be another thread's.
          if (unsynced && unsynced != a_slivers) sync(), unsynced = 0;
          if (nt > 1 && n < m && a_slivers >= 2 * nt) {
            const auto [s0, s1] = part(a_slivers);
            pack_a(ic, pc, kc, s0, s1);
            for (int64_t jr = 0; jr < b_slivers; ++jr)
              for (int64_t ir = s0; ir < s1; ++ir) tile(ic, ir, jr);
            unsynced = a_slivers;
            continue;
          }
          const auto [s0, s1] = part(a_slivers);
          pack_a(ic, pc, kc, s0, s1);
          sync();
          const auto [t0, t1] = part(a_slivers * b_slivers);
          for (int64_t i = t0; i < t1; ++i) {
            const int64_t ir = i % a_slivers, jr = i / a_slivers;
            if (lazy_b && !sliver_in_place(jc + jr * NR)) {
              if (ir == 0)
                K.pack_b(src.eb, src.tb, src.B, src.ldb, n, jc + jr * NR, pc, kc, NR, b_pack.p);
              if (jr + 1 < b_slivers && !b_unpacked)
                prefetch_b_part(src, n, jc + (jr + 1) * NR, pc, kc, NR, ir, a_slivers);
            }
            tile(ic, ir, jr);
          }
          sync();
        }
        if (unsynced) sync();  // the next (jc, pc) repacks B
      }
    }
  };
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    run(omp_get_thread_num(), omp_get_num_threads());
  } else {
    run(0, 1);
  }
}

}  // namespace

void gemm_mixed(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* A,
                GemmElem ea, int64_t lda, const void* B, GemmElem eb, int64_t ldb, float beta,
                float* C, int64_t ldc) {
  gemm_driver(kernel_for(ea, eb), ta, m, n, k, alpha, A, ea, lda,
              BSource{.eb = eb, .tb = tb, .B = B, .ldb = ldb}, beta, C, ldc, Causal::none);
}

// The f32 product behind gemm<float> too (Causal::none): Eigen or the packed driver.
void gemm_causal(Causal causal, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc) {
  FORGE_CHECK(causal != Causal::c_lower || beta == 0.0f,
              "gemm_causal: a lower C is written afresh (beta 0), got beta {}", beta);
  if (g_backend == GemmBackend::eigen)
    gemm_eigen<float>(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    gemm_driver(kernel_for(cpu_isa()), ta, m, n, k, alpha, A, GemmElem::f32, lda,
                BSource{.tb = tb, .B = B, .ldb = ldb}, beta, C, ldc, causal);
}

int64_t gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b) {
  if (m == 0 || n == 0 || k == 0) return 0;
  const GemmKernelInfo& K = kernel_for(cpu_isa());
  const int64_t KC = k_block(k), MC = std::min<int64_t>(kMC, (m + K.mr - 1) / K.mr * K.mr);
  const bool a_in_place = rows_in_place(K, trans_a, GemmElem::f32, m);
  const bool b_read_in_place = b_in_place(K, a_in_place, GemmElem::f32, false);
  const int64_t lda = trans_a ? m : k, ldb = trans_b ? k : n;  // contiguous operands
  const bool a_unpacked = !a_in_place && a_read_unpacked(K, trans_a, GemmElem::f32, n, lda);
  const bool b_unpacked = b_read_unpacked(a_unpacked, GemmElem::f32, trans_b, false, ldb);
  const Team team = team_for(K, m, n, k, a_in_place);
  const int64_t a_blocks = a_in_place || a_unpacked ? 0 : team.split_cols ? team.threads : 1;
  const int64_t b_floats = b_pack_floats(K, n, KC, b_read_in_place, b_unpacked);
  auto accounted = [](int64_t floats) {  // as Workspace allocates them: nothing for none
    return floats ? int64_t(cpu_allocator().accounted(size_t(floats) * sizeof(float))) : 0;
  };
  return accounted(MC * KC * a_blocks) + accounted(b_floats);
}

// ---------------------------------------------------------------------------------------------
// Prepacked B

PackedB PackedB::pack(bool tb, const float* B, int64_t ldb, int64_t k, int64_t n) {
  const GemmKernelInfo& K = kernel_for(cpu_isa());
  const int NR = K.nr;
  const int64_t KC = k_block(k), NC = n_block(n, NR);
  PackedB p;
  p.kernel_ = &K;
  p.k_ = k;
  p.n_ = n;
  size_t floats = 0;
  for (int64_t jc = 0; jc < n; jc += NC)
    floats += size_t((std::min(NC, n - jc) + NR - 1) / NR * NR * k);
  const size_t bytes = floats * sizeof(float);
  p.floats_ = floats;
  p.data_ = std::shared_ptr<float>(
      static_cast<float*>(cpu_allocator().allocate(bytes, MemoryTag::parameters)),
      [bytes](float* q) { cpu_allocator().deallocate(q, bytes, MemoryTag::parameters); });
  float* dst = p.data_.get();
  for (int64_t jc = 0; jc < n; jc += NC) {
    const int64_t b_slivers = (std::min(NC, n - jc) + NR - 1) / NR;
    for (int64_t pc = 0; pc < k; pc += KC) {
      const int64_t kc = std::min(KC, k - pc);
      for (int64_t t = 0; t < b_slivers; ++t)
        K.pack_b(GemmElem::f32, tb, B, ldb, n, jc + t * NR, pc, kc, NR, dst + t * kc * NR);
      dst += b_slivers * kc * NR;
    }
  }
  return p;
}

bool PackedB::current() const {
  return kernel_ == &kernel_for(cpu_isa()) && g_backend == GemmBackend::packed;
}

const char* PackedB::kernel_name() const {
  return kernel_ ? static_cast<const GemmKernelInfo*>(kernel_)->name : "none";
}

void gemm_prepacked(int64_t m, float alpha, const float* A, int64_t lda, const PackedB& B,
                    float beta, float* C, int64_t ldc) {
  FORGE_CHECK(B.current(), "gemm_prepacked: B was packed for the {} kernels, now {} ({})",
              B.kernel_name(), gemm_kernel_name(),
              g_backend == GemmBackend::packed ? "packed backend" : "eigen backend");
  gemm_driver(*static_cast<const GemmKernelInfo*>(B.kernel_), false, m, B.n(), B.k(), alpha, A,
              GemmElem::f32, lda, BSource{.prepacked = B.data_.get()}, beta, C, ldc, Causal::none);
}

}  // namespace forge::cpu
