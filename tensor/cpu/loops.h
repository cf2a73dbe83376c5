// Strided loops over N operands of one shape: the engine under every elementwise kernel.
//
//   // out = a + b, where a and b may be broadcast (stride 0) or transposed views:
//   for_each_strided<3>(shape, {out_ptr, a_ptr, b_ptr}, {out_strides, a_strides, b_strides},
//                       {4, 4, 4}, [](char** p, int64_t n, const int64_t* s) {
//     for (int64_t i = 0; i < n; ++i) ...p[k] + i * s[k]...   // s[k]: byte stride of operand k
//   });
//
// Dims are coalesced first (a contiguous 3-D tensor is one flat run), then the inner loop is the
// last dim and the body sees whole runs of it, so it can vectorise when all strides are unit.
#pragma once

#include <array>
#include <cstdint>

#include "tensor/parallel.h"
#include "tensor/shape.h"

namespace forge::cpu {

template <int N>
struct StridedLayout {
  int ndim = 0;
  int64_t size[kMaxDims];
  int64_t stride[N][kMaxDims];  // bytes

  StridedLayout(const Shape& shape, const std::array<const Shape*, N>& strides,
                const std::array<int64_t, N>& itemsize) {
    // Keep dims of size != 1, then merge dim d into d+1 when every operand is contiguous across
    // them.
    for (int d = 0; d < shape.size(); ++d) {
      if (shape[d] == 1) continue;
      size[ndim] = shape[d];
      for (int k = 0; k < N; ++k) stride[k][ndim] = (*strides[k])[d] * itemsize[k];
      ++ndim;
    }
    int out = 0;
    for (int d = 1; d < ndim; ++d) {
      bool merge = true;
      for (int k = 0; k < N; ++k) merge &= stride[k][out] == stride[k][d] * size[d];
      if (merge) {
        size[out] *= size[d];
        for (int k = 0; k < N; ++k) stride[k][out] = stride[k][d];
      } else {
        ++out;
        size[out] = size[d];
        for (int k = 0; k < N; ++k) stride[k][out] = stride[k][d];
      }
    }
    if (ndim > 0) ndim = out + 1;
    if (ndim == 0) {  // a scalar or all-ones shape: one element
      ndim = 1;
      size[0] = 1;
      for (int k = 0; k < N; ++k) stride[k][0] = itemsize[k];
    }
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= size[d];
    return n;
  }
};

// Runs body over elements [begin, end) of the layout's row-major order, in runs of the inner dim.
template <int N, class F>
void for_each_range(const StridedLayout<N>& L, const std::array<char*, N>& base, int64_t begin,
                    int64_t end, F& body) {
  const int nd = L.ndim;
  const int64_t inner = L.size[nd - 1];
  int64_t idx[kMaxDims];
  int64_t rem = begin;
  for (int d = nd - 1; d >= 0; --d) {
    idx[d] = rem % L.size[d];
    rem /= L.size[d];
  }
  int64_t inner_stride[N];
  for (int k = 0; k < N; ++k) inner_stride[k] = L.stride[k][nd - 1];
  int64_t pos = begin;
  while (pos < end) {
    char* p[N];
    for (int k = 0; k < N; ++k) {
      int64_t off = 0;
      for (int d = 0; d < nd; ++d) off += idx[d] * L.stride[k][d];
      p[k] = base[k] + off;
    }
    int64_t n = std::min(inner - idx[nd - 1], end - pos);
    body(p, n, inner_stride);
    pos += n;
    idx[nd - 1] += n;
    for (int d = nd - 1; d > 0 && idx[d] == L.size[d]; --d) {
      idx[d] = 0;
      ++idx[d - 1];
    }
  }
}

// Elementwise work is split across threads; each element is written by exactly one iteration, so
// the split does not change results.
template <int N, class F>
void for_each_strided(const Shape& shape, const std::array<char*, N>& base,
                      const std::array<const Shape*, N>& strides,
                      const std::array<int64_t, N>& itemsize, F&& body, int64_t grain = 1 << 15) {
  StridedLayout<N> L(shape, strides, itemsize);
  int64_t total = L.numel();
  if (total == 0) return;
  parallel_for(0, total, grain,
               [&](int64_t b, int64_t e) { for_each_range<N>(L, base, b, e, body); });
}

}  // namespace forge::cpu
