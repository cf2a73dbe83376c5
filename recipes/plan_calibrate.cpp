// plan calibrate: this machine's profile for the step-time model (recipes/plan.h). Every figure is
// a timing of the runtime's own ops: the matrix products at the shapes the layouts use, attention,
// an elementwise op on large and on tiny tensors, and the collectives over the world group.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "autograd/functions.h"
#include "models/gpt.h"
#include "parallel/communicator.h"
#include "recipes/plan.h"
#include "tensor/cpu/gemm.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"
#include "tensor/random.h"

namespace forge {

namespace {

using Clock = std::chrono::steady_clock;

// The fastest of a few calls (after one warm-up): at least `calls`, until `budget` seconds have
// gone.
double best_seconds(const std::function<void()>& fn, double budget = 0.05, int calls = 3) {
  fn();
  double best = 1e30, spent = 0;
  for (int i = 0; i < calls || (spent < budget && i < 200); ++i) {
    const auto t0 = Clock::now();
    fn();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::min(best, s);
    spent += s;
  }
  return best;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// `reps` timed calls of `fn` on every rank, each after a barrier and `work_first` of busy work;
// every rank returns the slowest rank's median (a collective ends when all have it).
double median_over_ranks(Communicator& world, int reps, const std::function<void()>& fn,
                         std::chrono::microseconds work_first = std::chrono::microseconds(0)) {
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    world.barrier_async().wait();
    for (auto s0 = Clock::now(); Clock::now() - s0 < work_first;) {
    }
    const auto t0 = Clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  Tensor t = full({1}, median(times), DType::f64);
  world.all_reduce(t, ReduceOp::max);
  return t.item();
}

// The bandwidth fit_link gives points whose time does not grow with their bytes.
constexpr double kNoBandwidth = 1e3;

// Least squares of t = a + bytes * b over the points; a >= 0.
MachineProfile::Link fit_link(const std::vector<std::pair<double, double>>& pts) {
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  const double n = double(pts.size());
  for (auto [x, y] : pts) sx += x, sy += y, sxx += x * x, sxy += x * y;
  double b = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  double a = (sy - b * sx) / n;
  if (a < 0) a = 0, b = sxy / sxx;
  return {a * 1e6, b > 0 ? 1.0 / b / 1e9 : kNoBandwidth};
}

// Ranks in step (MachineProfile::busy_pace): a forward and backward of the model at a
// data-parallel rank's batch, timed on each rank alone (the others waiting at a barrier) and on
// all ranks at once (each of those steps started together and ended by the slowest rank). The
// rounds are spread over the calibration, since this shared machine's other tenants come and go
// over seconds; the pace is the median step in step against the fastest rank's median alone.
class PaceProbe {
 public:
  PaceProbe(const GptTrainConfig& cfg, Communicator& world)
      : world_(world), model_(local(cfg.model), init_, drop_) {
    model_.train();
    const int64_t b = std::max<int64_t>(1, cfg.batch_size / world.size());
    idx_ = zeros({b, cfg.model.block_size}, DType::i64);
    step_seconds();  // warm-up
  }
  void round() {
    for (int r = 0; r < world_.size(); ++r) {
      world_.barrier_async().wait();
      if (world_.rank() == r)
        for (int i = 0; i < 2; ++i) alone_.push_back(step_seconds());
    }
    for (int i = 0; i < 2; ++i) {
      world_.barrier_async().wait();
      Tensor t = full({1}, step_seconds(), DType::f64);
      world_.all_reduce(t, ReduceOp::max);
      together_.push_back(t.item());
    }
  }
  double pace() {
    Tensor fastest = full({1}, -median(alone_), DType::f64);
    world_.all_reduce(fastest, ReduceOp::max);
    return median(together_) / -fastest.item();
  }

 private:
  static GPTConfig local(GPTConfig m) {
    m.dropout = 0;
    return m;
  }
  double step_seconds() {
    const auto t0 = Clock::now();
    for (Variable& v : model_.parameters()) v.zero_grad();
    model_.loss(model_.forward(idx_), idx_).backward();
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }
  Communicator& world_;
  Generator init_{1}, drop_{2};
  GPT model_;
  Tensor idx_;
  std::vector<double> alone_, together_;
};

}  // namespace

MachineProfile calibrate_machine(const GptTrainConfig& cfg,
                                 const std::vector<std::array<int64_t, 4>>& shapes,
                                 Communicator& world) {
  MachineProfile p;
  Generator gen(1);
  // Matrix products: every shape the layouts run, in f32 and, where the processor multiplies bf16
  // natively (AVX512_BF16), with bf16 inputs as autocast gives them (--precision bf16).
  const bool bf16 = cpu::bf16_native_supported() && cpu::bf16_gemm() == cpu::Bf16Gemm::native;
  // The fastest call of op(a) @ op(b): {f32, bf16 (0 where not native)}, in seconds.
  auto seconds = [&](const Tensor& a, const Tensor& b, bool ta, bool tb) {
    const double f32 = best_seconds([&] { matmul(a, b, ta, tb); });
    if (!bf16) return std::pair{f32, 0.0};
    Tensor a16 = a.to(DType::bf16), b16 = b.to(DType::bf16);
    return std::pair{f32, best_seconds([&] { matmul(a16, b16, ta, tb); })};
  };
  // Every rank times every product at once; with several ranks, a round of the pace probe every
  // eighth of the way.
  std::vector<double> best_f32, best_bf16;
  std::optional<PaceProbe> pace;
  if (world.size() > 1) pace.emplace(cfg, world);
  const size_t every = std::max<size_t>(1, shapes.size() / 8);
  for (const auto& [m, n, k, trans] : shapes) {
    if (pace && best_f32.size() % every == 0) pace->round();
    const bool ta = trans == 1, tb = trans == 2;
    Tensor a = ta ? randn({k, m}, gen) : randn({m, k}, gen);
    Tensor b = tb ? randn({n, k}, gen) : randn({k, n}, gen);
    const auto [f32, half] = seconds(a, b, ta, tb);
    best_f32.push_back(f32);
    best_bf16.push_back(half);
  }
  // The table keeps the fastest rank's times (a lone process's pace: it runs on the least busy
  // core): the max over the ranks of the negated times.
  auto fastest_over_ranks = [&](std::vector<double> v) {
    if (world.size() == 1 || v.empty()) return v;
    for (double& x : v) x = -x;
    Tensor t = from_vector(v);
    world.all_reduce(t, ReduceOp::max);
    const double* r = t.data<double>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = -r[i];
    return v;
  };
  best_f32 = fastest_over_ranks(best_f32);
  best_bf16 = fastest_over_ranks(best_bf16);
  auto gflops_of = [](double flops, double s) { return s > 0 ? flops / s * 1e-9 : 0.0; };
  double best = 0, best16 = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const auto& [m, n, k, trans] = shapes[i];
    const double flops = 2.0 * double(m) * double(n) * double(k);
    const double gflops = gflops_of(flops, best_f32[i]), gflops16 = gflops_of(flops, best_bf16[i]);
    p.gemm.push_back({m, n, k, int(trans), gflops, gflops16});
    best = std::max(best, gflops);
    best16 = std::max(best16, gflops16);
  }
  {
    Tensor a = randn({1024, 1024}, gen), b = randn({1024, 1024}, gen);
    const auto [f32, half] = seconds(a, b, false, false);
    best = std::max(best, gflops_of(2.0 * 1024 * 1024 * 1024, f32));
    best16 = std::max(best16, gflops_of(2.0 * 1024 * 1024 * 1024, half));
  }
  p.peak_gflops = best;
  p.peak16_gflops = best16;
  // Attention: one sequence of the model's heads.
  const GPTConfig& m = cfg.model;
  {
    const int64_t T = m.block_size, C = m.n_embd;
    Tensor qkv = randn({1, T, 3 * C}, gen);
    const double s = best_seconds([&] { causal_attention(qkv, int(m.n_head)); });
    p.attention_gflops = 2.0 * double(T * T) * double(C) / s * 1e-9;
  }
  // Streaming bandwidth (an add of 16 MiB tensors: two read, one written) and one tiny op.
  {
    Tensor a = randn({1 << 22}, gen), b = randn({1 << 22}, gen);
    p.bandwidth_gbs = 3.0 * double(a.nbytes()) / best_seconds([&] { add(a, b); }, 0.3) * 1e-9;
    // GELU (tanh form, transcendental: compute-bound), forward and backward, per element.
    Variable g(randn({1 << 20}, gen), true);
    const double gs = best_seconds([&] { sum(gelu(g, GeluApprox::tanh)).backward(); });
    p.gelu_ns = gs / 3.0 / double(1 << 20) * 1e9;  // backward about twice forward
    // Dropout's mask: one uniform drawn and one byte written per element.
    Generator drop_gen(7);
    const double ds = best_seconds([&] { dropout_mask({1 << 20}, 0.1, drop_gen); });
    p.dropout_ns = ds / double(1 << 20) * 1e9;
  }
  // Weights out of cache: the model's widest product (x (T, C) @ W^T, W (4C, C)) on one weight
  // again and again (cache-hot, as the products above were timed), then cycling through enough
  // weights to fill S bytes: past the cache each product waits for its weight to stream in. The
  // extra time per weight byte at every S from 1 to 256 MiB is the profile's cold_curve; in
  // summary, the extra at 256 MiB gives cold_gbs and the largest S still costing under half of it
  // the cache a rank keeps (every rank measures at once, so ranks sharing a cache share it here).
  {
    world.barrier_async().wait();
    const int64_t T = m.block_size, n = 4 * m.n_embd, k = m.n_embd;
    const double weight_bytes = double(n * k) * 4;
    Tensor x = randn({T, k}, gen);
    std::vector<Tensor> weights;
    auto per_product = [&](int64_t bytes) {
      const size_t count = size_t(std::max<int64_t>(1, int64_t(double(bytes) / weight_bytes)));
      while (weights.size() < count) weights.push_back(randn({n, k}, gen));
      // Calls of a few hundred milliseconds: at least 7, so that a busy second of this shared
      // machine cannot pass for slow memory (one such calibration read 2.3 GB/s, not ~18).
      const double s = best_seconds(
          [&] {
            for (size_t i = 0; i < count; ++i) matmul(x, weights[i], false, true);
          },
          0.2, 7);
      return s / double(count);
    };
    const double hot = per_product(0);
    std::vector<std::pair<int64_t, double>> curve;  // {bytes, extra seconds per weight byte}
    for (int64_t mib = 1; mib <= 256; mib *= 2)
      curve.emplace_back(mib << 20, std::max(0.0, per_product(mib << 20) - hot) / weight_bytes);
    // A busy moment of this shared machine only adds time, so each size keeps the least extra
    // measured at it or any larger size: the curve does not fall, and one slow point cannot
    // raise the sizes above it.
    for (size_t i = curve.size() - 1; i-- > 0;)
      curve[i].second = std::min(curve[i].second, curve[i + 1].second);
    const double far = curve.back().second;
    if (far > 0) {
      p.cold_curve = curve;
      p.cold_ranks = world.size();
      p.cold_gbs = 1.0 / far * 1e-9;
      for (const auto& [bytes, s] : curve)
        if (s < 0.5 * far) p.cache_bytes = bytes;
    }
    weights.clear();
  }
  // The fixed cost of an op in training (graph nodes, allocations, dispatch, threads): a tiny
  // GPT's forward and backward, whose arithmetic is negligible, against what the replay charges
  // it without that cost, per op the replay counts.
  {
    GptTrainConfig tiny = cfg;
    tiny.model = GPTConfig{.n_layer = 2,
                           .n_head = 2,
                           .n_embd = 8,
                           .block_size = 8,
                           .vocab_size = 8,
                           .bias = cfg.model.bias};
    tiny.batch_size = 1;
    tiny.micro_batches = 1;
    tiny.dp = tiny.tp = tiny.pp = 1;
    tiny.zero = 0;
    tiny.checkpoint = ActivationCheckpointing::none;
    tiny.precision = DType::f32;
    Generator init(1), drop(2);
    GPT model(tiny.model, init, drop);
    model.train();
    Tensor idx = zeros({1, 8}, DType::i64), targets = zeros({1, 8}, DType::i64);
    const double measured = best_seconds(
        [&] {
          for (Variable& v : model.parameters()) v.zero_grad();
          model.loss(model.forward(idx), targets).backward();
        },
        0.2);
    MachineProfile bare = p;
    bare.op_overhead_us = 0;
    const TimePrediction t = predict(tiny, CorpusSize{}, 0, &bare).time;
    p.op_overhead_us =
        std::max(0.0, (measured - t.pipeline_ms * 1e-3) / double(t.ops_per_micro_batch)) * 1e6;
  }
  if (pace) p.busy_pace = pace->pace();
  // Collectives over the whole world (under mpirun), at a few sizes, fitted to latency +
  // bytes / bandwidth; `send` between ranks 0 and 1.
  const int N = world.size();
  if (N > 1) {
    for (const char* op : {"all_reduce", "reduce_scatter", "all_gather", "send"}) {
      auto measure = [&] {
        std::vector<std::pair<double, double>> pts;
        for (int64_t bytes :
             {int64_t(4) << 10, int64_t(64) << 10, int64_t(1) << 20, int64_t(4) << 20}) {
          const int64_t whole = bytes / 4 / N * N;
          Tensor big = zeros({whole}), part = zeros({whole / N});
          std::string name = op;
          auto once = [&] {
            if (name == "all_reduce") world.all_reduce(big);
            if (name == "reduce_scatter")
              world.reduce_scatter_async(part, big, ReduceOp::sum).wait();
            if (name == "all_gather") world.all_gather_async(big, part).wait();
            if (name == "send") {
              if (world.rank() == 0) world.send(big, 1);
              if (world.rank() == 1) world.recv(big, 0);
            }
          };
          // 200 us of work before each, as a step's ops come between its collectives: the
          // communication thread is then asleep, as it is in training.
          pts.push_back({double(whole * 4),
                         median_over_ranks(world, 7, once, std::chrono::microseconds(200))});
        }
        return pts;
      };
      // Time grows with the bytes moved; points that say otherwise (a fit with no finite
      // bandwidth) were disturbed by this shared machine's other load, and once made a 2 ms
      // all-reduce latency of a 3 us one. Measured again, up to three times, else the least
      // disturbed set (the smallest total time) is kept. Every rank sees the same times (the
      // slowest rank's), so all take the same branch.
      std::vector<std::pair<double, double>> kept;
      double kept_total = 0;
      for (int attempt = 0; attempt < 3; ++attempt) {
        std::vector<std::pair<double, double>> pts = measure();
        if (fit_link(pts).gbs < kNoBandwidth) {
          kept = pts;
          break;
        }
        double total = 0;
        for (auto [bytes, seconds] : pts) total += seconds;
        if (kept.empty() || total < kept_total) kept = pts, kept_total = total;
      }
      p.collectives[op][N] = fit_link(kept);
    }
    // Overlap: a 4 MiB all-reduce alone, products alone, and the all-reduce started just
    // before the same products (as DDP starts a bucket's while backward goes on).
    Tensor big = zeros({int64_t(1) << 20});
    Tensor a = randn({256, 256}, gen), b = randn({256, 256}, gen);
    auto compute = [&] {
      for (int i = 0; i < 40; ++i) matmul(a, b);
    };
    auto timed = [&](const std::function<void()>& fn) { return median_over_ranks(world, 5, fn); };
    const double comm = timed([&] { world.all_reduce(big); });
    const double work = timed(compute);
    const double both = timed([&] {
      Work w = world.all_reduce_async(big, ReduceOp::sum);
      compute();
      w.wait();
    });
    p.overlap = std::clamp((comm + work - both) / std::min(comm, work), 0.0, 1.0);
    // Collectives inside compute: products of the MLP's shape (x (T, C) @ W (C, 4C)), each
    // followed by an all-reduce of a tensor-parallel output's size (T x C), against the products
    // alone and the all-reduces alone, per all-reduce.
    {
      const int64_t T = m.block_size, C = m.n_embd;
      Tensor x = randn({T, C}, gen), w = randn({C, 4 * C}, gen), sum = zeros({T, C});
      constexpr int kRounds = 24;
      auto products = [&] {
        for (int i = 0; i < kRounds; ++i) matmul(x, w);
      };
      auto reduces = [&] {
        for (int i = 0; i < kRounds; ++i) world.all_reduce(sum);
      };
      auto interleaved = [&] {
        for (int i = 0; i < kRounds; ++i) {
          matmul(x, w);
          world.all_reduce(sum);
        }
      };
      const double apart = timed(products) + timed(reduces);
      p.inline_sync_us = std::max(0.0, (timed(interleaved) - apart) / kRounds) * 1e6;
    }
  }
  return p;
}

}  // namespace forge
