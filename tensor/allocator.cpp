#include "tensor/allocator.h"

#include <malloc.h>
#include <sys/mman.h>

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "tensor/cuda/cuda.h"
#include "tensor/error.h"

namespace forge {

std::string Device::str() const {
  return type == DeviceType::cpu ? std::string("cpu") : fmt::format("cuda:{}", index);
}

Device Device::parse(const std::string& text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  if (text.rfind("cuda:", 0) == 0 && text.size() > 5 && text.size() < 9 &&
      text.find_first_not_of("0123456789", 5) == std::string::npos)
    return cuda(std::stoi(text.substr(5)));
  throw_error(fmt::format("unknown device '{}' (expected cpu, cuda or cuda:N)", text));
}

const char* memory_tag_name(MemoryTag t) {
  switch (t) {
    case MemoryTag::other:
      return "other";
    case MemoryTag::parameters:
      return "parameters";
    case MemoryTag::gradients:
      return "gradients";
    case MemoryTag::optimizer:
      return "optimizer";
    case MemoryTag::activations:
      return "activations";
    case MemoryTag::count:
      break;
  }
  return "?";
}

namespace {
thread_local MemoryTag g_tag = MemoryTag::other;

constexpr int kMaxDevices = 17;  // cpu + 16 GPUs
struct Counters {
  std::mutex mu;
  MemoryStats s;
  int64_t cap = 0;
};
Counters& counters(Device d) {
  static Counters c[kMaxDevices];
  int i = d.is_cpu() ? 0 : 1 + d.index;
  FORGE_ASSERT(i < kMaxDevices);
  return c[i];
}
}  // namespace

MemoryTagScope::MemoryTagScope(MemoryTag t) : saved_(g_tag) {
  g_tag = t;
}
MemoryTagScope::~MemoryTagScope() {
  g_tag = saved_;
}
MemoryTag current_memory_tag() {
  return g_tag;
}

void set_memory_cap(Device d, int64_t bytes) {
  FORGE_CHECK(bytes >= 0, "memory cap: {} bytes", bytes);
  Counters& c = counters(d);
  std::lock_guard lock(c.mu);
  c.cap = bytes;
}

int64_t memory_cap(Device d) {
  Counters& c = counters(d);
  std::lock_guard lock(c.mu);
  return c.cap;
}

void check_memory_cap(Device d, size_t nbytes, MemoryTag tag) {
  Counters& c = counters(d);
  std::unique_lock lock(c.mu);
  if (c.cap == 0 || c.s.live_bytes + int64_t(nbytes) <= c.cap) return;
  const MemoryStats s = c.s;
  const int64_t cap = c.cap;
  lock.unlock();
  auto mib = [](int64_t b) { return double(b) / double(1 << 20); };
  std::string split;
  for (size_t t = 0; t < size_t(MemoryTag::count); ++t)
    split += fmt::format("{}{} {:.2f}", t ? ", " : "", memory_tag_name(MemoryTag(t)),
                         mib(s.live_by_tag[t]));
  throw_error(fmt::format(
      "memory cap exceeded on {}: {} needs {:.2f} MiB more with {:.2f} MiB live, over the cap of "
      "{:.2f} MiB (live MiB by tag: {})",
      d.str(), memory_tag_name(tag), mib(int64_t(nbytes)), mib(s.live_bytes), mib(cap), split));
}

void record_alloc(Device d, size_t nbytes, MemoryTag tag) {
  Counters& c = counters(d);
  std::lock_guard lock(c.mu);
  MemoryStats& s = c.s;
  s.live_bytes += int64_t(nbytes);
  s.allocations += 1;
  auto t = size_t(tag);
  s.live_by_tag[t] += int64_t(nbytes);
  s.peak_by_tag[t] = std::max(s.peak_by_tag[t], s.live_by_tag[t]);
  if (s.live_bytes > s.peak_bytes) {
    s.peak_bytes = s.live_bytes;
    s.at_peak_by_tag = s.live_by_tag;
  }
}

void record_free(Device d, size_t nbytes, MemoryTag tag) {
  Counters& c = counters(d);
  std::lock_guard lock(c.mu);
  c.s.live_bytes -= int64_t(nbytes);
  c.s.live_by_tag[size_t(tag)] -= int64_t(nbytes);
}

void record_retag(Device d, size_t nbytes, MemoryTag from, MemoryTag to) {
  Counters& c = counters(d);
  std::lock_guard lock(c.mu);
  MemoryStats& s = c.s;
  s.live_by_tag[size_t(from)] -= int64_t(nbytes);
  s.live_by_tag[size_t(to)] += int64_t(nbytes);
  s.peak_by_tag[size_t(to)] = std::max(s.peak_by_tag[size_t(to)], s.live_by_tag[size_t(to)]);
}

MemoryStats memory_stats(Device d) {
  Counters& c = counters(d);
  std::lock_guard lock(c.mu);
  return c.s;
}

void reset_peak_memory(Device d) {
  Counters& c = counters(d);
  std::lock_guard lock(c.mu);
  c.s.peak_bytes = c.s.live_bytes;
  c.s.peak_by_tag = c.s.live_by_tag;
  c.s.at_peak_by_tag = c.s.live_by_tag;
  c.s.allocations = 0;
}

namespace {

// glibc returns freed memory at the top of the heap to the system and gives large blocks their own
// mmap; a library that mallocs and frees the same large scratch buffer on every call (Eigen's
// packing buffers) then page-faults it in afresh each time. Keep such memory in the process
// instead.
[[maybe_unused]] const bool g_malloc_tuned = [] {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
  return true;
}();

constexpr size_t kAlign = 64;
size_t round_up(size_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

class CpuCachingAllocator final : public Allocator {
 public:
  ~CpuCachingAllocator() override { empty_cache(); }

  void* allocate(size_t nbytes, MemoryTag tag) override {
    size_t n = round_up(std::max<size_t>(nbytes, 1));
    check_memory_cap(Device::cpu(), n, tag);
    void* p = nullptr;
    {
      std::lock_guard lock(mu_);
      auto it = free_.find(n);
      if (it != free_.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        cached_bytes_ -= n;
      }
    }
    if (!p) {
      p = std::aligned_alloc(kAlign, n);
      FORGE_CHECK(p != nullptr, "out of memory: could not allocate {} bytes on the cpu", n);
      // Large buffers: ask for transparent huge pages (fewer TLB misses in the matmul kernels).
      if (n >= (size_t(2) << 20)) madvise(p, n, MADV_HUGEPAGE);
    }
    record_alloc(Device::cpu(), n, tag);
    return p;
  }

  size_t accounted(size_t nbytes) const override { return round_up(std::max<size_t>(nbytes, 1)); }

  void deallocate(void* p, size_t nbytes, MemoryTag tag) override {
    if (!p) return;
    size_t n = round_up(std::max<size_t>(nbytes, 1));
    record_free(Device::cpu(), n, tag);
    {
      std::lock_guard lock(mu_);
      if (cached_bytes_ + n <= kCacheLimit) {
        free_[n].push_back(p);
        cached_bytes_ += n;
        return;
      }
    }
    std::free(p);
  }

  Device device() const override { return Device::cpu(); }

  void empty_cache() override {
    std::lock_guard lock(mu_);
    for (auto& [n, v] : free_)
      for (void* p : v) std::free(p);
    free_.clear();
    cached_bytes_ = 0;
  }

 private:
  static constexpr size_t kCacheLimit = size_t(4) << 30;
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_bytes_ = 0;
};

}  // namespace

Allocator& cpu_allocator() {
  // Never destroyed: tensors held by other static objects may be freed after it would be.
  static auto* a = new CpuCachingAllocator;
  return *a;
}

Allocator& allocator_for(Device d) {
  if (d.is_cpu()) return cpu_allocator();
  return cuda::allocator(d.index);
}

}  // namespace forge
