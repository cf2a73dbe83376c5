// The native bf16 products (AVX512_BF16, vdpbf16ps) bit for bit against a scalar emulation of
// the instruction as Intel's SDM defines it, run through the driver's blocking; and the widening
// path as the fallback. On a processor without AVX512_BF16 the bitwise tests print SKIPPED.
#include <bit>
#include <cmath>
#include <cstring>
#include <sstream>

#include "tensor/cpu/cpu_features.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/gemm_kernels.h"
#include "tensor/dtype.h"
#include "tensor/parallel.h"
#include "tensor/random.h"
#include "testing.h"

using namespace forge;

namespace {

// ---------------------------------------------------------------------------------------------
// VDPBF16PS, one lane, from the SDM's Operation section:
//
//   srcdest.fp32[i] += make_fp32(src1.bf16[2i+1]) * make_fp32(src2.bf16[2i+1])
//   srcdest.fp32[i] += make_fp32(src1.bf16[2i+0]) * make_fp32(src2.bf16[2i+0])
//
// each an FP32 FMA "with daz in, ftz out and RNE rounding", MXCSR neither consulted nor updated;
// a NaN result takes the first NaN of: src1 low, src2 low, src1 high, src2 high, srcdest (SDM
// Table 5-1), quieted; an invalid operation with no NaN input gives the default NaN.

float bits_f32(uint32_t u) {
  return std::bit_cast<float>(u);
}
float make_fp32(uint16_t x) {
  return bits_f32(uint32_t(x) << 16);
}
// Denormals as zero (of their sign), for inputs and for results alike.
float flush(float x) {
  return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.0f, x) : x;
}
// One FP32 FMA of the instruction: a * b + c rounded once to nearest even (std::fma runs under
// the default MXCSR: round to nearest, no DAZ/FTZ), inputs and result flushed.
float fma_daz_ftz(float a, float b, float c) {
  return flush(std::fma(flush(a), flush(b), flush(c)));
}

float dpbf16_lane(float acc, uint32_t src1, uint32_t src2) {
  const uint16_t a_lo = uint16_t(src1), a_hi = uint16_t(src1 >> 16);
  const uint16_t b_lo = uint16_t(src2), b_hi = uint16_t(src2 >> 16);
  for (float x : {make_fp32(a_lo), make_fp32(b_lo), make_fp32(a_hi), make_fp32(b_hi), acc})
    if (std::isnan(x)) return bits_f32(f32_bits(x) | 0x00400000u);  // quieted
  const float t = fma_daz_ftz(make_fp32(a_hi), make_fp32(b_hi), acc);
  const float r = fma_daz_ftz(make_fp32(a_lo), make_fp32(b_lo), t);
  return std::isnan(r) ? bits_f32(0xFFC00000u) : r;  // invalid (inf * 0, inf - inf)
}

// The whole product as the packed driver runs it with the native kernel: K blocks of
// gemm_k_block(k) elements, each summed in pairs (element 2q low, 2q + 1 high, a missing last
// element +0) from an accumulator of +0, then combined into C as every packed kernel combines:
// alpha * acc on the first block with beta 0, else fma(alpha, acc, beta' * C) with beta' = beta on
// the first block and 1 after.
void emulate(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* A,
             int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const int64_t KC = cpu::gemm_k_block(std::max<int64_t>(k, 1));
  auto a_at = [&](int64_t i, int64_t p) -> uint16_t {
    return p < 0 ? 0 : ta ? A[p * lda + i] : A[i * lda + p];
  };
  auto b_at = [&](int64_t p, int64_t j) -> uint16_t {
    return p < 0 ? 0 : tb ? B[j * ldb + p] : B[p * ldb + j];
  };
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float& c = C[i * ldc + j];
      for (int64_t pc = 0; pc < k; pc += KC) {
        const int64_t end = std::min(k, pc + KC);
        float acc = 0.0f;
        for (int64_t p = pc; p < end; p += 2) {
          const int64_t p1 = p + 1 < end ? p + 1 : -1;  // -1: the padding's +0
          // The kernel passes B's pair as the instruction's first source, A's as its second.
          const uint32_t a2 = uint32_t(a_at(i, p)) | uint32_t(a_at(i, p1)) << 16;
          const uint32_t b2 = uint32_t(b_at(p, j)) | uint32_t(b_at(p1, j)) << 16;
          acc = dpbf16_lane(acc, b2, a2);
        }
        const float beta_eff = pc == 0 ? beta : 1.0f;
        c = beta_eff == 0.0f ? alpha * acc : std::fma(alpha, acc, beta_eff * c);
      }
      if (k == 0) c = beta == 0.0f ? 0.0f : beta * c;
    }
}

// bf16 patterns: mostly N(0, 1) rounded, with `special` of them drawn from the awkward values.
std::vector<uint16_t> values(int64_t count, uint64_t seed, double special) {
  static const uint16_t kSpecial[] = {
      0x0000, 0x8000,          // +0, -0
      0x0001, 0x807F, 0x0040,  // denormals (read as zero)
      0x0080, 0x8080,          // the smallest normals: products of two underflow, flushed
      0x1F80, 0x2000,          // 2^-64, 2^-63: products near the smallest normal f32
      0x7F7F, 0xFF7F,          // the largest finite: products overflow to infinity
      0x7F80, 0xFF80,          // +inf, -inf
      0x7FC0, 0xFFC1, 0x7F81,  // quiet NaNs, a signalling NaN
      0x3F80, 0xBF80, 0x3F81,  // 1, -1, 1 + 2^-7
  };
  std::vector<uint16_t> v(static_cast<size_t>(count));
  Generator gen(seed);
  Tensor r = randn({count}, gen), u = rand({count}, gen);
  for (int64_t i = 0; i < count; ++i)
    v[size_t(i)] = u.data<float>()[i] < special ? kSpecial[size_t(i * 7919) % std::size(kSpecial)]
                                                : f32_to_bf16_bits(r.data<float>()[i]);
  return v;
}

bool same_bits(float a, float b) {
  return f32_bits(a) == f32_bits(b);
}

// One product through gemm_mixed against the emulation; C's padding columns stay untouched.
void check_bitwise(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, float beta,
                   double special) {
  const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 5, ldc = n + 2;
  const uint64_t seed = uint64_t(m * 131 + n * 17 + k * 3 + ta * 2 + tb);
  const auto A = values((ta ? k : m) * lda, seed, special);
  const auto B = values((tb ? n : k) * ldb, seed + 1, special);
  std::vector<float> C(size_t(m * ldc));
  {
    Generator gen(seed + 2);
    Tensor c0 = randn({m * ldc}, gen);
    std::memcpy(C.data(), c0.data<float>(), C.size() * sizeof(float));
  }
  std::vector<float> want = C;
  cpu::gemm_mixed(ta, tb, m, n, k, alpha, A.data(), cpu::GemmElem::bf16, lda, B.data(),
                  cpu::GemmElem::bf16, ldb, beta, C.data(), ldc);
  emulate(ta, tb, m, n, k, alpha, A.data(), lda, B.data(), ldb, beta, want.data(), ldc);
  int64_t differ = 0, first = -1;
  for (int64_t e = 0; e < m * ldc; ++e)
    if (!same_bits(C[size_t(e)], want[size_t(e)])) {
      if (first < 0) first = e;
      ++differ;
    }
  INFO("ta " << ta << " tb " << tb << " m " << m << " n " << n << " k " << k << " alpha " << alpha
             << " beta " << beta << " special " << special);
  // (An INFO inside the `if` would end with it, before the CHECK could report it.)
  std::ostringstream where;
  if (first >= 0)
    where << "first difference at row " << first / ldc << " col " << first % ldc << ": kernel "
          << std::hex << f32_bits(C[size_t(first)]) << " emulated "
          << f32_bits(want[size_t(first)]);
  INFO(where.str());
  CHECK(differ == 0);
}

bool native_or_skip() {
  if (cpu::bf16_native_supported()) return true;
  std::printf(
      "SKIPPED: native bf16 products: this processor lacks AVX512_BF16 (or AVX-512); "
      "bf16 x bf16 products widen to f32 here\n");
  return false;
}

// The native kernel in use for a scope (the avx512 family, bf16 native).
struct NativeScope {
  testing::IsaScope isa{cpu::Isa::avx512};
  cpu::Bf16Gemm saved = cpu::bf16_gemm();
  NativeScope() { cpu::set_bf16_gemm(cpu::Bf16Gemm::native); }
  ~NativeScope() { cpu::set_bf16_gemm(saved); }
};

}  // namespace

TEST_CASE("the emulated instruction: pair order, rounding, denormals and NaN priority") {
  // The high pair goes first. acc 1, hi 2^24 * 1, lo 1 * 1: high first, 1 + 2^24 rounds to 2^24
  // (a tie, to even) and so does 2^24 + 1; low first would give 1 + 1 = 2, then 2^24 + 2 (exact).
  const uint16_t one = 0x3F80, two24 = 0x4B80;
  CHECK(dpbf16_lane(1.0f, uint32_t(one) | uint32_t(two24) << 16,
                    uint32_t(one) | uint32_t(one) << 16) == 16777216.0f);
  // Denormal inputs are zero; denormal results are flushed (2^-64 * 2^-64 = 2^-128).
  CHECK(dpbf16_lane(0.0f, 0x0001, 0x3F80) == 0.0f);
  CHECK(dpbf16_lane(0.0f, 0x1F80, 0x1F80) == 0.0f);
  CHECK(dpbf16_lane(bits_f32(0x00000001), 0, 0) == 0.0f);
  // NaN priority: src1 low, src2 low, src1 high, src2 high, srcdest.
  const float nan_acc = bits_f32(0x7FC00001u);
  CHECK(f32_bits(dpbf16_lane(nan_acc, 0x7FC1FFC2u, 0xFFC33F80u)) == 0xFFC20000u);
  CHECK(f32_bits(dpbf16_lane(nan_acc, 0x7FC13F80u, 0xFFC37FC4u)) == 0x7FC40000u);
  CHECK(f32_bits(dpbf16_lane(nan_acc, 0x7FC53F80u, 0xFFC33F80u)) == 0x7FC50000u);
  CHECK(f32_bits(dpbf16_lane(nan_acc, 0x3F803F80u, 0xFFC33F80u)) == 0xFFC30000u);
  CHECK(f32_bits(dpbf16_lane(nan_acc, 0x3F803F80u, 0x3F803F80u)) == 0x7FC00001u);
  CHECK(f32_bits(dpbf16_lane(0.0f, 0x3F807F81u, 0x3F803F80u)) == 0x7FC10000u);  // quieted
  // inf * 0: the default NaN.
  CHECK(f32_bits(dpbf16_lane(0.0f, 0x00007F80u, 0x00000000u)) == 0xFFC00000u);
}

TEST_CASE("native bf16 products equal the emulated instruction bit for bit") {
  if (!native_or_skip()) return;
  NativeScope scope;
  CHECK(std::string(cpu::gemm_bf16_kernel_name()) == "avx512_bf16 12x32");
  for (int threads : {1, 2}) {
    testing::ThreadCount t(threads);
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{{1, 1, 1},
                                                                  {1, 1, 2},
                                                                  {3, 5, 7},
                                                                  {12, 32, 64},
                                                                  {13, 33, 65},
                                                                  {11, 31, 255},
                                                                  {25, 64, 257},
                                                                  {24, 96, 513},
                                                                  {2, 100, 3},
                                                                  {37, 45, 700}})
          check_bitwise(ta, tb, m, n, k, 1.0f, 0.0f, 0.0);
  }
}

TEST_CASE("native bf16 products: alpha, beta, across K blocks, and every special value") {
  if (!native_or_skip()) return;
  NativeScope scope;
  check_bitwise(false, false, 37, 45, 700, 0.5f, 1.0f, 0.0);
  check_bitwise(true, false, 37, 45, 300, -2.0f, 0.25f, 0.0);
  check_bitwise(false, true, 9, 100, 3, 1.0f, 1.0f, 0.0);
  check_bitwise(false, false, 1, 1, 0, 1.0f, 0.5f, 0.0);  // k 0: C scaled by beta
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_bitwise(ta, tb, 13, 35, 41, 1.0f, 0.0f, 0.3);  // NaN, inf, denormals, overflow
      check_bitwise(ta, tb, 26, 64, 300, 1.0f, 1.0f, 0.05);
    }
}

TEST_CASE("bf16 products: native and widened agree to f32 rounding; widen is the fallback") {
  const int64_t m = 40, n = 70, k = 300;
  const auto A = values(m * k, 5, 0.0), B = values(n * k, 6, 0.0);
  auto product = [&](cpu::Bf16Gemm mode) {
    const cpu::Bf16Gemm saved = cpu::bf16_gemm();
    cpu::set_bf16_gemm(mode);
    std::vector<float> C(size_t(m * n));
    cpu::gemm_mixed(false, true, m, n, k, 1.0f, A.data(), cpu::GemmElem::bf16, k, B.data(),
                    cpu::GemmElem::bf16, k, 0.0f, C.data(), n);
    cpu::set_bf16_gemm(saved);
    return C;
  };
  {
    const cpu::Bf16Gemm saved = cpu::bf16_gemm();
    cpu::set_bf16_gemm(cpu::Bf16Gemm::widen);
    CHECK(std::string(cpu::gemm_bf16_kernel_name()) == cpu::gemm_kernel_name());
    cpu::set_bf16_gemm(saved);
  }
  const std::vector<float> widened = product(cpu::Bf16Gemm::widen),
                           native = product(cpu::Bf16Gemm::native);
  // Both sum the same exact products (a bf16 product fits an f32) in f32, in different orders:
  // each within about sqrt(k) roundings of the f64 sum.
  double worst = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double want = 0, scale = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double t = double(bf16_bits_to_f32(A[size_t(i * k + p)])) *
                         double(bf16_bits_to_f32(B[size_t(j * k + p)]));
        want += t;
        scale += std::abs(t);
      }
      const double tol = 6e-8 * std::sqrt(double(k)) * scale + 1e-30;
      worst = testing::nan_max(worst, std::abs(native[size_t(i * n + j)] - want) / tol);
      worst = testing::nan_max(worst, std::abs(widened[size_t(i * n + j)] - want) / tol);
    }
  CHECK(worst <= 1.0);
  if (!cpu::bf16_native_supported()) native_or_skip();
}
