// Element types and the two 16-bit float formats.
//
//   DType t = DType::bf16;
//   dtype_size(t)          // 2
//   bf16 h = bf16(3.14159f); float(h) == 3.140625f   (round to nearest even)
//   dispatch_float(t, "exp", [&]<class T>() { ... T is float, double, bf16 or f16 ... });
//
// bf16 keeps f32's 8-bit exponent and 7 mantissa bits; f16 (IEEE binary16) has a 5-bit exponent and
// 10 mantissa bits. Both convert to and from f32 with round-to-nearest-even; arithmetic on them
// happens in f32 (see `compute_t`).
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#include "tensor/error.h"

namespace forge {

enum class DType : uint8_t { f32, f64, bf16, f16, i8, u8, i32, i64 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64:
    case DType::i64:
      return 8;
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::bf16:
    case DType::f16:
      return 2;
    case DType::i8:
    case DType::u8:
      return 1;
  }
  return 0;
}

constexpr bool is_floating(DType t) {
  return t == DType::f32 || t == DType::f64 || t == DType::bf16 || t == DType::f16;
}
constexpr bool is_integral(DType t) {
  return !is_floating(t);
}

const char* dtype_name(DType t);
// Parses "f32", "float32", "bf16", ...; throws naming the text on anything else.
DType parse_dtype(std::string_view name);

// ---------------------------------------------------------------------------------------------
// bf16 and f16 as storage types.

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Branch-free (a select, not an early return), so loops of it vectorise.
inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = f32_bits(f);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest, ties to even
  uint32_t quiet_nan = (u >> 16) | 0x40u;
  return uint16_t((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}
inline float bf16_bits_to_f32(uint16_t h) {
  return f32_from_bits(uint32_t(h) << 16);
}

uint16_t f32_to_f16_bits(float f);
float f16_bits_to_f32(uint16_t h);

struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float f) : bits(f32_to_bf16_bits(f)) {}
  explicit operator float() const { return bf16_bits_to_f32(bits); }
  static bf16 from_bits(uint16_t b) {
    bf16 h;
    h.bits = b;
    return h;
  }
};

struct f16 {
  uint16_t bits = 0;
  f16() = default;
  explicit f16(float f) : bits(f32_to_f16_bits(f)) {}
  explicit operator float() const { return f16_bits_to_f32(bits); }
  static f16 from_bits(uint16_t b) {
    f16 h;
    h.bits = b;
    return h;
  }
};

// The C++ type of each dtype, both ways.
template <class T>
struct dtype_of_t;
template <>
struct dtype_of_t<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct dtype_of_t<double> {
  static constexpr DType value = DType::f64;
};
template <>
struct dtype_of_t<bf16> {
  static constexpr DType value = DType::bf16;
};
template <>
struct dtype_of_t<f16> {
  static constexpr DType value = DType::f16;
};
template <>
struct dtype_of_t<int8_t> {
  static constexpr DType value = DType::i8;
};
template <>
struct dtype_of_t<uint8_t> {
  static constexpr DType value = DType::u8;
};
template <>
struct dtype_of_t<int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct dtype_of_t<int64_t> {
  static constexpr DType value = DType::i64;
};
template <class T>
inline constexpr DType dtype_of = dtype_of_t<T>::value;

// The type arithmetic happens in: 16-bit floats compute in f32.
template <class T>
struct compute_type {
  using type = T;
};
template <>
struct compute_type<bf16> {
  using type = float;
};
template <>
struct compute_type<f16> {
  using type = float;
};
template <class T>
using compute_t = typename compute_type<T>::type;

template <class T>
inline compute_t<T> load(const T* p) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>)
    return float(*p);
  else
    return *p;
}
template <class T, class C>
inline void store(T* p, C v) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>)
    *p = T(float(v));
  else
    *p = T(v);
}

// ---------------------------------------------------------------------------------------------
// Dispatch: call f.template operator()<T>() with the C++ type of `t`.

template <class F>
decltype(auto) dispatch_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32:
      return f.template operator()<float>();
    case DType::f64:
      return f.template operator()<double>();
    case DType::bf16:
      return f.template operator()<bf16>();
    case DType::f16:
      return f.template operator()<f16>();
    default:
      throw_error(fmt::format("{}: expected a floating dtype, got {}", op, dtype_name(t)));
  }
}

template <class F>
decltype(auto) dispatch_all(DType t, const char* op, F&& f) {
  (void)op;
  switch (t) {
    case DType::f32:
      return f.template operator()<float>();
    case DType::f64:
      return f.template operator()<double>();
    case DType::bf16:
      return f.template operator()<bf16>();
    case DType::f16:
      return f.template operator()<f16>();
    case DType::i8:
      return f.template operator()<int8_t>();
    case DType::u8:
      return f.template operator()<uint8_t>();
    case DType::i32:
      return f.template operator()<int32_t>();
    case DType::i64:
      return f.template operator()<int64_t>();
  }
  throw_error(fmt::format("{}: unknown dtype", op));
}

template <class F>
decltype(auto) dispatch_index(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::i32:
      return f.template operator()<int32_t>();
    case DType::i64:
      return f.template operator()<int64_t>();
    case DType::u8:
      return f.template operator()<uint8_t>();
    case DType::i8:
      return f.template operator()<int8_t>();
    default:
      throw_error(fmt::format("{}: expected an integer dtype, got {}", op, dtype_name(t)));
  }
}

}  // namespace forge

template <>
struct fmt::formatter<forge::DType> : fmt::formatter<std::string_view> {
  auto format(forge::DType t, format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(forge::dtype_name(t), ctx);
  }
};
