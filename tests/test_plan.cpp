// The planner (recipes/plan.h): the layouts it enumerates and refuses, and its memory prediction
// against the runtime's own measurement of the same run.
//
// Layouts: the counts for known cases, worked out by hand below, and every reason a layout is
// refused (the runtime's validate() messages and the planner's own).
// Memory: each layout of this world size is trained for two steps in this process (train_gpt, on
// all ranks under mpirun) and the last step's peak of live bytes on the rank where it is highest
// (StepStats::peak_bytes, the allocator's counters) must equal the prediction within 5%, and the
// peak's rank must be the predicted one. 1 rank (unit suite): serial layouts; under mpirun 2 and
// 4 ranks: data, tensor and pipeline parallel layouts, ZeRO 1-3.
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "io/text_data.h"
#include "parallel/communicator.h"
#include "recipes/gpt_train.h"
#include "recipes/plan.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;
using forge::testing::TempDir;
using forge::testing::ThreadCount;

namespace {

GptTrainConfig tiny_model() {
  GptTrainConfig c = GptTrainConfig::preset("cpu");
  c.model.n_layer = 4;
  c.model.n_head = 4;
  c.model.n_embd = 64;
  c.model.block_size = 32;
  c.model.vocab_size = 10;
  return c;
}

// A profile of flat rates: every product at 100 GFLOP/s, attention at 10, 20 GB/s, 1 us an op,
// each collective over 2 ranks 50 us + bytes at 1 GB/s.
MachineProfile flat_profile() {
  MachineProfile p;
  p.name = "test";
  p.peak_gflops = p.gemm_gflops = 100;
  p.attention_gflops = 10;
  p.bandwidth_gbs = 20;
  p.op_overhead_us = 1;
  for (const char* op : {"all_reduce", "reduce_scatter", "all_gather", "send"})
    p.collectives[op][2] = {50, 1};
  return p;
}

// What one micro-batch's forward saves for its backward on a single f32 stage without dropout,
// tensor parallelism or checkpointing, counted by hand as the allocator accounts it: in each block
// ln_1's output and row statistics, qkv, attention's output and probabilities, h, ln_2's output and
// statistics, GELU's input and output (`ids`), and the block's output (`outs`); the first block's
// input; the head's ln_f output and statistics, logits and log-sum-exp. Every byte of it is
// written once and read once.
struct Saved {
  double ids = 0, outs = 0, input = 0, head = 0;
  double all() const { return ids + outs + input + head; }
};
Saved saved_bytes(const GptTrainConfig& c) {
  auto acc = [](int64_t bytes) { return double(cpu_allocator().accounted(size_t(bytes))); };
  const GPTConfig& m = c.model;
  const int64_t b = c.batch_size / c.micro_batches, T = m.block_size, M = b * T, C = m.n_embd;
  const double L = double(m.n_layer);
  Saved s;
  s.ids = L * (4 * acc(M * C * 4) + 4 * acc(M * 4) + acc(M * 3 * C * 4) +
               acc(b * m.n_head * T * T * 4) + 2 * acc(M * 4 * C * 4));
  s.outs = L * acc(M * C * 4);
  s.input = acc(M * C * 4);
  s.head = acc(M * C * 4) + 3 * acc(M * 4) + acc(M * m.vocab_size * 4);
  return s;
}

std::map<std::string, int> count_refusals(const std::vector<PlanCandidate>& cs, int* runs) {
  std::map<std::string, int> by_reason;
  *runs = 0;
  for (const PlanCandidate& c : cs) {
    if (c.refused.empty())
      ++*runs;
    else
      ++by_reason[c.refused];
  }
  return by_reason;
}

bool any_refusal_contains(const std::vector<PlanCandidate>& cs, const std::string& text) {
  return std::any_of(cs.begin(), cs.end(), [&](const PlanCandidate& c) {
    return c.refused.find(text) != std::string::npos;
  });
}

}  // namespace

TEST_CASE("the layouts of one rank: micro-batches x schedules x checkpointing") {
  // Global batch 12: micro-batches 1, 2, 3, 4, 6, 12; ZeRO needs dp > 1; gpipe with one stage
  // and one micro-batch is the 1f1b layout. 6 * 2 * 4 * 2 = 96 candidates, 6 * 2 * 2 - 2 = 22 run.
  const auto cs = enumerate_layouts(tiny_model(), 1, 12);
  int runs = 0;
  count_refusals(cs, &runs);
  CHECK(cs.size() == 96);
  CHECK(runs == 22);
  CHECK(any_refusal_contains(cs, "partitions nothing"));
  CHECK(any_refusal_contains(cs, "is the 1f1b layout"));
  for (const PlanCandidate& c : cs) {
    CHECK(c.config.batch_size == 12);
    CHECK(c.config.batch_size % c.config.micro_batches == 0);
  }
}

TEST_CASE("the layouts of four ranks, counted by hand") {
  // (dp, tp, pp) of 4: (1,1,4) (1,2,2) (1,4,1) (2,1,2) (2,2,1) (4,1,1). Per replica 12/dp rows:
  // dp 1 has 6 micro-batch counts, dp 2 four (1, 2, 3, 6), dp 4 two (1, 3).
  //   dp 1: 6 mb x 2 schedules x 2 checkpointing = 24 each, less 2 (gpipe, mb 1) without a pipeline
  //   dp 2: 4 x 2 x 4 ZeRO x 2 = 64; without a pipeline less 8 (gpipe, mb 1)
  //   dp 4: 2 x 2 x 4 x 2 = 32, less 8
  // Candidates: 3 x 96 + 2 x 64 + 32 = 448; run: 24 + 24 + 22 + 64 + 56 + 24 = 214.
  const auto cs = enumerate_layouts(tiny_model(), 4, 12);
  int runs = 0;
  count_refusals(cs, &runs);
  CHECK(cs.size() == 448);
  CHECK(runs == 214);
}

TEST_CASE("every refusal names its reason") {
  GptTrainConfig base = tiny_model();
  // 8 ranks: tp 8 does not divide 4 heads; pp 8 is more stages than 4 blocks.
  auto cs = enumerate_layouts(base, 8, 16);
  CHECK(any_refusal_contains(cs, "tp 8 must divide n_head 4"));
  CHECK(any_refusal_contains(cs, "pp 8 is more stages than n_layer 4"));
  // A global batch of 6 on 4 data-parallel ranks.
  cs = enumerate_layouts(base, 4, 6);
  CHECK(any_refusal_contains(cs, "dp 4 does not divide the global batch of 6"));
  // ZeRO runs on the CPU only.
  base.device = "cuda";
  cs = enumerate_layouts(base, 2, 4);
  CHECK(any_refusal_contains(cs, "runs on the CPU only"));
  // Nothing refused for a reason that is not one of these.
  for (const PlanCandidate& c : enumerate_layouts(tiny_model(), 8, 16))
    if (!c.refused.empty()) {
      INFO(c.layout.str() << ": " << c.refused);
      CHECK((c.refused.find("must divide n_head") != std::string::npos ||
             c.refused.find("more stages than") != std::string::npos ||
             c.refused.find("partitions nothing") != std::string::npos ||
             c.refused.find("is the 1f1b layout") != std::string::npos ||
             c.refused.find("does not divide the global batch") != std::string::npos));
    }
  CHECK_THROWS_WITH(enumerate_layouts(base, 0, 4), Contains("--world"));
}

TEST_CASE("a memory cap names the tag that overflows first") {
  GptTrainConfig c = tiny_model();
  const CorpusSize corpus{1000, 100};
  const MemoryPrediction free_run = predict_memory(c, corpus);
  CHECK(free_run.fits);
  // What lives before the step (corpus, parameters, AdamW's state, the last step's gradients)
  // fits under a cap just above it; the step's activations overflow it.
  int64_t before = 0;
  for (MemoryTag t : {MemoryTag::other, MemoryTag::parameters, MemoryTag::optimizer})
    before += free_run.tag(t);
  before += free_run.tag(MemoryTag::parameters);  // the gradients, as large
  MemoryPrediction capped = predict_memory(c, corpus, before + before / 20);
  CHECK_FALSE(capped.fits);
  CHECK(capped.overflow == MemoryTag::activations);
  // A cap below the parameters: they overflow it.
  capped = predict_memory(c, corpus, free_run.tag(MemoryTag::parameters) / 2);
  CHECK_FALSE(capped.fits);
  CHECK(capped.overflow == MemoryTag::parameters);
  CHECK(capped.overflow_where == "before the step");
}

TEST_CASE("the pipeline's makespan: (M + P - 1)(F + B) for equal stages, the bubble's formula") {
  for (auto schedule : {PipelineSchedule::gpipe, PipelineSchedule::one_f_one_b})
    for (int P : {1, 2, 4})
      for (int M : {1, 3, 8}) {
        const std::vector<double> F(static_cast<size_t>(P), 1.0), B(static_cast<size_t>(P), 2.0);
        INFO("P " << P << " M " << M << " " << pipeline_schedule_name(schedule));
        CHECK(pipeline_makespan(F, B, 0.0, M, schedule) == Approx((M + P - 1) * 3.0));
      }
  // One slow stage sets the pace: M of its (F + B) plus the others' fill and drain.
  CHECK(pipeline_makespan({1, 4}, {1, 4}, 0.0, 4, PipelineSchedule::gpipe) ==
        Approx(1 + 16 + 16 + 1));
  // Each transfer adds its time between stages, forward and back.
  CHECK(pipeline_makespan({1, 1}, {1, 1}, 0.5, 1, PipelineSchedule::one_f_one_b) == Approx(5.0));
  CHECK_THROWS_WITH(pipeline_makespan({}, {}, 0, 1, PipelineSchedule::gpipe),
                    Contains("pipeline_makespan"));
}

TEST_CASE("a machine profile: JSON both ways, products and collectives looked up, errors named") {
  MachineProfile p;
  p.name = "test";
  p.peak_gflops = 100;
  p.attention_gflops = 10;
  p.bandwidth_gbs = 20;
  p.op_overhead_us = 1;
  p.gemm = {{64, 64, 64, 2, 50}, {1024, 1024, 1024, 2, 100}, {1024, 1024, 1024, 1, 80}};
  p.collectives["all_reduce"][2] = {10, 5};
  const MachineProfile q = MachineProfile::from_json(p.to_json(), "round trip");
  CHECK(q.gemm.size() == 3);
  CHECK(q.gemm[2].trans == 1);
  // The nearest measured shape of the same transposition sets the rate.
  CHECK(q.gemm_seconds(1000, 1000, 1000, 2) == Approx(2e9 / 100e9));
  CHECK(q.gemm_seconds(1000, 1000, 1000, 1) == Approx(2e9 / 80e9));
  CHECK(q.gemm_seconds(60, 70, 64, 2) == Approx(2.0 * 60 * 70 * 64 / 50e9));
  // latency + bytes / bandwidth; a group of 4 from the measured 2 by the ring's steps and share.
  CHECK(q.collective_seconds("all_reduce", 2, 5000) == Approx(10e-6 + 1e-6));
  CHECK(q.collective_seconds("all_reduce", 4, 5000) == Approx(30e-6 + 1e-6 * 1.5));
  CHECK(q.collective_seconds("all_reduce", 1, 5000) == 0);
  CHECK_THROWS_WITH(q.collective_seconds("all_gather", 2, 1), Contains("all_gather"));
  // 16-bit products: none measured, f32's rate; a shape's own bf16 figure (calibrate's, on
  // AVX512_BF16) round-trips and sets the rate of the shapes nearest it, before any flat figure.
  CHECK_FALSE(q.has_half_products());
  CHECK(q.gemm_seconds(1000, 1000, 1000, 2, true) == Approx(2e9 / 100e9));
  MachineProfile h = p;
  h.gemm[1].gflops16 = 190;
  h.gemm16_gflops = 400;
  const MachineProfile r = MachineProfile::from_json(h.to_json(), "round trip 16");
  CHECK(r.has_half_products());
  CHECK(r.gemm[1].gflops16 == 190);
  CHECK(r.gemm[0].gflops16 == 0);
  CHECK(r.gemm_seconds(1000, 1000, 1000, 2, true) == Approx(2e9 / 190e9));
  CHECK(r.gemm_seconds(1000, 1000, 1000, 2, false) == Approx(2e9 / 100e9));
  CHECK(r.gemm_seconds(60, 70, 64, 2, true) == Approx(2.0 * 60 * 70 * 64 / 400e9));
  CHECK_THROWS_WITH(MachineProfile::from_json("{", "bad.json"), Contains("bad.json"));
  CHECK_THROWS_WITH(MachineProfile::from_json(R"({"peak_gflops": 1})", "short.json"),
                    Contains("short.json") && Contains("attention_gflops"));
  // How a GPU's attention runs: this runtime's fused kernels unless the profile says otherwise.
  CHECK_FALSE(q.gpu_attention_materialized);
  MachineProfile m = p;
  m.gpu_attention_materialized = true;
  CHECK(MachineProfile::from_json(m.to_json(), "materialized").gpu_attention_materialized);
  nlohmann::json bad = nlohmann::json::parse(p.to_json());
  bad["gpu_attention"] = "flash";
  CHECK_THROWS_WITH(MachineProfile::from_json(bad.dump(), "bad attention.json"),
                    Contains("bad attention.json") && Contains("gpu_attention 'flash'"));
}

TEST_CASE("step time: data parallelism adds its exposed reduction, ZeRO-1 all of it") {
  MachineProfile p = flat_profile();
  GptTrainConfig c = tiny_model();
  const TimePrediction one = predict(c, {}, 0, &p).time;
  c.dp = 2;
  const TimePrediction ddp = predict(c, {}, 0, &p).time;
  c.zero = 1;
  const TimePrediction z1 = predict(c, {}, 0, &p).time;
  CHECK(one.ms_per_step > 0);
  CHECK(one.dp_exposed_ms == 0);
  CHECK(ddp.dp_exposed_ms > 0);
  CHECK(z1.dp_exposed_ms > ddp.dp_exposed_ms);  // reduce-scatter and all-gather, neither hidden
  CHECK(ddp.tokens_per_s ==
        Approx(2 * c.batch_size * c.model.block_size / (ddp.ms_per_step / 1e3)));
  CHECK(one.mfu > 0);
  CHECK(one.mfu < 1);
}

TEST_CASE("step time: ZeRO-2 and -3 reduce-scatter after every micro-batch's backward") {
  MachineProfile p = flat_profile();
  p.overlap = 0;                              // nothing hides: the exposed time is all of it
  p.collectives["all_gather"][2] = {0, 1e9};  // free, so only the reductions remain
  GptTrainConfig c = tiny_model();
  c.dp = 2;
  c.batch_size = 4;
  for (int64_t zero : {2, 3}) {
    CAPTURE(zero);
    c.zero = zero;
    c.micro_batches = 1;
    const TimePrediction one = predict(c, {}, 0, &p).time;
    c.micro_batches = 4;
    const TimePrediction four = predict(c, {}, 0, &p).time;
    CHECK(one.dp_exposed_ms > 0);
    CHECK(four.dp_exposed_ms == Approx(4 * one.dp_exposed_ms).epsilon(1e-6));
  }
  // ZeRO-1 keeps whole gradients and reduces once, after the last micro-batch.
  c.zero = 1;
  c.micro_batches = 1;
  const TimePrediction one = predict(c, {}, 0, &p).time;
  c.micro_batches = 4;
  CHECK(predict(c, {}, 0, &p).time.dp_exposed_ms == Approx(one.dp_exposed_ms));
}

TEST_CASE("step time: ranks in step compute at the profile's busy pace, one rank at its own") {
  MachineProfile p = flat_profile();
  MachineProfile slow = MachineProfile::from_json(p.to_json(), "pace 1");
  CHECK(slow.busy_pace == 1);
  slow.busy_pace = 1.25;
  slow = MachineProfile::from_json(slow.to_json(), "pace 1.25");
  CHECK(slow.busy_pace == 1.25);
  GptTrainConfig c = tiny_model();
  // One rank: no one to wait for.
  CHECK(predict(c, {}, 0, &slow).time.ms_per_step ==
        Approx(predict(c, {}, 0, &p).time.ms_per_step));
  // Two tensor-parallel ranks: their compute (the pipeline less its collectives) and the update
  // take 1.25 times as long; the collectives are the profile's own.
  c.tp = 2;
  const TimePrediction a = predict(c, {}, 0, &p).time, b = predict(c, {}, 0, &slow).time;
  CHECK(b.tp_comm_ms == Approx(a.tp_comm_ms));
  CHECK(a.tp_comm_ms > 0);
  CHECK(b.pipeline_ms - b.tp_comm_ms == Approx(1.25 * (a.pipeline_ms - a.tp_comm_ms)));
  CHECK(b.optimizer_ms == Approx(1.25 * a.optimizer_ms));
}

TEST_CASE("step time: a tensor-parallel all-reduce inside compute waits inline_sync_us more") {
  MachineProfile p = flat_profile();
  GptTrainConfig c = tiny_model();
  c.tp = 2;
  const TimePrediction base = predict(c, {}, 0, &p).time;
  MachineProfile q = p;
  q.inline_sync_us = 7;
  q = MachineProfile::from_json(q.to_json(), "inline_sync_us round trip");
  CHECK(q.inline_sync_us == 7);
  const TimePrediction with = predict(c, {}, 0, &q).time;
  // One micro-batch of 4 blocks: each block's attention and MLP outputs summed in forward and
  // their inputs' gradients in backward (16), the vocabulary-parallel embedding's output and the
  // head's input gradient (2): 18 all-reduces, 7 us more each, on the critical path.
  const double extra_ms = with.tp_comm_ms - base.tp_comm_ms;
  CHECK(extra_ms == Approx(18 * 7e-3));
  CHECK(with.pipeline_ms - base.pipeline_ms == Approx(extra_ms));
  // Data parallelism's reductions are not inside compute: unchanged.
  c.tp = 1;
  c.dp = 2;
  CHECK(predict(c, {}, 0, &q).time.ms_per_step == Approx(predict(c, {}, 0, &p).time.ms_per_step));
}

TEST_CASE("step time under mixed precision: 16-bit products at the profile's 16-bit rates") {
  MachineProfile p;
  p.name = "test";
  p.peak_gflops = p.gemm_gflops = p.attention_gflops = 100;
  p.bandwidth_gbs = 20;
  p.op_overhead_us = 1;
  // No 16-bit figures: a 16-bit product runs at the f32 rate.
  CHECK(p.gemm_seconds(100, 100, 100, 2, true) == Approx(2e6 / 100e9));
  p.peak16_gflops = 800;
  p.gemm16_gflops = p.attention16_gflops = 400;
  const MachineProfile q = MachineProfile::from_json(p.to_json(), "round trip");
  CHECK(q.peak16_gflops == 800);
  CHECK(q.gemm16_gflops == 400);
  CHECK(q.attention16_gflops == 400);
  CHECK(q.gemm_seconds(100, 100, 100, 2, true) == Approx(2e6 / 400e9));
  CHECK(q.gemm_seconds(100, 100, 100, 2, false) == Approx(2e6 / 100e9));
  CHECK(q.attention_rate(true) == Approx(400e9));
  CHECK(q.peak_rate(true) == Approx(800e9));

  GptTrainConfig c = tiny_model();
  const TimePrediction f32 = predict(c, {}, 0, &q).time;
  c.precision = DType::bf16;
  const TimePrediction bf16 = predict(c, {}, 0, &q).time;
  CHECK(bf16.ms_per_step < f32.ms_per_step);                  // products 4x faster, the casts added
  CHECK(bf16.ops_per_micro_batch > f32.ops_per_micro_batch);  // a cast before every product
  CHECK(bf16.optimizer_ms > f32.optimizer_ms);  // the weights' 16-bit copies, once a step
  CHECK(bf16.mfu == Approx(f32.mfu * (f32.ms_per_step / bf16.ms_per_step) / 8.0));  // peak 8x
  // With equal rates the 16-bit step costs exactly its casts more.
  MachineProfile same = q;
  same.gemm16_gflops = same.attention16_gflops = 100;
  const TimePrediction cast_only = predict(c, {}, 0, &same).time;
  CHECK(cast_only.ms_per_step > f32.ms_per_step);
}

TEST_CASE("step time: weights past the cache stream in once per product that uses them") {
  MachineProfile p;
  p.name = "test";
  p.peak_gflops = p.gemm_gflops = p.attention_gflops = 100;
  p.bandwidth_gbs = 20;
  p.op_overhead_us = 1;
  const GptTrainConfig c = tiny_model();  // 4 layers, 64 wide, vocabulary 10, one micro-batch
  const double hot = predict(c, {}, 0, &p).time.ms_per_step;
  p.cold_gbs = 1;
  p.cache_bytes = int64_t(1) << 30;  // parameters and gradients fit: nothing changes
  CHECK(predict(c, {}, 0, &p).time.ms_per_step == Approx(hot));
  p.cache_bytes = 1 << 20;
  const MachineProfile q = MachineProfile::from_json(p.to_json(), "round trip");
  CHECK(q.cold_gbs == 1);
  CHECK(q.cache_bytes == 1 << 20);
  // Each linear's weight read in forward, and in backward read again with its gradient read and
  // written: 4 x 4 bytes per weight element, 12 C^2 per block, V x C for the tied head. And what
  // the forward saves: written into memory out of cache (read for ownership, written back) and
  // read by the backward, 3 passes.
  const int64_t C = c.model.n_embd, V = c.model.vocab_size;
  const double bytes =
      16.0 * double(c.model.n_layer * 12 * C * C + V * C) + 3 * saved_bytes(c).all();
  CHECK(predict(c, {}, 0, &q).time.ms_per_step == Approx(hot + bytes / 1e9 * 1e3));

  // A measured curve replaces the step: linear in log(bytes) between its sizes, flat beyond them.
  // The step's working set is this model's parameters and gradients, 2 x 4 bytes x (12 C^2 L + V
  // C + T C + the biases and norms), and its activations at their peak: between 4 and 16 MiB.
  int64_t numel = 0;
  for (const auto& [name, shape] : gpt_parameter_shapes(c.model)) numel += shape.numel();
  const double set =
      8.0 * double(numel) + double(predict_memory(c, {}).tag(MemoryTag::activations));
  REQUIRE(set > double(4 << 20));
  REQUIRE(set < double(16 << 20));
  MachineProfile curved = p;
  curved.cold_curve = {{4 << 20, 0.25e-9}, {16 << 20, 0.75e-9}, {32 << 20, 1e-9}};
  const MachineProfile r = MachineProfile::from_json(curved.to_json(), "curve round trip");
  REQUIRE(r.cold_curve.size() == 3);
  CHECK(r.cold_seconds_per_byte(1) == Approx(0.25e-9));
  CHECK(r.cold_seconds_per_byte(int64_t(8) << 20) == Approx(0.5e-9));  // half way in log
  CHECK(r.cold_seconds_per_byte(int64_t(6) << 20) == Approx(0.25e-9 + std::log2(1.5) / 2 * 0.5e-9));
  CHECK(r.cold_seconds_per_byte(int64_t(1) << 40) == Approx(1e-9));
  const double per_byte = 0.25e-9 + std::log2(set / double(4 << 20)) / 2 * 0.5e-9;
  CHECK(predict(c, {}, 0, &r).time.ms_per_step == Approx(hot + bytes * per_byte * 1e3));
  // Measured by 2 ranks at once (sharing the cache): one rank alone reads the curve at half its
  // working set, 2 data-parallel ranks at their own.
  MachineProfile two = r;
  two.cold_ranks = 2;
  two = MachineProfile::from_json(two.to_json(), "cold_ranks round trip");
  CHECK(two.cold_ranks == 2);
  CHECK(two.cold_seconds_per_byte(int64_t(12) << 20, 1) ==
        Approx(r.cold_seconds_per_byte(int64_t(6) << 20)));
  CHECK(two.cold_seconds_per_byte(int64_t(12) << 20, 2) ==
        Approx(r.cold_seconds_per_byte(int64_t(12) << 20)));
  const double alone = r.cold_seconds_per_byte(int64_t(set / 2));
  REQUIRE(alone < per_byte);
  CHECK(predict(c, {}, 0, &two).time.ms_per_step == Approx(hot + bytes * alone * 1e3));
  // A curve that falls, or whose sizes do not rise, is refused with its file and point named.
  for (const char* bad :
       {R"([[1048576, 1e-9], [2097152, 0.5e-9]])", R"([[2097152, 1e-9], [1048576, 2e-9]])"}) {
    nlohmann::json j = nlohmann::json::parse(curved.to_json());
    j["cold_curve"] = nlohmann::json::parse(bad);
    CHECK_THROWS_WITH(MachineProfile::from_json(j.dump(), "falling.json"),
                      Contains("falling.json") && Contains("cold_curve point 1"));
  }
}

TEST_CASE("step time: later micro-batches add their gradients into the ones kept") {
  // With flat rates a micro-batch of one sequence costs the same whatever the step's number of
  // micro-batches, except that after the first each parameter's gradient is added into the one
  // kept: an op reading two tensors and writing one. (The tied wte's second gradient is added in
  // every micro-batch, the first included.)
  MachineProfile p = flat_profile();
  GptTrainConfig c = tiny_model();
  c.batch_size = 1;
  c.micro_batches = 1;
  const TimePrediction one = predict(c, {}, 0, &p).time;
  c.batch_size = 4;
  c.micro_batches = 4;
  const TimePrediction four = predict(c, {}, 0, &p).time;
  double adds_s = 0;
  for (const auto& [name, shape] : gpt_parameter_shapes(c.model))
    adds_s += p.op_overhead_us * 1e-6 + 3.0 * 4.0 * double(shape.numel()) / (p.bandwidth_gbs * 1e9);
  CHECK(four.pipeline_ms == Approx(4 * one.pipeline_ms + 3 * adds_s * 1e3));

  // Weights out of cache: a micro-batch reads each weight matrix in forward and again in
  // backward; the first also writes its gradient into memory out of cache (read for ownership,
  // written back: 4 passes in all), while a later one writes into a recycled buffer in cache and
  // the gradient kept is read and written by the add above (2 passes). Every micro-batch writes
  // and reads back what its forward saves (3 passes).
  MachineProfile cold = p;
  cold.cold_curve = {{1, 1e-9}, {int64_t(1) << 40, 1e-9}};  // 1 ns a byte at every size
  double matrix_bytes = 0;  // the weights of products: every 2-D weight but wpe's
  for (const auto& [name, shape] : gpt_parameter_shapes(c.model))
    if (shape.size() == 2 && name != "transformer.wpe.weight")
      matrix_bytes += 4.0 * double(shape.numel());
  const double cold_four_ms = predict(c, {}, 0, &cold).time.pipeline_ms - four.pipeline_ms;
  c.batch_size = 1;
  c.micro_batches = 1;
  const double cold_one_ms = predict(c, {}, 0, &cold).time.pipeline_ms - one.pipeline_ms;
  const double saved = 3 * saved_bytes(c).all();  // a sequence's, in either step
  CHECK(cold_one_ms == Approx((4 * matrix_bytes + saved) * 1e-9 * 1e3));
  CHECK(cold_four_ms == Approx(((4 + 3 * 2) * matrix_bytes + 4 * saved) * 1e-9 * 1e3));
}

TEST_CASE("step time: dropout draws its masks and passes over what it drops") {
  // Dropout (the embeddings', and in each block the probabilities' and the two branches'
  // outputs') draws a mask, one uniform and one byte an element, at dropout_ns (at least the
  // byte's write). A hidden state's dropout then writes the dropped copy (an op reading and
  // writing its 4-byte elements: 12 bytes moved, as every such op here) and its backward the
  // same; the probabilities' are applied inside the attention ops, once forward and twice
  // backward, each reading P and the mask and writing P' (9 bytes an element).
  MachineProfile p = flat_profile();
  p.dropout_ns = 2;
  GptTrainConfig c = tiny_model();
  c.batch_size = 2;
  const double plain_ms = predict(c, {}, 0, &p).time.pipeline_ms;
  c.model.dropout = 0.1;
  const double dropout_ms = predict(c, {}, 0, &p).time.pipeline_ms;
  const double M = double(c.batch_size * c.model.block_size), C = double(c.model.n_embd);
  const double probs = double(c.batch_size * c.model.n_head) * double(c.model.block_size) *
                       double(c.model.block_size);
  const double op = p.op_overhead_us * 1e-6, bw = p.bandwidth_gbs * 1e9;
  const double hidden = (op + M * C * 2e-9) + 2 * (op + 12 * M * C / bw);  // forward + backward
  const double attention = (op + probs * 2e-9) + 3 * 9 * probs / bw;
  const double L = double(c.model.n_layer);
  CHECK(dropout_ms - plain_ms == Approx(((2 * L + 1) * hidden + L * attention) * 1e3));
  // Without a measured draw (a GPU profile), a mask costs its bytes' write.
  p.dropout_ns = 0;
  const double memory_bound_ms = predict(c, {}, 0, &p).time.pipeline_ms;
  CHECK(dropout_ms - memory_bound_ms ==
        Approx(((2 * L + 1) * M * C + L * probs) * (2e-9 - 1 / bw) * 1e3));
  // On a GPU the attention kernels apply the mask as they compute P: each pass reads its byte.
  p.dropout_ns = 2;
  c.device = "cuda";
  const double gpu_dropout_ms = predict(c, {}, 0, &p).time.pipeline_ms;
  c.model.dropout = 0;
  const double gpu_plain_ms = predict(c, {}, 0, &p).time.pipeline_ms;
  const double gpu_attention = (op + probs * 2e-9) + 3 * probs / bw;
  CHECK(gpu_dropout_ms - gpu_plain_ms == Approx(((2 * L + 1) * hidden + L * gpu_attention) * 1e3));
}

TEST_CASE("on a GPU attention keeps each row's log-sum-exp, not the (T, T) probabilities") {
  // CUDA's attention (tensor/cuda/attention.cu) keeps the log-sum-exp (b, H, T) in f32 for
  // backward, which recomputes the probabilities from it; the CPU's keeps the probabilities
  // (b, H, T, T), in f32 or under autocast in 16 bits. So each block keeps that much less on a
  // GPU: one more block widens the CPU's lead by exactly that (what else differs, the CPU's
  // packing and attention scratch, is the same at both peaks). Dropout's masks are kept alike.
  // 4 heads of 16 (under bf16 the kernels take f32 copies), 2 of 32 (16-bit on tensor cores).
  for (const int64_t heads : {4, 2})
    for (const DType precision : {DType::f32, DType::bf16})
      for (const double dropout : {0.0, 0.1}) {
        GptTrainConfig c = tiny_model();  // activations outweighing the weights: the peak is in
        c.batch_size = 8;                 // the last block's backward, every block's kept
        c.model.block_size = 64;
        c.model.n_head = heads;
        c.precision = precision;
        c.model.dropout = dropout;
        auto cpu_lead = [&](int64_t layers) {
          GptTrainConfig at = c;
          at.model.n_layer = layers;
          at.device = "cpu";
          const int64_t cpu = predict_memory(at, {}).peak_bytes;
          at.device = "cuda";
          return cpu - predict_memory(at, {}).peak_bytes;
        };
        const int64_t b = c.batch_size, H = c.model.n_head, T = c.model.block_size;
        const int64_t probs = b * H * T * T * (precision == DType::f32 ? 4 : 2),
                      lse = b * H * T * 4;
        INFO(heads << " heads, " << dtype_name(precision) << ", dropout " << dropout);
        CHECK(cpu_lead(3) - cpu_lead(2) == probs - lse);
        CHECK(cpu_lead(4) - cpu_lead(3) == probs - lse);
        // A profile that says the GPU's attention is materialized (bench/plan_paper.py's model of
        // Megatron-LM) keeps the probabilities as the CPU does.
        MachineProfile materialized = flat_profile();
        materialized.gpu_attention_materialized = true;
        auto gpu_peak = [&](int64_t layers, const MachineProfile* p) {
          GptTrainConfig at = c;
          at.model.n_layer = layers;
          at.device = "cuda";
          return predict(at, {}, 0, p).memory.peak_bytes;
        };
        const MachineProfile fused = flat_profile();
        CHECK(gpu_peak(3, &fused) == gpu_peak(3, nullptr));
        CHECK((gpu_peak(3, &materialized) - gpu_peak(2, &materialized)) -
                  (gpu_peak(3, &fused) - gpu_peak(2, &fused)) ==
              probs - lse);
      }
}

TEST_CASE("step time: a GPU's fused attention takes 16-bit inputs at head sizes 32, 64, 128") {
  // Under autocast the CUDA kernels run 16-bit qkv on tensor cores at those head sizes (at the
  // profile's 16-bit attention rate); at others they run f32 copies, at its f32 rate (forward
  // once, backward twice the FLOPs). Materialized attention takes the 16-bit rate at any size.
  GptTrainConfig c = tiny_model();
  c.batch_size = 2;
  c.model.n_embd = 384;
  c.device = "cuda";
  c.precision = DType::bf16;
  MachineProfile p = flat_profile();
  p.attention16_gflops = 40;
  auto ms = [&](int64_t heads, double f32_gflops, bool materialized) {
    GptTrainConfig at = c;
    at.model.n_head = heads;
    p.attention_gflops = f32_gflops;
    p.gpu_attention_materialized = materialized;
    return predict(at, {}, 0, &p).time.pipeline_ms;
  };
  const double C = double(c.model.n_embd), T = double(c.model.block_size);
  const double flops = 3 * 2.0 * double(c.batch_size) * T * T * C * double(c.model.n_layer);
  // n_embd 384: 12 heads of 32, 6 of 64, 3 of 128 on tensor cores; 24 of 16, 4 of 96 as f32.
  for (const int64_t heads : {12, 6, 3}) {
    INFO(heads << " heads");
    CHECK(ms(heads, 10, false) == Approx(ms(heads, 20, false)));
  }
  for (const int64_t heads : {24, 4}) {
    INFO(heads << " heads");
    CHECK(ms(heads, 10, false) - ms(heads, 20, false) ==
          Approx(flops * (1 / 10e9 - 1 / 20e9) * 1e3));
    CHECK(ms(heads, 10, true) == Approx(ms(heads, 20, true)));
  }
}

TEST_CASE("step time: a checkpointed block's backward finds the weights its recompute read") {
  // Checkpointing reads a block's weights once more (the recomputation); the block's backward
  // follows at once, so its own read of them costs what one block's weights, gradients and
  // activations cost, not what the stage's do. With a curve cold only past the block's size (the
  // tiny model's blocks take ~0.4 MB with gradients and ~0.15 MB of activations at batch 1, the
  // stage's weights and gradients ~1.6 MB) the two reads cost one; with every size cold they cost
  // two. Of the saved activations only the blocks' inputs and outputs and the head's go through
  // memory; each block's own (`ids`) are recomputed into cache and read from there, which costs
  // nothing with the first curve and one pass (with the block's input) with the second.
  GptTrainConfig c = tiny_model();
  c.batch_size = 1;
  MachineProfile step = flat_profile(), everywhere = flat_profile();
  step.cold_curve = {{768 << 10, 0.0}, {1536 << 10, 1e-9}};
  everywhere.cold_curve = {{1, 1e-9}, {int64_t(1) << 40, 1e-9}};
  double block_matrix_bytes = 0;  // the blocks' product weights
  for (const auto& [name, shape] : gpt_parameter_shapes(c.model))
    if (shape.size() == 2 && name.starts_with("transformer.h."))
      block_matrix_bytes += 4.0 * double(shape.numel());
  auto pipeline_ms = [&](const MachineProfile& p, ActivationCheckpointing ckpt) {
    c.checkpoint = ckpt;
    return predict(c, {}, 0, &p).time.pipeline_ms;
  };
  const auto kNone = ActivationCheckpointing::none, kBlocks = ActivationCheckpointing::blocks;
  const double recompute_ms =
      pipeline_ms(flat_profile(), kBlocks) - pipeline_ms(flat_profile(), kNone);
  c.checkpoint = kNone;
  const Saved saved = saved_bytes(c);
  const double ids_ms = 3 * saved.ids * 1e-9 * 1e3;
  CHECK(pipeline_ms(step, kBlocks) - pipeline_ms(step, kNone) == Approx(recompute_ms - ids_ms));
  const double everywhere_ms =
      recompute_ms + block_matrix_bytes * 1e-9 * 1e3 - ids_ms +
      (saved.ids + saved.outs - saved.outs / c.model.n_layer + saved.input) * 1e-9 * 1e3;
  CHECK(pipeline_ms(everywhere, kBlocks) - pipeline_ms(everywhere, kNone) == Approx(everywhere_ms));
  // Cold past 500 KiB: a block's weights and gradients (~400 KB) fit, but not with the
  // activations the recompute wrote (and its input), so the block's backward reads all of them
  // from memory, as with every size cold.
  double block_numel = 0;
  for (const auto& [name, shape] : gpt_parameter_shapes(c.model))
    if (name.starts_with("transformer.h.0.")) block_numel += double(shape.numel());
  REQUIRE(8 * block_numel < 420 << 10);
  REQUIRE(8 * block_numel + saved.ids / c.model.n_layer + saved.input > 500 << 10);
  MachineProfile block_sized = flat_profile();
  block_sized.cold_curve = {{420 << 10, 0.0}, {500 << 10, 1e-9}};
  CHECK(pipeline_ms(block_sized, kBlocks) - pipeline_ms(block_sized, kNone) ==
        Approx(everywhere_ms));
}

namespace {

// Rank 0's directory, its path sent to every rank (the ranks of one run share its out directory).
std::string shared_path(Communicator& world, const std::string& mine) {
  Tensor n = full({1}, double(mine.size()), DType::f64);
  world.broadcast(n, 0);
  Tensor chars = zeros({int64_t(n.item())}, DType::f64);
  if (world.rank() == 0) {
    std::vector<double> v(mine.begin(), mine.end());
    chars = from_vector<double>(v, {int64_t(v.size())});
  }
  world.broadcast(chars, 0);
  std::string out;
  for (double c : chars.to_vector<double>()) out.push_back(char(c));
  return out;
}

struct Case {
  const char* name;
  int64_t dp, tp, pp, micro_batches;
  PipelineSchedule schedule;
  int64_t zero;
  ActivationCheckpointing checkpoint;
  double dropout = 0;  // its masks: the probabilities', the hidden states' (embeddings, blocks)
  DType precision = DType::f32;  // bf16, f16: autocast's 16-bit copies, kept and cached
};

constexpr auto k1f1b = PipelineSchedule::one_f_one_b, kGpipe = PipelineSchedule::gpipe;
constexpr auto kNone = ActivationCheckpointing::none, kBlocks = ActivationCheckpointing::blocks;

const std::vector<Case> kCases = {
    {"serial", 1, 1, 1, 1, k1f1b, 0, kNone},
    {"serial, checkpointed blocks", 1, 1, 1, 1, k1f1b, 0, kBlocks},
    {"serial, dropout 0.2", 1, 1, 1, 1, k1f1b, 0, kNone, 0.2},
    {"serial, dropout 0.2, checkpointed blocks", 1, 1, 1, 1, k1f1b, 0, kBlocks, 0.2},
    {"serial, bf16", 1, 1, 1, 1, k1f1b, 0, kNone, 0, DType::bf16},
    {"serial, bf16, dropout 0.1, checkpointed blocks", 1, 1, 1, 1, k1f1b, 0, kBlocks, 0.1,
     DType::bf16},
    {"4 micro-batches, gpipe, f16", 1, 1, 1, 4, kGpipe, 0, kNone, 0, DType::f16},
    {"4 micro-batches, gpipe", 1, 1, 1, 4, kGpipe, 0, kNone},
    {"2 micro-batches, 1f1b", 1, 1, 1, 2, k1f1b, 0, kNone},
    {"dp 2 (DDP)", 2, 1, 1, 1, k1f1b, 0, kNone},
    {"dp 2, ZeRO-1", 2, 1, 1, 1, k1f1b, 1, kNone},
    {"dp 2, ZeRO-2, 2 micro-batches", 2, 1, 1, 2, k1f1b, 2, kNone},
    {"dp 2, ZeRO-3", 2, 1, 1, 1, k1f1b, 3, kNone},
    {"tp 2", 1, 2, 1, 1, k1f1b, 0, kNone},
    {"tp 2, dropout 0.1", 1, 2, 1, 1, k1f1b, 0, kNone, 0.1},
    {"tp 2, bf16", 1, 2, 1, 1, k1f1b, 0, kNone, 0, DType::bf16},
    {"dp 2 (DDP), bf16", 2, 1, 1, 1, k1f1b, 0, kNone, 0, DType::bf16},
    {"dp 2, ZeRO-2, 2 micro-batches, bf16", 2, 1, 1, 2, k1f1b, 2, kNone, 0, DType::bf16},
    {"dp 2, ZeRO-3, bf16", 2, 1, 1, 1, k1f1b, 3, kNone, 0, DType::bf16},
    {"pp 2, 2 micro-batches, bf16", 1, 1, 2, 2, k1f1b, 0, kNone, 0, DType::bf16},
    {"pp 2, 2 micro-batches, dropout 0.1", 1, 1, 2, 2, k1f1b, 0, kNone, 0.1},
    {"pp 2, 2 micro-batches, 1f1b", 1, 1, 2, 2, k1f1b, 0, kNone},
    {"pp 2, 8 micro-batches, 1f1b", 1, 1, 2, 8, k1f1b, 0, kNone},
    {"pp 2, 4 micro-batches, gpipe, checkpointed", 1, 1, 2, 4, kGpipe, 0, kBlocks},
    {"dp 2 x tp 2", 2, 2, 1, 1, k1f1b, 0, kNone},
    {"dp 2 x pp 2, ZeRO-2", 2, 1, 2, 2, k1f1b, 2, kNone},
    {"tp 2 x pp 2, 4 micro-batches", 1, 2, 2, 4, k1f1b, 0, kNone},
};

}  // namespace

TEST_CASE("predicted peak memory equals the runtime's measured peak") {
  ThreadCount threads(1);
  auto world = world_communicator();
  TempDir dir;
  const std::string corpus_path = forge::testing::write_corpus(dir, 6000, 9, 7);  // 10 symbols
  const std::string out = shared_path(*world, dir.path());
  // The corpus's sizes, its tensors freed: the allocator counts this process's memory, the
  // test's own included.
  CorpusSize corpus;
  int64_t vocab_size = 0;
  {
    const TextData data = load_text(corpus_path, Tokenizer::Kind::chars);
    corpus = {data.train.numel(), data.val.numel()};
    vocab_size = data.tokenizer.vocab_size();
  }
  int ran = 0;
  for (const Case& k : kCases) {
    if (k.dp * k.tp * k.pp != world->size()) continue;
    GptTrainConfig c = tiny_model();
    c.model.vocab_size = 0;  // the tokenizer's
    c.data = corpus_path;
    c.batch_size = 8;
    c.max_iters = 2;
    c.eval_interval = 100;
    c.eval_iters = 1;
    c.threads = 1;
    c.out = fmt::format("{}/run{}", out, ran);
    c.dp = k.dp;
    c.tp = k.tp;
    c.pp = k.pp;
    c.micro_batches = k.micro_batches;
    c.schedule = k.schedule;
    c.zero = k.zero;
    c.checkpoint = k.checkpoint;
    c.model.dropout = k.dropout;
    c.precision = k.precision;
    StepStats last;
    GptRunHooks hooks;
    hooks.on_step = [&](const StepStats& s) { last = s; };
    train_gpt(c, hooks);
    ++ran;
    if (world->rank() != 0) continue;  // the step's figures reach rank 0 (the lead)
    c.model.vocab_size = vocab_size;
    const MemoryPrediction p = predict_memory(c, corpus);
    const double ratio = double(p.peak_bytes) / double(last.peak_bytes);
    fmt::print("plan: {:<44} predicted {:>9} bytes (rank {}), measured {:>9} (rank {}): {:.4f}\n",
               k.name, p.peak_bytes, p.rank, last.peak_bytes, last.peak_rank, ratio);
    INFO(k.name << ": predicted " << p.peak_bytes << " at " << p.where << ", measured "
                << last.peak_bytes);
    CHECK(last.step == 2);
    CHECK(std::abs(ratio - 1.0) <= 0.05);
    // Dropout's masks add only 3-4% to these small runs' peaks, inside the 5%: they must be
    // counted, within 1%.
    if (k.dropout > 0) CHECK(std::abs(ratio - 1.0) <= 0.01);
    // Counted as f32, autocast's 16-bit copies put the prediction 20% over: within 2%.
    if (k.precision != DType::f32) CHECK(std::abs(ratio - 1.0) <= 0.02);
    // The rank of the peak, unless the predicted peaks of the two ranks are within 2% (then
    // either may come out higher).
    REQUIRE(size_t(last.peak_rank) < p.rank_peak_bytes.size());
    const double other = double(p.rank_peak_bytes[size_t(last.peak_rank)]);
    CHECK((p.rank == last.peak_rank || other >= 0.98 * double(p.peak_bytes)));
  }
  CHECK(ran > 0);
  // Every rank is done with the shared directory before rank 0 removes it.
  world->barrier_async().wait();
}

TEST_CASE("1F1B holds a few transfers, not one per micro-batch: its peak does not grow with M") {
  ThreadCount threads(1);
  auto world = world_communicator();
  if (world->size() != 2) {
    WARN("skipped: runs on 2 ranks (pp 2), this run has " << world->size());
    return;
  }
  TempDir dir;
  const std::string corpus_path = forge::testing::write_corpus(dir, 6000, 9, 7);
  const std::string out = shared_path(*world, dir.path());
  // Micro-batches of one row each: 4, then 8 of them. In 1F1B's steady state stage 0 holds 2
  // micro-batches' activations either way (with 2 there is none: the second backward has only
  // one left); a send held to the step's end would add one hidden state (1 x T x C f32) per
  // micro-batch. Measured (here a finished send lets its tensor go at once; an NCCL send holds
  // it until waited for) and predicted (the replay lets a send go when the receiver has provably
  // taken it, where the runtime waits for it).
  std::map<int64_t, int64_t> peak, predicted;
  int64_t vocab_size = 0;
  {
    const TextData data = load_text(corpus_path, Tokenizer::Kind::chars);
    vocab_size = data.tokenizer.vocab_size();
  }
  for (int64_t M : {4, 8}) {
    GptTrainConfig c = tiny_model();
    c.model.vocab_size = 0;
    c.data = corpus_path;
    c.batch_size = M;
    c.micro_batches = M;
    c.pp = 2;
    c.max_iters = 2;
    c.eval_interval = 100;
    c.eval_iters = 1;
    c.threads = 1;
    c.out = fmt::format("{}/m{}", out, M);
    StepStats last;
    GptRunHooks hooks;
    hooks.on_step = [&](const StepStats& s) { last = s; };
    train_gpt(c, hooks);
    peak[M] = last.peak_bytes;
    c.model.vocab_size = vocab_size;
    predicted[M] = predict_memory(c, {}).peak_bytes;
  }
  if (world->rank() == 0) {
    const int64_t T = tiny_model().model.block_size, C = tiny_model().model.n_embd;
    const int64_t state = T * C * 4, batch_rows = 4 * T * 8 * 2;  // 4 more rows of x and y
    INFO("peak with 4 micro-batches " << peak[4] << ", with 8 " << peak[8]);
    CHECK(peak[8] <= peak[4] + batch_rows + state / 2);
    INFO("predicted " << predicted[4] << " and " << predicted[8]);
    CHECK(predicted[8] <= predicted[4] + batch_rows + state / 2);
  }
  world->barrier_async().wait();
}
