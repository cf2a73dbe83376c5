// The matrix-product and attention launchers of a build without CUDA (tensor/cuda/blaslt.h,
// tensor/cuda/kernels_attention.h): never reached, since no device tensor can exist, but linked by
// the ops' CUDA branches.
#include "tensor/cuda/blaslt.h"
#include "tensor/cuda/kernels_attention.h"

namespace forge::cuda {

namespace {
[[noreturn]] void unavailable(const char* what) {
  throw_error(
      fmt::format("{}: this build has no CUDA backend (configure with -Dcuda=enabled where "
                  "nvcc and the CUDA toolkit are installed)",
                  what));
}
bool g_allow_tf32 = false;  // kept, so the switch reads back what was set
}  // namespace

void matmul(const Gemm&) {
  unavailable("cuda::matmul");
}
void set_allow_tf32(bool allow) {
  g_allow_tf32 = allow;
}
bool allow_tf32() {
  return g_allow_tf32;
}
double measure_matmul_tflops(DType, int64_t, int) {
  unavailable("cuda::measure_matmul_tflops");
}

namespace kernels {
bool attention_tensor_cores(int, int64_t) {
  return false;
}
int attention_forward(int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const void*,
                      HeadLayout, const void*, const void*, HeadLayout, void*, HeadLayout, void*,
                      Dropout, void*) {
  return 1;
}
int attention_backward(int, int64_t, int64_t, int64_t, int64_t, const void*, const void*,
                       const void*, HeadLayout, const void*, HeadLayout, const void*, void*, void*,
                       void*, void*, HeadLayout, Dropout, void*) {
  return 1;
}
}  // namespace kernels

}  // namespace forge::cuda
