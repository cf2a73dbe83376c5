// Reductions over a contiguous row in 16 interleaved lanes.
//
//   float s = lanes_sum(x, n);        // fixed order: same answer on every run and thread count
//   float m = lanes_max(x, n);
//   float d = lanes_dot(x, y, n);
//
// A plain `s += x[i]` loop cannot be vectorised without reassociating the sum (which the compiler
// may only do under -ffast-math). Sixteen explicit partial sums are a reassociation we choose once:
// the loop becomes vector code, and the order of additions is still fixed.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "tensor/dtype.h"

namespace forge::cpu {

template <class A>
A combine_lanes(A* acc) {
  for (int w = 8; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0];
}

template <class A>
A lanes_sum(const A* x, int64_t n) {
  A acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j];
  for (int j = 0; i < n; ++i, ++j) acc[j] += x[i];
  return combine_lanes(acc);
}

template <class A>
A lanes_dot(const A* x, const A* y, int64_t n) {
  A acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j] * y[i + j];
  for (int j = 0; i < n; ++i, ++j) acc[j] += x[i] * y[i];
  return combine_lanes(acc);
}

// Maximum; NaN if any element is NaN.
template <class A>
A lanes_max(const A* x, int64_t n) {
  A acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = -std::numeric_limits<A>::infinity();
  bool nan = false;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) {
      A v = x[i + j];
      nan |= v != v;
      acc[j] = v > acc[j] ? v : acc[j];
    }
  for (int j = 0; i < n; ++i, ++j) {
    nan |= x[i] != x[i];
    acc[j] = x[i] > acc[j] ? x[i] : acc[j];
  }
  for (int j = 1; j < 16; ++j) acc[0] = acc[j] > acc[0] ? acc[j] : acc[0];
  return nan ? std::numeric_limits<A>::quiet_NaN() : acc[0];
}

// A row in the compute type: the row itself when it is already of that type, else a converted
// copy in `buf`.
template <class T>
const compute_t<T>* row_in_compute_type(const T* x, int64_t n, std::vector<compute_t<T>>& buf) {
  if constexpr (std::is_same_v<T, compute_t<T>>) {
    return x;
  } else {
    buf.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) buf[i] = load(x + i);
    return buf.data();
  }
}

}  // namespace forge::cpu
