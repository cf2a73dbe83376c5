// The CPU GEMM implementations behind matmul: every microkernel family this processor can run
// (forced one at a time), and the Eigen backend, against a naive f64 product.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "tensor/cpu/cpu_features.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/gemm_kernels.h"
#include "testing.h"

using namespace forge;
using forge::cpu::Isa;
using forge::testing::IsaScope;
using forge::testing::runnable_isas;

namespace {

// op(A) (m, k) @ op(B) (k, n) in f64 loops.
std::vector<double> naive(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A,
                          int64_t lda, const float* B, int64_t ldb) {
  std::vector<double> c(size_t(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p)
        s += double(ta ? A[p * lda + i] : A[i * lda + p]) *
             double(tb ? B[j * ldb + p] : B[p * ldb + j]);
      c[size_t(i * n + j)] = s;
    }
  return c;
}

// Runs one product with the packed driver and checks it against the naive one, including
// alpha/beta on a C with a leading dim larger than n.
void check_packed(Isa isa, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                  float beta) {
  IsaScope scope(isa);
  Generator gen(uint64_t(m * 131 + n * 17 + k));
  int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 5, ldc = n + 2;
  Tensor a = randn({ta ? k : m, lda}, gen), b = randn({tb ? n : k, ldb}, gen);
  Tensor c0 = randn({m, ldc}, gen);
  Tensor c = c0.clone();
  cpu::gemm_packed(ta, tb, m, n, k, alpha, a.data<float>(), lda, b.data<float>(), ldb, beta,
                   c.data<float>(), ldc);
  std::vector<double> ref = naive(ta, tb, m, n, k, a.data<float>(), lda, b.data<float>(), ldb);
  const float* pc = c.data<float>();
  const float* p0 = c0.data<float>();
  double worst = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double want = alpha * ref[size_t(i * n + j)] + (beta == 0 ? 0.0 : beta * p0[i * ldc + j]);
      // f32 accumulation of k products of N(0,1) values: error ~ sqrt(k) * eps * |terms|.
      double tol = 1e-5 * (1.0 + std::sqrt(double(k))) * (1.0 + std::abs(want));
      worst = testing::nan_max(worst, std::abs(pc[i * ldc + j] - want) / tol);
    }
    for (int64_t j = n; j < ldc; ++j)
      REQUIRE(pc[i * ldc + j] == p0[i * ldc + j]);  // padding untouched
  }
  INFO("isa " << cpu::isa_name(isa) << " ta " << ta << " tb " << tb << " m " << m << " n " << n
              << " k " << k << " alpha " << alpha << " beta " << beta);
  CHECK(worst <= 1.0);
}

// Restores the A and B packing settings on scope exit (tests switch them to compare the paths).
struct PackingScope {
  cpu::Packing a = cpu::gemm_a_packing(), b = cpu::gemm_b_packing();
  ~PackingScope() {
    cpu::set_gemm_a_packing(a);
    cpu::set_gemm_b_packing(b);
  }
};

}  // namespace

TEST_CASE("packed gemm matches a naive f64 product for every kernel family, transpose and edge") {
  for (Isa isa : runnable_isas("gemm kernel family"))
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{{1, 1, 1},
                                                                  {7, 13, 5},
                                                                  {12, 32, 64},
                                                                  {13, 33, 257},
                                                                  {250, 70, 600},
                                                                  {3, 3100, 9},
                                                                  {40, 3100, 260}})
          check_packed(isa, ta, tb, m, n, k, 1.0f, 0.0f);
}

TEST_CASE("packed gemm applies alpha and beta (beta also across K blocks)") {
  for (Isa isa : runnable_isas("gemm kernel family")) {
    check_packed(isa, false, false, 37, 45, 700, 0.5f, 1.0f);
    check_packed(isa, true, false, 37, 45, 300, -2.0f, 0.25f);
    check_packed(isa, false, true, 9, 100, 3, 1.0f, 1.0f);
  }
}

TEST_CASE("packed gemm with beta 0 ignores NaN already in C") {
  for (Isa isa : runnable_isas("gemm kernel family")) {
    IsaScope scope(isa);
    Generator gen(3);
    Tensor a = randn({20, 30}, gen), b = randn({30, 40}, gen);
    Tensor c = full({20, 40}, std::nan(""));
    cpu::gemm_packed(false, false, 20, 40, 30, 1.0f, a.data<float>(), 30, b.data<float>(), 40, 0.0f,
                     c.data<float>(), 40);
    CHECK(all_finite(c));
  }
}

TEST_CASE("packed gemm with k = 0 scales C by beta") {
  Tensor c = full({3, 4}, 2.0);
  cpu::gemm_packed(false, false, 3, 4, 0, 1.0f, nullptr, 1, nullptr, 4, 0.5f, c.data<float>(), 4);
  CHECK(max_abs_diff(c, full({3, 4}, 1.0)) == 0.0);
}

TEST_CASE("packed gemm gives bitwise the same result at 1, 2 and 3 threads for every family") {
  // The driver splits an A block by rows when B is the narrower operand (301 x 190: a block of
  // 240 rows, then one of 61), and goes to splitting its tiles within a product when the last
  // block is too small to split (252 rows: 240, 12); it splits B's slivers, each thread with its
  // own copy of A, when B is the wider (190 x 301; 250 x 400: two A blocks), and the tiles when
  // B has too few slivers for that (40 x 40); the few-row path reads A in place (3 rows);
  // products of two threads inside another thread's region run serially. One thread packs the B
  // slivers of a single A block one at a time as its tiles need them (100 x 3100: two B panels,
  // two K blocks, an edge sliver), two split B's slivers.
  struct Case {
    int64_t m, n, k;
    bool ta, tb;
    float beta;
  };
  const Case cases[] = {{301, 190, 530, false, false, 0.0f},  {190, 301, 530, false, true, 0.5f},
                        {252, 64, 300, true, false, 1.0f},    {252, 64, 300, true, true, 0.0f},
                        {3, 190, 530, false, true, 0.0f},     {768, 128, 128, false, true, 1.0f},
                        {250, 400, 300, true, false, 0.0f},   {40, 40, 2700, false, false, 0.5f},
                        {100, 3100, 300, false, false, 1.0f}, {100, 3100, 300, true, true, 0.0f}};
  Generator gen(11);
  for (const Case& cs : cases) {
    CAPTURE(cs.m, cs.n, cs.k, cs.ta, cs.tb, cs.beta);
    Tensor a = cs.ta ? randn({cs.k, cs.m}, gen) : randn({cs.m, cs.k}, gen);
    Tensor b = cs.tb ? randn({cs.n, cs.k}, gen) : randn({cs.k, cs.n}, gen);
    Tensor c0 = randn({cs.m, cs.n}, gen);
    const int64_t lda = cs.ta ? cs.m : cs.k, ldb = cs.tb ? cs.k : cs.n;
    for (Isa isa : runnable_isas("gemm kernel family")) {
      IsaScope scope(isa);
      std::vector<Tensor> results;
      for (int t : {1, 2, 3}) {
        testing::ThreadCount threads(t);
        Tensor c = c0.clone();
        cpu::gemm_packed(cs.ta, cs.tb, cs.m, cs.n, cs.k, 1.0f, a.data<float>(), lda,
                         b.data<float>(), ldb, cs.beta, c.data<float>(), cs.n);
        results.push_back(c);
      }
      {  // two products at once, each from its own thread of a region of two
        testing::ThreadCount threads(2);
        Tensor c1 = c0.clone(), c2 = c0.clone();
#pragma omp parallel num_threads(2)
        {
          float* c = omp_get_thread_num() == 0 ? c1.data<float>() : c2.data<float>();
          cpu::gemm_packed(cs.ta, cs.tb, cs.m, cs.n, cs.k, 1.0f, a.data<float>(), lda,
                           b.data<float>(), ldb, cs.beta, c, cs.n);
        }
        results.push_back(c1);
        results.push_back(c2);
      }
      for (size_t i = 1; i < results.size(); ++i)
        CHECK(testing::bitwise_equal(results[0], results[i]));
      double worst = 0;  // against plain loops in double
      const float *pa = a.data<float>(), *pb = b.data<float>(), *pc = c0.data<float>();
      for (int64_t i = 0; i < cs.m; ++i)
        for (int64_t j = 0; j < cs.n; ++j) {
          double want = double(cs.beta) * pc[i * cs.n + j];
          for (int64_t p = 0; p < cs.k; ++p)
            want += double(cs.ta ? pa[p * lda + i] : pa[i * lda + p]) *
                    (cs.tb ? pb[j * ldb + p] : pb[p * ldb + j]);
          worst = std::max(worst, std::abs(want - results[0].data<float>()[i * cs.n + j]));
        }
      CHECK(worst < 1e-3);
    }
  }
}

TEST_CASE("the Eigen backend and the packed kernels agree through the matmul op") {
  Generator gen(5);
  Tensor a = randn({65, 129}, gen), b = randn({129, 67}, gen);
  Tensor packed = matmul(a, b);
  cpu::set_gemm_backend(cpu::GemmBackend::eigen);
  Tensor eigen = matmul(a, b);
  cpu::set_gemm_backend(cpu::GemmBackend::packed);
  CHECK(max_abs_diff(packed, eigen) < 1e-3);
  CHECK(allclose(packed, eigen, 1e-4, 1e-4));
}

TEST_CASE("forcing a kernel family the processor lacks is refused with its name") {
  for (Isa isa : {Isa::avx2, Isa::avx512})
    if (!cpu::isa_supported(isa))
      REQUIRE_THROWS_WITH(cpu::set_cpu_isa(isa), Catch::Matchers::Contains(cpu::isa_name(isa)));
  REQUIRE_THROWS_WITH(cpu::parse_isa("sse9"), Catch::Matchers::Contains("sse9"));
}

TEST_CASE("every kernel family gives bitwise the same product for alpha 1 and beta 0 or 1") {
  // Each output is summed in k order with one fused multiply-add per product, K blocks depend on K
  // alone, and with alpha 1, beta 0/1 the final combine rounds once: the tile shape (MR x NR) and
  // whether an element sits in an edge tile do not change the bits. So a run is reproducible
  // across machines with different vector widths, not only across thread counts.
  Generator gen(21);
  Tensor a = randn({77, 600}, gen), b = randn({600, 53}, gen), c0 = randn({77, 53}, gen);
  std::vector<Tensor> results;
  for (Isa isa : runnable_isas("gemm kernel family")) {
    IsaScope scope(isa);
    for (float beta : {0.0f, 1.0f}) {
      Tensor c = c0.clone();
      cpu::gemm_packed(false, true, 77, 53, 600, 1.0f, a.data<float>(), 600,
                       b.t().contiguous().data<float>(), 600, beta, c.data<float>(), 53);
      results.push_back(c);
    }
  }
  for (size_t i = 2; i < results.size(); ++i) {
    INFO("family " << i / 2 << " beta " << i % 2);
    CHECK(testing::bitwise_equal(results[i], results[i % 2]));
  }
}

TEST_CASE("a product of a few rows (read in place, one-row kernel) gives the rows of a full tile") {
  // m * 3 <= MR takes the one-row kernel on A in place; its arithmetic is one row of the tile
  // kernel's, so the first rows of a 13-row product (full tiles) are the same bits, per call
  // and prepacked, across K blocks (k 600) and B panels (n 3100), for alpha and beta as they come.
  // Per call, B is read in place too (transposed in registers when tb): k 600 leaves K blocks of
  // 300 (a last depth block of 12 under the 16-wide transpose), k 64 with a row stride of 3 x 64
  // is attention's keys and values in a KV cache, k 7 is all tail; n 53 has an edge sliver.
  Generator gen(41);
  struct Shape {
    int64_t k, pad;  // B's row stride: its row length + pad
  };
  for (Isa isa : runnable_isas("gemm kernel family")) {
    IsaScope scope(isa);
    for (bool tb : {false, true})
      for (int64_t n : {53, 3100})
        for (Shape sh : {Shape{600, 0}, Shape{64, 128}, Shape{7, 1}}) {
          const int64_t k = sh.k, M = 13;
          const int64_t ldb = (tb ? k : n) + sh.pad;
          Tensor a = randn({M, k}, gen), b = tb ? randn({n, ldb}, gen) : randn({k, ldb}, gen);
          Tensor c0 = randn({M, n}, gen);
          cpu::PackedB packed = cpu::PackedB::pack(tb, b.data<float>(), ldb, k, n);
          for (float beta : {0.0f, 1.0f, 1.3f}) {
            Tensor full = c0.clone();
            cpu::gemm_packed(false, tb, M, n, k, 0.7f, a.data<float>(), k, b.data<float>(), ldb,
                             beta, full.data<float>(), n);
            for (int64_t m : {1, 2, 3, 4}) {
              INFO("isa " << cpu::isa_name(isa) << " tb " << tb << " n " << n << " k " << k
                          << " ldb " << ldb << " beta " << beta << " m " << m);
              Tensor got = c0.narrow(0, 0, m).clone(), got_pre = got.clone();
              cpu::gemm_packed(false, tb, m, n, k, 0.7f, a.data<float>(), k, b.data<float>(), ldb,
                               beta, got.data<float>(), n);
              cpu::gemm_prepacked(m, 0.7f, a.data<float>(), k, packed, beta, got_pre.data<float>(),
                                  n);
              Tensor want = full.narrow(0, 0, m).contiguous();
              CHECK(testing::bitwise_equal(got, want));
              CHECK(testing::bitwise_equal(got_pre, want));
            }
          }
        }
  }
}

TEST_CASE(
    "a prepacked B gives bit for bit the per-call packed product, for every family and "
    "edge, and is refused once its family is no longer in use") {
  Generator gen(31);
  // k over one K block (and not a multiple of it), n over one NC panel (3072) with an edge sliver.
  struct Case {
    bool tb;
    int64_t m, n, k;
  };
  for (Isa isa : runnable_isas("gemm kernel family")) {
    IsaScope scope(isa);
    for (const Case& c : {Case{true, 1, 37, 19}, Case{true, 7, 3100, 300}, Case{false, 16, 53, 600},
                          Case{true, 13, 129, 257}}) {
      INFO("isa " << cpu::isa_name(isa) << " tb " << c.tb << " m " << c.m << " n " << c.n << " k "
                  << c.k);
      const int64_t ldb = (c.tb ? c.k : c.n) + 3, lda = c.k + 1;
      Tensor a = randn({c.m, lda}, gen), b = randn({c.tb ? c.n : c.k, ldb}, gen);
      Tensor c0 = randn({c.m, c.n}, gen);
      cpu::PackedB packed = cpu::PackedB::pack(c.tb, b.data<float>(), ldb, c.k, c.n);
      CHECK(packed.k() == c.k);
      CHECK(packed.n() == c.n);
      CHECK(packed.bytes() >= size_t(c.n * c.k) * sizeof(float));
      for (float beta : {0.0f, 1.0f}) {
        Tensor want = c0.clone(), got = c0.clone();
        cpu::gemm_packed(false, c.tb, c.m, c.n, c.k, 1.0f, a.data<float>(), lda, b.data<float>(),
                         ldb, beta, want.data<float>(), c.n);
        cpu::gemm_prepacked(c.m, 1.0f, a.data<float>(), lda, packed, beta, got.data<float>(), c.n);
        CHECK(testing::bitwise_equal(got, want));
      }
    }
  }
  // Packed for one family, used under another (or the Eigen backend): refused, naming both.
  Tensor b = randn({8, 8}, gen), a = randn({2, 8}, gen), c = Tensor::empty({2, 8});
  cpu::PackedB packed = cpu::PackedB::pack(false, b.data<float>(), 8, 8, 8);
  CHECK(packed.current());
  cpu::set_gemm_backend(cpu::GemmBackend::eigen);
  CHECK_FALSE(packed.current());
  CHECK_THROWS_WITH(
      cpu::gemm_prepacked(2, 1.0f, a.data<float>(), 8, packed, 0.0f, c.data<float>(), 8),
      Catch::Matchers::Contains("eigen backend"));
  cpu::set_gemm_backend(cpu::GemmBackend::packed);
  if (cpu::cpu_isa() != Isa::portable) {
    IsaScope scope(Isa::portable);
    CHECK_FALSE(packed.current());
    CHECK_THROWS_WITH(
        cpu::gemm_prepacked(2, 1.0f, a.data<float>(), 8, packed, 0.0f, c.data<float>(), 8),
        Catch::Matchers::Contains("portable"));
  }
}

TEST_CASE("gemm_workspace_bytes is what a per-call product allocates, tiles or a few rows") {
  // The planner charges a product this scratch; the driver's own allocations must match it:
  // packed A and B panels for tiles, no A and one edge sliver of B for rows read in place.
  Generator gen(43);
  struct Case {
    bool tb;
    int64_t m, n, k;
  };
  for (Isa isa : runnable_isas("gemm kernel family")) {
    IsaScope scope(isa);
    for (const Case& c : {Case{true, 1, 53, 64}, Case{false, 3, 3100, 600}, Case{true, 2, 64, 7},
                          Case{false, 13, 53, 600}, Case{true, 200, 700, 300},
                          Case{false, 200, 700, 300}, Case{false, 30, 64, 300}}) {
      INFO("isa " << cpu::isa_name(isa) << " tb " << c.tb << " m " << c.m << " n " << c.n << " k "
                  << c.k);
      Tensor a = randn({c.m, c.k}, gen), b = c.tb ? randn({c.n, c.k}, gen) : randn({c.k, c.n}, gen);
      Tensor out = Tensor::empty({c.m, c.n});
      const int64_t base = memory_stats(Device::cpu()).live_bytes;
      reset_peak_memory(Device::cpu());
      cpu::gemm_packed(false, c.tb, c.m, c.n, c.k, 1.0f, a.data<float>(), c.k, b.data<float>(),
                       c.tb ? c.k : c.n, 0.0f, out.data<float>(), c.n);
      CHECK(memory_stats(Device::cpu()).peak_bytes - base ==
            cpu::gemm_workspace_bytes(c.m, c.n, c.k, false, c.tb));
    }
  }
}

TEST_CASE("an A read in place, unpacked, gives the bits of the same A packed") {
  // Where B is at most 1024 wide, an f32 A stored either way is read in place by the family's
  // a_in_place kernels; APacking::always packs it: each output takes the same products in the same
  // order either way. Whole and bottom-edge slivers (every row count of the widest MR), right-edge
  // columns, two K blocks (k 600), A's rows padded (lda past its row), alpha and beta as they come,
  // and 1 and 2 threads (B split by slivers where n >= m, A's slivers by rows where n < m); n 1100
  // is packed either way.
  PackingScope restore;
  Generator gen(53);
  for (Isa isa : runnable_isas("gemm kernel family")) {
    IsaScope scope(isa);
    for (int threads : {1, 2}) {
      testing::ThreadCount thread_count(threads);
      for (bool ta : {false, true})
        for (int64_t m : {12, 23, 96, 250})
          for (int64_t n : {37, 300, 1100})
            for (int64_t k : {40, 600}) {
              const int64_t lda = (ta ? m : k) + 3;
              Tensor a = randn({ta ? k : m, lda}, gen), b = randn({k, n}, gen);
              Tensor c0 = randn({m, n}, gen);
              for (float beta : {0.0f, 1.3f}) {
                INFO("isa " << cpu::isa_name(isa) << " threads " << threads << " ta " << ta << " m "
                            << m << " n " << n << " k " << k << " beta " << beta);
                Tensor got = c0.clone(), packed = c0.clone();
                cpu::set_gemm_a_packing(cpu::Packing::automatic);
                cpu::gemm_packed(ta, false, m, n, k, 0.7f, a.data<float>(), lda, b.data<float>(), n,
                                 beta, got.data<float>(), n);
                cpu::set_gemm_a_packing(cpu::Packing::always);
                cpu::gemm_packed(ta, false, m, n, k, 0.7f, a.data<float>(), lda, b.data<float>(), n,
                                 beta, packed.data<float>(), n);
                CHECK(testing::bitwise_equal(got, packed));
              }
            }
    }
  }
}

TEST_CASE("a B read in place, unpacked, gives the bits of the same B packed") {
  // With A read unpacked, an f32 B stored across k is read in place by the same kernels (all but
  // a right-edge sliver, packed on its own); Packing::always packs it: each output takes the same
  // products in the same order either way. A stored either way, B's rows padded (ldb past its
  // row) and starting off a vector boundary, whole slivers only (n 64) and with an edge (37, 300),
  // two K blocks (k 600), beta 0 and not, 1 and 2 threads; a transposed B (packed either way).
  PackingScope restore;
  Generator gen(59);
  for (Isa isa : runnable_isas("gemm kernel family")) {
    IsaScope scope(isa);
    for (int threads : {1, 2}) {
      testing::ThreadCount thread_count(threads);
      for (bool ta : {false, true})
        for (bool tb : {false, true})
          for (int64_t m : {12, 23, 250})
            for (int64_t n : {37, 64, 300})
              for (int64_t k : {40, 600}) {
                const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 5;
                Tensor a = randn({ta ? k : m, lda}, gen), b = randn({(tb ? n : k) + 1, ldb}, gen);
                const float* bp = b.data<float>() + 1;  // off a vector boundary
                Tensor c0 = randn({m, n}, gen);
                for (float beta : {0.0f, 1.3f}) {
                  INFO("isa " << cpu::isa_name(isa) << " threads " << threads << " ta " << ta
                              << " tb " << tb << " m " << m << " n " << n << " k " << k << " beta "
                              << beta);
                  Tensor got = c0.clone(), packed = c0.clone();
                  cpu::set_gemm_b_packing(cpu::Packing::automatic);
                  cpu::gemm_packed(ta, tb, m, n, k, 0.7f, a.data<float>(), lda, bp, ldb, beta,
                                   got.data<float>(), n);
                  cpu::set_gemm_b_packing(cpu::Packing::always);
                  cpu::gemm_packed(ta, tb, m, n, k, 0.7f, a.data<float>(), lda, bp, ldb, beta,
                                   packed.data<float>(), n);
                  CHECK(testing::bitwise_equal(got, packed));
                }
              }
    }
  }
}

TEST_CASE("a causal product skips the masked part and gives the full product's bits") {
  // Attention's products of one head (cpu::Causal): op(A) zero above its diagonal (a_lower: P V,
  // dS K) or below it (a_upper: P^T dO, dS^T Q), stored either way, each tile summing only the
  // depths its rows see; and C wanted on and below its diagonal (c_lower: Q K^T), tiles wholly
  // above it set to 0. Against the full product of the same operands, bit for bit: T from one
  // row past a tile to two K blocks (300), rows lda apart as in qkv (3C), A read in place and
  // packed (Packing::always), 1 and 2 threads (tiles split between them).
  PackingScope restore;
  Generator gen(61);
  for (Isa isa : runnable_isas("gemm kernel family")) {
    IsaScope scope(isa);
    for (cpu::Packing packing : {cpu::Packing::automatic, cpu::Packing::always}) {
      cpu::set_gemm_a_packing(packing);
      for (int threads : {1, 2}) {
        testing::ThreadCount thread_count(threads);
        for (int64_t T : {13, 64, 100, 300})
          for (int64_t hs : {32, 20}) {
            INFO("isa " << cpu::isa_name(isa) << " packed A " << (packing == cpu::Packing::always)
                        << " threads " << threads << " T " << T << " hs " << hs);
            const int64_t ld = 3 * hs + 7;  // B and Q/K/V rows padded, as heads inside qkv
            Tensor Bm = randn({T, ld}, gen), c0 = randn({T, T}, gen), c1 = randn({T, hs}, gen);
            for (cpu::Causal causal : {cpu::Causal::a_lower, cpu::Causal::a_upper})
              for (bool ta : {false, true}) {
                INFO("a_lower " << (causal == cpu::Causal::a_lower) << " ta " << ta);
                // op(A) (T x T), zero on the masked side; stored as A or as A^T.
                Tensor M = randn({T, T}, gen);
                float* pm = M.data<float>();
                for (int64_t i = 0; i < T; ++i)
                  for (int64_t p = 0; p < T; ++p)
                    if (causal == cpu::Causal::a_lower ? p > i : p < i) pm[i * T + p] = 0.0f;
                Tensor A = ta ? M.transpose(0, 1).contiguous() : M;
                for (float beta : {0.0f, 0.5f}) {
                  Tensor got = c1.clone(), full = c1.clone();
                  cpu::gemm_causal(causal, ta, false, T, hs, T, 0.7f, A.data<float>(), T,
                                   Bm.data<float>(), ld, beta, got.data<float>(), hs);
                  cpu::gemm_packed(ta, false, T, hs, T, 0.7f, A.data<float>(), T, Bm.data<float>(),
                                   ld, beta, full.data<float>(), hs);
                  CHECK(testing::bitwise_equal(got, full));
                }
              }
            // c_lower: S = Q K^T with Q, K rows of Bm; on and below the diagonal the full
            // product's bits, above it 0 or the product.
            Tensor got = c0.clone(), full = c0.clone();
            const float* q = Bm.data<float>();
            cpu::gemm_causal(cpu::Causal::c_lower, false, true, T, T, hs, 0.7f, q, ld, q + hs, ld,
                             0.0f, got.data<float>(), T);
            cpu::gemm_packed(false, true, T, T, hs, 0.7f, q, ld, q + hs, ld, 0.0f,
                             full.data<float>(), T);
            const float *pg = got.data<float>(), *pf = full.data<float>();
            int64_t wrong = 0, zeroed = 0;
            for (int64_t i = 0; i < T; ++i)
              for (int64_t j = 0; j < T; ++j) {
                const float g = pg[i * T + j], f = pf[i * T + j];
                const bool same = std::memcmp(&g, &f, sizeof g) == 0;
                if (j <= i ? !same : !(same || g == 0.0f)) ++wrong;
                if (j > i && g == 0.0f && f != 0.0f) ++zeroed;
              }
            CHECK(wrong == 0);
            if (T >= 64) CHECK(zeroed > 0);  // some tile above the diagonal was skipped
          }
      }
    }
  }
  CHECK_THROWS_WITH(cpu::gemm_causal(cpu::Causal::c_lower, false, true, 2, 2, 2, 1.0f, nullptr, 2,
                                     nullptr, 2, 1.0f, nullptr, 2),
                    Catch::Matchers::Contains("beta"));
}

TEST_CASE("a bottom edge sliver (its own kernel for its rows) gives the rows of a full tile") {
  // m = MR + r rows: the second sliver has r rows, which the family's edge kernel computes on
  // their own; they must be the bits of the same rows inside a product of 2 MR rows (two full
  // slivers), for whole and right-edge columns (n: two NR-wide slivers and 5 more), across K
  // blocks (k 600), for beta 0 and not, with op(A) stored either way.
  Generator gen(47);
  for (Isa isa : runnable_isas("gemm kernel family")) {
    IsaScope scope(isa);
    const cpu::GemmKernelInfo* K = isa == Isa::avx512 ? cpu::gemm_kernel_avx512()
                                   : isa == Isa::avx2 ? cpu::gemm_kernel_avx2()
                                                      : nullptr;
    const int64_t MR = K ? K->mr : 4, n = 2 * (K ? K->nr : 8) + 5, k = 600;  // portable: 4 x 8
    for (bool ta : {false, true}) {
      Tensor a = ta ? randn({k, 2 * MR}, gen) : randn({2 * MR, k}, gen);
      Tensor b = randn({k, n}, gen), c0 = randn({2 * MR, n}, gen);
      const int64_t lda = ta ? 2 * MR : k;
      for (float beta : {0.0f, 0.5f}) {
        Tensor full = c0.clone();
        cpu::gemm_packed(ta, false, 2 * MR, n, k, 1.0f, a.data<float>(), lda, b.data<float>(), n,
                         beta, full.data<float>(), n);
        for (int64_t r = 1; r < MR; ++r) {
          INFO("isa " << cpu::isa_name(isa) << " ta " << ta << " beta " << beta << " rows " << r);
          Tensor got = c0.narrow(0, 0, MR + r).clone();
          cpu::gemm_packed(ta, false, MR + r, n, k, 1.0f, a.data<float>(), lda, b.data<float>(), n,
                           beta, got.data<float>(), n);
          CHECK(testing::bitwise_equal(got, full.narrow(0, 0, MR + r).contiguous()));
        }
      }
    }
  }
}
