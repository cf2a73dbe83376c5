// quant/quant_cuda_kernels.h in a build without CUDA: never reached, since no tensor can live on a
// GPU there.
#include "quant/quant_cuda_kernels.h"

namespace forge::cuda::kernels {
int fake_quantize(int, int64_t, int64_t, int64_t, const void*, void*, uint8_t*, const float*,
                  const int32_t*, int32_t, int32_t, void*) {
  return 1;
}
int int8_gemm(const uint8_t*, int64_t, int64_t, int64_t, const int8_t*, int64_t, int64_t, int32_t*,
              int64_t, float*, int64_t, float, int32_t, const float*, const float*, void*) {
  return 1;
}
int quantize_u8(int64_t, const float*, float, int32_t, float, float, uint8_t*, void*) {
  return 1;
}
}  // namespace forge::cuda::kernels
