// The CPU allocator: alignment, exact live/peak counters (sizes round up to 64 bytes), and the
// per-tag split of memory made under MemoryTagScope.
#include <cstdint>
#include <thread>
#include <vector>

#include "tensor/allocator.h"
#include "tensor/tensor.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;

namespace {

const Device kCpu = Device::cpu();

int64_t live() {
  return memory_stats(kCpu).live_bytes;
}
int64_t live_tag(MemoryTag t) {
  return memory_stats(kCpu).live_by_tag[size_t(t)];
}

}  // namespace

TEST_CASE("tensor data and raw allocations are 64-byte aligned") {
  std::vector<Tensor> keep;
  for (int64_t n : {1, 3, 15, 16, 17, 63, 64, 65, 1000, 4097, 1 << 20}) {
    for (DType t : {DType::u8, DType::f32, DType::f64}) {
      keep.push_back(Tensor::empty({n}, t));
      CHECK(reinterpret_cast<uintptr_t>(keep.back().raw_data()) % 64 == 0);
    }
  }
  for (size_t n : {size_t(1), size_t(7), size_t(64), size_t(100), size_t(12345)}) {
    void* p = cpu_allocator().allocate(n, MemoryTag::other);
    CHECK(reinterpret_cast<uintptr_t>(p) % 64 == 0);
    cpu_allocator().deallocate(p, n, MemoryTag::other);
  }
}

TEST_CASE("live bytes rise by the size rounded up to 64 and fall back exactly on free") {
  const int64_t base = live();
  {
    Tensor a = Tensor::empty({10}, DType::f32);  // 40 bytes -> 64
    CHECK(live() == base + 64);
    Tensor b = Tensor::empty({17}, DType::f32);  // 68 bytes -> 128
    CHECK(live() == base + 64 + 128);
    Tensor c = Tensor::empty({16}, DType::f32);  // exactly 64
    CHECK(live() == base + 256);
    Tensor d = Tensor::empty({1000}, DType::u8);  // 1000 -> 1024
    CHECK(live() == base + 256 + 1024);
    Tensor view = d.narrow(0, 10, 20);  // views allocate nothing
    Tensor copy_of_handle = d;
    CHECK(live() == base + 1280);
    d = Tensor();
    copy_of_handle = Tensor();
    CHECK(live() == base + 1280);  // the view still holds the storage
    view = Tensor();
    CHECK(live() == base + 256);
  }
  CHECK(live() == base);
  // A block served from the cache counts the same as a fresh one.
  for (int i = 0; i < 3; ++i) {
    Tensor t = Tensor::empty({4096}, DType::f32);
    CHECK(live() == base + 16384);
  }
  CHECK(live() == base);
}

TEST_CASE("the allocator interface counts what it hands out, rounded up to 64 bytes") {
  const int64_t base = live();
  void* p = cpu_allocator().allocate(100, MemoryTag::other);
  CHECK(live() == base + 128);
  void* q = cpu_allocator().allocate(64, MemoryTag::other);
  CHECK(live() == base + 192);
  cpu_allocator().deallocate(p, 100, MemoryTag::other);
  CHECK(live() == base + 64);
  cpu_allocator().deallocate(q, 64, MemoryTag::other);
  CHECK(live() == base);
  CHECK(cpu_allocator().device() == kCpu);
  CHECK(&allocator_for(kCpu) == &cpu_allocator());
}

TEST_CASE("peak bytes hold the high-water mark until reset_peak_memory") {
  reset_peak_memory(kCpu);
  MemoryStats s0 = memory_stats(kCpu);
  const int64_t base = s0.live_bytes;
  CHECK(s0.peak_bytes == base);
  CHECK(s0.allocations == 0);
  {
    Tensor big = Tensor::empty({1 << 18}, DType::f32);  // 1 MiB
    Tensor small = Tensor::empty({8}, DType::f64);      // 64 bytes
    CHECK(memory_stats(kCpu).peak_bytes == base + (1 << 20) + 64);
  }
  {
    Tensor later = Tensor::empty({100}, DType::f32);  // 400 -> 448, below the earlier peak
    MemoryStats s = memory_stats(kCpu);
    CHECK(s.live_bytes == base + 448);
    CHECK(s.peak_bytes == base + (1 << 20) + 64);
    CHECK(s.allocations == 3);
    reset_peak_memory(kCpu);
    s = memory_stats(kCpu);
    CHECK(s.peak_bytes == base + 448);  // peak := live
    CHECK(s.allocations == 0);
  }
  CHECK(memory_stats(kCpu).peak_bytes == base + 448);
  CHECK(live() == base);
}

TEST_CASE("MemoryTagScope sets the tag for its scope and nested scopes restore the outer one") {
  CHECK(current_memory_tag() == MemoryTag::other);
  {
    MemoryTagScope a(MemoryTag::optimizer);
    CHECK(current_memory_tag() == MemoryTag::optimizer);
    {
      MemoryTagScope b(MemoryTag::gradients);
      CHECK(current_memory_tag() == MemoryTag::gradients);
      {
        MemoryTagScope c(MemoryTag::gradients);  // same tag again
        CHECK(current_memory_tag() == MemoryTag::gradients);
      }
      CHECK(current_memory_tag() == MemoryTag::gradients);
    }
    CHECK(current_memory_tag() == MemoryTag::optimizer);
  }
  CHECK(current_memory_tag() == MemoryTag::other);
}

TEST_CASE("MemoryTagScope only tags allocations made on its own thread") {
  MemoryTagScope scope(MemoryTag::parameters);
  const int64_t base_params = live_tag(MemoryTag::parameters);
  const int64_t base_other = live_tag(MemoryTag::other);
  MemoryTag seen = MemoryTag::count;
  int64_t params_during = -1, other_during = -1;
  std::thread([&] {
    seen = current_memory_tag();
    Tensor t = Tensor::empty({16}, DType::f32);  // 64 bytes, made on this thread
    params_during = live_tag(MemoryTag::parameters);
    other_during = live_tag(MemoryTag::other);
  }).join();
  CHECK(seen == MemoryTag::other);
  CHECK(params_during == base_params);
  CHECK(other_during == base_other + 64);
  CHECK(current_memory_tag() == MemoryTag::parameters);
}

TEST_CASE("live_by_tag counts each allocation under the tag it was made with, until freed") {
  const int64_t base_live = live();
  const int64_t base_params = live_tag(MemoryTag::parameters);
  const int64_t base_opt = live_tag(MemoryTag::optimizer);
  const int64_t base_other = live_tag(MemoryTag::other);
  const int64_t base_acts = live_tag(MemoryTag::activations);
  Tensor w, m;
  {
    MemoryTagScope s(MemoryTag::parameters);
    w = Tensor::empty({100}, DType::f32);  // 448
    {
      MemoryTagScope inner(MemoryTag::optimizer);
      m = Tensor::empty({32}, DType::f32);  // 128
    }
  }
  Tensor o = Tensor::empty({1}, DType::u8);  // 64, untagged
  CHECK(live_tag(MemoryTag::parameters) == base_params + 448);
  CHECK(live_tag(MemoryTag::optimizer) == base_opt + 128);
  CHECK(live_tag(MemoryTag::other) == base_other + 64);
  CHECK(live() == base_live + 448 + 128 + 64);
  // Freed outside any scope, the bytes still leave the tag they were counted under.
  m = Tensor();
  CHECK(live_tag(MemoryTag::optimizer) == base_opt);
  CHECK(live_tag(MemoryTag::other) == base_other + 64);
  {
    MemoryTagScope s(MemoryTag::activations);
    w = Tensor();
  }
  CHECK(live_tag(MemoryTag::parameters) == base_params);
  CHECK(live_tag(MemoryTag::activations) == base_acts);
  o = Tensor();
  CHECK(live() == base_live);
  CHECK(live_tag(MemoryTag::other) == base_other);
}

TEST_CASE("at_peak_by_tag is the split of live bytes at the moment of the peak") {
  reset_peak_memory(kCpu);
  MemoryStats s0 = memory_stats(kCpu);
  auto at_peak = [&](MemoryTag t) {
    return memory_stats(kCpu).at_peak_by_tag[size_t(t)] - s0.live_by_tag[size_t(t)];
  };
  auto peak_of = [&](MemoryTag t) {
    return memory_stats(kCpu).peak_by_tag[size_t(t)] - s0.live_by_tag[size_t(t)];
  };
  Tensor params, acts, opt;
  {
    MemoryTagScope s(MemoryTag::parameters);
    params = Tensor::empty({256}, DType::f32);  // 1024
  }
  {
    MemoryTagScope s(MemoryTag::activations);
    acts = Tensor::empty({1024}, DType::f32);  // 4096: the peak is reached here
  }
  acts = Tensor();
  {
    MemoryTagScope s(MemoryTag::optimizer);
    opt = Tensor::empty({512}, DType::f32);  // 2048: live 3072, below the 5120 peak
  }
  MemoryStats s = memory_stats(kCpu);
  CHECK(s.peak_bytes == s0.live_bytes + 5120);
  CHECK(at_peak(MemoryTag::parameters) == 1024);
  CHECK(at_peak(MemoryTag::activations) == 4096);
  CHECK(at_peak(MemoryTag::optimizer) == 0);
  // Each tag's own maximum, whenever it happened.
  CHECK(peak_of(MemoryTag::optimizer) == 2048);
  CHECK(peak_of(MemoryTag::activations) == 4096);
  CHECK(peak_of(MemoryTag::parameters) == 1024);
  {
    MemoryTagScope sc(MemoryTag::optimizer);
    Tensor more = Tensor::empty({1024}, DType::f32);  // live 7168: a new peak with a new split
    CHECK(at_peak(MemoryTag::optimizer) == 2048 + 4096);
    CHECK(at_peak(MemoryTag::activations) == 0);
    CHECK(at_peak(MemoryTag::parameters) == 1024);
  }
  params = Tensor();
  opt = Tensor();
  CHECK(live() == s0.live_bytes);
}

TEST_CASE("memory tags and devices have readable names") {
  CHECK(std::string(memory_tag_name(MemoryTag::other)) == "other");
  CHECK(std::string(memory_tag_name(MemoryTag::parameters)) == "parameters");
  CHECK(std::string(memory_tag_name(MemoryTag::gradients)) == "gradients");
  CHECK(std::string(memory_tag_name(MemoryTag::optimizer)) == "optimizer");
  CHECK(std::string(memory_tag_name(MemoryTag::activations)) == "activations");
  CHECK(Device::cpu().str() == "cpu");
  CHECK(Device::cuda(1).str() == "cuda:1");
  CHECK(Device::cuda(1) == Device{DeviceType::cuda, 1});
  CHECK_FALSE(Device::cuda(0) == Device::cpu());
}

TEST_CASE(
    "a memory cap refuses the allocation that would pass it, naming the tag, taking nothing") {
  const int64_t base = live();
  set_memory_cap(kCpu, base + 4096);
  CHECK(memory_cap(kCpu) == base + 4096);
  {
    MemoryTagScope sc(MemoryTag::parameters);
    Tensor fits = Tensor::empty({512}, DType::f32);  // 2048 bytes: at base + 2048
    CHECK_THROWS_WITH(Tensor::empty({1024}, DType::f32),
                      Contains("memory cap exceeded on cpu: parameters needs 0.00 MiB more") &&
                          Contains("parameters 0.00"));
    CHECK(live() == base + 2048);                       // nothing taken by the refusal
    Tensor exactly = Tensor::empty({512}, DType::f32);  // to the cap exactly: allowed
    CHECK_THROWS(cpu_allocator().allocate(1, MemoryTag::other));
  }
  set_memory_cap(kCpu, 0);  // no cap
  Tensor big = Tensor::empty({1 << 20}, DType::f32);
  CHECK(live() == base + (int64_t(4) << 20));
  CHECK_THROWS_WITH(set_memory_cap(kCpu, -1), Contains("memory cap"));
}

TEST_CASE("a storage's memory can be freed and taken again while tensors keep it") {
  const int64_t base = live();
  Tensor t = Tensor::empty({1024}, DType::f32);
  Tensor view = t.narrow(0, 256, 256);
  CHECK(live() == base + 4096);
  t.storage()->free_memory();
  CHECK_FALSE(t.storage()->allocated());
  CHECK(live() == base);
  t.storage()->free_memory();  // twice: a no-op
  CHECK(live() == base);
  t.storage()->allocate_memory();
  CHECK(t.storage()->allocated());
  CHECK(live() == base + 4096);
  view.fill_(2.0);
  CHECK(t.narrow(0, 256, 1).item() == 2.0);
  t = Tensor();
  view = Tensor();
  CHECK(live() == base);  // the destructor frees what is there, once
  Tensor gone = Tensor::empty({16}, DType::f32);
  gone.storage()->free_memory();
  gone = Tensor();  // a freed storage's destructor frees nothing
  CHECK(live() == base);
  // A tensor made without memory takes none until asked, and its views see it then.
  Tensor later = Tensor::unallocated({64, 4}, DType::f32);
  Tensor row = later.select(0, 3);
  CHECK_FALSE(later.storage()->allocated());
  CHECK(later.raw_data() == nullptr);
  CHECK(live() == base);
  later.storage()->allocate_memory();
  CHECK(live() == base + 1024);
  row.fill_(1.5);
  CHECK(later.select(0, 3).to_vector<float>() == std::vector<float>(4, 1.5f));
  later = Tensor();
  row = Tensor();
  CHECK(live() == base);
}
