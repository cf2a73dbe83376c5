// ZeRO stages 1-3 (parallel/zero.h) against the serial run: the same GPT, seed and batches, 20
// AdamW steps with gradient clipping (the norm of the whole averaged gradient), the serial process
// on the whole batch and each of N ranks on its rows with its partition of the optimizer state
// (stage 2: and of the gradients; 3: and of the parameters, gathered per unit by the model's
// ParameterGate calls). The losses, and at the end every weight on every rank, must agree within
// the 3D test's tolerances (test_parallel_gpt: 1e-5 per step and per tensor, 2e-4 per element),
// also with gradient accumulation (two backward passes a step) and activation checkpointing.
// Each rank's memory by tag (the allocator's counters) against the ZeRO paper's formulas within
// 10%, and the traffic (the group's counters) against the analytic count.
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

}  // namespace

struct Setup {
  int stage;
  bool model_units;  // GPT::parameter_units, else buckets of 4 KiB
  int passes;        // backward passes per step (gradient accumulation)
  bool checkpoint;   // activation checkpointing of the blocks
};

TEST_CASE("ZeRO stages 1-3 on N ranks train like one process with the whole batch") {
  auto dp = world_communicator();
  const int N = dp->size(), me = dp->rank();
  const Run want = serial_run(kB * N);
  // Every rank but 0 starts from other weights: the constructor's broadcast must fix that.
  Generator init(5 + uint64_t(me) * 100), drop(6);
  GPT model(kCfg, init, drop);
  for (const Setup su :
       {Setup{1, false, 1, false}, Setup{1, true, 1, false}, Setup{2, true, 1, false},
        Setup{2, false, 2, false}, Setup{3, true, 1, false}, Setup{3, true, 2, true}}) {
    const std::string what =
        fmt::format("ZeRO-{} on {} ranks ({}, {} backward pass{}{})", su.stage, N,
                    su.model_units ? "the model's units" : "4 KiB buckets", su.passes,
                    su.passes > 1 ? "es" : "", su.checkpoint ? ", checkpointed blocks" : "");
    INFO(what);
    const MemoryStats m0 = memory_stats(Device::cpu());
    Generator i2(5), d2(6);
    auto fresh = std::make_unique<GPT>(kCfg, i2, d2);
    if (me != 0) fresh->load_state_dict(model.state_dict());  // not the serial start
    fresh->set_checkpoint_blocks(su.checkpoint);
    ZeroOptions zo{.stage = su.stage, .units = {}, .bucket_bytes = 4096};
    if (su.model_units) zo.units = fresh->parameter_units();
    ZeroAdamW opt(named_groups(*fresh), kAdamW, dp, zo);
    if (su.stage == 3) fresh->set_parameter_gate(&opt);
    const CommStats before = dp->stats();
    double worst_loss = 0, worst_norm = 0;
    const int64_t rows = kB / su.passes;
    for (int s = 0; s < kSteps; ++s) {
      auto [x, y] = global_batch(s, kB * N);
      opt.zero_grad();
      double step_loss = 0;
      for (int m = 0; m < su.passes; ++m) {
        const int64_t at = me * kB + m * rows;
        Variable loss = fresh->loss(fresh->forward(x.narrow(0, at, rows).contiguous()),
                                    y.narrow(0, at, rows).contiguous());
        mul(loss, 1.0 / su.passes).backward();
        step_loss += loss.item() / su.passes;
      }
      opt.reduce_scatter_gradients();
      const double norm = opt.grad_norm();
      opt.clip_to_norm(norm, kClip);
      opt.step();
      Tensor l = full({1}, step_loss, DType::f64);
      dp->all_reduce(l, ReduceOp::avg);
      worst_loss = std::max(worst_loss,
                            std::abs(l.item() - want.losses[size_t(s)]) / want.losses[size_t(s)]);
      worst_norm =
          std::max(worst_norm, std::abs(norm - want.norms[size_t(s)]) / want.norms[size_t(s)]);
    }
    const CommStats after = dp->stats();
    const MemoryStats m1 = memory_stats(Device::cpu());
    CHECK(worst_loss <= 1e-5);
    CHECK(worst_norm <= 1e-5);
    NamedTensors got;
    {
      ZeroAdamW::WholeParameters whole(opt);
      got = fresh->state_dict();
      for (auto& [name, t] : got) t = t.clone();
    }
    double worst_weight = 0, worst_element = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      worst_weight = std::max(worst_weight, rel_l2(got[i].second, want.weights[i].second));
      worst_element = std::max(worst_element, max_rel_diff(got[i].second, want.weights[i].second));
    }
    CHECK(worst_weight <= 1e-5);
    CHECK(worst_element <= 2e-4);

    // Memory by tag after the steps, against the paper (P parameters, f32): parameters 4P (stage
    // 3: 4P/N), gradients 4P (stages 2-3: 4P/N), optimizer 8P/N; each within 10%. The moments
    // are exactly 8 bytes per element of the share.
    const int64_t P = opt.numel();
    auto grew = [&](MemoryTag t) {
      return double(m1.live_by_tag[size_t(t)] - m0.live_by_tag[size_t(t)]);
    };
    const double share = double(P) / N;
    CHECK(std::abs(grew(MemoryTag::parameters) / (su.stage == 3 ? 4 * share : 4.0 * P) - 1) <= 0.1);
    CHECK(std::abs(grew(MemoryTag::gradients) / (su.stage >= 2 ? 4 * share : 4.0 * P) - 1) <= 0.1);
    CHECK(std::abs(grew(MemoryTag::optimizer) / (8 * share) - 1) <= 0.10);
    int64_t moments = 0;
    for (const auto& [key, t] : opt.state())
      if (key.rfind("adamw.m.", 0) == 0 || key.rfind("adamw.v.", 0) == 0) moments += t.nbytes();
    CHECK(moments == 8 * opt.share_numel());
    // Traffic per step (the counters count the whole N S_u buffer of a unit): a reduce-scatter
    // of every unit per backward pass; an all-gather of every unit after the step (stages 1-2),
    // or in every forward and again in every backward (stage 3; the position embedding's
    // backward needs no weights, so it is not gathered there): 1.5x DDP's traffic.
    int64_t all = 0, wpe = 0;
    for (int u = 0; u < opt.num_units(); ++u) all += 4 * N * opt.unit_share(u);
    if (su.model_units) wpe = 4 * N * opt.unit_share(1);
    if (N > 1) {
      CHECK(after.reduce_scatter.bytes - before.reduce_scatter.bytes == kSteps * su.passes * all);
      CHECK(after.all_gather.bytes - before.all_gather.bytes ==
            (su.stage < 3 ? kSteps * all : kSteps * su.passes * (2 * all - wpe)));
    }
    if (me == 0)
      fmt::print(
          "{}: worst relative difference loss {:.1e}, grad norm {:.1e}, weights {:.1e} (largest "
          "element {:.1e}); per rank parameters {:.2f}, gradients {:.2f}, optimizer {:.2f} x P/N "
          "floats\n",
          what, worst_loss, worst_norm, worst_weight, worst_element,
          grew(MemoryTag::parameters) / 4 / share, grew(MemoryTag::gradients) / 4 / share,
          grew(MemoryTag::optimizer) / 4 / share);

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
    // A rank that will not write it takes part and keeps nothing (every rank here: none keeps).
    CHECK(opt.full_state(/*keep=*/false).empty());
    if (su.stage < 3) {
      ZeroAdamW again(named_groups(*fresh), kAdamW, dp, zo);
      again.load_state(full);
      const NamedTensors a = opt.state(), b = again.state();
      REQUIRE(a.size() == b.size());
      for (size_t i = 0; i < a.size(); ++i) {
        CHECK(a[i].first == b[i].first);
        CHECK(testing::bitwise_equal(a[i].second, b[i].second));
      }
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
