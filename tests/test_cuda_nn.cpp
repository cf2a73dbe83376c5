// Reductions and neural-network ops on CUDA against the CPU ops on the same random inputs: sum,
// mean, max/argmax, sum_to and all_finite; softmax and log_softmax with their backwards over the
// last and other dims; layer norm forward and backward; embedding and its scatter-add;
// cross-entropy forward and backward. Shapes include rows longer than a block, odd sizes, strided
// views and reductions long enough to be split across blocks. Without a GPU each device test
// prints SKIPPED with the reason.
#include <cmath>
#include <limits>

#include "cuda_testing.h"
#include "tensor/cuda/cuda.h"

using namespace forge;
using namespace forge::testing;

namespace {

// The GPU's result `got` against the CPU's `want`: same shape and dtype, on the GPU, close.
void check_close(const Tensor& got, const Tensor& want, double tol) {
  REQUIRE(got.defined());
  CHECK(got.device() == gpu);
  REQUIRE(got.shape() == want.shape());
  REQUIRE(got.dtype() == want.dtype());
  double err = max_rel_diff(host(got), want);
  INFO("relative difference " << err << " (tolerance " << tol << ")");
  CHECK(err <= tol);
}

// n indices in [0, limit) (i64), seeded.
Tensor random_indices(int64_t n, int64_t limit, Generator& gen, Shape shape) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t& x : v) x = int64_t(gen.randint(uint64_t(limit)));
  return from_vector<int64_t>(v, shape);
}

// A copy of a f32 tensor with `value` written at the given flat positions.
Tensor with_values_at(const Tensor& t, const std::vector<int64_t>& at, float value) {
  std::vector<float> v = t.contiguous().to_vector<float>();
  for (int64_t i : at) v[size_t(i)] = value;
  return from_vector<float>(v, t.shape());
}

}  // namespace

// ============================================================================================
// Reductions

TEST_CASE("sum and mean on the GPU match the CPU over all dims, chosen dims and keepdim") {
  if (!have_gpu("sum and mean")) return;
  Generator gen(11);
  for (DType t : {DType::f32, DType::f64, DType::bf16}) {
    INFO("dtype " << dtype_name(t));
    for (Shape shape : {Shape{3, 5, 7}, Shape{2, 300, 9}, Shape{33, 1, 65}}) {
      INFO("shape " << fmt::format("{}", shape));
      Tensor a = randn(shape, gen).to(t), ga = a.to(gpu);
      check_close(sum(ga), sum(a), tolerance(t));
      check_close(mean(ga), mean(a), tolerance(t));
      for (std::vector<int> dims :
           {std::vector<int>{0}, {1}, {2}, {-1}, {0, 2}, {0, 1}, {1, 2}, {0, 1, 2}, {}}) {
        INFO("dims " << fmt::format("{}", dims));
        for (bool keepdim : {false, true}) {
          check_close(sum(ga, dims, keepdim), sum(a, dims, keepdim), tolerance(t));
          check_close(mean(ga, dims, keepdim), mean(a, dims, keepdim), tolerance(t));
        }
      }
      // A strided view: the kernels read through its strides.
      Tensor v = a.transpose(0, 2), gv = ga.transpose(0, 2);
      check_close(sum(gv, {0}), sum(v, {0}), tolerance(t));
      check_close(sum(gv, {1, 2}, true), sum(v, {1, 2}, true), tolerance(t));
      check_close(sum(gv), sum(v), tolerance(t));
    }
  }
  // Long reductions, split across blocks: over a contiguous run, down columns, and everything.
  for (DType t : {DType::f32, DType::bf16}) {
    INFO("long, dtype " << dtype_name(t));
    Tensor rows = randn({3, 150001}, gen).to(t), cols = randn({100003, 5}, gen).to(t);
    Tensor wide = randn({301, 2000}, gen).to(t);
    check_close(sum(rows.to(gpu), {1}), sum(rows, {1}), 10 * tolerance(t));
    check_close(sum(cols.to(gpu), {0}), sum(cols, {0}), 10 * tolerance(t));
    check_close(sum(wide.to(gpu), {0}), sum(wide, {0}), 10 * tolerance(t));
    check_close(sum(wide.to(gpu)), sum(wide), 10 * tolerance(t));
    check_close(mean(cols.to(gpu)), mean(cols), 10 * tolerance(t));
  }
  // The same input gives the same bits every time (fixed summation order).
  Tensor big = randn({1 << 20}, gen).to(gpu);
  CHECK(bitwise_equal(host(sum(big)), host(sum(big))));
  // Integers sum to i64 exactly (u8 masks do not wrap).
  Tensor m = from_vector<uint8_t>(std::vector<uint8_t>(1000, 200), {10, 100});
  Tensor gm = m.to(gpu);
  CHECK(bitwise_equal(host(sum(gm)), sum(m)));
  CHECK(bitwise_equal(host(sum(gm, {1})), sum(m, {1})));
  CHECK(host(sum(gm)).item() == 200000.0);
  Tensor i = from_vector<int32_t>({1, -2, 3, -4, 5, -6}, {2, 3});
  CHECK(bitwise_equal(host(sum(i.to(gpu), {0}, true)), sum(i, {0}, true)));
  // Summing over an empty dim gives zeros; a 0-d tensor sums to itself.
  check_close(sum(zeros({4, 0}).to(gpu), {1}), sum(zeros({4, 0}), {1}), 0);
  check_close(sum(full({}, 2.5).to(gpu)), full({}, 2.5), 0);
}

TEST_CASE("sum_to on the GPU reverses broadcasting as the CPU does") {
  if (!have_gpu("sum_to")) return;
  Generator gen(12);
  Tensor a = randn({4, 3, 5}, gen);
  for (Shape s : {Shape{3, 1}, Shape{5}, Shape{1, 3, 5}, Shape{4, 1, 1}, Shape{}})
    check_close(sum_to(a.to(gpu), s), sum_to(a, s), 1e-5);
}

TEST_CASE("max, argmax and max over a dim on the GPU pick the CPU's values and first indices") {
  if (!have_gpu("max and argmax")) return;
  Generator gen(13);
  for (DType t : {DType::f32, DType::bf16, DType::f64, DType::i32}) {
    INFO("dtype " << dtype_name(t));
    // Few distinct values, so ties are common: the first maximum must win.
    Tensor a = mul(randn({6, 37, 9}, gen), 2.0).to(DType::i32).to(t), ga = a.to(gpu);
    CHECK(bitwise_equal(host(max(ga)), max(a)));
    for (int dim : {0, 1, 2, -1}) {
      for (bool keepdim : {false, true}) {
        MaxResult want = max(a, dim, keepdim), got = max(ga, dim, keepdim);
        CHECK(bitwise_equal(host(got.values), want.values));
        CHECK(bitwise_equal(host(got.indices), want.indices));
        CHECK(bitwise_equal(host(argmax(ga, dim, keepdim)), argmax(a, dim, keepdim)));
      }
    }
    Tensor v = a.transpose(0, 1), gv = ga.transpose(0, 1);
    CHECK(bitwise_equal(host(max(gv, 1).indices), max(v, 1).indices));
    CHECK(bitwise_equal(host(max(gv)), max(v)));
  }
  // A long dim (split across blocks) with ties spread through it.
  Tensor longrow = mul(randn({2, 200003}, gen), 3.0).to(DType::i32).to(DType::f32);
  MaxResult want = max(longrow, 1), got = max(longrow.to(gpu), 1);
  CHECK(bitwise_equal(host(got.values), want.values));
  CHECK(bitwise_equal(host(got.indices), want.indices));
  Tensor longcol = longrow.t().contiguous();
  CHECK(bitwise_equal(host(max(longcol.to(gpu), 0).indices), max(longcol, 0).indices));
  CHECK(bitwise_equal(host(max(longcol.to(gpu))), max(longcol)));
  // A NaN is the maximum, the first one wins.
  float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor n = with_values_at(randn({3, 8}, gen), {5, 6, 17}, nan);
  MaxResult nw = max(n, 1), ng = max(n.to(gpu), 1);
  CHECK(bitwise_equal(host(ng.indices), nw.indices));
  CHECK(std::isnan(host(max(n.to(gpu))).item()));
  // Errors as on the CPU.
  REQUIRE_THROWS_WITH(max(zeros({3, 0}).to(gpu), 1), Contains("empty dim"));
  REQUIRE_THROWS_WITH(max(zeros({0}).to(gpu)), Contains("empty"));
}

TEST_CASE("all_finite on the GPU finds an inf or a NaN anywhere, views included") {
  if (!have_gpu("all_finite")) return;
  Generator gen(14);
  Tensor a = randn({129, 65}, gen);
  CHECK(all_finite(a.to(gpu)));
  CHECK(all_finite(a.to(DType::bf16).to(gpu)));
  float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  CHECK_FALSE(all_finite(with_values_at(a, {129 * 65 - 1}, inf).to(gpu)));
  CHECK_FALSE(all_finite(with_values_at(a, {7}, nan).to(DType::bf16).to(gpu)));
  CHECK_FALSE(all_finite(with_values_at(a, {100}, -inf).to(gpu).t()));
  CHECK(all_finite(zeros({0}).to(gpu)));
  CHECK(all_finite(from_vector<int32_t>({1, 2}).to(gpu)));
}

// ============================================================================================
// softmax, log_softmax and their backwards

TEST_CASE("softmax and log_softmax on the GPU match the CPU over any dim, with their backwards") {
  if (!have_gpu("softmax")) return;
  Generator gen(21);
  struct Case {
    Shape shape;
    int dim;
  };
  // Rows short and long (3000 and 50257 columns: several elements per thread), odd sizes,
  // non-last dims.
  const Case cases[] = {{{7, 13}, -1},  {{4, 3000}, 1}, {{3, 50257}, -1}, {{2, 5, 6}, 1},
                        {{9, 4, 3}, 0}, {{1, 1}, 0},    {{5}, 0},         {{2, 33, 65}, 2}};
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    for (const Case& c : cases) {
      INFO("dtype " << dtype_name(t) << " shape " << fmt::format("{}", c.shape) << " dim "
                    << c.dim);
      Tensor x = mul(randn(c.shape, gen), 3.0).to(t), g = randn(c.shape, gen).to(t);
      Tensor gx = x.to(gpu), gg = g.to(gpu);
      Tensor y = softmax(x, c.dim), ly = log_softmax(x, c.dim);
      check_close(softmax(gx, c.dim), y, tolerance(t));
      check_close(log_softmax(gx, c.dim), ly, tolerance(t));
      check_close(softmax_backward(gg, y.to(gpu), c.dim), softmax_backward(g, y, c.dim),
                  tolerance(t));
      check_close(log_softmax_backward(gg, ly.to(gpu), c.dim), log_softmax_backward(g, ly, c.dim),
                  tolerance(t));
    }
  }
  // A strided view in, and a 0-d tensor.
  Tensor x = randn({6, 10}, gen), g = randn({10, 6}, gen);
  check_close(softmax(x.to(gpu).t(), -1), softmax(x.t(), -1), 1e-5);
  Tensor y = softmax(x.t(), 0);
  check_close(softmax_backward(g.to(gpu), y.to(gpu), 0), softmax_backward(g, y, 0), 1e-5);
  check_close(softmax(full({}, 3.0).to(gpu), 0), softmax(full({}, 3.0), 0), 0);
  // Large logits stay finite (the row maximum is subtracted).
  Tensor big = mul(randn({3, 100}, gen), 1000.0);
  check_close(softmax(big.to(gpu), -1), softmax(big, -1), 1e-5);
  REQUIRE_THROWS_WITH(softmax_backward(g.to(gpu), g, 0), Contains("cuda"));
}

// ============================================================================================
// Layer norm

TEST_CASE("layer norm on the GPU gives the CPU's output, mean, rstd and gradients") {
  if (!have_gpu("layer norm")) return;
  Generator gen(31);
  // Rows short and longer than a block of threads; more than 64 rows (several partial blocks of
  // dweight and dbias) and more than 4096 * 64 rows would be slow here, so 300 and 5000.
  for (Shape shape : {Shape{6, 33}, Shape{4, 1500}, Shape{2, 3, 768}, Shape{300, 40},
                      Shape{5000, 7}, Shape{17}}) {
    for (DType t : {DType::f32, DType::f64, DType::bf16}) {
      INFO("dtype " << dtype_name(t) << " shape " << fmt::format("{}", shape));
      int64_t C = shape[shape.size() - 1];
      Tensor x = add(mul(randn(shape, gen), 2.0), 0.5).to(t), dy = randn(shape, gen).to(t);
      Tensor w = add(randn({C}, gen), 1.0).to(t), b = randn({C}, gen).to(t);
      Tensor gx = x.to(gpu), gdy = dy.to(gpu), gw = w.to(gpu), gb = b.to(gpu);
      for (bool affine : {true, false}) {
        Tensor wt = affine ? w : Tensor(), bt = affine ? b : Tensor();
        Tensor gwt = affine ? gw : Tensor(), gbt = affine ? gb : Tensor();
        LayerNormResult want = layer_norm(x, wt, bt, 1e-5), got = layer_norm(gx, gwt, gbt, 1e-5);
        check_close(got.y, want.y, tolerance(t));
        check_close(got.mean, want.mean, t == DType::f64 ? 1e-12 : 1e-5);
        check_close(got.rstd, want.rstd, t == DType::f64 ? 1e-12 : 1e-5);
        LayerNormGrads gw_want = layer_norm_backward(dy, x, wt, want.mean, want.rstd);
        LayerNormGrads gw_got = layer_norm_backward(gdy, gx, gwt, got.mean, got.rstd);
        // dx subtracts two means from dxhat: allow a little more than one rounding.
        check_close(gw_got.dx, gw_want.dx, 4 * tolerance(t));
        check_close(gw_got.dbias, gw_want.dbias, 4 * tolerance(t));
        if (affine)
          check_close(gw_got.dweight, gw_want.dweight, 4 * tolerance(t));
        else
          CHECK_FALSE(gw_got.dweight.defined());
      }
      // Only some of the gradients.
      LayerNormResult f = layer_norm(x, w, b, 1e-5), gf = layer_norm(gx, gw, gb, 1e-5);
      LayerNormGrads only_dx = layer_norm_backward(gdy, gx, gw, gf.mean, gf.rstd, true, false);
      CHECK_FALSE(only_dx.dweight.defined());
      CHECK_FALSE(only_dx.dbias.defined());
      check_close(only_dx.dx, layer_norm_backward(dy, x, w, f.mean, f.rstd).dx, 4 * tolerance(t));
      LayerNormGrads only_dw = layer_norm_backward(gdy, gx, gw, gf.mean, gf.rstd, false, true);
      CHECK_FALSE(only_dw.dx.defined());
      check_close(only_dw.dweight, layer_norm_backward(dy, x, w, f.mean, f.rstd).dweight,
                  4 * tolerance(t));
    }
  }
  // A strided input: rows whose columns are not adjacent.
  Tensor xt = randn({24, 10}, gen), dyt = randn({10, 24}, gen), w = randn({24}, gen);
  LayerNormResult want = layer_norm(xt.t(), w, Tensor(), 1e-5);
  LayerNormResult got = layer_norm(xt.to(gpu).t(), w.to(gpu), Tensor(), 1e-5);
  check_close(got.y, want.y, 1e-5);
  LayerNormGrads gw =
      layer_norm_backward(dyt.to(gpu), xt.to(gpu).t(), w.to(gpu), got.mean, got.rstd);
  LayerNormGrads cw = layer_norm_backward(dyt, xt.t(), w, want.mean, want.rstd);
  check_close(gw.dx, cw.dx, 4e-5);
  check_close(gw.dweight, cw.dweight, 4e-5);
  REQUIRE_THROWS_WITH(layer_norm(xt.to(gpu).t(), w, Tensor(), 1e-5), Contains("cuda"));
}

// ============================================================================================
// Embedding

TEST_CASE("embedding on the GPU gathers the CPU's rows and its backward adds the CPU's bits") {
  if (!have_gpu("embedding")) return;
  Generator gen(41);
  for (DType t : {DType::f32, DType::bf16, DType::f64}) {
    INFO("dtype " << dtype_name(t));
    for (int64_t C : {16, 1, 777}) {
      INFO("C " << C);
      const int64_t V = 50;
      Tensor w = randn({V, C}, gen).to(t), gw = w.to(gpu);
      Tensor idx = random_indices(4 * 7, V, gen, {4, 7});
      CHECK(bitwise_equal(host(embedding(gw, idx.to(gpu))), embedding(w, idx)));
      Tensor idx32 = idx.to(DType::i32);
      CHECK(bitwise_equal(host(embedding(gw, idx32.to(gpu))), embedding(w, idx32)));
      // Strided indices and a strided weight.
      CHECK(bitwise_equal(host(embedding(gw, idx.to(gpu).t())), embedding(w, idx.t())));
      Tensor wt = randn({C, V}, gen).to(t);
      CHECK(bitwise_equal(host(embedding(wt.to(gpu).t(), idx.to(gpu))), embedding(wt.t(), idx)));
      // Backward: repeated rows (idx % 3 hits three rows many times) and scattered ones. The sum
      // for each row runs in token order with the dtype's rounding, as on the CPU: equal bits.
      for (Tensor ids : {idx, random_indices(300, 3, gen, {300}), idx32}) {
        Shape grad_shape = ids.shape();
        grad_shape.push_back(C);
        Tensor grad = randn(grad_shape, gen).to(t);
        Tensor want = embedding_backward(grad, ids, V);
        Tensor got = embedding_backward(grad.to(gpu), ids.to(gpu), V);
        CHECK(got.device() == gpu);
        CHECK(bitwise_equal(host(got), want));
      }
      // A strided grad.
      Tensor gt = randn({C, 28}, gen).to(t);
      Tensor want = embedding_backward(gt.t(), idx.reshape({28}), V);
      CHECK(bitwise_equal(host(embedding_backward(gt.to(gpu).t(), idx.reshape({28}).to(gpu), V)),
                          want));
    }
  }
  // Same answer twice (no atomics), and out-of-range indices refused as on the CPU.
  Tensor grad = randn({4000, 64}, gen).to(gpu), ids = random_indices(4000, 10, gen, {4000});
  CHECK(bitwise_equal(host(embedding_backward(grad, ids.to(gpu), 10)),
                      host(embedding_backward(grad, ids.to(gpu), 10))));
  Tensor w = randn({5, 3}, gen).to(gpu);
  Tensor bad = from_vector<int64_t>({0, 4, 5, 1});
  REQUIRE_THROWS_WITH(embedding(w, bad.to(gpu)),
                      Contains("index 5 at position 2") && Contains("out of range"));
  REQUIRE_THROWS_WITH(embedding(w, from_vector<int32_t>({-1}).to(gpu)), Contains("index -1"));
  REQUIRE_THROWS_WITH(embedding_backward(randn({4, 3}, gen).to(gpu), bad.to(gpu), 5),
                      Contains("index 5 at position 2"));
  REQUIRE_THROWS_WITH(embedding(w, bad), Contains("cuda"));
}

// ============================================================================================
// Cross-entropy

TEST_CASE("cross-entropy on the GPU gives the CPU's loss, lse, count and gradient") {
  if (!have_gpu("cross-entropy")) return;
  Generator gen(51);
  for (DType t : {DType::f32, DType::f64, DType::bf16}) {
    for (Shape shape : {Shape{9, 11}, Shape{5, 3000}, Shape{64, 50257}, Shape{1, 1}}) {
      INFO("dtype " << dtype_name(t) << " shape " << fmt::format("{}", shape));
      int64_t N = shape[0], C = shape[1];
      Tensor x = mul(randn(shape, gen), 2.0).to(t), gx = x.to(gpu);
      std::vector<int64_t> tv(static_cast<size_t>(N));
      for (int64_t i = 0; i < N; ++i)
        tv[size_t(i)] = i % 4 == 3 ? -100 : int64_t(gen.randint(uint64_t(C)));  // some ignored
      Tensor tt = from_vector<int64_t>(tv, Shape{N});  // [1] too, not a scalar
      for (Tensor targets : {tt, tt.to(DType::i32)}) {
        CrossEntropyResult want = cross_entropy(x, targets),
                           got = cross_entropy(gx, targets.to(gpu));
        CHECK(got.count == want.count);
        double acc_tol = t == DType::f64 ? 1e-12 : 1e-5;
        check_close(got.loss, want.loss, acc_tol);
        check_close(got.lse, want.lse, acc_tol);
        // d loss, with the incoming gradient on the GPU (read there) and on the host.
        Tensor grad = full({}, 1.7, want.loss.dtype());
        Tensor dwant = cross_entropy_backward(grad, x, targets, want.lse, want.count);
        check_close(cross_entropy_backward(grad.to(gpu), gx, targets.to(gpu), got.lse, got.count),
                    dwant, tolerance(t));
        check_close(cross_entropy_backward(grad, gx, targets.to(gpu), got.lse, got.count), dwant,
                    tolerance(t));
      }
    }
  }
  // Strided logits, another ignore_index, every row ignored, and errors.
  Tensor x = randn({12, 7}, gen);
  Tensor targets = from_vector<int64_t>({0, 1, 2, 3, 4, 5, 6});
  CrossEntropyResult want = cross_entropy(x.t(), targets, 2);
  CrossEntropyResult got = cross_entropy(x.to(gpu).t(), targets.to(gpu), 2);
  CHECK(got.count == want.count);
  check_close(got.loss, want.loss, 1e-5);
  check_close(cross_entropy_backward(ones({}).to(gpu), x.to(gpu).t(), targets.to(gpu), got.lse,
                                     got.count, 2),
              cross_entropy_backward(ones({}), x.t(), targets, want.lse, want.count, 2), 1e-5);
  Tensor none = full({7}, -100.0, DType::i64);
  CrossEntropyResult empty = cross_entropy(x.t().contiguous().to(gpu), none.to(gpu));
  CHECK(empty.count == 0);
  CHECK(host(empty.loss).item() == 0.0);
  REQUIRE_THROWS_WITH(
      cross_entropy(x.to(gpu), from_vector<int64_t>(std::vector<int64_t>(12, 7)).to(gpu)),
      Contains("target 7 at row 0") && Contains("7 classes"));
  REQUIRE_THROWS_WITH(cross_entropy(x.to(gpu), full({12}, 0.0, DType::i64)), Contains("cuda"));
}
