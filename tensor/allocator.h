// Memory: devices, allocators with live/peak byte counters, and tags that say what memory is for.
//
//   void* p = cpu_allocator().allocate(1 << 20);   // 64-byte aligned
//   memory_stats(Device::cpu()).live_bytes          // 1 MiB
//   { MemoryTagScope scope(MemoryTag::optimizer);   // allocations in this scope count as optimizer
//     ... }                                          // state in the per-tag figures
//
// The CPU allocator caches freed blocks by size: a training loop asks for the same sizes every
// step, and handing back a warm block is much cheaper than a fresh mmap that faults in every page.
// The counters count bytes handed out and not yet returned (live), never the cache.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace forge {

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::cuda, i}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  friend bool operator==(Device a, Device b) { return a.type == b.type && a.index == b.index; }
  std::string str() const;
  // "cpu", "cuda" (device 0) or "cuda:N"; anything else is an error quoting the text.
  static Device parse(const std::string& text);
};

// What an allocation is for, as far as the allocator can tell: the scope that made it says.
enum class MemoryTag : uint8_t { other, parameters, gradients, optimizer, activations, count };
const char* memory_tag_name(MemoryTag t);

// Sets the tag of allocations made on this thread while it lives; scopes nest.
class MemoryTagScope {
 public:
  explicit MemoryTagScope(MemoryTag t);
  ~MemoryTagScope();
  MemoryTagScope(const MemoryTagScope&) = delete;
  MemoryTagScope& operator=(const MemoryTagScope&) = delete;

 private:
  MemoryTag saved_;
};
MemoryTag current_memory_tag();

struct MemoryStats {
  int64_t live_bytes = 0;   // handed out, not yet freed
  int64_t peak_bytes = 0;   // max of live_bytes since the last reset
  int64_t allocations = 0;  // number of allocate() calls since the last reset
  std::array<int64_t, size_t(MemoryTag::count)> live_by_tag{};
  std::array<int64_t, size_t(MemoryTag::count)> peak_by_tag{};  // each tag's own maximum
  // The split of live bytes by tag at the moment peak_bytes was reached.
  std::array<int64_t, size_t(MemoryTag::count)> at_peak_by_tag{};
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Returns `nbytes` (rounded up to 64) of 64-byte aligned memory; nbytes may be 0.
  virtual void* allocate(size_t nbytes, MemoryTag tag) = 0;
  virtual void deallocate(void* p, size_t nbytes, MemoryTag tag) = 0;
  virtual Device device() const = 0;
  // Returns cached blocks to the system.
  virtual void empty_cache() {}
  // The bytes the counters hold for an allocation of `nbytes` (its rounded size).
  virtual size_t accounted(size_t nbytes) const { return nbytes; }
};

Allocator& cpu_allocator();
Allocator& allocator_for(Device d);

MemoryStats memory_stats(Device d);
// Starts a new peak window: peak := live, allocation count := 0.
void reset_peak_memory(Device d);

// A cap on live bytes (`train --memory-cap`): an allocation that would take the live bytes past it
// throws, before any memory is taken, naming the tag it was for and the live bytes by tag. 0 (the
// default) means none. What a model needs under a cap is then a run, not a guess.
void set_memory_cap(Device d, int64_t bytes);
int64_t memory_cap(Device d);

// Counter bookkeeping shared by the device allocators. check_memory_cap throws as set_memory_cap
// says; the allocators call it before taking memory.
void check_memory_cap(Device d, size_t nbytes, MemoryTag tag);
void record_alloc(Device d, size_t nbytes, MemoryTag tag);
void record_free(Device d, size_t nbytes, MemoryTag tag);
// Moves live bytes from one tag to another (a buffer that changes role: a backward temporary
// adopted as a parameter's gradient).
void record_retag(Device d, size_t nbytes, MemoryTag from, MemoryTag to);

}  // namespace forge
