// ZeRO stages 1-3 against DDP (issue 19): per-rank memory of parameters, gradients and optimizer
// state after a training step, against the ZeRO paper's formulas (f32, P parameters per replica, N
// ranks: DDP 16P; stage 1: 4P + 4P + 8P/N; stage 2: 4P + 12P/N; stage 3: 16P/N); the
// communication volume per step from the group's counters, in the paper's count (an all-reduce
// of B bytes moves 2B, a reduce-scatter or an all-gather B: stages 1-2 equal DDP, stage 3 1.5x),
// against the analytic count; and the step time (min and median of --steps after one warm-up).
// Exposed communication: the step time less that of the same step with no communication at all
// (each rank alone, plain AdamW: the "local" row), at the median.
//
//   tests/mpirun.sh 2 build/bench/zero_bench                  # GPT-2-small shape, dp 2
//   tests/mpirun.sh 4 build/bench/zero_bench --n-layer 4
//
// Output: '#' lines (settings), then a markdown table on rank 0.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <thread>

#include "bench/bench_util.h"
#include "models/gpt.h"
#include "optim/optimizer.h"
#include "parallel/ddp.h"
#include "parallel/zero.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

using namespace forge;

namespace {

double mib(double bytes) {
  return bytes / double(1 << 20);
}

std::vector<ParamGroup> named_groups(const GPT& model) {
  std::vector<ParamGroup> g{ParamGroup({}, 0.1), ParamGroup({}, 0.0)};
  for (const auto& [n, p] : model.named_parameters()) {
    g[p.dim() >= 2 ? 0 : 1].params.push_back(p);
    g[p.dim() >= 2 ? 0 : 1].names.push_back(n);
  }
  return g;
}

struct Record {
  int stage = 0;
  int64_t params = 0, grads = 0, optimizer = 0;  // live bytes by tag after the steps
  int64_t params_peak = 0;    // the parameters' own peak during the steps (stage 3: units gathered)
  int64_t volume = 0;         // the group's counters, per step, in the paper's count
  double ms = 0, min_ms = 0;  // median and fastest step
};

}  // namespace

int main(int argc, char** argv) {
  GPTConfig cfg{.n_layer = 12,
                .n_head = 12,
                .n_embd = 768,
                .block_size = 64,
                .vocab_size = 50257,
                .dropout = 0.0,
                .bias = true};
  int threads = 1, steps = 5;
  int64_t batch = 1;
  double bucket_mb = 25;
  CLI::App app("ZeRO stages 1-3 against DDP: memory, traffic, step time");
  app.add_option("--n-layer", cfg.n_layer);
  app.add_option("--n-head", cfg.n_head);
  app.add_option("--n-embd", cfg.n_embd);
  app.add_option("--vocab", cfg.vocab_size);
  app.add_option("--block-size", cfg.block_size);
  app.add_option("--batch", batch, "rows per rank");
  app.add_option("--steps", steps);
  app.add_option("--threads", threads, "threads per rank");
  app.add_option("--bucket-mb", bucket_mb);
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);
  auto dp = world_communicator();
  const int N = dp->size(), me = dp->rank();
  const int64_t P = cfg.num_parameters(), bucket = int64_t(bucket_mb * (1 << 20));
  if (me == 0)
    fmt::print(
        "# zero_bench: dp {} ranks, {} threads per rank, {} cores; GPT n_layer {}, n_head {}, "
        "n_embd {}, vocab {}, block {}: P = {:.1f}M parameters f32; batch {} x {} per rank; "
        "bucket {} MiB; {} steps after 1 warm-up; commit {}\n",
        N, threads, std::thread::hardware_concurrency(), cfg.n_layer, cfg.n_head, cfg.n_embd,
        cfg.vocab_size, cfg.block_size, double(P) / 1e6, batch, cfg.block_size, bucket_mb, steps,
        bench::commit());
  std::vector<Record> records;
  // -1: local (no communication), 0: DDP, 1-3: ZeRO.
  std::vector<int64_t> shares;  // stage 3's unit shares, for the analytic traffic
  for (int stage : {-1, 0, 1, 2, 3}) {
    Record r;
    r.stage = stage;
    const MemoryStats base = memory_stats(Device::cpu());
    {
      Generator init(1337), drop(1338), data(1339 + uint64_t(me));
      GPT model(cfg, init, drop);
      std::unique_ptr<Optimizer> opt;
      std::unique_ptr<DistributedDataParallel> ddp;
      ZeroAdamW* zero = nullptr;
      if (stage <= 0) {
        opt = std::make_unique<AdamW>(named_groups(model), AdamWOptions{.lr = 1e-4});
        if (stage == 0)
          ddp = std::make_unique<DistributedDataParallel>(model.parameters(), dp,
                                                          DdpOptions{.bucket_bytes = bucket});
      } else {
        auto z = std::make_unique<ZeroAdamW>(
            named_groups(model), AdamWOptions{.lr = 1e-4}, dp,
            ZeroOptions{.stage = stage, .units = model.parameter_units()});
        zero = z.get();
        opt = std::move(z);
        if (stage == 3) model.set_parameter_gate(zero);
        shares.clear();
        for (int u = 0; u < zero->num_units(); ++u) shares.push_back(zero->unit_share(u));
      }
      reset_peak_memory(Device::cpu());  // the steps' peak, not the set-up's
      std::vector<double> times;
      CommStats before{};
      for (int s = 0; s <= steps; ++s) {
        if (s == 1) before = dp->stats();
        if (stage >= 0) dp->barrier();
        const auto t0 = std::chrono::steady_clock::now();
        Tensor x = mul(rand({batch, cfg.block_size}, data), double(cfg.vocab_size)).to(DType::i64);
        ddp ? ddp->zero_grad() : opt->zero_grad();
        {
          MemoryTagScope tag(MemoryTag::activations);
          model.loss(model.forward(x), x).backward();
        }
        if (ddp) ddp->finish_grad_sync();
        if (zero) zero->reduce_scatter_gradients();
        opt->step();
        if (s > 0)
          times.push_back(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      const CommStats after = dp->stats();
      const MemoryStats m = memory_stats(Device::cpu());
      auto tag = [&](MemoryTag t) {
        return m.live_by_tag[size_t(t)] - base.live_by_tag[size_t(t)];
      };
      r.params = tag(MemoryTag::parameters);
      r.grads = tag(MemoryTag::gradients);
      r.optimizer = tag(MemoryTag::optimizer);
      r.params_peak = m.peak_by_tag[size_t(MemoryTag::parameters)] -
                      base.live_by_tag[size_t(MemoryTag::parameters)];
      r.volume =
          (2 * (after.all_reduce.bytes - before.all_reduce.bytes) + after.reduce_scatter.bytes -
           before.reduce_scatter.bytes + after.all_gather.bytes - before.all_gather.bytes) /
          steps;
      std::sort(times.begin(), times.end());
      r.min_ms = times.front() * 1e3;
      r.ms = times[times.size() / 2] * 1e3;
    }
    records.push_back(r);
  }
  // Rank 0's figures (every rank's partition differs by at most one element's share).
  if (me == 0) {
    fmt::print(
        "| stage | parameters MiB | gradients MiB | optimizer MiB | total MiB | formula MiB | "
        "total / formula | parameters' peak MiB | volume per step MiB (counters) | analytic MiB | "
        "volume / DDP's | step ms min / median | exposed communication ms |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    const double Pd = double(P), local_ms = records[0].ms;
    // A unit's collectives cover N S_u elements (its padded size).
    int64_t all = 0;
    for (int64_t s : shares) all += 4 * N * s;
    const int64_t wpe = shares.size() > 1 ? 4 * N * shares[1] : 0;  // not gathered in backward
    const double ddp_volume = double(records[1].volume);
    for (const Record& r : records) {
      const double formula = r.stage <= 0   ? 16.0 * Pd
                             : r.stage == 1 ? 8.0 * Pd + 8.0 * Pd / N
                             : r.stage == 2 ? 4.0 * Pd + 12.0 * Pd / N
                                            : 16.0 * Pd / N;
      // DDP: one all-reduce of 4P bytes (8P). Stages 1-2: a reduce-scatter and an all-gather of
      // every unit (the halves of one all-reduce); stage 3: the reduce-scatter and an all-gather
      // in forward and in backward (wpe's backward needs no weights).
      const double analytic = r.stage < 0    ? 0.0
                              : r.stage == 0 ? 8.0 * Pd
                              : r.stage < 3  ? 2.0 * double(all)
                                             : 3.0 * double(all) - double(wpe);
      const double total = double(r.params + r.grads + r.optimizer);
      fmt::print(
          "| {} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.3f} | {:.1f} | {:.2f} | {:.2f} | "
          "{} | {:.0f} / {:.0f} | {} |\n",
          r.stage < 0    ? std::string("local")
          : r.stage == 0 ? std::string("DDP")
                         : fmt::format("ZeRO-{}", r.stage),
          mib(double(r.params)), mib(double(r.grads)), mib(double(r.optimizer)), mib(total),
          mib(formula), total / formula, mib(double(r.params_peak)), mib(double(r.volume)),
          mib(analytic),
          r.stage < 0 ? std::string("-") : fmt::format("{:.3f}", double(r.volume) / ddp_volume),
          r.min_ms, r.ms, r.stage < 0 ? std::string("-") : fmt::format("{:.0f}", r.ms - local_ms));
    }
  }
  return 0;
}
