// The CUDA device layer of a build without CUDA: no device, and a reason that says so.
#include "tensor/cuda/cuda.h"
#include "tensor/error.h"

namespace forge::cuda {

namespace {
[[noreturn]] void unavailable(const char* what) {
  throw_error(fmt::format("{}: this build has no CUDA backend (configure with -Dcuda=enabled where "
                          "nvcc and the CUDA toolkit are installed)",
                          what));
}
}  // namespace

bool built() { return false; }
int device_count() { return 0; }
std::string unavailable_reason() { return "built without CUDA"; }
std::string device_name(int) { unavailable("cuda::device_name"); }
Allocator& allocator(int device) { unavailable(fmt::format("cuda:{}", device).c_str()); }
void copy_bytes(void*, Device, const void*, Device, size_t) { unavailable("cuda::copy_bytes"); }
void synchronize(int) { unavailable("cuda::synchronize"); }

}  // namespace forge::cuda
