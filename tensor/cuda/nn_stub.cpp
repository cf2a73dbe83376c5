// The reduction and neural-network kernel launchers (tensor/cuda/kernels_nn.h) of a build without
// CUDA: never reached, since no device tensor can exist, but linked by the ops' CUDA branches.
#include "tensor/cuda/kernels_nn.h"

namespace forge::cuda::kernels {

int reduce_sum(int, const ReduceLayout&, void*, bool, const void*, void*, void*) {
  return 1;
}
int reduce_max(int, const ReduceLayout&, void*, int64_t*, const void*, void*, void*) {
  return 1;
}
int any_nonfinite(int, const Strided&, const void*, uint8_t*, void*) {
  return 1;
}
int softmax(int, bool, const Rows&, void*, const void*, void*) {
  return 1;
}
int softmax_backward(int, bool, const Rows&, void*, const void*, const void*, void*) {
  return 1;
}
int layer_norm(int, const Rows&, void*, const void*, const void*, int64_t, const void*, int64_t,
               void*, void*, double, void*) {
  return 1;
}
int layer_norm_backward(int, const Rows&, void*, const void*, const void*, const void*, int64_t,
                        const void*, const void*, void*, void*, void*, void*) {
  return 1;
}
int64_t layer_norm_backward_workspace(int, const Rows&) {
  return 0;
}
int check_indices(int, const Strided&, const void*, int64_t, int64_t, bool, int64_t, int64_t*,
                  void*) {
  return 1;
}
int embedding(int, int64_t, int64_t, void*, const void*, int64_t, int64_t, int, const Strided&,
              const void*, void*) {
  return 1;
}
int embedding_backward(int, int64_t, int64_t, int64_t, void*, const Strided&, const void*, int,
                       const Strided&, const void*, void*, int64_t, void*) {
  return 1;
}
int64_t embedding_backward_workspace(int64_t, int64_t) {
  return 0;
}
int cross_entropy(int, const Rows&, const void*, int, const void*, int64_t, int64_t, void*, void*,
                  void*) {
  return 1;
}
int cross_entropy_backward(int, const Rows&, void*, const void*, int, const void*, int64_t, int64_t,
                           const void*, const void*, int, double, int64_t, void*) {
  return 1;
}

}  // namespace forge::cuda::kernels
