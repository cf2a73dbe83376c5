// The CUDA device layer of a build without CUDA: no device, and a reason that says so.
#include "tensor/cuda/cuda.h"
#include "tensor/cuda/kernels.h"
#include "tensor/error.h"

namespace forge::cuda {

namespace {
[[noreturn]] void unavailable(const char* what) {
  throw_error(
      fmt::format("{}: this build has no CUDA backend (configure with -Dcuda=enabled where "
                  "nvcc and the CUDA toolkit are installed)",
                  what));
}
}  // namespace

bool built() {
  return false;
}
int device_count() {
  return 0;
}
std::string unavailable_reason() {
  return "built without CUDA";
}
std::string device_name(int) {
  unavailable("cuda::device_name");
}
Allocator& allocator(int device) {
  unavailable(fmt::format("cuda:{}", device).c_str());
}
void copy_bytes(void*, Device, const void*, Device, size_t) {
  unavailable("cuda::copy_bytes");
}
void synchronize(int) {
  unavailable("cuda::synchronize");
}
void* stream_handle(int) {
  unavailable("cuda::stream_handle");
}
Event::Event(int device) : device_(device) {
  unavailable(fmt::format("cuda:{}", device).c_str());
}
Event::~Event() = default;
void Event::record() {}
void Event::record_on(void*) {}
void Event::synchronize() const {}
bool Event::done() const {
  return true;
}
double Event::elapsed_ms(const Event&) const {
  return 0;
}
void Event::block_stream() const {}

void check_status(int status, const char* what) {
  if (status != 0) unavailable(what);
}

// The kernel launchers (tensor/cuda/kernels.h) of a build without CUDA: never reached, since no
// device tensor can exist, but linked by the ops' CUDA branches.
namespace kernels {
int binary(Binary, int, const Strided&, void*, const void*, const void*, void*) {
  return 1;
}
int unary(Unary, int, const Strided&, void*, const void*, void*) {
  return 1;
}
int affine(int, const Strided&, void*, const void*, double, double, void*) {
  return 1;
}
int fill(int, int64_t, void*, double, void*) {
  return 1;
}
int pow_scalar(int, const Strided&, void*, const void*, double, void*) {
  return 1;
}
}  // namespace kernels

}  // namespace forge::cuda
