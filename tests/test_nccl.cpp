// The NCCL communicator against the MPI one: every collective and point-to-point operation on GPU
// tensors, compared with the same operation through the CPU world communicator on CPU copies of
// the same values; sub-communicators, stats, asynchronous operations, and the errors. Runs under
// `mpirun -np 2` (suite mpi) and on one rank (suite unit). NCCL needs a GPU of its own per rank:
// with fewer GPUs than ranks (or without the CUDA backend or NCCL) the GPU cases print SKIPPED
// and why, and only the checks that need no GPU run.
#include <cstdio>

#include "nccl_testing.h"
#include "parallel/communicator.h"
#include "parallel/nccl_communicator.h"
#include "tensor/cuda/cuda.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;
using forge::testing::have_gpus;
using forge::testing::rank_gpu;

namespace {

std::shared_ptr<Communicator> mpi() {
  return world_communicator();
}

std::shared_ptr<Communicator> nccl() {
  return world_communicator_for(rank_gpu());
}

const DType kDTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16,
                         DType::i8,  DType::u8,  DType::i32,  DType::i64};
const int64_t kSizes[] = {0, 1, 7, 1000, 100003};

// Small integers per (element, rank): exact in every dtype, sums over a few ranks too (u8 ones
// are non-negative).
Tensor pattern(DType dt, int64_t n, int rank, int salt = 0) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[size_t(i)] = double((i * 7 + rank * 3 + salt) % 11 - (dt == DType::u8 ? 0 : 5));
  return from_vector(v, {n}).to(dt);
}

std::vector<double> values(const Tensor& t) {
  return t.to(Device::cpu()).to(DType::f64).to_vector<double>();
}

// The elements of `got` (any device) that differ from `want`: bitwise equal values, or within the
// dtype's rounding when `inexact` (NCCL's avg scales before it sums; MPI's divides after).
size_t mismatches(const Tensor& got, const Tensor& want, bool inexact) {
  std::vector<double> g = values(got), w = values(want);
  if (g.size() != w.size()) return std::max(g.size(), w.size());
  const DType dt = want.dtype();
  const double eps = dt == DType::bf16 ? 1.0 / 128 : dt == DType::f16 ? 1.0 / 1024 : 1e-6;
  size_t bad = 0;
  for (size_t i = 0; i < g.size(); ++i)
    bad += inexact ? std::abs(g[i] - w[i]) > eps * std::max(1.0, std::abs(w[i])) : g[i] != w[i];
  return bad;
}

}  // namespace

TEST_CASE("without a GPU per rank, making an NCCL communicator fails clearly on every rank") {
  auto w = mpi();
  Tensor any_gpu = from_vector<int32_t>({cuda::device_count() > 0 ? 1 : 0});
  w->all_reduce(any_gpu, ReduceOp::max);
  if (any_gpu.item() != 0 && nccl_built()) {
    std::printf("SKIPPED: the no-GPU error: this machine has a GPU\n");
    return;
  }
  CHECK_THROWS_WITH(nccl_communicator(w, 0), Contains("no NCCL") || Contains("no GPU"));
  CHECK_THROWS_WITH(world_communicator_for(Device::cuda(0)),
                    Contains("no NCCL") || Contains("no GPU"));
  CHECK(world_communicator_for(Device::cpu()) == w);
}

TEST_CASE("all_reduce on GPUs: sum, avg and max of every dtype and size, as MPI computes them") {
  if (!have_gpus("nccl all_reduce")) return;
  auto c = nccl();
  REQUIRE(c->backend() == "nccl");
  REQUIRE(c->rank() == mpi()->rank());
  REQUIRE(c->size() == mpi()->size());
  for (DType dt : kDTypes)
    for (int64_t n : kSizes)
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
        if (op == ReduceOp::avg && !is_floating(dt)) continue;
        INFO(dtype_name(dt) << " n " << n << " " << reduce_op_name(op));
        Tensor want = pattern(dt, n, c->rank());
        Tensor got = want.to(rank_gpu());
        c->all_reduce(got, op);
        mpi()->all_reduce(want, op);
        CHECK(got.device() == rank_gpu());
        CHECK(got.dtype() == dt);
        CHECK(mismatches(got, want, op == ReduceOp::avg) == 0);
      }
}

TEST_CASE("all_gather and reduce_scatter on GPUs, every dtype and size, as MPI computes them") {
  if (!have_gpus("nccl all_gather / reduce_scatter")) return;
  auto c = nccl();
  const int R = c->size();
  for (DType dt : kDTypes)
    for (int64_t n : kSizes) {
      INFO(dtype_name(dt) << " n " << n);
      Tensor in = pattern(dt, n, c->rank());
      Tensor want = Tensor::empty({R * n}, dt);
      mpi()->all_gather(want, in);
      Tensor got = Tensor::empty({R * n}, dt, rank_gpu());
      c->all_gather(got, in.to(rank_gpu()));
      CHECK(mismatches(got, want, false) == 0);

      for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
        if (op == ReduceOp::avg && !is_floating(dt)) continue;
        INFO(reduce_op_name(op));
        Tensor full = pattern(dt, R * n, c->rank(), 1);
        Tensor want_rs = Tensor::empty({n}, dt);
        mpi()->reduce_scatter(want_rs, full, op);
        Tensor got_rs = Tensor::empty({n}, dt, rank_gpu());
        c->reduce_scatter(got_rs, full.to(rank_gpu()), op);
        CHECK(mismatches(got_rs, want_rs, op == ReduceOp::avg) == 0);
      }
    }
}

TEST_CASE("broadcast on GPUs from every root, every dtype and size") {
  if (!have_gpus("nccl broadcast")) return;
  auto c = nccl();
  for (int root = 0; root < c->size(); ++root)
    for (DType dt : kDTypes)
      for (int64_t n : kSizes) {
        INFO("root " << root << " " << dtype_name(dt) << " n " << n);
        Tensor want = pattern(dt, n, c->rank());
        Tensor got = want.to(rank_gpu());
        mpi()->broadcast(want, root);
        c->broadcast(got, root);
        CHECK(mismatches(got, want, false) == 0);
      }
}

TEST_CASE("send and recv on GPUs around the ring, every dtype, both ways at once") {
  if (!have_gpus("nccl send / recv")) return;
  auto c = nccl();
  const int R = c->size(), me = c->rank();
  if (R == 1) {
    Tensor t = Tensor::empty({3}, DType::f32, rank_gpu());
    CHECK_THROWS_WITH(c->send(t, 0), Contains("itself"));
    return;
  }
  const int next = (me + 1) % R, prev = (me + R - 1) % R;
  for (DType dt : kDTypes)
    for (int64_t n : kSizes) {
      INFO(dtype_name(dt) << " n " << n);
      Tensor from_prev = Tensor::empty({n}, dt, rank_gpu());
      Tensor from_next = Tensor::empty({n}, dt, rank_gpu());
      // Each rank posts both sends before either receive: they must not wait for one another.
      Work s1 = c->send_async(pattern(dt, n, me).to(rank_gpu()), next);
      Work s2 = c->send_async(pattern(dt, n, me, 2).to(rank_gpu()), prev);
      Work r1 = c->recv_async(from_prev, prev);
      Work r2 = c->recv_async(from_next, next);
      r2.wait();
      r1.wait();
      s1.wait();
      s2.wait();
      CHECK(mismatches(from_prev, pattern(dt, n, prev), false) == 0);
      CHECK(mismatches(from_next, pattern(dt, n, next, 2), false) == 0);
    }
}

TEST_CASE("a pipeline's traffic: large sends forward do not hold up the gradient coming back") {
  if (!have_gpus("nccl pipeline pattern")) return;
  auto c = nccl();
  const int R = c->size(), me = c->rank();
  // Pairs (0, 1), (2, 3), ...: the lower rank sends three 32 MB activations before it waits for
  // the gradient of the first; the higher one receives the first, answers, then takes the rest.
  // On one stream the second send would wait for a receive queued behind the answer: deadlock.
  const int64_t n = int64_t(8) << 20;
  const bool lower = me % 2 == 0;
  const int peer = lower ? me + 1 : me - 1;
  if (peer >= R) return;
  if (lower) {
    std::vector<Work> sends;
    for (int m = 0; m < 3; ++m)
      sends.push_back(c->send_async(pattern(DType::f32, n, me, m).to(rank_gpu()), peer));
    Tensor grad = Tensor::empty({n}, DType::f32, rank_gpu());
    c->recv(grad, peer);
    CHECK(mismatches(grad, pattern(DType::f32, n, peer, 7), false) == 0);
    for (Work& w : sends) w.wait();
  } else {
    Tensor act = Tensor::empty({n}, DType::f32, rank_gpu());
    c->recv(act, peer);
    CHECK(mismatches(act, pattern(DType::f32, n, peer, 0), false) == 0);
    c->send(pattern(DType::f32, n, me, 7).to(rank_gpu()), peer);
    for (int m = 1; m < 3; ++m) {
      c->recv(act, peer);
      CHECK(mismatches(act, pattern(DType::f32, n, peer, m), false) == 0);
    }
  }
}

TEST_CASE("asynchronous all-reduces of tensors just computed on the GPU, waited in any order") {
  if (!have_gpus("nccl asynchronous")) return;
  auto c = nccl();
  const int n = 4;
  const int64_t len = 300007;
  std::vector<Tensor> got, want;
  std::vector<Work> works;
  for (int i = 0; i < n; ++i) {
    Tensor x = pattern(DType::f32, len, c->rank(), i);
    // Queued on the device's stream: the all-reduce must wait for it.
    Tensor g = add(x.to(rank_gpu()), x.to(rank_gpu()));
    want.push_back(add(x, x));
    got.push_back(g);
    works.push_back(c->all_reduce_async(g, i % 2 ? ReduceOp::max : ReduceOp::sum));
  }
  for (int i = n - 1; i >= 0; --i) works[size_t(i)].wait();
  for (int i = 0; i < n; ++i) {
    mpi()->all_reduce(want[size_t(i)], i % 2 ? ReduceOp::max : ReduceOp::sum);
    CHECK(works[size_t(i)].done());
    CHECK(mismatches(got[size_t(i)], want[size_t(i)], false) == 0);
  }
  works[0].wait();  // twice is fine
  // A Work dropped without waiting keeps its tensor until the operation is done.
  c->all_reduce_async(pattern(DType::f32, len, c->rank()).to(rank_gpu()), ReduceOp::sum);
  c->barrier();
}

TEST_CASE("split on GPUs: groups by color, ranked by key, as MPI makes them; negative gets none") {
  if (!have_gpus("nccl split")) return;
  auto c = nccl();
  const int me = c->rank();
  auto g = c->split(me % 2, -me);
  auto m = mpi()->split(me % 2, -me);
  REQUIRE(g != nullptr);
  REQUIRE(m != nullptr);
  CHECK(g->backend() == "nccl");
  CHECK(g->rank() == m->rank());
  CHECK(g->size() == m->size());
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
    Tensor want = pattern(DType::bf16, 1001, me);
    Tensor got = want.to(rank_gpu());
    g->all_reduce(got, op);
    m->all_reduce(want, op);
    CHECK(mismatches(got, want, op == ReduceOp::avg) == 0);
  }
  auto none = c->split(me == 0 ? -1 : 0, me);
  auto none_mpi = mpi()->split(me == 0 ? -1 : 0, me);
  CHECK((none == nullptr) == (me == 0));
  CHECK((none_mpi == nullptr) == (me == 0));
  if (none) CHECK(none->size() == c->size() - 1);
}

TEST_CASE("stats count calls and bytes as the MPI backend does") {
  if (!have_gpus("nccl stats")) return;
  const int me = mpi()->rank();
  auto g = nccl()->split(0, me);  // fresh counters
  auto m = mpi()->split(0, me);
  const int R = g->size();
  for (auto& [c, dev] : {std::pair{g, rank_gpu()}, std::pair{m, Device::cpu()}}) {
    c->all_reduce(pattern(DType::f32, 1000, me).to(dev), ReduceOp::sum);
    c->all_reduce(pattern(DType::bf16, 0, me).to(dev), ReduceOp::avg);
    c->all_gather(Tensor::empty({R * 10}, DType::f16, dev), pattern(DType::f16, 10, me).to(dev));
    c->reduce_scatter(Tensor::empty({10}, DType::f64, dev), pattern(DType::f64, R * 10, me).to(dev),
                      ReduceOp::max);
    c->broadcast(pattern(DType::i64, 5, me).to(dev), 0);
    c->barrier();
    if (R > 1) {
      Work s = c->send_async(pattern(DType::i32, 77, me).to(dev), (me + 1) % R);
      c->recv(Tensor::empty({77}, DType::i32, dev), (me + R - 1) % R);
      s.wait();
    }
  }
  const CommStats a = g->stats(), b = m->stats();
  for (auto e : {&CommStats::all_reduce, &CommStats::all_gather, &CommStats::reduce_scatter,
                 &CommStats::broadcast, &CommStats::send, &CommStats::recv, &CommStats::barrier}) {
    CHECK((a.*e).calls == (b.*e).calls);
    CHECK((a.*e).bytes == (b.*e).bytes);
    CHECK((a.*e).seconds >= 0);
  }
  CHECK(a.all_reduce.calls == 2);
  CHECK(a.all_reduce.bytes == 4000);
  CHECK(a.all_reduce.seconds > 0);
  CHECK(a.barrier.calls == 1);
}

TEST_CASE("NCCL refuses CPU tensors, MPI refuses GPU ones; each names the op and the device") {
  if (!have_gpus("nccl device checks")) return;
  auto c = nccl();
  Tensor host = Tensor::empty({4}, DType::f32);
  Tensor dev = host.to(rank_gpu());
  CHECK_THROWS_WITH(c->all_reduce(host), Contains("all_reduce") && Contains("carries cuda"));
  CHECK_THROWS_WITH(c->broadcast(host, 0), Contains("broadcast") && Contains("cpu"));
  CHECK_THROWS_WITH(mpi()->all_reduce(dev), Contains("all_reduce") && Contains("CPU tensors"));
  CHECK_THROWS_WITH(c->all_reduce(Tensor::empty({4}, DType::i32, rank_gpu()), ReduceOp::avg),
                    Contains("avg"));
  Tensor square = Tensor::empty({3, 5}, DType::f32, rank_gpu());
  CHECK_THROWS_WITH(c->all_reduce(square.t()), Contains("not contiguous"));
  CHECK_THROWS_WITH(c->all_gather(Tensor::empty({3}, DType::f32, rank_gpu()), dev),
                    Contains("all_gather"));
  CHECK_THROWS_WITH(c->send(dev, c->size()), Contains("send to rank"));
  // After refusals, the communicator still works.
  c->barrier();
}
