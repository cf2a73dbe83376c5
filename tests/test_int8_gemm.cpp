// The int8 kernels (quant/int8_gemm.h): every family's s32 sums equal the exact reference for
// every u8 x s8 input, the fused f32 epilogue rounds the same way in every family, results do not
// depend on the thread count, and quantize_u8 / min_max match their scalar definitions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "quant/int8_gemm.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;
using forge::testing::ThreadCount;

namespace {

constexpr Int8Kernel kAllKernels[] = {Int8Kernel::portable, Int8Kernel::avx2, Int8Kernel::avx_vnni,
                                      Int8Kernel::avx512_vnni};

const char* missing_feature(Int8Kernel k) {
  switch (k) {
    case Int8Kernel::avx2:
      return "AVX2 and FMA";
    case Int8Kernel::avx_vnni:
      return "AVX-VNNI";
    case Int8Kernel::avx512_vnni:
      return "AVX512-VNNI (with AVX512F/BW/VL/DQ)";
    default:
      return "?";
  }
}

// The families this processor runs; a visible warning names each one skipped and why.
std::vector<Int8Kernel> runnable_kernels() {
  std::vector<Int8Kernel> out;
  for (Int8Kernel k : kAllKernels) {
    if (int8_kernel_supported(k))
      out.push_back(k);
    else
      WARN("SKIPPED " << int8_kernel_name(k) << ": this processor lacks " << missing_feature(k));
  }
  return out;
}

// Forces a family for a scope (quantize_u8 and min_max follow the global choice).
class Int8KernelScope {
 public:
  explicit Int8KernelScope(Int8Kernel k) : saved_(int8_kernel()) { set_int8_kernel(k); }
  ~Int8KernelScope() { set_int8_kernel(saved_); }
  Int8KernelScope(const Int8KernelScope&) = delete;
  Int8KernelScope& operator=(const Int8KernelScope&) = delete;

 private:
  Int8Kernel saved_;
};

// How the test data is drawn.
enum class Data {
  full_range,         // a uniform in [0, 255], w in [-128, 127]
  seven_bit,          // a in [0, 127], w in [-127, 127]: the quantizer's usual output
  seven_bit_one_255,  // seven_bit with one activation 255 in the last row (exact path, one trigger)
  all_255_min,        // a = 255, w = -128 everywhere: the most negative sums, every pair saturates
  all_255_max,        // a = 255, w = 127 everywhere: the most positive sums
  all_127_min,        // a = 127, w = -128 everywhere: the fast path's extreme pair sums (-32512)
  alternating,        // a in {0, 255}, w in {-128, 127}, mixed
};
const char* data_name(Data d) {
  switch (d) {
    case Data::full_range:
      return "full range";
    case Data::seven_bit:
      return "7-bit";
    case Data::seven_bit_one_255:
      return "7-bit with one 255";
    case Data::all_255_min:
      return "all 255 x all -128";
    case Data::all_255_max:
      return "all 255 x all 127";
    case Data::all_127_min:
      return "all 127 x all -128";
    case Data::alternating:
      return "alternating extremes";
  }
  return "?";
}
constexpr Data kAllData[] = {Data::full_range,  Data::seven_bit,   Data::seven_bit_one_255,
                             Data::all_255_min, Data::all_255_max, Data::all_127_min,
                             Data::alternating};

struct Operands {
  int64_t m, n, k, lda;
  std::vector<uint8_t> a;  // (m, lda), columns past k hold junk the kernels must not read as data
  std::vector<int8_t> w;   // (n, k)
};

Operands make_operands(int64_t m, int64_t n, int64_t k, Data d, uint32_t seed) {
  std::mt19937 rng(seed);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Operands o{m, n, k, k + 3, {}, {}};
  o.a.resize(size_t(m * o.lda));
  o.w.resize(size_t(n * k));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < o.lda; ++p) {
      int v = 0;
      switch (d) {
        case Data::full_range:
          v = uni(0, 255);
          break;
        case Data::seven_bit:
        case Data::seven_bit_one_255:
          v = uni(0, 127);
          break;
        case Data::all_255_min:
        case Data::all_255_max:
          v = 255;
          break;
        case Data::all_127_min:
          v = 127;
          break;
        case Data::alternating:
          v = uni(0, 1) ? 255 : 0;
          break;
      }
      o.a[size_t(i * o.lda + p)] = uint8_t(p < k ? v : 200);  // 200: junk past k
    }
  if (d == Data::seven_bit_one_255) o.a[size_t((m - 1) * o.lda + uni(0, int(k - 1)))] = 255;
  for (auto& x : o.w) {
    int v = 0;
    switch (d) {
      case Data::full_range:
        v = uni(-128, 127);
        break;
      case Data::seven_bit:
      case Data::seven_bit_one_255:
        v = uni(-127, 127);
        break;
      case Data::all_255_min:
      case Data::all_127_min:
        v = -128;
        break;
      case Data::all_255_max:
        v = 127;
        break;
      case Data::alternating:
        v = uni(0, 1) ? 127 : -128;
        break;
    }
    x = int8_t(v);
  }
  return o;
}

// The epilogue's documented rounding: float(centred) * (a_scale * w_scale), then + bias, two
// roundings (GCC would fuse them into an FMA on this target without the pragma).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
[[gnu::noinline]] float documented_epilogue(int64_t centred, float a_scale, float w_scale,
                                            const float* bias) {
  const float scale = a_scale * w_scale;
  float y = float(int32_t(centred)) * scale;
  if (bias) y = y + *bias;
  return y;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

struct Shape3 {
  int64_t m, n, k;
};

// Edge cases (1, 7, 33, K not a multiple of 4, more rows than one A block) and random shapes.
std::vector<Shape3> test_shapes() {
  std::vector<Shape3> s = {{1, 1, 1},     {1, 33, 3},    {7, 1, 257},  {7, 33, 1024},
                           {1, 1024, 64}, {1, 48, 1024}, {2, 40, 5},   {3, 16, 4},
                           {4, 17, 8},    {5, 31, 7},    {6, 64, 2},   {8, 32, 33},
                           {9, 100, 31},  {13, 70, 257}, {64, 48, 64}, {130, 20, 1024}};
  std::mt19937 rng(7);
  for (int t = 0; t < 12; ++t)
    s.push_back({std::uniform_int_distribution<int64_t>(1, 20)(rng),
                 std::uniform_int_distribution<int64_t>(1, 80)(rng),
                 std::uniform_int_distribution<int64_t>(1, 300)(rng)});
  return s;
}

// Number of elements of acc (m, ldc) that differ from ref in the first n columns, plus every
// padding column that is no longer `pad`.
int64_t count_mismatches(const std::vector<int32_t>& acc, const std::vector<int32_t>& ref,
                         int64_t m, int64_t n, int64_t ldc, int32_t pad) {
  int64_t bad = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < ldc; ++j) {
      const int32_t got = acc[size_t(i * ldc + j)];
      if (j < n ? got != ref[size_t(i * ldc + j)] : got != pad) ++bad;
    }
  return bad;
}

}  // namespace

TEST_CASE("int8_gemm equals the exact reference for every kernel, shape and input range") {
  const std::vector<Int8Kernel> kernels = runnable_kernels();
  REQUIRE(!kernels.empty());
  int64_t compared = 0;
  uint32_t seed = 1;
  for (const Shape3& s : test_shapes())
    for (Data d : kAllData) {
      const Operands o = make_operands(s.m, s.n, s.k, d, seed++);
      const int64_t ldc = s.n + 5;
      const int32_t pad = -7;
      std::vector<int32_t> ref(size_t(s.m * ldc), pad);
      int8_gemm_reference(o.a.data(), s.m, s.k, o.lda, o.w.data(), s.n, ref.data(), ldc);
      const PackedInt8Weight pw = pack_int8_weight(o.w.data(), s.n, s.k);
      for (Int8Kernel k : kernels) {
        std::vector<int32_t> acc(size_t(s.m * ldc), pad);
        int8_gemm(o.a.data(), s.m, o.lda, pw, acc.data(), ldc, k);
        INFO(int8_kernel_name(k) << " M=" << s.m << " N=" << s.n << " K=" << s.k << " data "
                                 << data_name(d));
        REQUIRE(count_mismatches(acc, ref, s.m, s.n, ldc, pad) == 0);
        compared += s.m * s.n;
      }
    }
  CHECK(compared > 0);
}

TEST_CASE("the reference gives the known extreme sums") {
  // K = 1024 products of 255 x -128 and of 255 x 127: what saturating s16 pair sums would break.
  const int64_t k = 1024;
  std::vector<uint8_t> a(k, 255);
  std::vector<int8_t> lo(k, -128), hi(k, 127);
  int32_t acc = 0;
  int8_gemm_reference(a.data(), 1, k, k, lo.data(), 1, &acc, 1);
  CHECK(acc == -255 * 128 * 1024);
  int8_gemm_reference(a.data(), 1, k, k, hi.data(), 1, &acc, 1);
  CHECK(acc == 255 * 127 * 1024);
  const PackedInt8Weight pw = pack_int8_weight(lo.data(), 1, k);
  CHECK(pw.row_sums[0] == -128 * 1024);
}

TEST_CASE("int8_linear_f32 is bitwise equal across kernels to the documented rounding") {
  const std::vector<Int8Kernel> kernels = runnable_kernels();
  const Shape3 shapes[] = {{1, 1, 1}, {1, 33, 3}, {7, 17, 257}, {16, 64, 1024}, {5, 40, 30}};
  uint32_t seed = 100;
  for (const Shape3& s : shapes)
    for (Data d : {Data::full_range, Data::seven_bit})
      for (int32_t a_zero : {0, 3, 128, 255})
        for (bool with_bias : {false, true}) {
          const Operands o = make_operands(s.m, s.n, s.k, d, seed++);
          std::mt19937 rng(seed);
          std::uniform_real_distribution<float> pos(1e-3f, 2e-2f), sym(-1.0f, 1.0f);
          const float a_scale = pos(rng);
          std::vector<float> w_scale(size_t(s.n)), bias(size_t(s.n));
          for (auto& x : w_scale) x = pos(rng);
          for (auto& x : bias) x = sym(rng);
          const float* b = with_bias ? bias.data() : nullptr;
          const PackedInt8Weight pw = pack_int8_weight(o.w.data(), s.n, s.k);

          // The documented rounding, on the exact sums: float(acc - z rs) * (sa * sw), then + b.
          std::vector<int32_t> acc(size_t(s.m * s.n));
          int8_gemm_reference(o.a.data(), s.m, s.k, o.lda, o.w.data(), s.n, acc.data(), s.n);
          std::vector<float> expected(size_t(s.m * s.n));
          std::vector<double> exact(size_t(s.m * s.n)), magnitude(size_t(s.m * s.n));
          for (int64_t i = 0; i < s.m; ++i)
            for (int64_t j = 0; j < s.n; ++j) {
              const size_t ij = size_t(i * s.n + j);
              const int64_t centred = int64_t(acc[ij]) - int64_t(a_zero) * pw.row_sums[size_t(j)];
              expected[ij] =
                  documented_epilogue(centred, a_scale, w_scale[size_t(j)], b ? b + j : nullptr);
              const double prod = double(centred) * double(a_scale) * double(w_scale[size_t(j)]);
              exact[ij] = prod + (b ? double(b[j]) : 0.0);
              magnitude[ij] = std::abs(prod) + (b ? std::abs(double(b[j])) : 0.0);
            }
          for (Int8Kernel k : kernels) {
            INFO(int8_kernel_name(k)
                 << " M=" << s.m << " N=" << s.n << " K=" << s.k << " data " << data_name(d)
                 << " a_zero=" << a_zero << " bias=" << with_bias);
            const int64_t ldy = s.n + 2;
            std::vector<float> y(size_t(s.m * ldy), -1.5f);
            int8_linear_f32(o.a.data(), s.m, o.lda, a_scale, a_zero, pw, w_scale.data(), b,
                            y.data(), ldy, k);
            int64_t not_bitwise = 0, far = 0, pad_touched = 0;
            for (int64_t i = 0; i < s.m; ++i) {
              for (int64_t j = 0; j < s.n; ++j) {
                const size_t ij = size_t(i * s.n + j);
                const float got = y[size_t(i * ldy + j)];
                if (std::memcmp(&got, &expected[ij], sizeof(float)) != 0) ++not_bitwise;
                if (!(std::abs(double(got) - exact[ij]) <= 1e-6 * magnitude[ij] + 1e-30)) ++far;
              }
              for (int64_t j = s.n; j < ldy; ++j) pad_touched += y[size_t(i * ldy + j)] != -1.5f;
            }
            CHECK(not_bitwise == 0);
            CHECK(far == 0);
            CHECK(pad_touched == 0);
          }
        }
}

TEST_CASE("int8 results do not depend on the thread count") {
  for (Int8Kernel k : runnable_kernels())
    for (Shape3 s : {Shape3{64, 256, 1024}, Shape3{1, 1024, 1024}, Shape3{300, 48, 512}}) {
      INFO(int8_kernel_name(k) << " M=" << s.m << " N=" << s.n << " K=" << s.k);
      const Operands o = make_operands(s.m, s.n, s.k, Data::full_range, 11);
      const PackedInt8Weight pw = pack_int8_weight(o.w.data(), s.n, s.k);
      std::vector<float> w_scale(size_t(s.n), 0.01f), bias(size_t(s.n), 0.5f);
      std::vector<int32_t> acc1(size_t(s.m * s.n)), acc2(acc1.size()), ref(acc1.size());
      std::vector<float> y1(size_t(s.m * s.n)), y2(y1.size());
      {
        ThreadCount t(1);
        int8_gemm(o.a.data(), s.m, o.lda, pw, acc1.data(), s.n, k);
        int8_linear_f32(o.a.data(), s.m, o.lda, 0.02f, 128, pw, w_scale.data(), bias.data(),
                        y1.data(), s.n, k);
      }
      {
        ThreadCount t(2);
        int8_gemm(o.a.data(), s.m, o.lda, pw, acc2.data(), s.n, k);
        int8_linear_f32(o.a.data(), s.m, o.lda, 0.02f, 128, pw, w_scale.data(), bias.data(),
                        y2.data(), s.n, k);
      }
      int8_gemm_reference(o.a.data(), s.m, s.k, o.lda, o.w.data(), s.n, ref.data(), s.n);
      CHECK(acc1 == ref);
      CHECK(acc2 == ref);
      CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)) == 0);
    }
}

TEST_CASE("quantize_u8 rounds half to even and clamps like the scalar formula") {
  struct Setting {
    float inv_scale;
    int32_t zero, qmin, qmax;
  };
  const Setting settings[] = {{0.5f, 128, 0, 255},
                              {1.0f, 0, 0, 127},
                              {10.0f, 64, 0, 127},
                              {0.25f, 3, 10, 200},
                              {7.0f, 300, 0, 255}};
  // Ties: with inv_scale 0.5 the odd integers, with 1 and 0.25 the halves, land exactly on .5.
  std::vector<float> x;
  for (int v = -600; v <= 600; ++v) x.push_back(float(v) * 0.5f);
  for (int v = -300; v <= 300; ++v) x.push_back(float(v));
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {1e30f, -1e30f, inf, -inf, 0.0f, -0.0f, 2.5f, 3.5f, -2.5f, -3.5f, 1e-8f})
    x.push_back(v);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-300.0f, 300.0f);
  for (int t = 0; t < 1000; ++t) x.push_back(u(rng));
  const std::vector<Int8Kernel> kernels = runnable_kernels();
  for (int n : {int(x.size()), 31, 33, 1})  // also short runs: the scalar tails
    for (Int8Kernel k : kernels)
      for (const Setting& st : settings) {
        Int8KernelScope scope(k);
        INFO(int8_kernel_name(k) << " n=" << n << " inv_scale=" << st.inv_scale << " zero="
                                 << st.zero << " [" << st.qmin << ", " << st.qmax << "]");
        std::vector<uint8_t> q(size_t(n) + 1, 77);
        quantize_u8(x.data(), n, st.inv_scale, st.zero, st.qmin, st.qmax, q.data());
        int64_t bad = 0;
        for (int i = 0; i < n; ++i) {
          const float t = x[size_t(i)] * st.inv_scale;
          const double r =
              std::clamp(double(std::nearbyint(t)) + st.zero, double(st.qmin), double(st.qmax));
          if (q[size_t(i)] != uint8_t(r)) ++bad;
        }
        CHECK(bad == 0);
        CHECK(q[size_t(n)] == 77);  // nothing written past n
      }
  // The ties themselves, spelled out: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2 (+ zero 10).
  const float ties[] = {2.5f, 3.5f, -2.5f, -3.5f, 0.5f, -0.5f};
  uint8_t q[6];
  quantize_u8(ties, 6, 1.0f, 10, 0, 255, q);
  CHECK(std::vector<int>(q, q + 6) == std::vector<int>{12, 14, 8, 6, 10, 10});
}

TEST_CASE("min_max finds the extremes for every kernel and length") {
  const std::vector<Int8Kernel> kernels = runnable_kernels();
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-50.0f, 50.0f);
  for (int n : {1, 7, 16, 17, 1001}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) v = u(rng);
    x[size_t(n / 2)] = -60.0f;  // the minimum inside, the maximum in the tail
    x[size_t(n - 1)] = 70.0f;
    if (n == 1) x[0] = 3.0f;
    const auto [lo_it, hi_it] = std::minmax_element(x.begin(), x.end());
    for (Int8Kernel k : kernels) {
      Int8KernelScope scope(k);
      INFO(int8_kernel_name(k) << " n=" << n);
      float lo = 0, hi = 0;
      min_max(x.data(), n, lo, hi);
      CHECK(lo == *lo_it);
      CHECK(hi == *hi_it);
    }
  }
}

TEST_CASE("min_max skips NaNs wherever they are, in every kernel") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int n : {1, 7, 16, 17, 40}) {
    for (int at : {0, n / 2, n - 1}) {  // first, inside a vector block, last (tail)
      std::vector<float> x(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) x[size_t(i)] = float(i % 5) - 1.5f;
      x[size_t(at)] = nan;
      float want_lo = std::numeric_limits<float>::infinity(), want_hi = -want_lo;
      for (float v : x)
        if (!std::isnan(v)) want_lo = std::min(want_lo, v), want_hi = std::max(want_hi, v);
      for (Int8Kernel k : runnable_kernels()) {
        Int8KernelScope scope(k);
        INFO(int8_kernel_name(k) << " n=" << n << " NaN at " << at);
        float lo = 0, hi = 0;
        min_max(x.data(), n, lo, hi);
        CHECK(lo == want_lo);  // all NaN (n = 1): +inf and -inf
        CHECK(hi == want_hi);
      }
    }
  }
}

TEST_CASE("choosing an int8 kernel the processor lacks throws naming it") {
  int unsupported = 0;
  for (Int8Kernel k : kAllKernels) {
    if (int8_kernel_supported(k)) {
      Int8KernelScope scope(k);
      CHECK(int8_kernel() == k);
      continue;
    }
    ++unsupported;
    const Int8Kernel before = int8_kernel();
    REQUIRE_THROWS_WITH(set_int8_kernel(k), Contains(int8_kernel_name(k)));
    CHECK(int8_kernel() == before);
    std::vector<uint8_t> a(4, 1);
    std::vector<int8_t> w(4, 1);
    int32_t acc = 0;
    const PackedInt8Weight pw = pack_int8_weight(w.data(), 1, 4);
    REQUIRE_THROWS_WITH(int8_gemm(a.data(), 1, 4, pw, &acc, 1, k), Contains(int8_kernel_name(k)));
  }
  if (unsupported == 0) WARN("every int8 kernel is supported here: the throwing path is untested");
  CHECK(int8_kernel_supported(best_int8_kernel()));
  CHECK(int8_kernel_supported(Int8Kernel::portable));
}

TEST_CASE("int8 kernel names parse back, and unknown names are quoted in the error") {
  for (Int8Kernel k : kAllKernels) CHECK(parse_int8_kernel(int8_kernel_name(k)) == k);
  REQUIRE_THROWS_AS(parse_int8_kernel("avx3"), Error);
  REQUIRE_THROWS_WITH(parse_int8_kernel("avx3"), Contains("'avx3'") && Contains("avx512_vnni"));
  REQUIRE_THROWS_WITH(parse_int8_kernel(""), Contains("''"));
}
