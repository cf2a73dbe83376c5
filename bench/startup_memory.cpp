// Start-up memory per rank (issue 19): each rank builds its share of a GPT with random
// initialisation on every tp x pp layout of the world, and its allocator peak over the
// construction is compared with the analytic bytes of the parameters it holds
// (gpt_shard_numel x 4). Also each rank's peak resident set (VmHWM, the whole process: binary,
// MPI buffers and all) when one layout is run.
//
//   tests/mpirun.sh 4 build/bench/startup_memory            # GPT-2-medium shape, f32
//   tests/mpirun.sh 4 build/bench/startup_memory --tp 2     # one layout: its resident sets
//   build/bench/startup_memory --n-layer 12 --n-embd 768 --n-head 12
//   tests/mpirun.sh 4 build/bench/startup_memory --zero3   # dp 4 under ZeRO-3 instead
//
// --zero3: the world is one data-parallel group under ZeRO stage 3. Each rank builds the model
// without parameter memory (DeferParameterMemory) and fills its partition from the model's
// initial values: its peak against 8P/N (the partition's weights and its gradient buffer, both
// kept from the start; AdamW's 8P/N come at the first step) plus one piece of the largest
// parameter (its initial values, copied in); and, for comparison, the way before (the whole model
// built, then partitioned).
//
// The resident set is printed only for a run of one layout (--tp): the allocator keeps freed
// blocks for reuse, so after several layouts a process holds more than any one of them needs.
// Before issue 19 every rank built the serial model to cut its share from it: its peak was the
// whole model plus its share; the table's last column gives that figure for comparison.
// Output: '#' lines (settings), then a markdown table on rank 0.
#include <CLI/CLI.hpp>
#include <fstream>
#include <optional>
#include <thread>

#include "bench/bench_util.h"
#include "parallel/grid.h"
#include "parallel/tensor_parallel.h"
#include "parallel/zero.h"
#include "tensor/parallel.h"

using namespace forge;

namespace {

// The process's peak resident set in bytes (Linux: VmHWM of /proc/self/status).
int64_t peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

double mib(double bytes) {
  return bytes / double(1 << 20);
}

// ZeRO-3 over the whole world: one rank's start-up peak, the model built without parameter
// memory (deferred) or whole, then ZeroAdamW's partition made.
double zero3_startup_peak(const GPTConfig& cfg, std::shared_ptr<Communicator> world,
                          bool deferred) {
  const int64_t before = memory_stats(Device::cpu()).live_bytes;
  reset_peak_memory(Device::cpu());
  Generator init(1337), drop(1338);
  std::optional<GPT> model;
  {
    std::optional<DeferParameterMemory> defer;
    if (deferred) defer.emplace();
    model.emplace(cfg, init, drop);
  }
  std::vector<Variable> params;
  std::vector<std::string> names;
  for (auto& [name, p] : model->named_parameters()) {
    params.push_back(p);
    names.push_back(name);
  }
  ZeroOptions z{.stage = 3, .units = model->parameter_units()};
  if (deferred)
    z.init = [&](const std::string& name, IndexRange e) { return model->initial_values(name, e); };
  ZeroAdamW opt({ParamGroup(params, 0.0, names)}, {}, std::move(world), z);
  return double(memory_stats(Device::cpu()).peak_bytes - before);
}

}  // namespace

int main(int argc, char** argv) {
  GPTConfig cfg{.n_layer = 24,
                .n_head = 16,
                .n_embd = 1024,
                .block_size = 1024,
                .vocab_size = 50257,
                .dropout = 0.0,
                .bias = true};
  int threads = 1, only_tp = 0;
  CLI::App app("start-up memory per rank of every tp x pp layout");
  app.add_option("--n-layer", cfg.n_layer);
  app.add_option("--n-head", cfg.n_head);
  app.add_option("--n-embd", cfg.n_embd);
  app.add_option("--block-size", cfg.block_size);
  app.add_option("--vocab", cfg.vocab_size);
  app.add_option("--threads", threads, "threads per rank");
  app.add_option("--tp", only_tp, "run only the layout with this tp (pp = ranks / tp)");
  bool zero3 = false;
  app.add_flag("--zero3", zero3, "dp = ranks under ZeRO-3 instead of the tp x pp layouts");
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);
  auto world = world_communicator();
  const int N = world->size(), me = world->rank();
  const double whole = double(cfg.num_parameters()) * 4;
  if (zero3) {
    // The partition's weights and gradient (8P/N) and a piece of the largest parameter.
    int64_t largest = 0;
    for (const auto& [name, shape] : gpt_parameter_shapes(cfg))
      largest = std::max(largest, shape.numel());
    const double analytic = 2 * whole / N + double(largest) * 4 / N;
    const double deferred = zero3_startup_peak(cfg, world, true);
    const double before = zero3_startup_peak(cfg, world, false);
    Tensor rows = zeros({N, 2}, DType::f64);
    rows.narrow(0, me, 1).copy_(from_vector<double>({deferred, before}, {1, 2}));
    world->all_reduce(rows, ReduceOp::sum);
    if (me == 0) {
      fmt::print(
          "# startup_memory --zero3: dp {}, GPT n_layer {}, n_embd {}, vocab {}: {:.1f}M "
          "parameters; commit {}\n| rank | 8P/N + a piece of the largest MiB | deferred build peak "
          "MiB | ratio | whole build then partition MiB |\n|---|---|---|---|---|\n",
          N, cfg.n_layer, cfg.n_embd, cfg.vocab_size, double(cfg.num_parameters()) / 1e6,
          bench::commit());
      const std::vector<double> r = rows.to_vector<double>();
      for (int k = 0; k < N; ++k)
        fmt::print("| {} | {:.1f} | {:.1f} | {:.3f} | {:.1f} |\n", k, mib(analytic),
                   mib(r[size_t(2 * k)]), r[size_t(2 * k)] / analytic, mib(r[size_t(2 * k + 1)]));
    }
    return 0;
  }
  if (me == 0) {
    fmt::print(
        "# startup_memory: {} ranks, {} threads per rank, {} cores; GPT n_layer {}, n_head {}, "
        "n_embd {}, block {}, vocab {}, bias {}: {:.1f}M parameters, {:.1f} MiB f32; commit {}\n",
        N, threads, std::thread::hardware_concurrency(), cfg.n_layer, cfg.n_head, cfg.n_embd,
        cfg.block_size, cfg.vocab_size, cfg.bias, double(cfg.num_parameters()) / 1e6, mib(whole),
        bench::commit());
    fmt::print(
        "| ranks | tp x pp | stage | tp rank | analytic MiB | measured peak MiB | measured / "
        "analytic | build s | peak before issue 19 (whole + share) MiB |\n"
        "|---|---|---|---|---|---|---|---|---|\n");
  }
  bool all_within = true;
  for (int tp = 1; tp <= N; ++tp) {
    if (N % tp != 0 || cfg.n_head % tp != 0 || N / tp > cfg.n_layer) continue;
    if (only_tp > 0 && tp != only_tp) continue;
    const int pp = N / tp;
    ProcessGrid grid(world, {.pp = pp, .dp = 1, .tp = tp});
    const GridCoord c = grid.coord();
    const double analytic = double(gpt_shard_numel(cfg, c.tp, tp, c.pp, pp)) * 4;
    double measured = 0, seconds = 0;
    {
      const int64_t before = memory_stats(Device::cpu()).live_bytes;
      reset_peak_memory(Device::cpu());
      Generator init(1337), drop(1338);
      const auto t0 = std::chrono::steady_clock::now();
      GPT shard(cfg, init, drop, gpt_part(grid, cfg));
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      measured = double(memory_stats(Device::cpu()).peak_bytes - before);
    }
    // Every rank's row to rank 0: (analytic, measured, seconds) in its slots of one sum.
    Tensor rows = zeros({N, 3}, DType::f64);
    rows.narrow(0, me, 1).copy_(from_vector<double>({analytic, measured, seconds}, {1, 3}));
    world->all_reduce(rows, ReduceOp::sum);
    if (me == 0) {
      const std::vector<double> r = rows.to_vector<double>();
      for (int k = 0; k < N; ++k) {
        const GridCoord ck = grid.coord_of(k);
        const double a = r[size_t(3 * k)], m = r[size_t(3 * k + 1)];
        all_within &= std::abs(m / a - 1) <= 0.10;
        fmt::print("| {} | {} x {} | {} | {} | {:.1f} | {:.1f} | {:.4f} | {:.2f} | {:.1f} |\n", N,
                   tp, pp, ck.pp, ck.tp, mib(a), mib(m), m / a, r[size_t(3 * k + 2)],
                   mib(whole + a));
      }
    }
  }
  // Each rank's peak resident set (one layout), process overhead included.
  Tensor rss = zeros({N}, DType::f64);
  rss.narrow(0, me, 1).fill_(double(peak_rss_bytes()));
  world->all_reduce(rss, ReduceOp::sum);
  if (me == 0 && only_tp > 0) {
    const std::vector<double> r = rss.to_vector<double>();
    std::string list;
    for (int k = 0; k < N; ++k) list += fmt::format("{}{:.0f}", k ? ", " : "", mib(r[size_t(k)]));
    fmt::print("# peak resident set per rank (MiB): {}\n", list);
  }
  if (me == 0)
    fmt::print("# every rank within 10% of its analytic bytes: {}\n", all_within ? "yes" : "NO");
  return all_within ? 0 : 1;
}
