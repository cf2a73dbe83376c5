// ZeRO stage 1 (parallel/zero.h) against the serial run: the same GPT, seed and batches, 20 AdamW
// steps with gradient clipping (the norm of the whole averaged gradient), the serial process on
// the whole batch and each of N ranks on its rows with its partition of the optimizer state. The
// losses, and at the end every weight on every rank, must agree within the 3D test's tolerances
// (test_parallel_gpt: 1e-5 per step and per tensor, 2e-4 per element). Also each rank's optimizer
// memory (the allocator's counters) against 8 P / N bytes, and the traffic (the group's counters)
// against DDP's: a reduce-scatter and an all-gather of P elements per step, one all-reduce.
//
// 1 rank (unit suite): one partition, the serial optimizer. Under mpirun: 2 and 4 ranks.
#include <cmath>
#include <map>

#include "models/gpt.h"
#include "parallel/zero.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;
using forge::testing::max_rel_diff;
using forge::testing::rel_l2;

namespace {

// Without biases, as test_ddp explains (AdamW turns the rounding noise of the exactly-zero key
// bias gradient into full-size steps in any two runs that sum in different orders).
const GPTConfig kCfg{.n_layer = 2,
                     .n_head = 2,
                     .n_embd = 32,
                     .block_size = 16,
                     .vocab_size = 65,
                     .dropout = 0.0,
                     .bias = false};
constexpr int64_t kB = 2;  // rows per rank
constexpr int kSteps = 20;
constexpr double kClip = 0.5;
const AdamWOptions kAdamW{.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8};

std::pair<Tensor, Tensor> global_batch(int step, int64_t rows) {
  Generator g(700 + uint64_t(step));
  Tensor x = mul(rand({rows, kCfg.block_size}, g), double(kCfg.vocab_size)).to(DType::i64);
  Tensor y = mul(rand({rows, kCfg.block_size}, g), double(kCfg.vocab_size)).to(DType::i64);
  return {x, y};
}

// The recipe's groups: matrices with weight decay, then the rest, named.
std::vector<ParamGroup> named_groups(const GPT& model) {
  std::vector<ParamGroup> g{ParamGroup({}, 0.1), ParamGroup({}, 0.0)};
  for (const auto& [n, p] : model.named_parameters()) {
    g[p.dim() >= 2 ? 0 : 1].params.push_back(p);
    g[p.dim() >= 2 ? 0 : 1].names.push_back(n);
  }
  return g;
}

struct Run {
  std::vector<double> losses, norms;
  NamedTensors weights, optimizer;
};

Run serial_run(int64_t rows) {
  Generator init(5), drop(6);
  GPT model(kCfg, init, drop);
  AdamW opt(named_groups(model), kAdamW);
  std::vector<Variable> params = model.parameters();
  Run run;
  for (int s = 0; s < kSteps; ++s) {
    auto [x, y] = global_batch(s, rows);
    opt.zero_grad();
    Variable loss = model.loss(model.forward(x), y);
    loss.backward();
    run.losses.push_back(loss.item());
    run.norms.push_back(clip_grad_norm(params, kClip));
    opt.step();
  }
  run.weights = model.state_dict();
  run.optimizer = opt.state();
  return run;
}

int64_t rounded(int64_t bytes) {
  return (bytes + 63) / 64 * 64;
}

}  // namespace

TEST_CASE("ZeRO stage 1 on N ranks trains like one process with the whole batch") {
  auto dp = world_communicator();
  const int N = dp->size(), me = dp->rank();
  const Run want = serial_run(kB * N);
  // Every rank but 0 starts from other weights: the constructor's broadcast must fix that.
  Generator init(5 + uint64_t(me) * 100), drop(6);
  GPT model(kCfg, init, drop);
  for (const int64_t bucket : {int64_t(1) << 20, int64_t(4096)}) {
    INFO(N << " ranks, bucket " << bucket << " bytes");
    Generator i2(5), d2(6);
    GPT fresh(kCfg, i2, d2);
    if (me != 0) fresh.load_state_dict(model.state_dict());  // not the serial start
    ZeroAdamW opt(named_groups(fresh), kAdamW, dp, bucket);
    const CommStats before = dp->stats();
    double worst_loss = 0, worst_norm = 0;
    for (int s = 0; s < kSteps; ++s) {
      auto [x, y] = global_batch(s, kB * N);
      opt.zero_grad();
      Variable loss = fresh.loss(fresh.forward(x.narrow(0, me * kB, kB).contiguous()),
                                 y.narrow(0, me * kB, kB).contiguous());
      loss.backward();
      opt.reduce_scatter_gradients();
      const double norm = opt.grad_norm();
      opt.clip_to_norm(norm, kClip);
      opt.step();
      Tensor l = full({1}, loss.item(), DType::f64);
      dp->all_reduce(l, ReduceOp::avg);
      worst_loss = std::max(worst_loss,
                            std::abs(l.item() - want.losses[size_t(s)]) / want.losses[size_t(s)]);
      worst_norm =
          std::max(worst_norm, std::abs(norm - want.norms[size_t(s)]) / want.norms[size_t(s)]);
    }
    const CommStats after = dp->stats();
    CHECK(worst_loss <= 1e-5);
    CHECK(worst_norm <= 1e-5);
    const NamedTensors got = fresh.state_dict();
    double worst_weight = 0, worst_element = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      worst_weight = std::max(worst_weight, rel_l2(got[i].second, want.weights[i].second));
      worst_element = std::max(worst_element, max_rel_diff(got[i].second, want.weights[i].second));
    }
    CHECK(worst_weight <= 1e-5);
    CHECK(worst_element <= 2e-4);
    if (me == 0)
      fmt::print(
          "ZeRO-1 on {} ranks (bucket {}): worst relative difference loss {:.1e}, grad norm "
          "{:.1e}, weights {:.1e} (largest element {:.1e})\n",
          N, bucket, worst_loss, worst_norm, worst_weight, worst_element);

    // Memory: AdamW's two moments for this rank's elements alone (each piece's tensor rounded
    // to the allocator's 64 bytes), within 10% of 8 P / N.
    const int64_t P = opt.numel(), mine = opt.partition_end() - opt.partition_begin();
    int64_t moments = 0;
    for (const auto& [key, t] : opt.state())
      if (key.rfind("adamw.m.", 0) == 0 || key.rfind("adamw.v.", 0) == 0) moments += t.nbytes();
    CHECK(moments == 8 * mine);
    CHECK(std::abs(double(moments) / (8.0 * double(P) / N) - 1) <= 0.10);
    // Traffic: per step a reduce-scatter and an all-gather of S = ceil(P / N) elements per rank,
    // N S in all (the counters count the whole buffer): the halves of one all-reduce of P.
    const int64_t S = (P + N - 1) / N;
    if (N > 1) {
      CHECK(after.reduce_scatter.bytes - before.reduce_scatter.bytes == kSteps * 4 * N * S);
      CHECK(after.all_gather.bytes - before.all_gather.bytes == kSteps * 4 * N * S);
    }
    CHECK(rounded(4 * N * S) >= 4 * P);

    // The whole state by name (what checkpoints store) is the serial AdamW's, and loads back.
    const NamedTensors full = opt.full_state();
    std::map<std::string, Tensor> serial(want.optimizer.begin(), want.optimizer.end());
    REQUIRE(full.size() == serial.size());
    double worst_moment = 0;
    for (const auto& [key, t] : full) {
      INFO(key);
      REQUIRE(serial.count(key));
      if (key.rfind("adamw.m.", 0) == 0 || key.rfind("adamw.v.", 0) == 0)
        worst_moment = std::max(worst_moment, rel_l2(t, serial.at(key)));
      else
        CHECK(testing::bitwise_equal(t, serial.at(key)));
    }
    CHECK(worst_moment <= 1e-4);
    ZeroAdamW again(named_groups(fresh), kAdamW, dp, bucket);
    again.load_state(full);
    const NamedTensors a = opt.state(), b = again.state();
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].first == b[i].first);
      CHECK(testing::bitwise_equal(a[i].second, b[i].second));
    }
    if (me == 0) fmt::print("  moments against the serial AdamW's: {:.1e}\n", worst_moment);
  }
}

TEST_CASE("ZeRO needs named f32 parameters") {
  auto dp = world_communicator();
  Generator init(1), drop(2);
  GPT model(kCfg, init, drop);
  REQUIRE_THROWS_WITH(ZeroAdamW({ParamGroup(model.parameters(), 0.1)}, kAdamW, dp),
                      Contains("needs a name"));
}
