// The tensor-parallel mappings against the serial computation they split: a column-parallel then
// row-parallel product (Megatron's MLP), a column-parallel product with its output gathered, and
// a scattered input into a row-parallel product. Outputs and the gradients of every input and
// weight must equal the serial ones (weights compared slice by slice). Runs on 1 rank (every
// mapping the identity) and under mpirun on 2 and 4 ranks.
#include "autograd/functions.h"
#include "parallel/tp_mappings.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;
using forge::testing::max_rel_diff;

namespace {

constexpr int64_t kB = 3, kD = 8, kH = 16;

// Columns [r * n / R, (r + 1) * n / R) of a 2-D tensor, or rows with dim 0.
Tensor part(const Tensor& t, int dim, int r, int R) {
  int64_t n = t.shape()[dim] / R;
  return t.narrow(dim, r * n, n).contiguous();
}

struct Data {
  Generator g{42};  // the same on every rank
  Tensor x = randn({kB, kD}, g), w1 = randn({kD, kH}, g), w2 = randn({kH, kD}, g),
         c = randn({kB, kD}, g), ch = randn({kB, kH}, g);
};

}  // namespace

TEST_CASE(
    "copy -> column-parallel -> row-parallel -> reduce equals the serial MLP, with gradients") {
  auto tp = world_communicator();
  const int R = tp->size(), r = tp->rank();
  Data d;
  Variable x(d.x, true), w1(d.w1, true), w2(d.w2, true);
  Variable y = matmul(matmul(x, w1), w2);
  sum(mul(y, Variable(d.c))).backward();

  Variable xp(d.x, true), w1p(part(d.w1, 1, r, R), true), w2p(part(d.w2, 0, r, R), true);
  Variable yp = reduce_from_tp_region(matmul(matmul(copy_to_tp_region(xp, tp), w1p), w2p), tp);
  sum(mul(yp, Variable(d.c))).backward();

  CHECK(max_rel_diff(yp.data(), y.data()) <= 1e-6);
  CHECK(max_rel_diff(xp.grad(), x.grad()) <= 1e-6);
  CHECK(max_rel_diff(w1p.grad(), part(w1.grad(), 1, r, R)) <= 1e-6);
  CHECK(max_rel_diff(w2p.grad(), part(w2.grad(), 0, r, R)) <= 1e-6);
}

TEST_CASE("a column-parallel product gathered from the region equals the serial product") {
  auto tp = world_communicator();
  const int R = tp->size(), r = tp->rank();
  Data d;
  Variable x(d.x, true), w1(d.w1, true);
  Variable h = matmul(x, w1);
  sum(mul(h, Variable(d.ch))).backward();

  Variable xp(d.x, true), w1p(part(d.w1, 1, r, R), true);
  Variable hp = gather_from_tp_region(matmul(copy_to_tp_region(xp, tp), w1p), tp);
  sum(mul(hp, Variable(d.ch))).backward();

  CHECK(hp.shape() == h.shape());
  CHECK(max_rel_diff(hp.data(), h.data()) <= 1e-6);
  CHECK(max_rel_diff(xp.grad(), x.grad()) <= 1e-6);
  CHECK(max_rel_diff(w1p.grad(), part(w1.grad(), 1, r, R)) <= 1e-6);
}

TEST_CASE("an input scattered to the region into a row-parallel product equals the serial one") {
  auto tp = world_communicator();
  const int R = tp->size(), r = tp->rank();
  Data d;
  Variable h(d.ch, true), w2(d.w2, true);
  Variable y = matmul(h, w2);
  sum(mul(y, Variable(d.c))).backward();

  Variable hp(d.ch, true), w2p(part(d.w2, 0, r, R), true);
  Variable yp = reduce_from_tp_region(matmul(scatter_to_tp_region(hp, tp), w2p), tp);
  sum(mul(yp, Variable(d.c))).backward();

  CHECK(max_rel_diff(yp.data(), y.data()) <= 1e-6);
  CHECK(max_rel_diff(hp.grad(), h.grad()) <= 1e-6);  // gathered back from every rank's slice
  CHECK(max_rel_diff(w2p.grad(), part(w2.grad(), 0, r, R)) <= 1e-6);
}

TEST_CASE("gather and scatter of a 3-D tensor split and join the last dim in rank order") {
  auto tp = world_communicator();
  const int R = tp->size(), r = tp->rank();
  // Element (i, j, k) of rank q's part holds 100 * q + 10 * i + ... : the gathered tensor shows
  // whose slice landed where.
  Tensor mine = Tensor::empty({2, 3, 2});
  float* p = mine.data<float>();
  for (int i = 0; i < 12; ++i) p[i] = float(1000 * r + i);
  Variable g = gather_from_tp_region(Variable(mine), tp);
  REQUIRE(g.shape() == Shape{2, 3, 2 * R});
  Tensor got = g.data();
  for (int q = 0; q < R; ++q)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j)
        for (int k = 0; k < 2; ++k)
          CHECK(testing::read_element(got, {i, j, q * 2 + k}) == 1000 * q + (i * 3 + j) * 2 + k);
  // Scatter takes the slice back.
  CHECK(testing::bitwise_equal(scatter_to_tp_region(g, tp).data(), mine));
  if (R > 1) {
    Tensor odd = zeros({2, 2 * R + 1});
    REQUIRE_THROWS_WITH(scatter_to_tp_region(Variable(odd), tp), Contains("equal slices"));
  }
}
