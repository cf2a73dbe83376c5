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

bool built();       // this build has the CUDA backend
int device_count();  // GPUs usable now: 0 without the backend, a driver or a device
// Why device_count() is 0 ("built without CUDA", "no CUDA driver", ...); "" when it is not.
std::string unavailable_reason();
// A device's name and compute capability, e.g. "NVIDIA H200 (sm_90)".
std::string device_name(int device);

// The caching allocator of a device: freed blocks are kept by size and reused (cudaMalloc and
// cudaFree synchronise the whole device), counted in memory_stats(Device::cuda(i)) as handed out.
Allocator& allocator(int device);

// Copies n bytes between any two of host and devices; returns when the bytes are in place.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t n);
// Waits for everything queued on the device's stream.
void synchronize(int device);
// The device's stream as an opaque handle (a cudaStream_t), for kernel launchers.
void* stream_handle(int device);
// Throws naming `what` when a launcher's status (a cudaError_t as int) is not success.
void check_status(int status, const char* what);

}  // namespace forge::cuda
