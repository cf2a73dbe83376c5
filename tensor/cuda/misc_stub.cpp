// The launchers of tensor/cuda/kernels_misc.h in a build without CUDA: never reached, since no
// device tensor can exist, but linked by the ops' CUDA branches.
#include "tensor/cuda/kernels_misc.h"

namespace forge::cuda::kernels {
int copy_cast(int, int, const Strided&, void*, const void*, void*) {
  return 1;
}
int compare(Compare, int, const Strided&, void*, const void*, const void*, void*) {
  return 1;
}
int where(int, const Strided4&, void*, const void*, const void*, const void*, void*) {
  return 1;
}
int activation_backward(ActivationBackward, int, const Strided&, void*, const void*, const void*,
                        void*) {
  return 1;
}
int dropout_mask(const DropoutGeometry&, uint64_t, uint64_t, float, uint8_t*, void*) {
  return 1;
}
int dropout_apply(int, int64_t, void*, const void*, const uint8_t*, double, void*) {
  return 1;
}
int add_scaled_(int, const Strided&, void*, const void*, double, void*) {
  return 1;
}
int scale_(int, const Strided&, void*, double, void*) {
  return 1;
}
int check_finite_and_scale_(int, int64_t, void*, double, bool, int*, void*) {
  return 1;
}
int gather_rows(int64_t, int64_t, int64_t, void*, const void*, const int64_t*, void*) {
  return 1;
}
}  // namespace forge::cuda::kernels
