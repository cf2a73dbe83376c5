// ZeRO against DDP (issue 19): per-rank memory of parameters, gradients and optimizer state after
// a training step, against the ZeRO paper's formulas (f32, P parameters per replica, N ranks:
// DDP 4P + 4P + 8P; stage 1: 4P + 4P + 8P/N), the traffic per step from the group's counters
// against the analytic count, and the step time (median of --steps after one warm-up).
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
  int64_t comm_bytes = 0;                        // the group's counters, per step
  double ms = 0;                                 // median step
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
  int threads = 1, steps = 3;
  int64_t batch = 1;
  double bucket_mb = 25;
  CLI::App app("ZeRO stage 1 against DDP: memory, traffic, step time");
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
  for (int stage : {0, 1}) {
    Record r;
    r.stage = stage;
    const MemoryStats base = memory_stats(Device::cpu());
    {
      Generator init(1337), drop(1338), data(1339 + uint64_t(me));
      GPT model(cfg, init, drop);
      std::unique_ptr<Optimizer> opt;
      std::unique_ptr<DistributedDataParallel> ddp;
      ZeroAdamW* zero = nullptr;
      if (stage == 0) {
        opt = std::make_unique<AdamW>(named_groups(model), AdamWOptions{.lr = 1e-4});
        ddp = std::make_unique<DistributedDataParallel>(model.parameters(), dp,
                                                        DdpOptions{.bucket_bytes = bucket});
      } else {
        auto z =
            std::make_unique<ZeroAdamW>(named_groups(model), AdamWOptions{.lr = 1e-4}, dp, bucket);
        zero = z.get();
        opt = std::move(z);
      }
      std::vector<double> times;
      CommStats before{};
      for (int s = 0; s <= steps; ++s) {
        if (s == 1) before = dp->stats();
        dp->barrier();
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
      r.comm_bytes =
          (after.all_reduce.bytes - before.all_reduce.bytes + after.reduce_scatter.bytes -
           before.reduce_scatter.bytes + after.all_gather.bytes - before.all_gather.bytes) /
          steps;
      std::sort(times.begin(), times.end());
      r.ms = times[times.size() / 2] * 1e3;
    }
    records.push_back(r);
  }
  // Rank 0's figures (every rank's partition differs by at most one element's share).
  if (me == 0) {
    fmt::print(
        "| stage | parameters MiB | gradients MiB | optimizer MiB | total MiB | formula MiB | "
        "total / formula | traffic per step MiB (counters) | analytic MiB | step ms (median) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n");
    for (const Record& r : records) {
      const double formula =
          r.stage == 0 ? 16.0 * double(P) : 8.0 * double(P) + 8.0 * double(P) / N;
      // DDP: one all-reduce of P (the counter counts the buffer: 4P). ZeRO-1: a reduce-scatter and
      // an all-gather of N ceil(P / N) elements each (4 N S bytes each): the halves of one
      // all-reduce, the same bytes on the wire.
      const int64_t S = (P + N - 1) / N;
      const double analytic = r.stage == 0 ? 4.0 * double(P) : 8.0 * double(N * S);
      const double total = double(r.params + r.grads + r.optimizer);
      fmt::print(
          "| {} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.3f} | {:.2f} | {:.2f} | "
          "{:.0f} |\n",
          r.stage, mib(double(r.params)), mib(double(r.grads)), mib(double(r.optimizer)),
          mib(total), mib(formula), total / formula, mib(double(r.comm_bytes)), mib(analytic),
          r.ms);
    }
  }
  return 0;
}
