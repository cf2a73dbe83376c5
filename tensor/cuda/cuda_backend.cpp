// The CUDA device layer of a build with CUDA: device queries, the caching allocator, streams and
// copies. Host code only (the runtime API); kernels live in the .cu files beside it.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "tensor/cuda/cuda.h"
#include "tensor/cuda/cuda_check.h"

namespace forge::cuda {

namespace {

constexpr int kMaxDevices = 16;  // as the allocator's counters (tensor/allocator.cpp)

struct Probe {
  int count = 0;
  std::string reason;
};

// Asked once: a process without a driver or a GPU gets 0 and the runtime's reason, never an error.
const Probe& probe() {
  static const Probe p = [] {
    Probe r;
    cudaError_t e = cudaGetDeviceCount(&r.count);
    if (e != cudaSuccess) {
      r.count = 0;
      r.reason = fmt::format("{} ({})", cudaGetErrorName(e), cudaGetErrorString(e));
      (void)cudaGetLastError();  // clear the sticky error
    } else if (r.count == 0) {
      r.reason = "no CUDA device";
    }
    r.count = std::min(r.count, kMaxDevices);
    return r;
  }();
  return p;
}

void check_index(int device) {
  FORGE_CHECK(device >= 0 && device < device_count(), "cuda:{} is not available ({})", device,
              device_count() == 0 ? unavailable_reason()
                                  : fmt::format("{} device(s) here", device_count()));
}

// Makes `device` the calling thread's current one (kernels launch on the current device, and a
// stream only takes kernels of its own device). Asking first is a host-side query, no GPU call.
void make_current(int device) {
  int current = -1;
  FORGE_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device) FORGE_CUDA_CHECK(cudaSetDevice(device));
}

// The stream the library queues work on, one per device, created on first use.
cudaStream_t stream(int device) {
  static std::once_flag once[kMaxDevices];
  static cudaStream_t streams[kMaxDevices];
  check_index(device);
  std::call_once(once[device], [&] {
    make_current(device);
    FORGE_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking));
  });
  return streams[device];
}

// Freed blocks are kept by (rounded) size and handed out again. All work runs on the device's one
// stream, in order, so a block freed after a kernel that used it is safe to give to the next one.
class CachingAllocator : public Allocator {
 public:
  explicit CachingAllocator(int device) : device_(device) {}

  void* allocate(size_t nbytes, MemoryTag tag) override {
    const size_t size = round_up(nbytes);
    check_memory_cap(Device::cuda(device_), size, tag);
    void* p = nullptr;
    {
      std::lock_guard lock(mu_);
      auto it = free_.find(size);
      if (it != free_.end()) {
        p = it->second;
        free_.erase(it);
      }
    }
    if (!p) p = fresh(size);
    record_alloc(Device::cuda(device_), size, tag);
    return p;
  }

  size_t accounted(size_t nbytes) const override { return round_up(nbytes); }

  void deallocate(void* p, size_t nbytes, MemoryTag tag) override {
    if (!p) return;
    const size_t size = round_up(nbytes);
    record_free(Device::cuda(device_), size, tag);
    std::lock_guard lock(mu_);
    free_.emplace(size, p);
  }

  Device device() const override { return Device::cuda(device_); }

  void empty_cache() override {
    std::lock_guard lock(mu_);
    make_current(device_);
    FORGE_CUDA_CHECK(cudaStreamSynchronize(stream(device_)));
    for (auto& [size, p] : free_) FORGE_CUDA_CHECK(cudaFree(p));
    free_.clear();
  }

 private:
  // 512-byte granules: every block is aligned for any vector load, and sizes repeat step to step.
  static size_t round_up(size_t n) { return std::max<size_t>(512, (n + 511) / 512 * 512); }

  // cudaMalloc; when the device is full, the cache goes back first and the call is tried again.
  void* fresh(size_t size) {
    make_current(device_);
    void* p = nullptr;
    if (cudaMalloc(&p, size) == cudaSuccess) return p;
    (void)cudaGetLastError();
    empty_cache();
    cudaError_t e = cudaMalloc(&p, size);
    FORGE_CHECK(e == cudaSuccess, "cuda:{}: cannot allocate {} bytes ({}); {} bytes in use",
                device_, size, cudaGetErrorString(e),
                memory_stats(Device::cuda(device_)).live_bytes);
    return p;
  }

  int device_;
  std::mutex mu_;
  std::unordered_multimap<size_t, void*> free_;
};

}  // namespace

bool built() {
  return true;
}

int device_count() {
  return probe().count;
}

std::string unavailable_reason() {
  return probe().reason;
}

std::string device_name(int device) {
  check_index(device);
  cudaDeviceProp prop{};
  FORGE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return fmt::format("{} (sm_{}{})", prop.name, prop.major, prop.minor);
}

Allocator& allocator(int device) {
  static std::once_flag once[kMaxDevices];
  static std::unique_ptr<CachingAllocator> allocators[kMaxDevices];
  check_index(device);
  std::call_once(once[device],
                 [&] { allocators[device] = std::make_unique<CachingAllocator>(device); });
  return *allocators[device];
}

namespace {

// Host -> device copies up to kStagingBytes (batches of tokens, small tensors) go through a pinned
// buffer per device: the bytes are copied into it, the DMA is queued on the device's stream and
// the call returns at once, so the host goes on preparing the next step while the GPU works. The
// next staged copy first waits for the previous one's event, so the buffer is never overwritten
// while the DMA reads it. Larger copies go straight from pageable memory and wait.
// A ring of kSlots buffers, so that a copy waits only for the DMA kSlots copies back (behind
// which the GPU may have a step's work queued), not for the previous one.
constexpr size_t kStagingBytes = size_t(64) << 20;
constexpr int kSlots = 8;

struct Staging {
  struct Slot {
    void* buffer = nullptr;  // pinned (cudaHostAlloc)
    size_t capacity = 0;
    cudaEvent_t done = nullptr;  // recorded after the last DMA from the buffer
  };
  std::mutex mu;
  Slot slots[kSlots];
  int next = 0;
};

Staging& staging(int device) {
  static Staging s[kMaxDevices];
  return s[device];
}

void staged_to_device(void* dst, const void* src, size_t n, int device, cudaStream_t s) {
  Staging& st = staging(device);
  std::lock_guard lock(st.mu);
  Staging::Slot& slot = st.slots[st.next];
  st.next = (st.next + 1) % kSlots;
  if (!slot.done) {
    FORGE_CUDA_CHECK(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
  } else {
    FORGE_CUDA_CHECK(cudaEventSynchronize(slot.done));
  }
  if (slot.capacity < n) {
    if (slot.buffer) FORGE_CUDA_CHECK(cudaFreeHost(slot.buffer));
    slot.buffer = nullptr;
    slot.capacity = std::max(n, size_t(1) << 16);
    FORGE_CUDA_CHECK(cudaHostAlloc(&slot.buffer, slot.capacity, cudaHostAllocDefault));
  }
  std::memcpy(slot.buffer, src, n);
  FORGE_CUDA_CHECK(cudaMemcpyAsync(dst, slot.buffer, n, cudaMemcpyHostToDevice, s));
  FORGE_CUDA_CHECK(cudaEventRecord(slot.done, s));
}

}  // namespace

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t n) {
  if (n == 0) return;
  FORGE_CHECK(src_device.is_cuda() || dst_device.is_cuda(),
              "cuda::copy_bytes: neither side is a CUDA device");
  // The stream of the device involved (the source's when both are GPUs): the copy is ordered
  // after the work queued there, which produced the source or last used the destination.
  const int device = src_device.is_cuda() ? src_device.index : dst_device.index;
  cudaStream_t s = stream(device);
  make_current(device);
  if (src_device.is_cuda() && dst_device.is_cuda() && src_device.index != dst_device.index) {
    // The destination may be a cached block that work queued on its own GPU still uses.
    cudaEvent_t e = nullptr;
    make_current(dst_device.index);
    FORGE_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    FORGE_CUDA_CHECK(cudaEventRecord(e, stream(dst_device.index)));
    make_current(device);
    FORGE_CUDA_CHECK(cudaStreamWaitEvent(s, e, 0));
    FORGE_CUDA_CHECK(cudaEventDestroy(e));  // released once the wait is passed
  }
  if (src_device.is_cpu() && n <= kStagingBytes) {
    staged_to_device(dst, src, n, device, s);
    return;
  }
  FORGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, s));
  FORGE_CUDA_CHECK(cudaStreamSynchronize(s));
}

void* stream_handle(int device) {
  cudaStream_t s = stream(device);
  make_current(device);  // launches that follow go to this device
  return s;
}

Event::Event(int device) : device_(device) {
  check_index(device);
  make_current(device);
  cudaEvent_t e = nullptr;
  FORGE_CUDA_CHECK(cudaEventCreate(&e));
  event_ = e;
}

Event::~Event() {
  if (event_) (void)cudaEventDestroy(cudaEvent_t(event_));
}

void Event::record() {
  record_on(stream(device_));
}

void Event::record_on(void* s) {
  make_current(device_);
  FORGE_CUDA_CHECK(cudaEventRecord(cudaEvent_t(event_), cudaStream_t(s)));
}

void Event::synchronize() const {
  FORGE_CUDA_CHECK(cudaEventSynchronize(cudaEvent_t(event_)));
}

bool Event::done() const {
  cudaError_t e = cudaEventQuery(cudaEvent_t(event_));
  if (e == cudaErrorNotReady) return false;
  FORGE_CUDA_CHECK(e);
  return true;
}

double Event::elapsed_ms(const Event& start) const {
  float ms = 0;
  FORGE_CUDA_CHECK(cudaEventElapsedTime(&ms, cudaEvent_t(start.event_), cudaEvent_t(event_)));
  return double(ms);
}

void Event::block_stream() const {
  FORGE_CUDA_CHECK(cudaStreamWaitEvent(stream(device_), cudaEvent_t(event_), 0));
}

void check_status(int status, const char* what) {
  if (status == 0) return;
  auto e = cudaError_t(status);
  throw_error(
      fmt::format("CUDA error {} ({}) in {}", cudaGetErrorName(e), cudaGetErrorString(e), what));
}

void synchronize(int device) {
  make_current(device);
  FORGE_CUDA_CHECK(cudaStreamSynchronize(stream(device)));
}

}  // namespace forge::cuda
