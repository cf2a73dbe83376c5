// The remaining tensor ops on CUDA (tensor/cuda/cuda_misc.h): casts and strided copies,
// comparisons, where and masked_fill, the in-place updates, the activation backwards, dropout,
// finiteness, index_select and concat. Each runs on the GPU and is compared with the CPU op on the
// same inputs (bit for bit where the arithmetic is the same: copies, casts, comparisons, dropout's
// mask); without a GPU the tests print SKIPPED.
#include <cmath>

#include "cuda_testing.h"
#include "tensor/cuda/cuda.h"
#include "tensor/cuda/cuda_misc.h"

using namespace forge;
using namespace forge::testing;

namespace {

Tensor on_gpu(const Tensor& t) {
  return t.to(gpu);
}
Tensor on_cpu(const Tensor& t) {
  return t.to(Device::cpu());
}

const DType kAll[] = {DType::f32, DType::f64, DType::bf16, DType::f16,
                      DType::i8,  DType::u8,  DType::i32,  DType::i64};
const DType kFloats[] = {DType::f32, DType::f64, DType::bf16, DType::f16};

// Integer-valued data in [-20, 20] (and [0, 40] for u8), exact in every dtype.
Tensor small_ints(const Shape& s, Generator& gen, DType t) {
  Tensor x = mul(randn(s, gen, DType::f64), 8.0);
  std::vector<double> v = x.to_vector<double>();
  for (double& e : v) e = std::round(std::clamp(e, -20.0, 20.0)) + (t == DType::u8 ? 20 : 0);
  return from_vector<double>(v, s).to(t);
}

}  // namespace

TEST_CASE("contiguous() of strided cuda views equals the CPU's, bit for bit, in every dtype") {
  if (!have_gpu("cuda contiguous")) return;
  Generator gen(1);
  for (DType t : kAll) {
    Tensor h = small_ints({5, 7, 3}, gen, t);
    Tensor g = on_gpu(h);
    for (Tensor (*view)(const Tensor&) : {
             +[](const Tensor& x) { return x.transpose(0, 2); },
             +[](const Tensor& x) {
               return x.permute({1, 2, 0});
             },
             +[](const Tensor& x) { return x.narrow(1, 2, 4); },
             +[](const Tensor& x) { return x.select(2, 1); },
             +[](const Tensor& x) {
               return x.narrow(0, 1, 3).expand({2, 3, 7, 3});
             },
         }) {
      Tensor gv = view(g).contiguous();
      CHECK(gv.device() == gpu);
      CHECK(gv.is_contiguous());
      CHECK(bitwise_equal(on_cpu(gv), view(h).contiguous()));
    }
    CHECK(g.contiguous().raw_data() == g.raw_data());  // already contiguous: no copy
  }
}

TEST_CASE("to(dtype) on cuda casts between every pair of dtypes as the CPU does") {
  if (!have_gpu("cuda casts")) return;
  Generator gen(2);
  for (DType from : kAll) {
    // Values every dtype holds (small integers, and halves for the floats), plus a strided view.
    Tensor h = small_ints({9, 13}, gen, from);
    if (is_floating(from)) h = mul(h, 0.5);
    for (DType to : kAll) {
      // A negative float has no u8 value (C++ leaves the conversion undefined): |x| there.
      Tensor src = is_floating(from) && to == DType::u8 ? abs(h) : h;
      Tensor g = on_gpu(src);
      CHECK(bitwise_equal(on_cpu(g.to(to)), src.to(to)));
      CHECK(bitwise_equal(on_cpu(g.t().to(to)), src.t().to(to)));
    }
  }
  // Rounding to the 16-bit floats: round to nearest even, as the CPU's conversions.
  Tensor x = mul(randn({1000}, gen), 100.0);
  for (DType to : {DType::bf16, DType::f16}) {
    CHECK(bitwise_equal(on_cpu(on_gpu(x).to(to)), x.to(to)));
    CHECK(bitwise_equal(on_cpu(on_gpu(x.to(DType::f64)).to(to)), x.to(DType::f64).to(to)));
  }
}

TEST_CASE("comparisons on cuda give the CPU's u8 masks, with broadcasting") {
  if (!have_gpu("cuda comparisons")) return;
  Generator gen(3);
  for (DType t : kAll) {
    Tensor a = small_ints({4, 1, 6}, gen, t), b = small_ints({5, 1}, gen, t);
    Tensor ga = on_gpu(a), gb = on_gpu(b);
    for (auto op : {&eq, &gt, &lt, &ne}) {
      Tensor r = op(ga, gb);
      CHECK(r.dtype() == DType::u8);
      CHECK(r.shape() == Shape{4, 5, 6});
      CHECK(bitwise_equal(on_cpu(r), op(a, b)));
    }
  }
  REQUIRE_THROWS_WITH(eq(on_gpu(ones({2})), ones({2})), Contains("eq"));
}

TEST_CASE("where and masked_fill on cuda pick as the CPU's, any integer condition") {
  if (!have_gpu("cuda where")) return;
  Generator gen(4);
  for (DType t : kAll) {
    Tensor a = small_ints({3, 4, 5}, gen, t), b = small_ints({4, 1}, gen, t);
    for (DType ct : {DType::u8, DType::i32, DType::i64}) {
      Tensor cond = gt(small_ints({3, 1, 5}, gen, DType::i32), zeros({}, DType::i32)).to(ct);
      if (ct != DType::u8) cond = mul(cond, 256.0);  // nonzero but 0 as a u8
      CHECK(bitwise_equal(on_cpu(where(on_gpu(cond), on_gpu(a), on_gpu(b))), where(cond, a, b)));
      CHECK(bitwise_equal(on_cpu(masked_fill(on_gpu(a), on_gpu(cond), 3.0)),
                          masked_fill(a, cond, 3.0)));
    }
  }
  REQUIRE_THROWS_WITH(where(ones({2}, DType::u8), on_gpu(ones({2})), on_gpu(ones({2}))),
                      Contains("where"));
}

TEST_CASE("add_ and mul_ on cuda update in place as the CPU's, views and broadcasts too") {
  if (!have_gpu("cuda add_ mul_")) return;
  Generator gen(5);
  for (DType t : kAll) {
    Tensor a = small_ints({6, 5}, gen, t), b = small_ints({5}, gen, t);
    // A negative alpha has no u8 value (C++ leaves the conversion undefined): not for u8.
    for (double alpha : {1.0, 2.0, t == DType::u8 ? 3.0 : -1.0}) {
      Tensor h = a.clone(), g = on_gpu(a);
      add_(h, b, alpha);
      add_(g, on_gpu(b), alpha);
      CHECK(bitwise_equal(on_cpu(g), h));
      // Into a transposed view: the writes land in the base tensor.
      Tensor hb = a.clone(), gb = on_gpu(a);
      Tensor hv = hb.t(), gv = gb.t();
      Tensor c = small_ints({5, 6}, gen, t);
      add_(hv, c, alpha);
      add_(gv, on_gpu(c), alpha);
      CHECK(bitwise_equal(on_cpu(gb), hb));
    }
    Tensor h = a.clone(), g = on_gpu(a);
    mul_(h, 3.0);
    mul_(g, 3.0);
    CHECK(bitwise_equal(on_cpu(g), h));
  }
  Tensor x = randn({257, 3}, gen), y = randn({257, 3}, gen);
  Tensor h = x.clone(), g = on_gpu(x);
  add_(h, y, 0.37);
  add_(g, on_gpu(y), 0.37);
  CHECK(max_rel_diff(on_cpu(g), h) < 1e-6);
  mul_(h, 0.3);
  mul_(g, 0.3);
  CHECK(max_rel_diff(on_cpu(g), h) < 1e-6);
}

TEST_CASE("activation backwards on cuda match the CPU's within the dtype's tolerance") {
  if (!have_gpu("cuda activation backwards")) return;
  Generator gen(6);
  for (DType t : kFloats) {
    for (Shape s : {Shape{1}, Shape{7, 33}, Shape{3, 5, 129}}) {
      Tensor x = mul(randn(s, gen), 3.0).to(t), g = randn(s, gen).to(t);
      Tensor gx = on_gpu(x), gg = on_gpu(g);
      const double tol = tolerance(t);
      CHECK(max_rel_diff(on_cpu(relu_backward(gg, gx)), relu_backward(g, x)) == 0);
      for (GeluApprox ap : {GeluApprox::none, GeluApprox::tanh})
        CHECK(max_rel_diff(on_cpu(gelu_backward(gg, gx, ap)), gelu_backward(g, x, ap)) < tol);
      Tensor y = tanh(x), sg = sigmoid(x);
      CHECK(max_rel_diff(on_cpu(tanh_backward(gg, on_gpu(y))), tanh_backward(g, y)) < tol);
      CHECK(max_rel_diff(on_cpu(sigmoid_backward(gg, on_gpu(sg))), sigmoid_backward(g, sg)) < tol);
      // A non-contiguous gradient.
      if (s.size() == 2) {
        Tensor gt_ = randn({s[1], s[0]}, gen).to(t);
        CHECK(max_rel_diff(on_cpu(relu_backward(on_gpu(gt_).t(), gx)), relu_backward(gt_.t(), x)) ==
              0);
      }
    }
  }
}

TEST_CASE("dropout on cuda draws the CPU's mask bit for bit and scales by 1/(1-p)") {
  if (!have_gpu("cuda dropout")) return;
  for (DType t : kFloats) {
    for (Shape s : {Shape{}, Shape{3}, Shape{5, 7}, Shape{4, 3, 129}}) {
      for (double p : {0.0, 0.1, 0.5}) {
        Generator gh(42), gd(42);
        Tensor x = randn(s, gh).to(t);
        gd.set_state(gh.state());
        DropoutResult rh = dropout(x, p, gh), rd = dropout(on_gpu(x), p, gd);
        CHECK(gh.state() == gd.state());  // the same generator advance
        CHECK(rd.mask.device() == gpu);
        CHECK(bitwise_equal(on_cpu(rd.mask), rh.mask));
        CHECK(max_rel_diff(on_cpu(rd.y), rh.y) <= tolerance(t));
        Tensor g = randn(s, gh).to(t);
        CHECK(max_rel_diff(on_cpu(dropout_backward(on_gpu(g), rd.mask, p)),
                           dropout_backward(g, rh.mask, p)) <= tolerance(t));
      }
    }
  }
  // Slices of a larger mask (tensor-parallel heads): the same bits as the CPU's slices.
  Generator gh(7), gd(7);
  Tensor mh = dropout_mask({2, 6, 5, 5}, 0.3, gh, 1, 2, 3);
  Tensor md = cuda::dropout_mask({2, 6, 5, 5}, 0.3, gd, 1, 2, 3, gpu);
  CHECK(bitwise_equal(on_cpu(md), mh));
  // Statistics of a large mask: the keep rate is 1 - p within 5 standard deviations.
  Generator gl(9);
  const int64_t n = 1 << 20;
  Tensor big = cuda::dropout_mask({n}, 0.25, gl, 0, 0, -1, gpu);
  const double kept = sum(on_cpu(big).to(DType::f64)).item() / double(n);
  CHECK(std::abs(kept - 0.75) < 5 * std::sqrt(0.25 * 0.75 / double(n)));
}

TEST_CASE("all_finite, allclose and max_abs_diff read cuda tensors") {
  if (!have_gpu("cuda all_finite")) return;
  Generator gen(10);
  for (DType t : kFloats) {
    Tensor x = randn({1000}, gen).to(t);
    CHECK(all_finite(on_gpu(x)));
    for (double bad : {INFINITY, -INFINITY, NAN}) {
      Tensor y = x.clone();
      y.narrow(0, 777, 1).fill_(bad);
      CHECK_FALSE(all_finite(on_gpu(y)));
      CHECK_FALSE(all_finite(on_gpu(y).narrow(0, 700, 100)));
      CHECK(all_finite(on_gpu(y).narrow(0, 0, 777)));
    }
    CHECK(allclose(on_gpu(x), x, 0, 0));
    CHECK(max_abs_diff(on_gpu(x), x) == 0);
  }
  CHECK(all_finite(on_gpu(ones({3}, DType::i32))));
}

TEST_CASE("index_select and concat on cuda equal the CPU's; split gives views on the device") {
  if (!have_gpu("cuda index_select concat")) return;
  Generator gen(11);
  for (DType t : kAll) {
    Tensor a = small_ints({7, 3, 5}, gen, t);
    for (DType it : {DType::i64, DType::i32, DType::u8}) {
      Tensor idx = from_vector<int64_t>({6, 0, 3, 3, 1}).to(it);
      CHECK(bitwise_equal(on_cpu(index_select(on_gpu(a), on_gpu(idx))), index_select(a, idx)));
    }
    // A non-contiguous source.
    Tensor idx = from_vector<int64_t>({2, 4});
    CHECK(bitwise_equal(on_cpu(index_select(on_gpu(a).transpose(0, 2), on_gpu(idx))),
                        index_select(a.transpose(0, 2), idx)));
    for (int d : {0, 1, 2, -1}) {
      // Parts: contiguous, a narrowed view, a transposed view.
      Tensor b = small_ints({7, 3, 5}, gen, t), c5 = small_ints({5, 3, 7}, gen, t);
      Tensor bn = b.narrow(d < 0 ? 2 : d, 0, 2), c = c5.transpose(0, 2);
      Tensor r =
          concat({on_gpu(a), on_gpu(b).narrow(d < 0 ? 2 : d, 0, 2), on_gpu(c5).transpose(0, 2)}, d);
      CHECK(r.device() == gpu);
      CHECK(bitwise_equal(on_cpu(r), concat({a, bn, c}, d)));
      std::vector<Tensor> parts = split(r, {a.size(d), bn.size(d), c.size(d)}, d);
      CHECK(parts[1].device() == gpu);
      CHECK(bitwise_equal(on_cpu(parts[1].contiguous()), bn.contiguous()));
    }
  }
  REQUIRE_THROWS_WITH(index_select(on_gpu(ones({3, 2})), on_gpu(from_vector<int64_t>({0, 3}))),
                      Contains("index 3 at position 1"));
}
