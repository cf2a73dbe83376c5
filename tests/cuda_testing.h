// Shared by the CUDA tests: whether a GPU is here (else the test prints SKIPPED and why), the
// device, the copy back, and how far a GPU result may be from the CPU's in each dtype.
//
//   if (!have_gpu("softmax")) return;
//   check(max_rel_diff(host(softmax(x.to(gpu), 1)), softmax(x, 1)) <= tolerance(x.dtype()));
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include "tensor/cuda/cuda.h"
#include "testing.h"

namespace forge::testing {

// True when a GPU is here; otherwise prints why the calling test skips, or fails the test under
// FORGE_REQUIRE_GPU=1 (bench/gpu_check.sh sets it: there a GPU that cannot be used is a failure).
inline bool gpu_required() {
  const char* e = std::getenv("FORGE_REQUIRE_GPU");
  return e != nullptr && std::string(e) == "1";
}
inline bool have_gpu(const char* test) {
  if (cuda::device_count() > 0) return true;
  if (gpu_required())
    FAIL(test << ": FORGE_REQUIRE_GPU=1 and no usable GPU: " << cuda::unavailable_reason());
  std::printf("SKIPPED: %s: %s\n", test, cuda::unavailable_reason().c_str());
  return false;
}

inline const Device gpu = Device::cuda(0);

inline Tensor host(const Tensor& t) {
  return t.to(Device::cpu());
}

// max |a - b| / max |b| allowed between a GPU result and the CPU's: both compute in f32 (f64 for
// f64) and differ in the order of additions and the last bits of exp, log, tanh and erf; 16-bit
// results may round apart by one unit.
inline double tolerance(DType t) {
  switch (t) {
    case DType::f64:
      return 1e-12;
    case DType::f32:
      return 1e-5;
    case DType::bf16:
      return 1e-2;
    default:
      return 2e-3;  // f16
  }
}

}  // namespace forge::testing
