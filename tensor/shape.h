// Shape: the sizes (or strides) of a tensor, stored inline (no heap) for up to kMaxDims dims.
//
//   Shape s{2, 3, 4};
//   s.numel()   // 24
//   s[-1]       // 4   (negative indices count from the end, as in PyTorch)
//   fmt::format("{}", s)  // "[2, 3, 4]"
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "tensor/error.h"

namespace forge {

inline constexpr int kMaxDims = 8;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) { assign(dims.begin(), dims.end()); }
  explicit Shape(const std::vector<int64_t>& dims) { assign(dims.begin(), dims.end()); }
  template <class It>
  Shape(It first, It last) {
    assign(first, last);
  }

  int size() const { return n_; }
  bool empty() const { return n_ == 0; }
  int64_t operator[](int i) const { return d_[wrap(i)]; }
  int64_t& operator[](int i) { return d_[wrap(i)]; }
  const int64_t* begin() const { return d_; }
  const int64_t* end() const { return d_ + n_; }
  int64_t* begin() { return d_; }
  int64_t* end() { return d_ + n_; }
  int64_t back() const { return d_[n_ - 1]; }

  void push_back(int64_t v) {
    FORGE_CHECK(n_ < kMaxDims, "tensors have at most {} dims", kMaxDims);
    d_[n_++] = v;
  }
  void insert(int pos, int64_t v) {
    FORGE_CHECK(n_ < kMaxDims, "tensors have at most {} dims", kMaxDims);
    for (int i = n_; i > pos; --i) d_[i] = d_[i - 1];
    d_[pos] = v;
    ++n_;
  }
  void erase(int pos) {
    for (int i = pos; i + 1 < n_; ++i) d_[i] = d_[i + 1];
    --n_;
  }
  void resize(int n, int64_t fill = 0) {
    FORGE_CHECK(n <= kMaxDims, "tensors have at most {} dims", kMaxDims);
    for (int i = n_; i < n; ++i) d_[i] = fill;
    n_ = n;
  }

  int64_t numel() const {
    int64_t p = 1;
    for (int i = 0; i < n_; ++i) p *= d_[i];
    return p;
  }
  std::vector<int64_t> vec() const { return {begin(), end()}; }

  friend bool operator==(const Shape& a, const Shape& b) {
    return a.n_ == b.n_ && std::equal(a.begin(), a.end(), b.begin());
  }

 private:
  template <class It>
  void assign(It first, It last) {
    for (; first != last; ++first) push_back(int64_t(*first));
  }
  int wrap(int i) const { return i < 0 ? i + n_ : i; }

  int64_t d_[kMaxDims] = {};
  int n_ = 0;
};

// Contiguous (row-major) strides for a shape, in elements.
inline Shape contiguous_strides(const Shape& shape) {
  Shape s;
  s.resize(shape.size());
  int64_t acc = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    s[i] = acc;
    acc *= std::max<int64_t>(shape[i], 1);
  }
  return s;
}

// Normalizes a possibly negative dim index against `ndim`; throws naming `op` when out of range.
inline int wrap_dim(int dim, int ndim, const char* op) {
  int d = dim < 0 ? dim + ndim : dim;
  FORGE_CHECK(d >= 0 && d < std::max(ndim, 1), "{}: dim {} out of range for a {}-d tensor", op, dim,
              ndim);
  return d;
}

// The broadcast of two shapes (numpy rules); throws naming `op` when they do not broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace forge

template <>
struct fmt::formatter<forge::Shape> : fmt::formatter<std::string_view> {
  auto format(const forge::Shape& s, format_context& ctx) const {
    return fmt::format_to(ctx.out(), "[{}]", fmt::join(s.begin(), s.end(), ", "));
  }
};
