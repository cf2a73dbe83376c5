// Every collective and point-to-point operation of the Communicator, for f32, f64, bf16, f16 and
// i32 (plus i64 where it matters), on sizes from 0 to odd thousands; sub-communicators; the
// process grid. Runs as a unit test on one rank and under `mpirun -np 2`, `-np 3` and `-np 4`
// (tests/meson.build). Values are small integers, so sums and maxima are exact in every dtype and
// checked bitwise; so are averages over 1, 2 or 4 ranks, while over 3 they are checked within
// the dtype's rounding (matches() below).
#include <numeric>

#include "parallel/communicator.h"
#include "parallel/grid.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;

namespace {

std::shared_ptr<Communicator> world() {
  return world_communicator();
}

const DType kDTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64};
const int64_t kSizes[] = {0, 1, 7, 1000, 100003};

// A small integer per (element, rank): exact in every dtype, and so are sums over 4 ranks.
// got == want, or within the rounding of x / 3 in `dt` when `inexact`.
bool matches(double got, double want, DType dt, bool inexact) {
  if (!inexact) return got == want;
  double eps = dt == DType::bf16 ? 1.0 / 128 : dt == DType::f16 ? 1.0 / 1024 : 1e-6;
  return std::abs(got - want) <= eps * std::max(1.0, std::abs(want));
}

double value(int64_t i, int rank) {
  return double((i * 7 + rank * 3) % 11 - 5);
}

// Whether `got` is element i of pattern() reduced with `op` over R ranks.
bool reduced_ok(double got, int64_t i, int R, ReduceOp op, DType dt) {
  double want = op == ReduceOp::max ? -1e9 : 0;
  for (int r = 0; r < R; ++r)
    want = op == ReduceOp::max ? std::max(want, value(i, r)) : want + value(i, r);
  if (op == ReduceOp::avg) want /= R;
  return matches(got, want, dt, op == ReduceOp::avg && R == 3);
}

Tensor pattern(DType dt, int64_t n, int rank) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = value(i, rank);
  return from_vector(v, {n}).to(dt);
}

std::vector<double> values(const Tensor& t) {
  return t.to(DType::f64).to_vector<double>();
}

}  // namespace

TEST_CASE("all_reduce: sum, avg and max of every dtype and size, in place") {
  auto w = world();
  const int R = w->size();
  for (DType dt : kDTypes)
    for (int64_t n : kSizes)
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
        if (op == ReduceOp::avg && !is_floating(dt)) continue;
        INFO(dtype_name(dt) << " n " << n << " " << reduce_op_name(op) << " on " << R << " ranks");
        Tensor t = pattern(dt, n, w->rank());
        w->all_reduce(t, op);
        std::vector<double> got = values(t);
        size_t bad = 0;
        for (int64_t i = 0; i < n; ++i) bad += !reduced_ok(got[size_t(i)], i, R, op, dt);
        CHECK(bad == 0);
        CHECK(t.dtype() == dt);
      }
}

TEST_CASE("a large f32 all-reduce, over several pieces of the shared-memory path, is exact") {
  auto w = world_communicator();
  const int R = w->size();
  const int64_t n = 5'000'003;  // 20 MB: three 8 MB pieces, the last one short and odd
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
    INFO(reduce_op_name(op) << " on " << R << " ranks");
    Tensor t = pattern(DType::f32, n, w->rank());
    w->all_reduce(t, op);
    const float* got = t.data<float>();
    size_t bad = 0;
    for (int64_t i = 0; i < n; ++i) bad += !reduced_ok(double(got[i]), i, R, op, DType::f32);
    CHECK(bad == 0);
  }
}

TEST_CASE(
    "a large f32 reduce-scatter and all-gather, over several shared-memory pieces, are exact") {
  auto w = world_communicator();
  const int R = w->size(), me = w->rank();
  const int64_t n = 2'500'001;  // 10 MB per rank: pieces of 8 MB / R, the last one short and odd
  Tensor out = Tensor::empty({R * n});
  w->all_gather(out, pattern(DType::f32, n, me));
  const float* g = out.data<float>();
  size_t bad = 0;
  for (int r = 0; r < R; ++r)
    for (int64_t i = 0; i < n; ++i) bad += double(g[r * n + i]) != value(i, r);
  CHECK(bad == 0);
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
    INFO(reduce_op_name(op) << " on " << R << " ranks");
    Tensor in = pattern(DType::f32, R * n, me);
    Tensor mine = Tensor::empty({n});
    w->reduce_scatter(mine, in, op);
    const float* got = mine.data<float>();
    bad = 0;
    for (int64_t i = 0; i < n; ++i)
      bad += !reduced_ok(double(got[i]), me * n + i, R, op, DType::f32);
    CHECK(bad == 0);
  }
}

TEST_CASE("all_reduce refuses avg of integers, and non-contiguous tensors, naming the op") {
  auto w = world();
  Tensor i = zeros({4}, DType::i32);
  REQUIRE_THROWS_WITH(w->all_reduce(i, ReduceOp::avg), Contains("all_reduce") && Contains("i32"));
  Tensor m = zeros({4, 4});
  REQUIRE_THROWS_WITH(w->all_reduce(m.t(), ReduceOp::sum),
                      Contains("all_reduce") && Contains("not contiguous"));
}

TEST_CASE("all_gather and reduce_scatter of every dtype and size") {
  auto w = world();
  const int R = w->size(), me = w->rank();
  for (DType dt : kDTypes)
    for (int64_t n : kSizes) {
      INFO(dtype_name(dt) << " n " << n << " on " << R << " ranks");
      Tensor out = Tensor::empty({R * n}, dt);
      w->all_gather(out, pattern(dt, n, me));
      std::vector<double> got = values(out);
      size_t bad = 0;
      for (int r = 0; r < R; ++r)
        for (int64_t i = 0; i < n; ++i) bad += got[size_t(r * n + i)] != value(i, r);
      CHECK(bad == 0);

      // reduce_scatter: rank r's input is R chunks; chunk c element i holds value(c * n + i, r).
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
        if (op == ReduceOp::avg && !is_floating(dt)) continue;
        INFO(reduce_op_name(op));
        Tensor in = pattern(dt, R * n, me);
        Tensor mine = Tensor::empty({n}, dt);
        w->reduce_scatter(mine, in, op);
        got = values(mine);
        bad = 0;
        for (int64_t i = 0; i < n; ++i) bad += !reduced_ok(got[size_t(i)], me * n + i, R, op, dt);
        CHECK(bad == 0);
      }
    }
  Tensor wrong = Tensor::empty({R * 3 + 1});
  REQUIRE_THROWS_WITH(w->all_gather(wrong, zeros({3})), Contains("all_gather"));
}

TEST_CASE("broadcast from every root, every dtype and size") {
  auto w = world();
  for (int root = 0; root < w->size(); ++root)
    for (DType dt : kDTypes)
      for (int64_t n : kSizes) {
        INFO(dtype_name(dt) << " n " << n << " root " << root);
        Tensor t = pattern(dt, n, w->rank());
        w->broadcast(t, root);
        CHECK(testing::bitwise_equal(t, pattern(dt, n, root)));
      }
  REQUIRE_THROWS_WITH(w->broadcast(zeros({1}), w->size()), Contains("broadcast root"));
}

TEST_CASE("send and recv around the ring, every dtype; asynchronous both ways at once") {
  auto w = world();
  const int R = w->size(), me = w->rank();
  if (R == 1) {
    REQUIRE_THROWS_WITH(w->send(zeros({1}), 0), Contains("no peer"));
    return;
  }
  const int next = (me + 1) % R, prev = (me + R - 1) % R;
  for (DType dt : kDTypes)
    for (int64_t n : kSizes) {
      INFO(dtype_name(dt) << " n " << n);
      Tensor out = pattern(dt, n, me), in = Tensor::empty({n}, dt);
      // Both directions posted before either is waited on: no rank can block the other.
      Work r = w->recv_async(in, prev, 5);
      Work s = w->send_async(out, next, 5);
      s.wait();
      r.wait();
      CHECK(values(in) == values(pattern(dt, n, prev)));
    }
  // Tags keep two messages between the same pair apart, whatever order they are received in.
  Tensor a = full({3}, double(me)), b = full({3}, double(me + 100));
  Tensor ra = Tensor::empty({3}), rb = Tensor::empty({3});
  Work wb = w->recv_async(rb, prev, 2), wa = w->recv_async(ra, prev, 1);
  w->send(a, next, 1);
  w->send(b, next, 2);
  wa.wait();
  wb.wait();
  CHECK(ra.to_vector<float>() == std::vector<float>(3, float(prev)));
  CHECK(rb.to_vector<float>() == std::vector<float>(3, float(prev + 100)));
}

TEST_CASE("asynchronous all-reduces complete in issue order and can be waited on in any order") {
  auto w = world();
  const int R = w->size();
  std::vector<Tensor> ts;
  std::vector<Work> works;
  for (int k = 0; k < 6; ++k) {
    ts.push_back(full({1000 + k}, double(k + w->rank())));
    works.push_back(w->all_reduce_async(ts.back(), ReduceOp::sum));
  }
  for (int k = 5; k >= 0; --k) works[size_t(k)].wait();
  for (int k = 0; k < 6; ++k) {
    double want = 0;
    for (int r = 0; r < R; ++r) want += k + r;
    CHECK(ts[size_t(k)].to_vector<float>() == std::vector<float>(size_t(1000 + k), float(want)));
    CHECK(works[size_t(k)].done());
  }
  w->barrier();
  CHECK(w->stats().all_reduce.calls > 0);
}

TEST_CASE("split makes groups by color, ranked by key; a negative color gets none") {
  auto w = world();
  const int R = w->size(), me = w->rank();
  // Two groups: even and odd ranks, ranked in reverse.
  auto g = w->split(me % 2, -me);
  REQUIRE(g != nullptr);
  const int members = (R + 1 - me % 2) / 2;
  CHECK(g->size() == members);
  Tensor ids = Tensor::empty({g->size()}, DType::i32);
  w->barrier();
  g->all_gather(ids, full({1}, double(me), DType::i32));
  std::vector<int32_t> want;
  for (int r = R - 1; r >= 0; --r)
    if (r % 2 == me % 2) want.push_back(r);
  CHECK(ids.to_vector<int32_t>() == want);
  auto none = w->split(me == 0 ? -1 : 0, me);
  CHECK((none == nullptr) == (me == 0));
}

TEST_CASE("process grid: tp fastest, then dp, then pp; groups hold the right ranks") {
  auto w = world();
  const int R = w->size();
  std::vector<GridSizes> grids;
  for (int pp = 1; pp <= R; ++pp)
    for (int dp = 1; dp <= R; ++dp)
      if (R % (pp * dp) == 0) grids.push_back({pp, dp, R / (pp * dp)});
  for (const GridSizes& s : grids) {
    INFO("pp " << s.pp << " dp " << s.dp << " tp " << s.tp);
    ProcessGrid grid(w, s);
    GridCoord c = grid.coord();
    CHECK(grid.rank_of(c) == w->rank());
    CHECK(w->rank() == (c.pp * s.dp + c.dp) * s.tp + c.tp);
    auto members = [&](Communicator& g) {
      Tensor ids = Tensor::empty({g.size()}, DType::i32);
      g.all_gather(ids, full({1}, double(w->rank()), DType::i32));
      return ids.to_vector<int32_t>();
    };
    std::vector<int32_t> tp, dp, pp, mp, ends;
    for (int t = 0; t < s.tp; ++t) tp.push_back(grid.rank_of({c.pp, c.dp, t}));
    for (int d = 0; d < s.dp; ++d) dp.push_back(grid.rank_of({c.pp, d, c.tp}));
    for (int p = 0; p < s.pp; ++p) pp.push_back(grid.rank_of({p, c.dp, c.tp}));
    for (int p = 0; p < s.pp; ++p)
      for (int t = 0; t < s.tp; ++t) mp.push_back(grid.rank_of({p, c.dp, t}));
    CHECK(members(*grid.tp_group()) == tp);
    CHECK(members(*grid.dp_group()) == dp);
    CHECK(members(*grid.pp_group()) == pp);
    CHECK(members(*grid.model_parallel_group()) == mp);
    // The embedding group: first and last stage of this (dp, tp), when there is a pipeline.
    const bool ends_here = s.pp > 1 && (c.pp == 0 || c.pp == s.pp - 1);
    REQUIRE((grid.embedding_group() != nullptr) == ends_here);
    if (ends_here)
      CHECK(members(*grid.embedding_group()) ==
            std::vector<int32_t>{grid.rank_of({0, c.dp, c.tp}),
                                 grid.rank_of({s.pp - 1, c.dp, c.tp})});
  }
  REQUIRE_THROWS_WITH(ProcessGrid(w, {.pp = 1, .dp = R + 1, .tp = 1}),
                      Contains("needs " + std::to_string(R + 1) + " ranks") &&
                          Contains("has " + std::to_string(R)));
}
