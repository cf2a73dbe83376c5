// Tensor views, copies, conversions and factories. Values are read back through `at`, which walks
// the raw memory with the tensor's own strides, so no check relies on the library's copy kernels.
#include <cmath>
#include <numeric>
#include <vector>

#include "tensor/tensor.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;

namespace {

// Element `idx` of an f32 tensor, read straight from memory.
float at(const Tensor& t, std::initializer_list<int64_t> idx) {
  REQUIRE(t.dtype() == DType::f32);
  REQUIRE(int(idx.size()) == t.dim());
  const float* p = static_cast<const float*>(t.raw_data());
  int d = 0;
  for (int64_t i : idx) p += i * t.stride(d++);
  return *p;
}

// 0, 1, ..., n-1 as f32 in the given shape.
Tensor iota_f32(const Shape& shape) {
  std::vector<float> v(size_t(shape.numel()));
  std::iota(v.begin(), v.end(), 0.0f);
  return from_vector(v, shape);
}

}  // namespace

TEST_CASE("empty has contiguous row-major strides and the right byte count") {
  Tensor t = Tensor::empty({2, 3, 4}, DType::f64);
  CHECK(t.defined());
  CHECK(t.shape() == Shape{2, 3, 4});
  CHECK(t.strides() == Shape{12, 4, 1});
  CHECK(t.numel() == 24);
  CHECK(t.dim() == 3);
  CHECK(t.nbytes() == 24 * 8);
  CHECK(t.itemsize() == 8);
  CHECK(t.is_contiguous());
  CHECK(t.size(-1) == 4);
  CHECK(t.stride(-3) == 12);
  CHECK_FALSE(Tensor().defined());
  REQUIRE_THROWS_WITH(Tensor::empty({2, -1}), Contains("empty") && Contains("[2, -1]"));
}

TEST_CASE("factories fill with the requested value and dtype") {
  Tensor z = zeros({2, 3}, DType::i32);
  CHECK(z.dtype() == DType::i32);
  CHECK(z.to_vector<int32_t>() == std::vector<int32_t>(6, 0));
  CHECK(ones({4}, DType::f64).to_vector<double>() == std::vector<double>(4, 1.0));
  CHECK(full({2, 2}, -2.5).to_vector<float>() == std::vector<float>(4, -2.5f));
  CHECK(full({3}, 7, DType::u8).to_vector<uint8_t>() == std::vector<uint8_t>(3, 7));
  Tensor h = full({2}, 3.14159, DType::bf16);
  CHECK(h.dtype() == DType::bf16);
  CHECK(h.to_vector<float>() == std::vector<float>{3.140625f, 3.140625f});
  Tensor s = scalar_tensor(2.5, DType::f64);
  CHECK(s.dim() == 0);
  CHECK(s.numel() == 1);
  CHECK(s.item() == 2.5);
  Tensor e = zeros({0, 3});
  CHECK(e.numel() == 0);
  CHECK(e.to_vector<float>().empty());
  CHECK(e.clone().shape() == Shape{0, 3});
}

TEST_CASE("arange counts from start to end by step, excluding end") {
  Tensor a = arange(0, 5);
  CHECK(a.dtype() == DType::i64);
  CHECK(a.to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4});
  CHECK(arange(1, 2, 0.25, DType::f32).to_vector<float>() ==
        std::vector<float>{1.0f, 1.25f, 1.5f, 1.75f});
  CHECK(arange(5, 0, -2).to_vector<int64_t>() == std::vector<int64_t>{5, 3, 1});
  CHECK(arange(3, 3).numel() == 0);
  CHECK(arange(0, 1, 0.3, DType::f64).numel() == 4);  // 0, 0.3, 0.6, 0.9
  REQUIRE_THROWS_WITH(arange(0, 1, 0), Contains("arange"));
}

TEST_CASE("from_vector copies values into the given shape and item reads one element") {
  std::vector<double> v = {1, 2, 3, 4, 5, 6};
  Tensor t = from_vector(v, {2, 3});
  CHECK(t.dtype() == DType::f64);
  CHECK(t.shape() == Shape{2, 3});
  v[0] = 100;  // a copy: the tensor does not see later changes
  CHECK(t.to_vector<double>() == std::vector<double>{1, 2, 3, 4, 5, 6});
  CHECK(from_vector(std::vector<int64_t>{4, 5}).shape() == Shape{2});
  CHECK(from_vector(std::vector<float>{9.5f}).item() == 9.5);
  CHECK(from_vector(std::vector<int8_t>{-7}).item() == -7.0);
  CHECK(t.select(1, 2).select(0, 1).item() == 6.0);
  REQUIRE_THROWS_WITH(from_vector(std::vector<float>{1, 2, 3}, {2, 2}),
                      Contains("from_vector") && Contains("[2, 2]"));
  REQUIRE_THROWS_WITH(t.item(), Contains("item") && Contains("[2, 3]"));
}

TEST_CASE("view shares storage: writes through a view show in the original") {
  Tensor a = iota_f32({3, 4});
  Tensor b = a.view({4, 3});
  CHECK(b.storage() == a.storage());
  CHECK(b.strides() == Shape{3, 1});
  b.data<float>()[5] = -1.0f;  // element 5 in row-major order: a[1][1]
  CHECK(at(a, {1, 1}) == -1.0f);
  Tensor c = a.view({-1});
  CHECK(c.shape() == Shape{12});
  CHECK(at(c, {11}) == 11.0f);
}

TEST_CASE("view infers one -1 dim and rejects bad shapes naming the op and the shapes") {
  Tensor a = iota_f32({2, 6});
  CHECK(a.view({-1, 4}).shape() == Shape{3, 4});
  CHECK(a.view({3, -1, 2}).shape() == Shape{3, 2, 2});
  CHECK(a.reshape({-1}).shape() == Shape{12});
  REQUIRE_THROWS_WITH(a.view({-1, -1}), Contains("view") && Contains("-1"));
  REQUIRE_THROWS_WITH(a.view({5, -1}),
                      Contains("view") && Contains("[5, -1]") && Contains("[2, 6]"));
  REQUIRE_THROWS_WITH(a.view({5, 3}), Contains("view") && Contains("[5, 3]") && Contains("[2, 6]"));
  REQUIRE_THROWS_WITH(a.reshape({7, -1}), Contains("reshape") && Contains("[7, -1]"));
  REQUIRE_THROWS_WITH(a.view({-2, 6}), Contains("view"));
  // A zero-element tensor cannot infer -1 (any size would do).
  REQUIRE_THROWS_AS(zeros({0, 4}).view({-1, 0}), Error);
}

TEST_CASE("view of a transposed tensor throws and points to reshape; reshape copies") {
  Tensor a = iota_f32({3, 4});
  Tensor t = a.t();  // (4, 3), strides (1, 4)
  REQUIRE_THROWS_WITH(t.view({12}), Contains("view") && Contains("reshape") && Contains("[4, 3]") &&
                                        Contains("[12]"));
  Tensor r = t.reshape({12});
  CHECK(r.storage() != a.storage());
  CHECK(r.is_contiguous());
  // Row-major order of the transpose: t[i][j] = a[j][i] = 4 j + i.
  std::vector<float> want;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) want.push_back(float(4 * j + i));
  CHECK(r.to_vector<float>() == want);
  // Splitting a dim of the transpose is still a view: no copy.
  Tensor v = t.view({2, 2, 3});
  CHECK(v.storage() == a.storage());
  CHECK(v.strides() == Shape{2, 1, 4});
  CHECK(at(v, {1, 0, 2}) == at(a, {2, 2}));
  // reshape of a contiguous tensor is a view.
  CHECK(a.reshape({6, 2}).storage() == a.storage());
}

TEST_CASE("permute reorders sizes and strides and reads the same elements") {
  Tensor a = iota_f32({2, 3, 4});
  Tensor p = a.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.strides() == Shape{1, 12, 4});
  CHECK(p.storage() == a.storage());
  CHECK_FALSE(p.is_contiguous());
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) CHECK(at(p, {k, i, j}) == float(12 * i + 4 * j + k));
  CHECK(a.permute({-1, 0, 1}).shape() == Shape{4, 2, 3});
  REQUIRE_THROWS_WITH(a.permute({0, 0, 1}), Contains("permute"));
  REQUIRE_THROWS_WITH(a.permute({0, 1}), Contains("permute"));
}

TEST_CASE("transpose and t swap two dims; t rejects tensors that are not 2-d") {
  Tensor a = iota_f32({2, 3, 4});
  Tensor b = a.transpose(0, -1);
  CHECK(b.shape() == Shape{4, 3, 2});
  CHECK(b.strides() == Shape{1, 4, 12});
  CHECK(at(b, {3, 1, 1}) == at(a, {1, 1, 3}));
  Tensor m = iota_f32({2, 5});
  CHECK(m.t().shape() == Shape{5, 2});
  CHECK(at(m.t(), {4, 1}) == 9.0f);
  m.t().select(0, 4).fill_(-3);  // column 4 of m
  CHECK(at(m, {0, 4}) == -3.0f);
  CHECK(at(m, {1, 4}) == -3.0f);
  CHECK(at(m, {1, 3}) == 8.0f);
  REQUIRE_THROWS_WITH(a.t(), Contains("t:") && Contains("[2, 3, 4]"));
  REQUIRE_THROWS_WITH(a.transpose(0, 3), Contains("transpose") && Contains("3"));
}

TEST_CASE("narrow keeps strides, moves the offset and writes through to the original") {
  Tensor a = iota_f32({4, 5});
  Tensor n = a.narrow(1, 1, 3);
  CHECK(n.shape() == Shape{4, 3});
  CHECK(n.strides() == Shape{5, 1});
  CHECK(n.offset_bytes() == 4);
  CHECK_FALSE(n.is_contiguous());
  CHECK(at(n, {2, 0}) == 11.0f);
  n.fill_(0);
  for (int64_t i = 0; i < 4; ++i) {
    CHECK(at(a, {i, 0}) == float(5 * i));
    CHECK(at(a, {i, 1}) == 0.0f);
    CHECK(at(a, {i, 3}) == 0.0f);
    CHECK(at(a, {i, 4}) == float(5 * i + 4));
  }
  Tensor rows = a.narrow(0, -2, 2);  // negative start counts from the end
  CHECK(rows.offset_bytes() == 2 * 5 * 4);
  CHECK(at(rows, {0, 4}) == 14.0f);
  CHECK(a.narrow(0, 4, 0).numel() == 0);
  REQUIRE_THROWS_WITH(a.narrow(1, 3, 3), Contains("narrow") && Contains("[4, 5]"));
}

TEST_CASE("select drops a dim and writes through to the original") {
  Tensor a = iota_f32({2, 3, 4});
  Tensor s = a.select(1, 2);
  CHECK(s.shape() == Shape{2, 4});
  CHECK(s.strides() == Shape{12, 1});
  CHECK(at(s, {1, 3}) == 23.0f);
  Tensor last = a.select(-1, -1);  // negative dim and index
  CHECK(last.shape() == Shape{2, 3});
  CHECK(at(last, {1, 0}) == 15.0f);
  s.fill_(-1);
  CHECK(at(a, {0, 2, 0}) == -1.0f);
  CHECK(at(a, {1, 2, 3}) == -1.0f);
  CHECK(at(a, {1, 1, 3}) == 19.0f);
  REQUIRE_THROWS_WITH(a.select(1, 3), Contains("select") && Contains("[2, 3, 4]"));
}

TEST_CASE("expand broadcasts size-1 and new leading dims with stride 0, sharing storage") {
  Tensor col = iota_f32({3, 1});
  Tensor e = col.expand({2, 3, 4});
  CHECK(e.shape() == Shape{2, 3, 4});
  CHECK(e.strides() == Shape{0, 1, 0});
  CHECK(e.storage() == col.storage());
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) CHECK(at(e, {i, j, k}) == float(j));
  col.fill_(5);  // the expanded view sees the new values
  CHECK(at(e, {1, 2, 3}) == 5.0f);
  CHECK(col.expand({-1, 6}).shape() == Shape{3, 6});
  CHECK(e.contiguous().to_vector<float>() == std::vector<float>(24, 5.0f));
  REQUIRE_THROWS_WITH(col.expand({2, 4}),
                      Contains("expand") && Contains("[3, 1]") && Contains("[2, 4]"));
  REQUIRE_THROWS_WITH(col.expand({3}), Contains("expand"));
}

TEST_CASE("unsqueeze and squeeze add and remove size-1 dims") {
  Tensor a = iota_f32({2, 3});
  CHECK(a.unsqueeze(0).shape() == Shape{1, 2, 3});
  CHECK(a.unsqueeze(1).shape() == Shape{2, 1, 3});
  CHECK(a.unsqueeze(1).strides()[0] == 3);
  CHECK(a.unsqueeze(1).strides()[2] == 1);
  CHECK(a.unsqueeze(-1).shape() == Shape{2, 3, 1});
  CHECK(a.unsqueeze(-1).is_contiguous());
  CHECK(a.unsqueeze(2).storage() == a.storage());
  Tensor u = a.unsqueeze(1);
  CHECK(u.squeeze(1).shape() == Shape{2, 3});
  CHECK(u.squeeze(-2).strides() == Shape{3, 1});
  CHECK(u.squeeze(0).shape() == Shape{2, 1, 3});  // size 2: unchanged
  CHECK(at(u, {1, 0, 2}) == 5.0f);
  REQUIRE_THROWS_WITH(a.unsqueeze(3), Contains("unsqueeze"));
  REQUIRE_THROWS_WITH(a.squeeze(2), Contains("squeeze"));
}

TEST_CASE("flatten merges a range of dims, copying only when the layout requires it") {
  Tensor a = iota_f32({2, 3, 4});
  CHECK(a.flatten().shape() == Shape{24});
  CHECK(a.flatten(1).shape() == Shape{2, 12});
  CHECK(a.flatten(0, 1).shape() == Shape{6, 4});
  CHECK(a.flatten(0, 1).storage() == a.storage());
  CHECK(a.flatten(-2, -1).shape() == Shape{2, 12});
  CHECK(scalar_tensor(3).flatten().shape() == Shape{1});
  Tensor t = a.transpose(1, 2);  // (2, 4, 3)
  Tensor f = t.flatten(1);
  CHECK(f.shape() == Shape{2, 12});
  for (int64_t j = 0; j < 4; ++j)
    for (int64_t k = 0; k < 3; ++k) CHECK(at(f, {1, j * 3 + k}) == at(a, {1, k, j}));
  REQUIRE_THROWS_WITH(a.flatten(2, 1), Contains("flatten"));
}

TEST_CASE("as_strided reinterprets the storage with given sizes, strides and offset") {
  Tensor a = iota_f32({10});
  Tensor w = a.as_strided({4, 3}, {2, 1});  // overlapping windows
  CHECK(w.shape() == Shape{4, 3});
  CHECK(w.strides() == Shape{2, 1});
  CHECK(w.contiguous().to_vector<float>() ==
        std::vector<float>{0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7, 8});
  Tensor o = a.as_strided({3}, {3}, 1);
  CHECK(o.contiguous().to_vector<float>() == std::vector<float>{1, 4, 7});
  Tensor n = a.narrow(0, 2, 5).as_strided({2}, {4});  // relative to the view's offset
  CHECK(n.contiguous().to_vector<float>() == std::vector<float>{2, 6});
  REQUIRE_THROWS_WITH(a.as_strided({4}, {4}), Contains("as_strided") && Contains("[4]"));
  REQUIRE_THROWS_WITH(a.as_strided({2}, {1}, 9), Contains("as_strided"));
  REQUIRE_THROWS_WITH(a.as_strided({2, 2}, {1}), Contains("as_strided"));
}

TEST_CASE("contiguous returns the same storage when already contiguous, else a packed copy") {
  Tensor a = iota_f32({3, 4});
  Tensor c = a.contiguous();
  CHECK(c.storage() == a.storage());
  CHECK(c.offset_bytes() == a.offset_bytes());
  Tensor n = a.narrow(0, 1, 1);  // one full row: contiguous although offset
  CHECK(n.is_contiguous());
  CHECK(n.contiguous().storage() == a.storage());
  Tensor t = a.t();
  Tensor tc = t.contiguous();
  CHECK(tc.storage() != a.storage());
  CHECK(tc.is_contiguous());
  CHECK(tc.strides() == Shape{3, 1});
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 3; ++j) CHECK(at(tc, {i, j}) == at(a, {j, i}));
}

TEST_CASE("clone is an independent contiguous copy") {
  Tensor a = iota_f32({2, 3});
  Tensor b = a.clone();
  CHECK(b.storage() != a.storage());
  CHECK(testing::bitwise_equal(a, b));
  b.fill_(1);
  CHECK(at(a, {1, 2}) == 5.0f);
  Tensor nc = a.t().clone();
  CHECK(nc.is_contiguous());
  CHECK(nc.shape() == Shape{3, 2});
  CHECK(at(nc, {2, 1}) == 5.0f);
}

TEST_CASE("to converts dtypes, round trips exactly where the target holds every value") {
  Tensor a = from_vector(std::vector<float>{1.5f, -2.25f, 3e-8f, 65504.0f, -0.0f, 1e30f}, {2, 3});
  CHECK(a.to(DType::f32).storage() == a.storage());
  Tensor d = a.to(DType::f64);
  CHECK(d.dtype() == DType::f64);
  CHECK(testing::bitwise_equal(d.to(DType::f32), a));
  CHECK(d.to_vector<double>()[2] == double(3e-8f));
  // bf16: 3.14159 -> 3.140625 (round to nearest), then exact back to f32.
  Tensor p = full({2}, 3.14159f).to(DType::bf16);
  CHECK(p.to(DType::f32).to_vector<float>() == std::vector<float>{3.140625f, 3.140625f});
  Tensor h = a.to(DType::f16).to(DType::f32);
  std::vector<float> hv = h.to_vector<float>();
  CHECK(hv[0] == 1.5f);
  CHECK(hv[1] == -2.25f);
  CHECK(hv[2] == f16_bits_to_f32(f32_to_f16_bits(3e-8f)));  // an f16 subnormal
  CHECK(hv[3] == 65504.0f);
  CHECK(std::signbit(hv[4]));
  CHECK(std::isinf(hv[5]));
  // Integer-valued floats convert to integers exactly, and back.
  Tensor ints = from_vector(std::vector<float>{-3, 0, 7, 100}).to(DType::i32);
  CHECK(ints.to_vector<int32_t>() == std::vector<int32_t>{-3, 0, 7, 100});
  CHECK(ints.to(DType::f64).to_vector<double>() == std::vector<double>{-3, 0, 7, 100});
  // A non-contiguous source converts in logical order.
  CHECK(iota_f32({2, 3}).t().to(DType::f64).to_vector<double>() ==
        std::vector<double>{0, 3, 1, 4, 2, 5});
}

TEST_CASE("copy_ broadcasts the source and converts its dtype") {
  Tensor dst = zeros({3, 4});
  dst.copy_(from_vector(std::vector<float>{1, 2, 3, 4}));  // a row
  CHECK(dst.to_vector<float>() == std::vector<float>{1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4});
  dst.copy_(from_vector(std::vector<int64_t>{10, 20, 30}, {3, 1}));  // a column, i64 -> f32
  CHECK(dst.to_vector<float>() ==
        std::vector<float>{10, 10, 10, 10, 20, 20, 20, 20, 30, 30, 30, 30});
  dst.copy_(scalar_tensor(-1.0, DType::f64));
  CHECK(dst.to_vector<float>() == std::vector<float>(12, -1.0f));
  // Into a non-contiguous destination: writes land in the viewed positions only.
  Tensor base = zeros({4, 3});
  Tensor view = base.t();  // (3, 4)
  view.copy_(iota_f32({3, 4}));
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 4; ++j) CHECK(at(base, {j, i}) == float(4 * i + j));
  Tensor part = zeros({2, 5});
  part.narrow(1, 1, 3).copy_(full({3}, 2.0));
  CHECK(part.to_vector<float>() == std::vector<float>{0, 2, 2, 2, 0, 0, 2, 2, 2, 0});
}

TEST_CASE("copy_ with shapes that do not broadcast names copy_ and both shapes") {
  Tensor dst = zeros({3, 4});
  REQUIRE_THROWS_AS(dst.copy_(zeros({5})), Error);
  REQUIRE_THROWS_WITH(dst.copy_(zeros({5})),
                      Contains("copy_") && Contains("[3, 4]") && Contains("[5]"));
}

TEST_CASE("fill_ writes every element of a view, in any dtype") {
  Tensor a = zeros({3, 3}, DType::i64);
  a.select(1, 1).fill_(9);
  CHECK(a.to_vector<int64_t>() == std::vector<int64_t>{0, 9, 0, 0, 9, 0, 0, 9, 0});
  Tensor h = zeros({4}, DType::f16);
  h.fill_(0.1);
  CHECK(h.to_vector<float>() == std::vector<float>(4, 0.0999755859375f));
  Tensor s = scalar_tensor(0);
  s.fill_(-4.5);
  CHECK(s.item() == -4.5);
  Tensor e = zeros({0});
  e.fill_(1);  // no elements: nothing to do
  CHECK(e.numel() == 0);
}

TEST_CASE("to_vector reads in logical order and converts") {
  Tensor a = iota_f32({2, 3});
  CHECK(a.narrow(1, 1, 2).to_vector<float>() == std::vector<float>{1, 2, 4, 5});
  CHECK(a.to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
  CHECK(arange(0, 3).to_vector<double>() == std::vector<double>{0, 1, 2});
}

TEST_CASE("data<T> refuses a T that is not the tensor's dtype, naming both") {
  Tensor a = zeros({2}, DType::f64);
  CHECK(a.data<double>() == a.raw_data());
  REQUIRE_THROWS_WITH(a.data<float>(), Contains("f32") && Contains("f64"));
}

TEST_CASE("0-d tensors view, reshape and read as one element") {
  Tensor s = scalar_tensor(7, DType::i32);
  CHECK(s.shape() == Shape{});
  CHECK(s.is_contiguous());
  CHECK(s.reshape({1, 1}).shape() == Shape{1, 1});
  CHECK(s.unsqueeze(0).shape() == Shape{1});
  CHECK(from_vector(std::vector<float>{4}, {1}).view({}).item() == 4.0);
  CHECK(s.to(DType::f32).item() == 7.0);
  CHECK(s.expand({2, 2}).contiguous().to_vector<int32_t>() == std::vector<int32_t>(4, 7));
}

TEST_CASE("str shows shape, dtype, device and small tensors' values") {
  Tensor a = from_vector(std::vector<float>{1, 2.5f}, {1, 2});
  CHECK(a.str() == "Tensor(shape=[1, 2], dtype=f32, device=cpu, values=[1, 2.5])");
  CHECK(Tensor().str() == "Tensor(undefined)");
}
