// The CUDA device: whether it is there, its memory, and copies to and from it.
//
//   if (cuda::device_count() == 0) fmt::print("no GPU: {}\n", cuda::unavailable_reason());
//   Tensor g = t.to(Device::cuda());        // host -> device (tensor/tensor.h)
//   Tensor h = g.to(Device::cpu());         // device -> host
//   memory_stats(Device::cuda()).peak_bytes // the caching allocator's counters, as the CPU's
//
// This header needs no CUDA headers: code that never touches a GPU includes it and builds
// everywhere. In a build without CUDA (meson -Dcuda=disabled, or no nvcc) every query answers "no
// GPU" with the reason, and asking for device memory throws naming it.
//
// Streams: each device has one stream the library runs on (kernels, copies); copies to the host
// wait for it, so results read on the host are always complete. Every CUDA call and kernel launch
// is checked (tensor/cuda/cuda_check.h); errors name the call, the file and the line.
#pragma once

#include <cstddef>
#include <string>

#include "tensor/allocator.h"

namespace forge::cuda {

bool built();        // this build has the CUDA backend
int device_count();  // GPUs usable now: 0 without the backend, a driver or a device
// Why device_count() is 0 ("built without CUDA", "no CUDA driver", ...); "" when it is not.
std::string unavailable_reason();
// A device's name and compute capability, e.g. "NVIDIA H200 (sm_90)".
std::string device_name(int device);

// The caching allocator of a device: freed blocks are kept by size and reused (cudaMalloc and
// cudaFree synchronise the whole device), counted in memory_stats(Device::cuda(i)) as handed out.
Allocator& allocator(int device);

// Copies n bytes between any two of host and devices. Host -> device copies up to 64 MiB are staged
// through a pinned buffer and return once the source has been read (the DMA is queued on the
// device's stream, so everything queued after it sees the bytes); every other copy returns when
// the bytes are in place.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t n);
// Waits for everything queued on the device's stream.
void synchronize(int device);
// The device's stream as an opaque handle (a cudaStream_t), for kernel launchers.
void* stream_handle(int device);
// A point in a device's stream: record() marks it after the work queued so far; synchronize()
// waits until the GPU has passed it; elapsed_ms(start) is the GPU time between two recorded events
// (timing kernels without the host's view of them).
//
//   cuda::Event start(0), stop(0);
//   start.record(); run(); stop.record(); stop.synchronize();
//   double ms = stop.elapsed_ms(start);
class Event {
 public:
  explicit Event(int device);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record();
  void synchronize() const;
  bool done() const;
  double elapsed_ms(const Event& start) const;
  // Makes the device's library stream wait (on the GPU, not the host) until this event is passed
  // on whatever stream recorded it.
  void block_stream() const;
  // Records on `stream` (a cudaStream_t), e.g. a communication stream, instead of the library's.
  void record_on(void* stream);

 private:
  void* event_ = nullptr;  // cudaEvent_t
  int device_;
};

// Throws, naming `where` and the reason, unless `device` can be used now (the cpu always can; a
// cuda device needs the backend, a driver and that many GPUs).
void check_device(Device device, const std::string& where);
// Throws naming `what` when a launcher's status (a cudaError_t as int) is not success.
void check_status(int status, const char* what);

}  // namespace forge::cuda
