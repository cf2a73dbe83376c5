#include "tensor/dtype.h"

namespace forge {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::f64:
      return "f64";
    case DType::bf16:
      return "bf16";
    case DType::f16:
      return "f16";
    case DType::i8:
      return "i8";
    case DType::u8:
      return "u8";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
  }
  return "?";
}

DType parse_dtype(std::string_view name) {
  struct Entry {
    std::string_view a, b;
    DType t;
  };
  static constexpr Entry table[] = {
      {"f32", "float32", DType::f32},    {"f64", "float64", DType::f64},
      {"bf16", "bfloat16", DType::bf16}, {"f16", "float16", DType::f16},
      {"i8", "int8", DType::i8},         {"u8", "uint8", DType::u8},
      {"i32", "int32", DType::i32},      {"i64", "int64", DType::i64},
  };
  for (const Entry& e : table)
    if (name == e.a || name == e.b) return e.t;
  throw_error(
      fmt::format("unknown dtype '{}' (expected f32, f64, bf16, f16, i8, u8, i32, i64)", name));
}

// f32 -> f16 with round-to-nearest-even, overflow to inf and gradual underflow (the bit recipe of
// the FP16 library by Marat Dukhan, written out).
uint16_t f32_to_f16_bits(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0u);  // inf / NaN
  if (x >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (x < 0x38800000u) {
    // |f| < 2^-14: an f16 subnormal. Adding 0.5 (whose ulp is 2^-24, the f16 subnormal step)
    // lets the FPU round to the grid; the low bits are then the f16 mantissa.
    float v = f32_from_bits(x) + 0.5f;
    return sign | uint16_t(f32_bits(v) - 0x3f000000u);
  }
  uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000fffu + odd;  // exponent bias 127 -> 15, then round the 13 dropped bits to even
  return sign | uint16_t(x >> 13);
}

float f16_bits_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    float v = float(mant) * 5.9604644775390625e-08f;  // mant * 2^-24
    return sign ? -v : v;
  }
  return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

}  // namespace forge
