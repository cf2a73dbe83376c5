// Pipeline and tensor parallelism of the GPT, measured against their theory (issue 6).
// bench/compare_pipeline.py runs it for P = 2, 4 and T = 2, 4 and joins the tables.
//
//   tests/mpirun.sh 2 build/bench/pipeline_bench --mode bubble --steps 5
//   tests/mpirun.sh 2 build/bench/pipeline_bench --mode tp-bytes
//
// --mode bubble (all ranks form one pipeline: pp = ranks, dp = tp = 1): for each schedule and
//   number of micro-batches m, a few untimed steps, then --steps steps, each started together on
//   every stage (a barrier), so that a stage's idle time is the schedule's bubble and not the skew
//   left by the previous step. Prints two tables:
//   - the idle share of the pipeline (1 - the stages' busy time / (P x the step), see
//     pipeline_idle) beside the bubble of equal stages, (P - 1) / (m + P - 1), and each stage's
//     own idle share (PipelineStepStats::idle_fraction) and busy time;
//   - the micro-batches held at once by each stage (GPipe: m; 1F1B: min(m, P - stage)) and the
//     allocator's peak above the step's start (activations and backward temporaries).
// --mode tp-bytes (all ranks form one tensor-parallel group: tp = ranks): one forward, loss and
//   backward of the whole model per step; the group's CommStats per phase against the count
//   derived from the code (see analytic_tp_all_reduces).
//
// Output: lines starting with '#' (settings, notes), then markdown tables, on rank 0.
#include <CLI/CLI.hpp>
#include <chrono>
#include <functional>
#include <thread>

#include "bench/bench_util.h"
#include "parallel/grid.h"
#include "parallel/pipeline.h"
#include "parallel/tensor_parallel.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

using namespace forge;

namespace {

struct Settings {
  std::string mode = "bubble";
  int steps = 5, warmup = 2, threads = 1;
  int64_t batch = 8;
  std::vector<int> micro_batches{1, 2, 4, 8};
  std::vector<std::string> schedules{"gpipe", "1f1b"};
  GPTConfig cfg{.n_layer = 4,
                .n_head = 4,
                .n_embd = 256,
                .block_size = 64,
                .vocab_size = 65,
                .dropout = 0.0,
                .bias = false};
};

// The batch of one step (B, T), the same on every rank.
std::pair<Tensor, Tensor> random_batch(const Settings& s, Generator& g) {
  const int64_t B = s.batch, T = s.cfg.block_size;
  Tensor x = mul(rand({B, T}, g), double(s.cfg.vocab_size)).to(DType::i64);
  Tensor y = mul(rand({B, T}, g), double(s.cfg.vocab_size)).to(DType::i64);
  return {x, y};
}

void print_settings(const Settings& s, const Communicator& world, const char* layout) {
  const GPTConfig& c = s.cfg;
  fmt::print(
      "# pipeline_bench --mode {}: ranks {} ({}), threads per rank {}, cores {}; GPT n_layer {}, "
      "n_head {}, n_embd {}, vocab {}, bias {}; batch B={} T={} f32; {} warm-up + {} timed "
      "steps; commit {}\n",
      s.mode, world.size(), layout, s.threads, std::thread::hardware_concurrency(), c.n_layer,
      c.n_head, c.n_embd, c.vocab_size, c.bias, s.batch, c.block_size, s.warmup, s.steps,
      bench::commit());
}

std::string join(const std::vector<std::string>& parts, const char* sep = " / ") {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
  return out;
}

// ---------------------------------------------------------------------------------------------
// Pipeline bubble and activation memory

// One stage's record of the timed steps of one (schedule, m).
struct StageRecord {
  std::vector<double> busy, step;  // seconds per timed step: computing, and the whole schedule
  int max_in_flight = 0;
  int64_t peak_bytes = 0;  // the largest over the steps
};

StageRecord measure_stage(const Settings& s, GPT& model, const ProcessGrid& grid,
                          PipelineSchedule schedule, int m) {
  Pipeline pipe(model, grid.pp_group(), {schedule, m});
  Generator data(1339);
  StageRecord r;
  for (int i = 0; i < s.warmup + s.steps; ++i) {
    auto [x, y] = random_batch(s, data);
    grid.pp_group()->barrier();
    // Gradients are not zeroed between steps: they then accumulate in place into tensors that
    // exist before the step, so the step's allocator peak is activations and temporaries only.
    reset_peak_memory(Device::cpu());
    PipelineStepStats st = pipe.step(x, y);
    if (i < s.warmup) continue;
    r.busy.push_back(st.busy_seconds);
    r.step.push_back(st.step_seconds);
    r.max_in_flight = std::max(r.max_in_flight, st.max_in_flight);
    r.peak_bytes = std::max(r.peak_bytes, st.peak_activation_bytes);
  }
  return r;
}

// Every stage's record, in stage order (on every rank): each sent as 2 * steps + 2 f64.
std::vector<StageRecord> gather_stages(Communicator& pp, const StageRecord& mine) {
  const int64_t steps = int64_t(mine.step.size()), n = 2 * steps + 2;
  Tensor in = Tensor::empty({n}, DType::f64), out = Tensor::empty({pp.size() * n}, DType::f64);
  double* p = in.data<double>();
  std::copy(mine.busy.begin(), mine.busy.end(), p);
  std::copy(mine.step.begin(), mine.step.end(), p + steps);
  p[2 * steps] = mine.max_in_flight;
  p[2 * steps + 1] = double(mine.peak_bytes);
  pp.all_gather(out, in);
  std::vector<StageRecord> all;
  for (int stage = 0; stage < pp.size(); ++stage) {
    const double* q = out.data<double>() + stage * n;
    all.push_back(
        {{q, q + steps}, {q + steps, q + 2 * steps}, int(q[2 * steps]), int64_t(q[2 * steps + 1])});
  }
  return all;
}

struct BubbleRow {
  PipelineSchedule schedule;
  int m;
  std::vector<StageRecord> stages;
};

// The bubble of the whole pipeline in step i: the idle share of P stages x the step's duration
// (the longest stage's, stage 0's in both schedules: it starts the first forward and ends the
// last backward). For equal stages this is (P - 1) / (m + P - 1); a later stage's own idle share
// is smaller, since it finishes s backward slots before stage 0.
double pipeline_idle(const BubbleRow& r, size_t i) {
  double busy = 0, step = 0;
  for (const StageRecord& st : r.stages) {
    busy += st.busy[i];
    step = std::max(step, st.step[i]);
  }
  return 1 - busy / (double(r.stages.size()) * step);
}

bench::Timings over_steps(const BubbleRow& r, const std::function<double(size_t)>& value) {
  std::vector<double> v;
  for (size_t i = 0; i < r.stages[0].step.size(); ++i) v.push_back(value(i));
  return bench::summarize(v);
}

int expected_in_flight(PipelineSchedule schedule, int m, int P, int stage) {
  return schedule == PipelineSchedule::gpipe ? m : std::min(m, P - stage);
}

// "a / b / ..." of value(stage record, stage) over the stages.
std::string per_stage(const BubbleRow& r,
                      const std::function<std::string(const StageRecord&, int)>& value) {
  std::vector<std::string> out;
  for (size_t st = 0; st < r.stages.size(); ++st) out.push_back(value(r.stages[st], int(st)));
  return join(out);
}

void print_bubble_table(const std::vector<BubbleRow>& rows, int P) {
  fmt::print(
      "\n| P | schedule | m | bubble (P-1)/(m+P-1) | pipeline idle, median (min) | stage idle "
      "median, per stage | busy ms median, per stage | step ms median |\n");
  fmt::print("| ---: | --- | ---: | ---: | ---: | --- | --- | ---: |\n");
  for (const BubbleRow& r : rows) {
    const bench::Timings idle = over_steps(r, [&](size_t i) { return pipeline_idle(r, i); });
    const bench::Timings step = over_steps(r, [&](size_t i) {
      double longest = 0;
      for (const StageRecord& st : r.stages) longest = std::max(longest, st.step[i]);
      return longest;
    });
    fmt::print("| {} | {} | {} | {:.3f} | {:.3f} ({:.3f}) | {} | {} | {:.1f} |\n", P,
               pipeline_schedule_name(r.schedule), r.m, double(P - 1) / double(r.m + P - 1),
               idle.median, idle.min,
               per_stage(r,
                         [&](const StageRecord& st, int) {
                           return fmt::format("{:.3f}", over_steps(r, [&](size_t i) {
                                                          return 1 - st.busy[i] / st.step[i];
                                                        }).median);
                         }),
               per_stage(r,
                         [](const StageRecord& st, int) {
                           return fmt::format("{:.1f}", bench::summarize(st.busy).median * 1e3);
                         }),
               step.median * 1e3);
  }
}

void print_memory_table(const std::vector<BubbleRow>& rows, int P) {
  fmt::print(
      "\n| P | schedule | m | in flight, per stage | expected | peak activation MiB, per "
      "stage |\n");
  fmt::print("| ---: | --- | ---: | --- | --- | --- |\n");
  for (const BubbleRow& r : rows) {
    bool all_match = true;
    for (size_t st = 0; st < r.stages.size(); ++st)
      all_match &= r.stages[st].max_in_flight == expected_in_flight(r.schedule, r.m, P, int(st));
    fmt::print(
        "| {} | {} | {} | {} | {}{} | {} |\n", P, pipeline_schedule_name(r.schedule), r.m,
        per_stage(r, [](const StageRecord& st, int) { return std::to_string(st.max_in_flight); }),
        per_stage(r,
                  [&](const StageRecord&, int st) {
                    return std::to_string(expected_in_flight(r.schedule, r.m, P, st));
                  }),
        all_match ? "" : " (MISMATCH)", per_stage(r, [](const StageRecord& st, int) {
          return fmt::format("{:.1f}", double(st.peak_bytes) / double(1 << 20));
        }));
  }
}

// The one-way time of one micro-batch's activation (rows x T x C f32) between stages 0 and 1:
// half the median round trip of `repeats` ping-pongs (the other stages wait). What each of a
// step's 2 m (P - 1) hops adds to the critical path beyond the theory, which counts compute only.
double hop_ms(const Settings& s, Communicator& pp, int64_t rows, int repeats = 30) {
  Tensor buf = zeros({rows, s.cfg.block_size, s.cfg.n_embd});
  std::vector<double> trips;
  pp.barrier();
  if (pp.rank() <= 1) {
    const int peer = 1 - pp.rank();
    for (int i = 0; i < repeats; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      if (pp.rank() == 0) {
        pp.send(buf, peer);
        pp.recv(buf, peer);
      } else {
        pp.recv(buf, peer);
        pp.send(buf, peer);
      }
      trips.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  pp.barrier();
  return trips.empty() ? 0.0 : bench::summarize(trips).median / 2 * 1e3;
}

int run_bubble(const Settings& s, const std::shared_ptr<Communicator>& world) {
  const int P = world->size();
  ProcessGrid grid(world, {.pp = P, .dp = 1, .tp = 1});
  Generator init(1337), drop(1338);
  GPT model(s.cfg, init, drop, gpt_part(grid, s.cfg));
  const bool lead = world->rank() == 0;
  if (lead) {
    print_settings(s, *world, fmt::format("pp {}", P).c_str());
    fmt::print(
        "# stage s holds blocks [s L / P, (s + 1) L / P); stage 0 also wte and wpe, stage "
        "P-1 also ln_f and the tied head with the loss\n");
    if (P > int(std::thread::hardware_concurrency()))
      fmt::print(
          "# NOTE: {} ranks on {} cores: stages that compute at the same time share a core (and "
          "a waiting stage may spin in MPI), so compute slows down by a varying factor and the "
          "measured idle shares stray from the theory, which assumes one core per stage\n",
          P, std::thread::hardware_concurrency());
  }
  std::vector<std::string> hops;
  for (int m : s.micro_batches) {
    const int64_t rows = s.batch / m;
    const double ms = hop_ms(s, *grid.pp_group(), rows);
    hops.push_back(fmt::format("m={}: {} KB {:.3f} ms", m,
                               rows * s.cfg.block_size * s.cfg.n_embd * 4 / 1024, ms));
  }
  if (lead)
    fmt::print("# one hop of a micro-batch's activation, stage 0 -> 1, median one-way: {}\n",
               join(hops, "; "));
  std::vector<BubbleRow> rows;
  for (const std::string& name : s.schedules) {
    const PipelineSchedule schedule = parse_pipeline_schedule(name);
    for (int m : s.micro_batches) {
      StageRecord mine = measure_stage(s, model, grid, schedule, m);
      rows.push_back({schedule, m, gather_stages(*grid.pp_group(), mine)});
    }
  }
  if (lead) {
    print_bubble_table(rows, P);
    print_memory_table(rows, P);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Tensor-parallel traffic

// What one forward and backward of the whole model all-reduces in the tensor-parallel group, per
// rank, read from the code (parallel/tensor_parallel.cpp, models/gpt.cpp, tp_mappings.cpp):
//   forward:  per block, attn.c_proj and mlp.c_proj (RowParallelLinear: reduce_from_tp_region)
//             all-reduce their (B, T, C) f32 output; so does the vocab-parallel embedding: 2 L + 1.
//   loss:     vocab_parallel_cross_entropy all-reduces the row maxima (N = B T f64 values), then
//             the sums of exp together with the target logits (2 N f64); its backward none.
//   backward: per block, attn.c_attn and mlp.c_fc (ColumnParallelLinear: copy_to_tp_region)
//             all-reduce their input's (B, T, C) gradient; so does the tied head's
//             copy_to_tp_region after ln_f: 2 L + 1. (reduce_from_tp_region's backward is the
//             identity.)
// With one rank the tp mappings skip their all-reduces; the cross-entropy still makes its two
// (the identity on one rank, but counted).
// Nothing else: c_attn and c_fc keep their outputs split (gather_output false) and the
// row-parallel layers take split inputs (input_is_parallel true), so no all-gather or scatter.
struct Count {
  int64_t calls = 0, bytes = 0;
};
struct TpPhases {
  Count forward, loss, backward;
};

TpPhases analytic_tp_all_reduces(const GPTConfig& cfg, int64_t B, int tp_size) {
  const int64_t T = cfg.block_size, C = cfg.n_embd, L = cfg.n_layer, N = B * T;
  const int64_t mappings = tp_size > 1 ? 2 * L + 1 : 0;
  const int64_t activation = B * T * C * int64_t(sizeof(float));
  return {.forward = {mappings, mappings * activation},
          .loss = {2, (N + 2 * N) * int64_t(sizeof(double))},
          .backward = {mappings, mappings * activation}};
}

CommStats::Entry minus(const CommStats::Entry& a, const CommStats::Entry& b) {
  return {a.calls - b.calls, a.bytes - b.bytes, a.seconds - b.seconds};
}

// The group's counters over one step: the all-reduces of each phase, and over the whole step the
// all-gathers and everything else (reduce_scatter, broadcast, send, recv, barrier) summed.
struct StepTraffic {
  CommStats::Entry forward, loss, backward, all_gather, other;
  // Calls and bytes, to compare steps and ranks.
  std::vector<int64_t> counts() const {
    std::vector<int64_t> out;
    for (const CommStats::Entry* e : {&forward, &loss, &backward, &all_gather, &other}) {
      out.push_back(e->calls);
      out.push_back(e->bytes);
    }
    return out;
  }
};

// The counters at the start of a step and after its forward, loss and backward.
StepTraffic traffic_of_step(const CommStats (&at)[4]) {
  StepTraffic t;
  t.forward = minus(at[1].all_reduce, at[0].all_reduce);
  t.loss = minus(at[2].all_reduce, at[1].all_reduce);
  t.backward = minus(at[3].all_reduce, at[2].all_reduce);
  t.all_gather = minus(at[3].all_gather, at[0].all_gather);
  for (auto e : {&CommStats::reduce_scatter, &CommStats::broadcast, &CommStats::send,
                 &CommStats::recv, &CommStats::barrier}) {
    const CommStats::Entry d = minus(at[3].*e, at[0].*e);
    t.other = {t.other.calls + d.calls, t.other.bytes + d.bytes, t.other.seconds + d.seconds};
  }
  return t;
}

// Whether every rank's counts equal this rank's (collective over tp).
bool same_on_every_rank(Communicator& tp, const std::vector<int64_t>& mine) {
  const int64_t n = int64_t(mine.size());
  Tensor in = Tensor::empty({n}, DType::i64), all = Tensor::empty({tp.size() * n}, DType::i64);
  std::copy(mine.begin(), mine.end(), in.data<int64_t>());
  tp.all_gather(all, in);
  const int64_t* a = all.data<int64_t>();
  bool same = true;
  for (int64_t i = 0; i < tp.size() * n; ++i) same &= a[i] == mine[size_t(i % n)];
  return same;
}

void print_tp_table(const Settings& s, int R, const StepTraffic& got, bool steady, bool ranks_agree,
                    double step_ms) {
  const TpPhases want = analytic_tp_all_reduces(s.cfg, s.batch, R);
  const int64_t N = s.batch * s.cfg.block_size;
  fmt::print(
      "# analytic all-reduces per step and rank: forward {} and backward {} (2L+1 each with more "
      "than one rank) of (B,T,C) f32 = {} bytes each; loss: N = {} f64 (max) and 2N = {} f64 "
      "(sums)\n",
      want.forward.calls, want.backward.calls, N * s.cfg.n_embd * 4, N, 2 * N);
  fmt::print(
      "# the same counts in every timed step: {}; on every rank: {}; step {:.1f} ms (median), "
      "of which inside all-reduces {:.1f} ms (first timed step)\n",
      steady ? "yes" : "NO", ranks_agree ? "yes" : "NO", step_ms,
      (got.forward.seconds + got.loss.seconds + got.backward.seconds) * 1e3);
  fmt::print("\n| tp | phase | op | calls | calls, analytic | bytes | bytes, analytic | match |\n");
  fmt::print("| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |\n");
  auto row = [&](const char* phase, const char* op, const CommStats::Entry& e, Count c) {
    fmt::print("| {} | {} | {} | {} | {} | {} | {} | {} |\n", R, phase, op, e.calls, c.calls,
               e.bytes, c.bytes, e.calls == c.calls && e.bytes == c.bytes ? "yes" : "**NO**");
  };
  row("forward", "all_reduce", got.forward, want.forward);
  row("loss", "all_reduce", got.loss, want.loss);
  row("backward", "all_reduce", got.backward, want.backward);
  const CommStats::Entry total{got.forward.calls + got.loss.calls + got.backward.calls,
                               got.forward.bytes + got.loss.bytes + got.backward.bytes, 0};
  row("step", "all_reduce", total,
      {want.forward.calls + want.loss.calls + want.backward.calls,
       want.forward.bytes + want.loss.bytes + want.backward.bytes});
  row("step", "all_gather", got.all_gather, {});
  row("step", "other", got.other, {});
}

int run_tp_bytes(const Settings& s, const std::shared_ptr<Communicator>& world) {
  const int R = world->size();
  ProcessGrid grid(world, {.pp = 1, .dp = 1, .tp = R});
  Generator init(1337), drop(1338), data(1339);
  GPT model(s.cfg, init, drop, gpt_part(grid, s.cfg));
  Communicator& tp = *grid.tp_group();
  if (world->rank() == 0) print_settings(s, *world, fmt::format("tp {}", R).c_str());
  // One step, with the group's counters read before it and after each phase.
  auto step = [&](CommStats(&at)[4]) {
    auto [x, y] = random_batch(s, data);
    model.zero_grad();
    at[0] = tp.stats();
    Variable logits = model.forward(x, {});
    at[1] = tp.stats();
    Variable loss = model.loss(logits, y);
    at[2] = tp.stats();
    loss.backward();
    at[3] = tp.stats();
  };
  // Warm-up first: the first large all-reduce sets up the shared-memory window (counted the same,
  // but its time is not a step's).
  CommStats at[4];
  for (int i = 0; i < s.warmup; ++i) step(at);
  std::vector<StepTraffic> per_step;
  std::vector<double> seconds;
  for (int i = 0; i < s.steps; ++i) {
    seconds.push_back(bench::time_runs(1, [&] { step(at); }).min);
    per_step.push_back(traffic_of_step(at));
  }
  bool steady = true;
  for (const StepTraffic& t : per_step) steady &= t.counts() == per_step[0].counts();
  // The vocabulary may split unevenly (65 over 4), but every collective is per row or per
  // activation, so every rank must count the same.
  const bool ranks_agree = same_on_every_rank(tp, per_step[0].counts());
  if (world->rank() == 0)
    print_tp_table(s, R, per_step[0], steady, ranks_agree, bench::summarize(seconds).median * 1e3);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pipeline bubble, activation memory and tensor-parallel traffic of the GPT"};
  Settings s;
  app.add_option("--mode", s.mode)->check(CLI::IsMember({"bubble", "tp-bytes"}));
  app.add_option("--steps", s.steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", s.warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--threads", s.threads, "threads per rank")->check(CLI::PositiveNumber);
  app.add_option("--batch", s.batch, "rows B of a step")->check(CLI::PositiveNumber);
  app.add_option("--micro-batches", s.micro_batches, "bubble: values of m")->delimiter(',');
  app.add_option("--schedules", s.schedules, "bubble: gpipe, 1f1b")->delimiter(',');
  app.add_option("--n-layer", s.cfg.n_layer)->check(CLI::PositiveNumber);
  app.add_option("--n-head", s.cfg.n_head)->check(CLI::PositiveNumber);
  app.add_option("--n-embd", s.cfg.n_embd)->check(CLI::PositiveNumber);
  app.add_option("--block-size", s.cfg.block_size, "T")->check(CLI::PositiveNumber);
  app.add_option("--vocab", s.cfg.vocab_size)->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  set_num_threads(s.threads);
  std::shared_ptr<Communicator> world = world_communicator();
  return s.mode == "bubble" ? run_bubble(s, world) : run_tp_bytes(s, world);
}
