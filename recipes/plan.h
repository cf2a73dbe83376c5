// The planner behind `build/apps/plan`: which parallel layouts of a GPT run exist on N ranks, which
// of them the runtime refuses and why, and how much memory each rank of the others will need.
//
//   GptTrainConfig base = GptTrainConfig::preset("cpu");
//   base.model.vocab_size = 65;
//   for (const PlanCandidate& c : enumerate_layouts(base, /*world=*/4, /*global_batch=*/12))
//     if (c.refused.empty()) {
//       MemoryPrediction m = predict_memory(c.config, corpus);
//       fmt::print("{}: {} bytes on rank {}\n", c.layout.str(), m.peak_bytes, m.rank);
//     }
//
// A layout is (dp, tp, pp, micro-batches, schedule, ZeRO stage, activation checkpointing) with
// dp * tp * pp = N and dp dividing the global batch. Its refusals are the runtime's own:
// GptTrainConfig::validate() decides, so the planner never offers a layout `train` rejects.
//
// The memory prediction is the allocator's accounting replayed, not a second formula: one training
// step of each rank is walked op by op (the saved tensors of every layer, the gradients backward
// creates and frees in the engine's order, the pipeline's micro-batches in flight under its
// schedule, DDP's and ZeRO's buffers, the matrix products' packing scratch as the kernel in use
// sizes it), each allocation rounded as the allocator rounds it and counted under the tag the
// runtime gives it. The result is the step's peak of live bytes, split by tag at the peak, the
// figures `train --metrics` records per step (peak_bytes, peak_<tag>_bytes) for the same run.
//
// What it does not model yet (the prediction says so in `caveats`): the memory of mixed precision
// (the 16-bit copies autocast saves; its time is modelled: 16-bit products and the casts),
// dropout (masks and passes), and GPU allocators (their own workspaces and rounding).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "recipes/gpt_config.h"
#include "tensor/allocator.h"

namespace forge {

struct PlanLayout {
  int64_t dp = 1, tp = 1, pp = 1;
  int64_t micro_batches = 1;
  PipelineSchedule schedule = PipelineSchedule::one_f_one_b;
  int64_t zero = 0;
  ActivationCheckpointing checkpoint = ActivationCheckpointing::none;
  // "dp2 tp1 pp2 mb4 1f1b z0 ckpt-none": the table's and the CSV's name of the layout.
  std::string str() const;
  // The command-line flags that run it with `train gpt` (under mpirun -np dp*tp*pp).
  std::string flags() const;
};

struct PlanCandidate {
  PlanLayout layout;
  GptTrainConfig config;  // the base with the layout applied (batch_size = global batch / dp)
  std::string refused;    // why the runtime would not run it; empty when it runs
};

// Every layout of `world` ranks for a global batch of `global_batch` sequences per step: each
// factorisation dp * tp * pp, each micro-batch count dividing the per-replica batch, both
// schedules, ZeRO 0-3 and checkpointing none/blocks, in that nesting order. A refused layout
// keeps its reason: the runtime's validate() message, or the planner's own for what only a
// layout set can say (dp not dividing the global batch; ZeRO over one rank, the same layout as
// ZeRO 0; a schedule without a pipeline or micro-batches to order, the same as 1f1b).
std::vector<PlanCandidate> enumerate_layouts(const GptTrainConfig& base, int64_t world,
                                             int64_t global_batch);

// The tokens of the corpus every rank keeps in memory during training (io/text_data.h's train and
// val splits, i64); zeros when the run's data is not known (they are then left out of `other`).
struct CorpusSize {
  int64_t train_tokens = 0, val_tokens = 0;
};

struct MemoryPrediction {
  int64_t peak_bytes = 0;  // the step's peak of live bytes on the rank where it is highest
  std::array<int64_t, size_t(MemoryTag::count)> by_tag{};  // that rank's split at its peak
  int rank = 0;                                            // its world rank
  std::vector<int64_t> rank_peak_bytes;                    // every rank's peak, by world rank
  std::string where;                                       // the moment of the peak
  std::vector<std::string> caveats;                        // what the prediction leaves out
  // With a cap: the first allocation that would take that rank past it (what `train
  // --memory-cap-mb` stops at, naming the same tag), and when it happens.
  bool fits = true;
  MemoryTag overflow = MemoryTag::other;
  std::string overflow_where;
  int64_t tag(MemoryTag t) const { return by_tag[size_t(t)]; }
};

// What a machine does per second, the step-time model's inputs: `plan calibrate` measures this
// one (the matrix products at the shapes the layouts use, attention, streaming bandwidth, the cost
// of one small op, each collective's latency and bandwidth per group size under mpirun); for
// machines we do not have, a file written from datasheet figures (bench/profiles/).
struct MachineProfile {
  std::string name;        // what it describes, e.g. "2-core AMD EPYC (Zen 5), 1 thread per rank"
  std::string source;      // how the figures were obtained (calibrated on DATE / datasheet URLs)
  double peak_gflops = 0;  // f32 peak per rank, for MFU
  // Mixed precision (--precision bf16|f16): the products take 16-bit inputs (autograd/autocast.h),
  // which tensor cores and AVX512_BF16 run faster. 0: as f32 (a profile without 16-bit figures).
  double peak16_gflops = 0, gemm16_gflops = 0, attention16_gflops = 0;
  struct Gemm {
    int64_t m = 0, n = 0, k = 0;
    int trans = 0;  // 0: A @ B, 1: A^T @ B, 2: A @ B^T
    double gflops = 0;
    double gflops16 =
        0;  // with bf16 inputs (calibrate measures it where they run natively); 0: none
  };
  std::vector<Gemm> gemm;       // measured products; others take the nearest in log-space
  double gemm_gflops = 0;       // for shapes when `gemm` is empty (datasheet profiles)
  double attention_gflops = 0;  // causal attention, forward (backward counted as twice its FLOPs)
  double bandwidth_gbs = 0;     // elementwise ops: bytes read + written per second
  // Weights that do not stay in cache: when a stage's working set (parameters, gradients and
  // the activations live at its peak) exceeds `cache_bytes`, every product
  // re-reads its weight from memory (and backward its gradient, read and written) at `cold_gbs`,
  // on top of the calibrated (cache-hot) product time, and what a forward saves is written out
  // (read for ownership, written back) and read back by its backward at the same price. Measured
  // by calibrate: a product cycling through more weights than the cache holds, against the same
  // product on one. 0: not modelled (GPU profiles: a GPU's product rate already streams them).
  double cold_gbs = 0;
  int64_t cache_bytes = 0;
  // The same measurement at every working-set size calibrate tried: {bytes, extra seconds per
  // weight byte read}, sizes rising, extras not falling. Where present it replaces the step above
  // (a cache fills gradually, and a one-size threshold flipped between calibrations).
  std::vector<std::pair<int64_t, double>> cold_curve;
  // How many ranks measured the curve at once, each cycling its own weights through the cache
  // they share: a layout of R ranks on the machine reads the curve at R / cold_ranks times a
  // rank's working set (one rank alone has the whole cache).
  int cold_ranks = 1;
  // Extra seconds per byte read from memory when each of `ranks` ranks' working sets take
  // `working_set` bytes.
  double cold_seconds_per_byte(int64_t working_set, int64_t ranks = 1) const;
  double op_overhead_us = 0;  // the fixed cost of one op (dispatch, allocation, threads)
  double gelu_ns = 0;  // GELU forward per element (its backward: twice); 0: memory-bound only
  // Dropout's mask drawn per element (one uniform each, a byte written); 0: memory-bound only.
  double dropout_ns = 0;
  // On a GPU, attention as this runtime's CUDA kernels run it (false: flash-attention style, the
  // rows' log-sum-exp kept, 16-bit inputs on tensor cores for head sizes 32, 64 and 128, f32
  // kernels otherwise), or materialized (true: the probabilities (b, H, T, T) written and kept,
  // softmax and dropout passes over them, the products on tensor cores at every head size, as
  // Megatron-LM's unfused attention of Narayanan et al. 2021; for modelling such runs). The CPU
  // always materializes. It changes the predicted memory too: predict() with such a profile
  // counts the probabilities that predict_memory() (no profile) does not. The tensor-core head
  // sizes assume an sm_80 or later GPU with ~121 KiB of shared memory a block (A100, H100).
  bool gpu_attention_materialized = false;
  // How much of a collective hides behind compute running at the same time: 1 when they do not
  // slow each other (spare cores, a GPU's copy engines), 0 when they share the cores fully.
  double overlap = 1;
  // The compute of a step of several ranks against one rank's alone: the ranks run in step, so
  // at the pace of the slowest, and on a machine whose cores are not equally busy (a shared host's
  // other tenants, interrupts) that is slower than the fastest core a lone process runs on.
  // calibrate measures it as the median step of the model's forward and backward on all ranks at
  // once (each ended by the slowest rank) against the fastest rank's median step alone.
  // 1: ranks keep the same pace (GPU profiles).
  double busy_pace = 1;
  // What a collective costs inside compute beyond its own time (tensor parallelism's
  // all-reduces, between a rank's products): the ranks arrive apart (each one's pace drifts
  // between collectives) and the first waits for the last, then for its own communication thread
  // to wake. calibrate measures it as products with an all-reduce after each, against the same
  // products and all-reduces apart, per all-reduce. 0: none (GPU profiles).
  double inline_sync_us = 0;
  struct Link {
    double latency_us = 0, gbs = 0;  // time = latency + bytes / (gbs * 1e9)
  };
  // "all_reduce", "reduce_scatter", "all_gather", "send" -> group size -> fit. Sizes not measured
  // scale the nearest measured one by the ring's (N - 1) / N.
  std::map<std::string, std::map<int, Link>> collectives;

  // One product's seconds; `half`: with 16-bit inputs (the 16-bit figures, else the f32 ones).
  double gemm_seconds(int64_t m, int64_t n, int64_t k, int trans = 0, bool half = false) const;
  bool has_half_products() const;  // any 16-bit product figure (else half products take f32's)
  double attention_rate(bool half) const;  // FLOP/s of attention's products
  double peak_rate(bool half) const;       // FLOP/s, for MFU
  double collective_seconds(const std::string& op, int group, int64_t bytes) const;
  std::string to_json() const;
  static MachineProfile from_json(const std::string& text, const std::string& where);
  static MachineProfile load(const std::string& path);
};

struct TimePrediction {
  double ms_per_step = 0, tokens_per_s = 0, mfu = 0;
  // Where the time goes (ms), on the critical path: the pipeline's makespan (compute, with
  // tensor-parallel collectives and stage-to-stage transfers inside it), of which the bubble is
  // the slowest stage's idle time; data-parallel communication left after overlap; the update.
  // optimizer_ms: the per-step passes over the parameters (autocast's 16-bit copies of the
  // weights, the gradient norm, the update).
  double pipeline_ms = 0, bubble_ms = 0, tp_comm_ms = 0, pp_comm_ms = 0, dp_exposed_ms = 0,
         optimizer_ms = 0;
  int64_t ops_per_micro_batch = 0;  // ops replayed in one forward and backward (busiest stage)
};

struct PlanPrediction {
  MemoryPrediction memory;
  TimePrediction time;
};

// Memory (as predict_memory) and, with a profile, the step time of `cfg`.
PlanPrediction predict(const GptTrainConfig& cfg, const CorpusSize& corpus, int64_t cap_bytes,
                       const MachineProfile* profile);

// The time of one pipelined step: stage s takes F[s] per micro-batch forward and B[s] backward,
// `hop` per transfer between neighbours, M micro-batches in the schedule's order (the runtime's:
// GPipe all forwards then all backwards, 1F1B with P - s - 1 warm-up forwards). Equal stages
// give (M + P - 1)(F + B) under both: the bubble is (P - 1)(F + B).
double pipeline_makespan(const std::vector<double>& F, const std::vector<double>& B, double hop,
                         int M, PipelineSchedule schedule);

// Every matrix product (m, n, k, transposition) the step of `cfg` runs on any rank: what calibrate
// times.
std::vector<std::array<int64_t, 4>> gemm_shapes(const GptTrainConfig& cfg);

class Communicator;
// Measures this machine's profile on the ops of `cfg`'s model: the products at `shapes` (see
// gemm_shapes), attention, bandwidth, one small op, and with several ranks (`world`, under
// mpirun) each collective over them. name and source are left for the caller.
MachineProfile calibrate_machine(const GptTrainConfig& cfg,
                                 const std::vector<std::array<int64_t, 4>>& shapes,
                                 Communicator& world);

// The peak memory of one training step (after the first: AdamW's state exists) of `cfg` (a
// validated config whose model.vocab_size is known), on every rank; the highest is returned.
// With `cap_bytes` > 0, also whether each rank stays within it (fits, overflow).
MemoryPrediction predict_memory(const GptTrainConfig& cfg, const CorpusSize& corpus,
                                int64_t cap_bytes = 0);

}  // namespace forge
