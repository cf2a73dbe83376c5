// The CUDA device layer (tensor/cuda/cuda.h): device queries, the caching allocator and copies
// between host and device. Without a GPU (or in a build without CUDA) the device tests print
// SKIPPED with the reason, and the host-side answers are checked instead.
#include <cmath>

#include "autograd/functions.h"
#include "cuda_testing.h"
#include "tensor/cuda/cuda.h"

using namespace forge;
using namespace forge::testing;

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
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i8, DType::u8, DType::i32,
                  DType::i64}) {
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

TEST_CASE("elementwise ops on the GPU give the CPU's results, broadcasting included") {
  if (!have_gpu("elementwise ops")) return;
  const Device gpu = Device::cuda(0);
  Generator gen(1);
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    INFO("dtype " << dtype_name(t));
    Tensor a = randn({4, 1, 5}, gen).to(t), b = randn({3, 1}, gen).to(t);  // -> (4, 3, 5)
    Tensor pos = add(abs(randn({2, 7}, gen)), 0.5).to(t);
    Tensor ga = a.to(gpu), gb = b.to(gpu), gpos = pos.to(gpu);
    auto same = [&](const Tensor& got, const Tensor& want) {
      REQUIRE(got.device() == gpu);
      double err = max_rel_diff(got.to(Device::cpu()), want);
      INFO("relative difference " << err);
      CHECK(err <= tolerance(t));
    };
    same(add(ga, gb), add(a, b));
    same(sub(ga, gb), sub(a, b));
    same(mul(ga, gb), mul(a, b));
    same(div(ga, add(gb, 3.0)), div(a, add(b, 3.0)));
    same(maximum(ga, gb), maximum(a, b));
    same(add(ga, 1.5), add(a, 1.5));
    same(mul(ga, -2.0), mul(a, -2.0));
    same(neg(ga), neg(a));
    same(exp(ga), exp(a));
    same(log(gpos), log(pos));
    same(sqrt(gpos), sqrt(pos));
    same(tanh(ga), tanh(a));
    same(sigmoid(ga), sigmoid(a));
    same(relu(ga), relu(a));
    same(abs(ga), abs(a));
    same(gelu(ga, GeluApprox::tanh), gelu(a, GeluApprox::tanh));
    same(gelu(ga, GeluApprox::none), gelu(a, GeluApprox::none));
    same(pow(ga, 2.0), pow(a, 2.0));
    // A strided view as an operand: [5, 1, 4] + [1, 3, 1] -> [5, 3, 4].
    same(add(ga.transpose(0, 2), gb.t().unsqueeze(2)), add(a.transpose(0, 2), b.t().unsqueeze(2)));
    Tensor g = Tensor::empty({3, 4}, t, gpu);
    g.fill_(0.25);
    same(g, full({3, 4}, 0.25).to(t));
  }
  // Integer ops too.
  Tensor i = from_vector<int32_t>({1, -2, 3, -4}), j = from_vector<int32_t>({5, 6, 7, 8});
  CHECK(bitwise_equal(add(i.to(gpu), j.to(gpu)).to(Device::cpu()), add(i, j)));
  CHECK(bitwise_equal(mul(i.to(gpu), j.to(gpu)).to(Device::cpu()), mul(i, j)));
  // Mixed devices are refused by name.
  REQUIRE_THROWS_WITH(add(zeros({2}).to(gpu), zeros({2})), Contains("cpu") && Contains("cuda:0"));
}

namespace {

// Element by element: NaN where the CPU has NaN, the same infinity where it has one, elsewhere
// |got - want| <= tol max(|want|, smallest normal of t): below that (f16's subnormals) the two may
// round one subnormal unit apart.
void check_elementwise_close(const Tensor& got, const Tensor& want, DType t) {
  REQUIRE(got.shape() == want.shape());
  const double tol = tolerance(t), floor = t == DType::f16 ? 6.2e-5 : 2.3e-308;
  std::vector<double> g = got.contiguous().to_vector<double>(),
                      w = want.contiguous().to_vector<double>();
  int64_t bad = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    bool ok;
    if (std::isnan(w[i]))
      ok = std::isnan(g[i]);
    else if (std::isinf(w[i]))
      ok = g[i] == w[i];
    else
      ok = std::abs(g[i] - w[i]) <= tol * std::max(std::abs(w[i]), floor);
    if (!ok && bad++ < 5) UNSCOPED_INFO("element " << i << ": got " << g[i] << ", want " << w[i]);
  }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("pow on the GPU gives the CPU's results for every exponent, signs and zeros included") {
  if (!have_gpu("pow")) return;
  Generator gen(2);
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    Tensor pos = add(abs(randn({5, 37}, gen)), 0.1).to(t);
    Tensor mixed = mul(randn({37, 5}, gen), 2.0).to(t);
    // Zeros of both signs, +-1, and a base past 1 whose cube overflows f16.
    Tensor special = from_vector<float>({0.f, -0.f, 1.f, -1.f, 0.5f, -0.5f, 50.f, -50.f}).to(t);
    for (double e : {0.5, 3.0, -1.0, 1.7, 2.0, 1.0, 0.0, -2.5}) {
      for (const Tensor& x : {pos, mixed, mixed.t(), special}) {
        INFO("dtype " << dtype_name(t) << ", exponent " << e << ", shape " << x.dim() << "-d "
                      << x.numel() << (x.is_contiguous() ? "" : " strided"));
        Tensor got = pow(x.to(gpu), e);
        REQUIRE(got.device() == gpu);
        REQUIRE(got.dtype() == t);
        check_elementwise_close(host(got), pow(x, e), t);
      }
    }
  }
  REQUIRE_THROWS_WITH(pow(from_vector<int32_t>({1, 2}).to(gpu), 1.5),
                      Contains("pow") && Contains("i32"));
}

TEST_CASE("pow's gradient on the GPU equals the CPU's: e x^(e - 1)") {
  if (!have_gpu("pow backward")) return;
  Generator gen(3);
  for (DType t : {DType::f32, DType::f64}) {
    Tensor x0 = add(abs(randn({4, 9}, gen)), 0.2).to(t);
    for (double e : {0.5, 3.0, -1.0, 1.7}) {
      INFO("dtype " << dtype_name(t) << ", exponent " << e);
      Variable xc(x0.clone(), true), xg(x0.to(gpu), true);
      sum(pow(xc, e)).backward();
      sum(pow(xg, e)).backward();
      REQUIRE(xg.grad().device() == gpu);
      check_elementwise_close(host(xg.grad()), xc.grad(), t);
    }
  }
}
