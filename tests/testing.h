// Helpers shared by the tests.
//
//   REQUIRE_THROWS_WITH(op(), Contains("matmul") && Contains("[2, 3]"));
//   ThreadCount t(1);                  // sets the thread count, restores it on scope exit
//   CHECK(bitwise_equal(x, y));        // same shape, dtype and bytes
#pragma once

#include <catch2/catch.hpp>

#include "tensor/ops.h"
#include "tensor/parallel.h"
#include "tensor/random.h"

namespace forge::testing {

using Catch::Matchers::Contains;

// Sets the thread count for a scope.
class ThreadCount {
 public:
  explicit ThreadCount(int n) : saved_(get_num_threads()) { set_num_threads(n); }
  ~ThreadCount() { set_num_threads(saved_); }

 private:
  int saved_;
};

// Bitwise equality of two tensors' contents (same shape and dtype).
inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

// Where the test data lives (Debian's dataset-fashion-mnist).
inline const char* fashion_mnist_dir() {
  const char* env = std::getenv("FASHION_MNIST_DIR");
  return env ? env : "/usr/share/datasets/fashion-mnist";
}

}  // namespace forge::testing
