// The CUDA device layer (tensor/cuda/cuda.h): device queries, the caching allocator and copies
// between host and device. Without a GPU (or in a build without CUDA) the device tests print
// SKIPPED with the reason, and the host-side answers are checked instead.
#include "tensor/cuda/cuda.h"
#include "testing.h"

using namespace forge;
using namespace forge::testing;

namespace {
// True when a GPU is here; otherwise prints why the calling test skips.
bool have_gpu(const char* test) {
  if (cuda::device_count() > 0) return true;
  std::printf("SKIPPED: %s: %s\n", test, cuda::unavailable_reason().c_str());
  return false;
}
}  // namespace

TEST_CASE("without a GPU the device layer says why, and device memory is refused by name") {
  if (cuda::device_count() > 0) {
    CHECK(cuda::unavailable_reason().empty());
    std::printf("cuda:0 is %s\n", cuda::device_name(0).c_str());
    return;
  }
  CHECK_FALSE(cuda::unavailable_reason().empty());
  REQUIRE_THROWS_WITH(Tensor::empty({4}, DType::f32, Device::cuda(0)), Contains("cuda:0"));
  REQUIRE_THROWS_WITH(zeros({2}).to(Device::cuda(0)), Contains("cuda:0"));
}

TEST_CASE("tensors go to the GPU and back bit for bit, in every dtype") {
  if (!have_gpu("host <-> device copies")) return;
  Generator gen(0);
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i8, DType::u8,
                  DType::i32, DType::i64}) {
    Tensor h = randn({3, 5, 7}, gen).to(t);
    Tensor g = h.to(Device::cuda(0));
    CHECK(g.device() == Device::cuda(0));
    CHECK(g.dtype() == t);
    CHECK(bitwise_equal(g.to(Device::cpu()), h));
  }
  // A view is made contiguous on the host before it moves.
  Tensor base = randn({4, 6}, gen);
  Tensor view = base.t();
  CHECK(bitwise_equal(view.to(Device::cuda(0)).to(Device::cpu()), view.contiguous()));
  // Reading a device tensor copies it back.
  Tensor one = full({1}, 2.5).to(Device::cuda(0));
  CHECK(one.item() == 2.5);
  CHECK(one.to_vector<float>() == std::vector<float>{2.5f});
}

TEST_CASE("the caching allocator counts what it hands out and reuses freed blocks") {
  if (!have_gpu("caching allocator")) return;
  const Device d = Device::cuda(0);
  reset_peak_memory(d);
  const int64_t live0 = memory_stats(d).live_bytes;
  void* first = nullptr;
  {
    Tensor a = Tensor::empty({1000}, DType::f32, d);  // 4000 bytes -> one 4096-byte block
    first = a.raw_data();
    CHECK(memory_stats(d).live_bytes == live0 + 4096);
  }
  CHECK(memory_stats(d).live_bytes == live0);
  CHECK(memory_stats(d).peak_bytes >= live0 + 4096);
  Tensor b = Tensor::empty({1000}, DType::f32, d);
  CHECK(b.raw_data() == first);  // the freed block came back
}
