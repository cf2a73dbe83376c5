// DDP against the serial run: N ranks with batch b each train like one process with batch N * b.
// Every rank also runs the serial model itself (on the whole batch), so each rank compares its
// DDP weights with a reference computed in the same process. Runs on 1 rank as a unit test and
// under mpirun on 2 and 4 ranks.
#include <cmath>
#include <numeric>
#include <optional>

#include "autograd/autocast.h"
#include "models/gpt.h"
#include "optim/grad_scaler.h"
#include "optim/optimizer.h"
#include "parallel/ddp.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;
using forge::testing::max_rel_diff;
using forge::testing::rel_l2;

namespace {

// Without biases: the key bias of attention has a gradient that is zero in exact arithmetic
// (softmax ignores a constant added to a row of scores), so both runs see only rounding noise
// there, and AdamW scales noise up to full-size steps: those weights drift apart by ~lr per step
// in any two runs that sum in a different order, parallel or not.
const GPTConfig kCfg{.n_layer = 2,
                     .n_head = 2,
                     .n_embd = 32,
                     .block_size = 16,
                     .vocab_size = 65,
                     .dropout = 0.0,
                     .bias = false};
constexpr int64_t kB = 2;  // per rank

struct Trainer {
  Generator init, drop;
  std::shared_ptr<GPT> model;
  std::vector<Variable> params;
  std::unique_ptr<AdamW> opt;
  explicit Trainer(uint64_t seed) : init(seed), drop(seed + 1) {
    model = std::make_shared<GPT>(kCfg, init, drop);
    params = model->parameters();
    opt =
        std::make_unique<AdamW>(std::vector<ParamGroup>{{params, 0.1}},
                                // nanoGPT's lr; 1e-2 amplifies rounding noise as above
                                AdamWOptions{.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8});
  }
};

// The global batch of step `step` (the same on every rank), and this rank's rows of it.
std::pair<Tensor, Tensor> global_batch(int64_t step, int64_t rows) {
  Generator g(1000 + uint64_t(step));
  Tensor x = mul(rand({rows, kCfg.block_size}, g), double(kCfg.vocab_size)).to(DType::i64);
  Tensor y = mul(rand({rows, kCfg.block_size}, g), double(kCfg.vocab_size)).to(DType::i64);
  return {x, y};
}
Tensor rows_of(const Tensor& t, int rank, int64_t b) {
  return t.narrow(0, rank * b, b).contiguous();
}

double mean_over_ranks(Communicator& c, double v) {
  Tensor t = full({1}, v, DType::f64);
  c.all_reduce(t, ReduceOp::avg);
  return t.item();
}

// Trains `steps` steps data-parallel and serially; returns the worst relative differences of the
// per-step losses, of the first step's gradients and of the final weights; and, as the yardstick
// for the weights, how far the serial run drifts from itself with its batch's rows reversed (the
// same mathematics, other rounding). Twenty AdamW steps amplify rounding chaotically: a change
// of one rounding in GELU's formula moved the DDP weights' difference on 4 ranks from 9e-7 to 3e-6,
// and the reversed serial run's difference spans 2e-6 .. 6e-6 per tensor across such changes.
struct Compare {
  double loss = 0, grads = 0, weights = 0, element = 0;  // per tensor (rel_l2); element: largest
  double ref_weights = 0, ref_element = 0;               // the serial run against itself reversed
  int buckets = 0, started_early = 0;
};
Compare train_both(int steps, int64_t bucket_bytes, std::optional<DType> autocast = {}) {
  auto w = world_communicator();
  const int R = w->size(), me = w->rank();
  Trainer serial(7), reversed(7);
  // Every rank but 0 starts from other weights: DDP's broadcast must fix that.
  Trainer dist(7 + uint64_t(me) * 100);
  DistributedDataParallel ddp(dist.params, w, {.bucket_bytes = bucket_bytes});
  Compare c;
  c.buckets = ddp.num_buckets();
  for (int step = 0; step < steps; ++step) {
    auto [x, y] = global_batch(step, R * kB);
    std::optional<Autocast> scope;
    if (autocast) scope.emplace(*autocast);
    serial.opt->zero_grad();
    Variable ls = serial.model->loss(serial.model->forward(x), y);
    ls.backward();
    std::vector<int64_t> rows(size_t(x.size(0)));
    std::iota(rows.rbegin(), rows.rend(), int64_t(0));  // the batch's rows, last first
    Tensor back = from_vector(rows);
    reversed.opt->zero_grad();
    reversed.model->loss(reversed.model->forward(index_select(x, back)), index_select(y, back))
        .backward();
    ddp.zero_grad();
    Variable ld = dist.model->loss(dist.model->forward(rows_of(x, me, kB)), rows_of(y, me, kB));
    ld.backward();
    ddp.finish_grad_sync();
    scope.reset();
    if (step == 0)
      for (size_t i = 0; i < serial.params.size(); ++i)
        c.grads = std::max(c.grads, rel_l2(dist.params[i].grad(), serial.params[i].grad()));
    c.started_early = std::max(c.started_early, ddp.last_sync().started_in_backward);
    clip_grad_norm(serial.params, 1.0);
    clip_grad_norm(reversed.params, 1.0);
    reversed.opt->step();
    clip_grad_norm(dist.params, 1.0);
    serial.opt->step();
    dist.opt->step();
    double l_serial = ls.item(), l_dist = mean_over_ranks(*w, ld.item());
    c.loss = std::max(c.loss, std::abs(l_dist - l_serial) / std::abs(l_serial));
  }
  for (size_t i = 0; i < serial.params.size(); ++i) {
    c.weights = std::max(c.weights, rel_l2(dist.params[i].data(), serial.params[i].data()));
    c.element = std::max(c.element, max_rel_diff(dist.params[i].data(), serial.params[i].data()));
    c.ref_weights =
        std::max(c.ref_weights, rel_l2(reversed.params[i].data(), serial.params[i].data()));
    c.ref_element =
        std::max(c.ref_element, max_rel_diff(reversed.params[i].data(), serial.params[i].data()));
  }
  return c;
}

}  // namespace

TEST_CASE("DDP on N ranks with batch b equals one process with batch N*b (f32, 20 steps)") {
  const int R = world_communicator()->size();
  for (int64_t bucket : {int64_t(25) << 20, int64_t(4096)}) {
    INFO(R << " ranks, bucket " << bucket << " bytes");
    Compare c = train_both(20, bucket);
    INFO("weights: DDP " << c.weights << " per tensor, " << c.element
                         << " per element; the serial "
                            "run reversed "
                         << c.ref_weights << ", " << c.ref_element);
    // The gradients of a step: the same up to the order of the sums. After 20 steps, the 3D
    // test's tolerances (test_parallel_gpt: 1e-5 per tensor, 2e-4 per element), or, where the
    // serial run reversed drifts as far, ten times that drift (see Compare).
    CHECK(c.loss <= 1e-5);
    CHECK(c.grads <= 1e-6);
    CHECK(c.weights <= std::max(1e-5, 10 * c.ref_weights));
    CHECK(c.element <= std::max(2e-4, 10 * c.ref_element));
    if (bucket == 4096) {
      CHECK(c.buckets > 5);
      // Most buckets start from the hooks, during backward, not at the wait.
      if (R > 1) CHECK(c.started_early >= c.buckets - 1);
    } else {
      CHECK(c.buckets == 1);
    }
  }
}

TEST_CASE("DDP under bf16 autocast matches the serial bf16 run") {
  Compare c = train_both(5, 4096, DType::bf16);
  CHECK(c.loss <= 1e-3);
  CHECK(c.weights <= 1e-3);
}

TEST_CASE("no_sync accumulates micro-steps without communicating; the last one averages all") {
  auto w = world_communicator();
  const int R = w->size(), me = w->rank();
  Trainer serial(3), dist(3);
  DistributedDataParallel ddp(dist.params, w, {.bucket_bytes = 4096});
  serial.opt->zero_grad();
  ddp.zero_grad();
  for (int micro = 0; micro < 3; ++micro) {
    auto [x, y] = global_batch(micro, R * kB);
    serial.model->loss(serial.model->forward(x), y).backward();
    int64_t calls = w->stats().all_reduce.calls;
    Variable l = dist.model->loss(dist.model->forward(rows_of(x, me, kB)), rows_of(y, me, kB));
    if (micro < 2) {
      auto guard = ddp.no_sync();
      l.backward();
      CHECK(w->stats().all_reduce.calls == calls);  // nothing sent
    } else {
      l.backward();
    }
  }
  ddp.finish_grad_sync();
  for (size_t i = 0; i < serial.params.size(); ++i) {
    INFO(serial.params[i].name());
    CHECK(max_rel_diff(dist.params[i].grad(), serial.params[i].grad()) <= 1e-5);
  }
}

TEST_CASE("an inf on one rank skips the step on every rank and halves every scale") {
  auto w = world_communicator();
  const int R = w->size(), me = w->rank();
  Trainer t(5);
  DistributedDataParallel ddp(t.params, w);
  GradScaler scaler({.init_scale = 1024.0});
  std::vector<Tensor> before;
  for (auto& p : t.params) before.push_back(p.data().clone());
  auto [x, y] = global_batch(0, R * kB);
  ddp.zero_grad();
  {
    // Without sync, so that the inf can be planted before any bucket is sent (a gradient must
    // not be touched while its bucket's all-reduce is in flight).
    auto no_sync = ddp.no_sync();
    Autocast scope(DType::f16);
    scaler.scale(t.model->loss(t.model->forward(rows_of(x, me, kB)), rows_of(y, me, kB)))
        .backward();
  }
  if (me == R - 1) t.params[3].grad().data<float>()[0] = INFINITY;  // one rank, one element
  ddp.finish_grad_sync();                                           // sends every bucket
  scaler.unscale(t.params);
  scaler.set_found_inf(any_rank(*w, scaler.found_inf()));
  CHECK(scaler.found_inf());
  CHECK_FALSE(scaler.step(*t.opt, t.params));
  scaler.update();
  CHECK(scaler.scale_value() == 512.0);
  for (size_t i = 0; i < t.params.size(); ++i)
    CHECK(testing::bitwise_equal(t.params[i].data(), before[i]));
}

TEST_CASE("ranks with different models are refused on every rank, not left hanging") {
  auto w = world_communicator();
  const int R = w->size(), me = w->rank();
  REQUIRE_NOTHROW(check_same_on_all_ranks(*w, "same text", "the config"));
  if (R == 1) return;
  REQUIRE_THROWS_WITH(check_same_on_all_ranks(*w, me == 1 ? "other" : "same", "the config"),
                      Contains("the config differ") && Contains("rank 1"));
  GPTConfig cfg = kCfg;
  if (me == R - 1) cfg.n_embd = 64;
  Generator g(1), d(2);
  GPT model(cfg, g, d);
  REQUIRE_THROWS_WITH(DistributedDataParallel(model.parameters(), w),
                      Contains("parameters") && Contains("rank " + std::to_string(R - 1)));
}

TEST_CASE("DDP lays gradients out as views of its buckets, in reverse parameter order") {
  auto w = world_communicator();
  Trainer t(9);
  DistributedDataParallel ddp(t.params, w, {.bucket_bytes = 1});  // one parameter per bucket
  REQUIRE(ddp.num_buckets() == int(t.params.size()));
  for (int b = 0; b < ddp.num_buckets(); ++b)
    CHECK(ddp.bucket_params(b) == std::vector<int>{int(t.params.size()) - 1 - b});
  ddp.zero_grad();
  for (auto& p : t.params) {
    REQUIRE(p.grad().defined());
    CHECK(p.grad().shape() == p.shape());
  }
  // Optimizer::zero_grad drops the views; the hooks copy the fresh gradients into the buckets,
  // which then carry the average: the serial run's gradients.
  t.opt->zero_grad();
  Trainer serial(9);
  auto [x, y] = global_batch(0, w->size() * kB);
  serial.model->loss(serial.model->forward(x), y).backward();
  t.model->loss(t.model->forward(rows_of(x, w->rank(), kB)), rows_of(y, w->rank(), kB)).backward();
  ddp.finish_grad_sync();
  for (size_t i = 0; i < t.params.size(); ++i)
    CHECK(max_rel_diff(t.params[i].grad(), serial.params[i].grad()) <= 1e-5);
}

TEST_CASE("a second synchronised backward before finish_grad_sync is refused, naming no_sync") {
  auto w = world_communicator();
  Trainer t(4);
  DistributedDataParallel ddp(t.params, w, {.bucket_bytes = 4096});
  auto [x, y] = global_batch(0, w->size() * kB);
  auto loss = [&] {
    return t.model->loss(t.model->forward(rows_of(x, w->rank(), kB)), rows_of(y, w->rank(), kB));
  };
  ddp.zero_grad();
  loss().backward();
  REQUIRE_THROWS_WITH(loss().backward(), Contains("no_sync"));
  ddp.finish_grad_sync();  // the first backward's buckets, still consistent on every rank
}
