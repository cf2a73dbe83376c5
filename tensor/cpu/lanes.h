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
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "tensor/dtype.h"

namespace forge::cpu {

namespace lanes_detail {

// The sixteen lanes as one GCC vector (zmm registers with AVX-512, pairs of ymm with AVX2, plain
// code elsewhere). Written per element, the loops below stayed scalar or half-vectorised: GCC 12
// does not vectorise the max's select, nor the reductions' scalar tails, and attention calls them
// on thousands of rows of 1 to 64 elements per step.
template <class A>
struct Vec {
  typedef A type __attribute__((vector_size(16 * sizeof(A))));
};
template <class A>
using vec_t = typename Vec<A>::type;

template <class A>
vec_t<A> load(const A* x) {
  vec_t<A> v;
  std::memcpy(&v, x, sizeof v);
  return v;
}
// The last n (< 16) elements in lanes 0 .. n-1, the other lanes `fill`: a lane past the row takes
// fill, which leaves its reduction as it was (+0 for a sum, never below -inf for a max), so a row's
// elements land in the same lanes with the same results as in the per-element loops.
template <class A>
vec_t<A> load_tail(const A* x, int64_t n, A fill) {
  A part[16];
  for (int j = 0; j < 16; ++j) part[j] = fill;
  std::memcpy(part, x, size_t(n) * sizeof(A));
  return load(part);
}
// The sixteen lanes' sum, pairwise: lane j takes lane j + 8, then (of the first eight) j + 4, then
// j + 2, then j + 1 — each round the upper half of the vector added onto its lower half, in
// registers. Through memory, each round's narrower loads of the wider store before it waited for
// the store to reach the cache instead of being forwarded (a fifth of a softmax row's time).
template <class A>
A combine(const vec_t<A>& v) {
  typedef A v8 __attribute__((vector_size(8 * sizeof(A))));
  typedef A v4 __attribute__((vector_size(4 * sizeof(A))));
  typedef A v2 __attribute__((vector_size(2 * sizeof(A))));
  const v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const v4 b =
      __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  const v2 c = __builtin_shufflevector(b, b, 0, 1) + __builtin_shufflevector(b, b, 2, 3);
  return c[0] + c[1];
}

}  // namespace lanes_detail

// Element i goes to lane i % 16 (a sum starts each lane at +0, so adding +0 for the lanes past a
// row's end changes nothing), then the lanes combine pairwise: a fixed order.
template <class A>
A lanes_sum(const A* x, int64_t n) {
  using namespace lanes_detail;
  vec_t<A> acc = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc += load(x + i);
  if (i < n) acc += load_tail(x + i, n - i, A(0));
  return combine<A>(acc);
}

template <class A>
A lanes_dot(const A* x, const A* y, int64_t n) {
  using namespace lanes_detail;
  vec_t<A> acc = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc += load(x + i) * load(y + i);
  if (i < n) acc += load_tail(x + i, n - i, A(0)) * load_tail(y + i, n - i, A(0));
  return combine<A>(acc);
}

// Maximum; NaN if any element is NaN.
template <class A>
A lanes_max(const A* x, int64_t n) {
  using namespace lanes_detail;
  constexpr A kLow = -std::numeric_limits<A>::infinity();
  vec_t<A> acc = vec_t<A>{} + kLow;
  decltype(acc != acc) nan = {};
  int64_t i = 0;
  auto take = [&](const vec_t<A>& v) {
    nan |= v != v;
    acc = v > acc ? v : acc;
  };
  for (; i + 16 <= n; i += 16) take(load(x + i));
  if (i < n) take(load_tail(x + i, n - i, kLow));
  A lanes[16];
  std::memcpy(lanes, &acc, sizeof lanes);
  bool any_nan = false;
  for (int j = 0; j < 16; ++j) any_nan |= nan[j] != 0;
  for (int j = 1; j < 16; ++j) lanes[0] = lanes[j] > lanes[0] ? lanes[j] : lanes[0];
  return any_nan ? std::numeric_limits<A>::quiet_NaN() : lanes[0];
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
