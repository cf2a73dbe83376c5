// dtype names and sizes; bf16 and f16 conversions against bit-level known answers and, for f16,
// against the compiler's own _Float16 conversion (hardware vcvtps2ph on x86-64: an independent
// round-to-nearest-even reference).
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "tensor/cpu/cpu_features.h"
#include "tensor/dtype.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;

namespace {

constexpr DType kAllDTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16,
                                DType::i8,  DType::u8,  DType::i32,  DType::i64};

uint16_t reference_f16_bits(float f) {
  _Float16 h = static_cast<_Float16>(f);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}

float reference_f16_to_f32(uint16_t b) {
  _Float16 h;
  std::memcpy(&h, &b, 2);
  return static_cast<float>(h);
}

bool f16_is_nan(uint16_t b) {
  return (b & 0x7c00u) == 0x7c00u && (b & 0x3ffu) != 0;
}
bool bf16_is_nan(uint16_t b) {
  return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0;
}

// bf16 reference by nearest-neighbour search in double: of the two bf16 values bracketing |f|,
// the nearer one; on a tie, the one with an even last mantissa bit.
uint16_t reference_bf16_bits(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t mag = u & 0x7fffffffu;
  uint16_t lo = uint16_t(mag >> 16), hi = uint16_t(lo + 1);
  double x = double(f32_from_bits(mag));
  double vlo = double(f32_from_bits(uint32_t(lo) << 16));
  // hi may be 0x7f80 (inf): treat it as 2^128, the value it would have with an unbounded exponent.
  double vhi = hi == 0x7f80u ? std::ldexp(1.0, 128) : double(f32_from_bits(uint32_t(hi) << 16));
  double dlo = x - vlo, dhi = vhi - x;
  uint16_t pick = dlo < dhi ? lo : dhi < dlo ? hi : ((lo & 1u) ? hi : lo);
  return sign | pick;
}

}  // namespace

TEST_CASE("dtype_size gives the bytes of each dtype") {
  CHECK(dtype_size(DType::f32) == 4);
  CHECK(dtype_size(DType::f64) == 8);
  CHECK(dtype_size(DType::bf16) == 2);
  CHECK(dtype_size(DType::f16) == 2);
  CHECK(dtype_size(DType::i8) == 1);
  CHECK(dtype_size(DType::u8) == 1);
  CHECK(dtype_size(DType::i32) == 4);
  CHECK(dtype_size(DType::i64) == 8);
  static_assert(dtype_size(DType::bf16) == sizeof(bf16) && dtype_size(DType::f16) == sizeof(f16));
}

TEST_CASE("is_floating is true exactly for f32, f64, bf16, f16") {
  for (DType t : kAllDTypes) {
    bool floating = t == DType::f32 || t == DType::f64 || t == DType::bf16 || t == DType::f16;
    CHECK(is_floating(t) == floating);
    CHECK(is_integral(t) == !floating);
  }
}

TEST_CASE("parse_dtype accepts short names and long aliases") {
  struct Case {
    const char* short_name;
    const char* long_name;
    DType t;
  };
  const Case cases[] = {{"f32", "float32", DType::f32},    {"f64", "float64", DType::f64},
                        {"bf16", "bfloat16", DType::bf16}, {"f16", "float16", DType::f16},
                        {"i8", "int8", DType::i8},         {"u8", "uint8", DType::u8},
                        {"i32", "int32", DType::i32},      {"i64", "int64", DType::i64}};
  for (const Case& c : cases) {
    CHECK(parse_dtype(c.short_name) == c.t);
    CHECK(parse_dtype(c.long_name) == c.t);
    CHECK(std::string(dtype_name(c.t)) == c.short_name);
  }
  for (DType t : kAllDTypes) CHECK(parse_dtype(dtype_name(t)) == t);
  CHECK(fmt::format("{}", DType::bf16) == "bf16");
}

TEST_CASE("parse_dtype rejects unknown names, quoting the text and listing the valid ones") {
  REQUIRE_THROWS_AS(parse_dtype("float"), Error);
  REQUIRE_THROWS_WITH(parse_dtype("float"), Contains("'float'") && Contains("f32") &&
                                                Contains("bf16") && Contains("i64"));
  REQUIRE_THROWS_WITH(parse_dtype("F32"), Contains("'F32'"));
  REQUIRE_THROWS_WITH(parse_dtype(""), Contains("''"));
}

// ---------------------------------------------------------------------------------------------
// bf16

TEST_CASE("bf16 rounds to nearest with ties to even") {
  // 1 + 2^-8 lies halfway between bf16 1.0 (0x3f80) and 1 + 2^-7 (0x3f81): ties go to even 0x3f80.
  CHECK(f32_to_bf16_bits(f32_from_bits(0x3f808000u)) == 0x3f80);
  // Halfway between 0x3f81 (odd) and 0x3f82: goes up to even.
  CHECK(f32_to_bf16_bits(f32_from_bits(0x3f818000u)) == 0x3f82);
  // Just above and below a tie.
  CHECK(f32_to_bf16_bits(f32_from_bits(0x3f808001u)) == 0x3f81);
  CHECK(f32_to_bf16_bits(f32_from_bits(0x3f807fffu)) == 0x3f80);
  CHECK(f32_to_bf16_bits(-f32_from_bits(0x3f818000u)) == 0xbf82);
  // The header's example: pi rounds to 3.140625 (0x4049).
  CHECK(f32_to_bf16_bits(3.14159f) == 0x4049);
  CHECK(float(bf16(3.14159f)) == 3.140625f);
  CHECK(float(bf16(1.0f)) == 1.0f);
  CHECK(bf16(-2.0f).bits == 0xc000);
}

TEST_CASE("bf16 keeps zeros, infinities, subnormals and overflows to inf past its largest value") {
  CHECK(f32_to_bf16_bits(0.0f) == 0x0000);
  CHECK(f32_to_bf16_bits(-0.0f) == 0x8000);
  CHECK(std::signbit(bf16_bits_to_f32(0x8000)));
  CHECK(f32_to_bf16_bits(std::numeric_limits<float>::infinity()) == 0x7f80);
  CHECK(f32_to_bf16_bits(-std::numeric_limits<float>::infinity()) == 0xff80);
  // Largest finite bf16 is 0x7f7f = (2 - 2^-7) * 2^127; FLT_MAX lies above the midpoint to 2^128.
  CHECK(f32_to_bf16_bits(f32_from_bits(0x7f7f7fffu)) == 0x7f7f);
  CHECK(f32_to_bf16_bits(std::numeric_limits<float>::max()) == 0x7f80);
  CHECK(bf16_bits_to_f32(0x7f7f) == f32_from_bits(0x7f7f0000u));
  // Subnormals: bf16 0x0001 is the f32 subnormal 2^-133.
  CHECK(bf16_bits_to_f32(0x0001) == std::ldexp(1.0f, -133));
  CHECK(f32_to_bf16_bits(std::ldexp(1.0f, -133)) == 0x0001);
  CHECK(f32_to_bf16_bits(f32_from_bits(0x00008000u)) == 0x0000);  // tie between 0 and 0x0001
  CHECK(f32_to_bf16_bits(f32_from_bits(0x00018000u)) == 0x0002);  // tie, odd below: up
  CHECK(f32_to_bf16_bits(f32_from_bits(0x00008001u)) == 0x0001);
}

TEST_CASE("bf16 turns every NaN into a NaN, including ones whose payload is in the low bits") {
  // 0x7f800001 truncated to 16 bits would be 0x7f80 = inf; the conversion must keep it a NaN.
  for (uint32_t nan_bits : {0x7f800001u, 0x7f80ffffu, 0x7fc00000u, 0xffc00000u, 0xff800001u,
                            0x7fffffffu, 0xffffffffu, 0x7f810000u}) {
    float f = f32_from_bits(nan_bits);
    uint16_t h = f32_to_bf16_bits(f);
    INFO("f32 bits " << std::hex << nan_bits << " -> bf16 " << h);
    CHECK(bf16_is_nan(h));
    CHECK(std::isnan(bf16_bits_to_f32(h)));
    CHECK((h & 0x8000u) == ((nan_bits >> 16) & 0x8000u));  // sign kept
  }
}

TEST_CASE("bf16: every bit pattern converts to f32 and back to the same bits") {
  for (uint32_t b = 0; b < 65536; ++b) {
    uint16_t h = uint16_t(b);
    float f = bf16_bits_to_f32(h);
    CHECK(f32_bits(f) == uint32_t(h) << 16);  // widening is exact: the bits shifted up
    if (bf16_is_nan(h)) {
      if (!bf16_is_nan(f32_to_bf16_bits(f))) FAIL("bf16 NaN " << b << " lost its NaN-ness");
    } else if (f32_to_bf16_bits(f) != h) {
      FAIL("bf16 bits " << b << " came back as " << f32_to_bf16_bits(f));
    }
  }
}

TEST_CASE("f32_to_bf16_bits matches a nearest-neighbour reference on random and tie floats") {
  std::mt19937 rng(7);
  int checked = 0;
  auto check_one = [&](uint32_t u) {
    float f = f32_from_bits(u);
    if (std::isnan(f) || std::isinf(f)) return;
    uint16_t got = f32_to_bf16_bits(f), want = reference_bf16_bits(f);
    if (got != want) FAIL("f32 bits " << u << ": got " << got << ", want " << want);
    ++checked;
  };
  for (int i = 0; i < 200000; ++i) check_one(rng());
  // Exact ties and their neighbours, at random bf16 values.
  for (int i = 0; i < 50000; ++i) {
    uint32_t tie = (rng() & 0xffff0000u) | 0x8000u;
    check_one(tie);
    check_one(tie - 1);
    check_one(tie + 1);
  }
  CHECK(checked > 300000);
}

// ---------------------------------------------------------------------------------------------
// f16

TEST_CASE("f16 rounds to nearest with ties to even") {
  CHECK(f32_to_f16_bits(1.0f) == 0x3c00);
  CHECK(f32_to_f16_bits(-2.0f) == 0xc000);
  CHECK(f32_to_f16_bits(0.5f) == 0x3800);
  // 1 + 2^-11 is halfway between 0x3c00 and 0x3c01: even 0x3c00. 1 + 3 * 2^-11: up to 0x3c02.
  CHECK(f32_to_f16_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);
  CHECK(f32_to_f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
  CHECK(f32_to_f16_bits(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)) == 0x3c01);
  CHECK(f32_to_f16_bits(-(1.0f + 3 * std::ldexp(1.0f, -11))) == 0xbc02);
  // 2049 lies halfway between 2048 and 2050 (f16 spacing 2 there): even mantissa 2048.
  CHECK(f16_bits_to_f32(f32_to_f16_bits(2049.0f)) == 2048.0f);
  CHECK(f16_bits_to_f32(f32_to_f16_bits(2051.0f)) == 2052.0f);
  CHECK(float(f16(0.1f)) == 0.0999755859375f);  // 0x2e66
}

TEST_CASE("f16 overflows to inf at 65520 and keeps 65504 as its largest finite value") {
  CHECK(f32_to_f16_bits(65504.0f) == 0x7bff);
  CHECK(f16_bits_to_f32(0x7bff) == 65504.0f);
  CHECK(f32_to_f16_bits(65519.996f) == 0x7bff);  // just below the midpoint to 65536
  CHECK(f32_to_f16_bits(65520.0f) == 0x7c00);    // the midpoint rounds to even: inf
  CHECK(f32_to_f16_bits(-65520.0f) == 0xfc00);
  CHECK(f32_to_f16_bits(1e6f) == 0x7c00);
  CHECK(f32_to_f16_bits(std::numeric_limits<float>::max()) == 0x7c00);
  CHECK(f32_to_f16_bits(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK(f32_to_f16_bits(-std::numeric_limits<float>::infinity()) == 0xfc00);
  CHECK(std::isinf(f16_bits_to_f32(0x7c00)));
  CHECK(f16_bits_to_f32(0xfc00) == -std::numeric_limits<float>::infinity());
}

TEST_CASE("f16 rounds gradually into subnormals and keeps signed zeros") {
  const float tiny = std::ldexp(1.0f, -24);  // the smallest f16 subnormal, 0x0001
  CHECK(f32_to_f16_bits(tiny) == 0x0001);
  CHECK(f16_bits_to_f32(0x0001) == tiny);
  CHECK(f32_to_f16_bits(0.5f * tiny) == 0x0000);  // tie between 0 and 0x0001: even 0
  CHECK(f32_to_f16_bits(-0.5f * tiny) == 0x8000);
  CHECK(f32_to_f16_bits(std::nextafter(0.5f * tiny, 1.0f)) == 0x0001);
  CHECK(f32_to_f16_bits(1.5f * tiny) == 0x0002);  // tie between 1 and 2: even 2
  CHECK(f32_to_f16_bits(2.5f * tiny) == 0x0002);  // tie between 2 and 3: even 2
  CHECK(f32_to_f16_bits(1023 * tiny) == 0x03ff);  // the largest subnormal
  CHECK(f16_bits_to_f32(0x03ff) == 1023 * tiny);
  CHECK(f32_to_f16_bits(std::ldexp(1.0f, -14)) == 0x0400);  // the smallest normal
  CHECK(f32_to_f16_bits(1023.5f * tiny) == 0x0400);         // tie rounds up into the normals
  CHECK(f32_to_f16_bits(1e-10f) == 0x0000);
  CHECK(f32_to_f16_bits(0.0f) == 0x0000);
  CHECK(f32_to_f16_bits(-0.0f) == 0x8000);
  CHECK(f32_to_f16_bits(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(f32_to_f16_bits(-std::numeric_limits<float>::denorm_min()) == 0x8000);
  CHECK(std::signbit(f16_bits_to_f32(0x8000)));
  CHECK(f16_bits_to_f32(0x8000) == 0.0f);
  CHECK(f16_bits_to_f32(0x8001) == -tiny);
}

TEST_CASE("f16 turns every NaN into a NaN") {
  for (uint32_t nan_bits : {0x7f800001u, 0x7f801fffu, 0x7fc00000u, 0xffc00000u, 0xff800001u,
                            0x7fffffffu, 0xffffffffu}) {
    uint16_t h = f32_to_f16_bits(f32_from_bits(nan_bits));
    INFO("f32 bits " << std::hex << nan_bits << " -> f16 " << h);
    CHECK(f16_is_nan(h));
    CHECK((h & 0x8000u) == ((nan_bits >> 16) & 0x8000u));
  }
  CHECK(std::isnan(f16_bits_to_f32(0x7c01)));
  CHECK(std::isnan(f16_bits_to_f32(0xfe00)));
}

TEST_CASE("f16: every bit pattern converts to f32 as _Float16 does, and back to the same bits") {
  for (uint32_t b = 0; b < 65536; ++b) {
    uint16_t h = uint16_t(b);
    float f = f16_bits_to_f32(h);
    if (f16_is_nan(h)) {
      if (!std::isnan(f)) FAIL("f16 NaN " << b << " widened to " << f);
      if (!f16_is_nan(f32_to_f16_bits(f))) FAIL("f16 NaN " << b << " came back not a NaN");
      continue;
    }
    float want = reference_f16_to_f32(h);
    if (f32_bits(f) != f32_bits(want))
      FAIL("f16 bits " << b << " widened to " << f << ", want " << want);
    if (f32_to_f16_bits(f) != h) FAIL("f16 bits " << b << " came back as " << f32_to_f16_bits(f));
  }
}

TEST_CASE("f32_to_f16_bits agrees with _Float16 on random, tie and edge floats") {
  std::mt19937 rng(1234);
  int64_t checked = 0;
  auto check_one = [&](float f) {
    uint16_t got = f32_to_f16_bits(f), want = reference_f16_bits(f);
    if (std::isnan(f)) {
      if (!f16_is_nan(got)) FAIL("NaN bits " << f32_bits(f) << " gave " << got);
    } else if (got != want) {
      FAIL("f32 bits " << std::hex << f32_bits(f) << " (" << f << "): got " << got << ", want "
                       << want);
    }
    ++checked;
  };
  // Uniform bit patterns: mostly far outside f16's range (zeros, infs, NaNs).
  for (int i = 0; i < 200000; ++i) check_one(f32_from_bits(rng()));
  // Log-uniform magnitudes across f16's range, from below its subnormals to past its overflow.
  std::uniform_real_distribution<float> expo(-27.0f, 17.0f);
  for (int i = 0; i < 200000; ++i) {
    float f = std::exp2(expo(rng));
    check_one(rng() & 1 ? -f : f);
  }
  // Every midpoint between consecutive finite f16 values (exact in f32), and its f32 neighbours.
  for (uint32_t b = 0; b < 0x7c00; ++b) {
    float lo = reference_f16_to_f32(uint16_t(b)), hi = reference_f16_to_f32(uint16_t(b + 1));
    float mid = lo + (hi - lo) * 0.5f;
    for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
      check_one(f);
      check_one(-f);
    }
  }
  const float edges[] = {0.0f,
                         -0.0f,
                         65504.0f,
                         65519.0f,
                         65520.0f,
                         65535.0f,
                         65536.0f,
                         std::ldexp(1.0f, -14),
                         std::ldexp(1.0f, -15),
                         std::ldexp(1.0f, -24),
                         std::ldexp(1.0f, -25),
                         std::ldexp(1.0f, -26),
                         std::numeric_limits<float>::min(),
                         std::numeric_limits<float>::max(),
                         std::numeric_limits<float>::denorm_min(),
                         std::numeric_limits<float>::infinity(),
                         std::numeric_limits<float>::quiet_NaN()};
  for (float f : edges) {
    check_one(f);
    check_one(-f);
  }
  CHECK(checked > 500000);
}

TEST_CASE("load and store convert 16-bit floats through f32") {
  bf16 hb;
  store(&hb, 1.00390625f);  // 1 + 2^-8: a bf16 tie, rounds to even 1.0
  CHECK(hb.bits == 0x3f80);
  CHECK(load(&hb) == 1.0f);
  f16 hf;
  store(&hf, -0.333333f);
  CHECK(hf.bits == reference_f16_bits(-0.333333f));
  CHECK(load(&hf) == reference_f16_to_f32(hf.bits));
  static_assert(std::is_same_v<compute_t<bf16>, float> && std::is_same_v<compute_t<f16>, float>);
  static_assert(std::is_same_v<compute_t<double>, double>);
}

TEST_CASE("dispatch_float names the op and the dtype when given an integer dtype") {
  auto body = [&]<class T>() { return sizeof(T); };
  CHECK(dispatch_float(DType::bf16, "myop", body) == 2);
  CHECK(dispatch_all(DType::i64, "myop", body) == 8);
  REQUIRE_THROWS_WITH(dispatch_float(DType::i32, "myop", body),
                      Contains("myop") && Contains("i32"));
  REQUIRE_THROWS_WITH(dispatch_index(DType::f32, "gather", body),
                      Contains("gather") && Contains("f32"));
}

TEST_CASE("contiguous f32 <-> bf16 conversions (the vectorised runs) match the scalar rounding") {
  // Every 16-bit top half with several low halves: ties, NaN payloads, infinities, subnormals.
  std::vector<float> xs;
  for (uint32_t hi = 0; hi < 0x10000u; ++hi)
    for (uint32_t lo : {0x0000u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      uint32_t u = (hi << 16) | lo;
      float f;
      std::memcpy(&f, &u, 4);
      xs.push_back(f);
    }
  for (cpu::Isa isa : testing::runnable_isas("bf16 conversion runs")) {
    testing::IsaScope scope(isa);
    INFO(cpu::isa_name(isa));
    // Lengths 1..33 reach every tail of the 16-wide narrowing and 8-wide widening loops; the last
    // one is the whole set.
    for (size_t n : {size_t(1), size_t(7), size_t(8), size_t(15), size_t(16), size_t(17),
                     size_t(33), xs.size()}) {
      INFO("n " << n);
      std::vector<float> part(xs.end() - std::ptrdiff_t(n), xs.end());
      Tensor t = from_vector(part);
      Tensor h = t.to(DType::bf16);
      const uint16_t* got = static_cast<const uint16_t*>(h.raw_data());
      size_t bad = 0;
      for (size_t i = 0; i < n; ++i) bad += got[i] != f32_to_bf16_bits(part[i]);
      CHECK(bad == 0);
      // And back: exact widening (NaN payloads included: it is a shift).
      Tensor w = h.to(DType::f32);
      const uint32_t* back = static_cast<const uint32_t*>(w.raw_data());
      size_t bad_back = 0;
      for (size_t i = 0; i < n; ++i) bad_back += back[i] != uint32_t(got[i]) << 16;
      CHECK(bad_back == 0);
    }
    // A strided source takes the scalar path: the same bits.
    Tensor t = from_vector(xs);
    Tensor h = t.to(DType::bf16);
    Tensor strided =
        t.reshape({-1, 5}).transpose(0, 1).to(DType::bf16).transpose(0, 1).contiguous();
    CHECK(std::memcmp(strided.raw_data(), h.raw_data(), h.nbytes()) == 0);
  }
}

TEST_CASE(
    "contiguous f32 <-> f16 conversions (F16C runs) match the scalar rounding on every path") {
  // Every 16-bit top half with low halves that straddle f16's rounding points (the 13 dropped
  // bits: below, at and above the tie) plus NaN payloads, infinities and subnormals; then the
  // exact midpoints between consecutive f16 values and their neighbours.
  std::vector<float> xs;
  for (uint32_t hi = 0; hi < 0x10000u; ++hi)
    for (uint32_t lo : {0x0000u, 0x0fffu, 0x1000u, 0x1001u, 0x2fffu, 0x3000u, 0x3001u, 0xffffu}) {
      uint32_t u = (hi << 16) | lo;
      float f;
      std::memcpy(&f, &u, 4);
      xs.push_back(f);
    }
  for (uint32_t b = 0; b < 0x7c00; ++b) {
    float lo = reference_f16_to_f32(uint16_t(b)), hi = reference_f16_to_f32(uint16_t(b + 1));
    float mid = lo + (hi - lo) * 0.5f;
    for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
      xs.push_back(f);
      xs.push_back(-f);
    }
  }
  std::vector<uint16_t> all16(0x10000);
  for (uint32_t b = 0; b < 0x10000u; ++b) all16[b] = uint16_t(b);

  for (cpu::Isa isa : testing::runnable_isas("f16 conversion runs")) {
    testing::IsaScope scope(isa);
    INFO(cpu::isa_name(isa));
    // Lengths 1..17 reach every tail of the 8-wide loop; the last one is the whole set.
    for (size_t n : {size_t(1), size_t(7), size_t(8), size_t(9), size_t(17), xs.size()}) {
      INFO("n " << n);
      Tensor t = from_vector(std::vector<float>(xs.end() - std::ptrdiff_t(n), xs.end()));
      Tensor h = t.to(DType::f16);
      const uint16_t* got = static_cast<const uint16_t*>(h.raw_data());
      size_t bad = 0;
      for (size_t i = 0; i < n; ++i) bad += got[i] != f32_to_f16_bits(xs[xs.size() - n + i]);
      CHECK(bad == 0);
    }
    // Widening: every f16 bit pattern, bitwise the scalar result (a NaN only has to stay NaN).
    Tensor h = Tensor::empty({int64_t(all16.size())}, DType::f16);
    std::memcpy(h.raw_data(), all16.data(), all16.size() * 2);
    Tensor w = h.to(DType::f32);
    const float* back = static_cast<const float*>(w.raw_data());
    size_t bad = 0;
    for (uint32_t b = 0; b < 0x10000u; ++b) {
      float want = f16_bits_to_f32(uint16_t(b));
      bad += std::isnan(want) ? !std::isnan(back[b]) : f32_bits(back[b]) != f32_bits(want);
    }
    CHECK(bad == 0);
  }
}
