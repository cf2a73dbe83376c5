// Tensor and pipeline parallelism on GPUs: the vocabulary-parallel embedding and cross-entropy on
// device tensors against their CPU path (each rank's slice, the group over NCCL against the same
// group over MPI), and GPT training on process grids split from the NCCL world (tp = 2, pp = 2
// under mpirun -np 2; one rank: tp = pp = 1 through the same pipeline) against the serial run on
// the CPU: the losses and the first step's gradients at f32 tolerance, then a few AdamW steps.
//
// NCCL needs a GPU of its own per rank: with fewer GPUs than ranks (or without the CUDA backend
// or NCCL) every case prints SKIPPED and why, on every rank (the decision is collective).
#include <cmath>
#include <cstdio>

#include "nccl_testing.h"
#include "optim/optimizer.h"
#include "parallel/grid.h"
#include "parallel/nccl_communicator.h"
#include "parallel/pipeline.h"
#include "parallel/tensor_parallel.h"
#include "tensor/cuda/cuda.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;
using forge::testing::have_gpus;
using forge::testing::max_rel_diff;
using forge::testing::rank_gpu;
using forge::testing::rel_l2;

namespace {

Tensor host(const Tensor& t) {
  return t.to(Device::cpu());
}

Tensor upstream(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return randn(s, g);
}

// ---------------------------------------------------------------------------------------------
// GPT training

const GPTConfig kCfg{.n_layer = 2,
                     .n_head = 4,
                     .n_embd = 32,
                     .block_size = 16,
                     .vocab_size = 65,  // uneven over 2 ranks: 32 + 33
                     .dropout = 0.0,
                     .bias = false};
constexpr int64_t kB = 4;
constexpr int kSteps = 5;
constexpr double kTol = 1e-5;  // f32, summed in other orders by other kernels
// ||got - want|| / ||want|| of the weights after kSteps AdamW steps: AdamW turns rounding-sized
// gradient differences into steps of up to lr (the CPU grids already reach 5e-6 from one reordered
// sum, test_parallel_gpt); on a GPU every kernel sums in its own order.
constexpr double kWeightTol = 1e-4;

AdamWOptions adamw() {
  return {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8};
}

std::pair<Tensor, Tensor> batch(int step) {
  Generator g(500 + uint64_t(step));
  Tensor x = mul(rand({kB, kCfg.block_size}, g), double(kCfg.vocab_size)).to(DType::i64);
  Tensor y = mul(rand({kB, kCfg.block_size}, g), double(kCfg.vocab_size)).to(DType::i64);
  return {x, y};
}

struct Run {
  std::vector<double> losses, norms;
  NamedTensors first_grads;  // after the first backward, before any step
  NamedTensors weights;      // at the end
  double eval_loss = 0;      // at the end, no gradients
  GridCoord coord;           // this rank's place in the grid
};

// The serial model on the CPU.
Run serial_cpu_run() {
  Generator init(7), drop(8);
  GPT model(kCfg, init, drop);
  std::vector<Variable> params = model.parameters();
  AdamW opt({{params, 0.1}}, adamw());
  Run run;
  for (int step = 0; step < kSteps; ++step) {
    auto [x, y] = batch(step);
    opt.zero_grad();
    Variable loss = model.loss(model.forward(x), y);
    loss.backward();
    run.losses.push_back(loss.item());
    if (step == 0)
      for (const auto& [name, p] : model.named_parameters())
        run.first_grads.emplace_back(name, p.grad().clone());
    run.norms.push_back(grad_norm(params));
    opt.step();
  }
  NoGradGuard no_grad;
  auto [x, y] = batch(kSteps);
  run.eval_loss = model.loss(model.forward(x), y).item();
  run.weights = model.state_dict();
  return run;
}

const Run& serial_reference() {
  static const Run run = serial_cpu_run();
  return run;
}

struct Layout {
  GridSizes grid;
  PipelineSchedule schedule;
  int micro_batches;
};

// This rank's shard trained on its GPU, every group split from the NCCL world.
Run gpu_run(const Layout& layout) {
  ProcessGrid grid(world_communicator_for(rank_gpu()), layout.grid);
  CHECK(grid.tp_group()->backend() == "nccl");
  CHECK(grid.pp_group()->device() == rank_gpu());
  const GridCoord c = grid.coord();
  Generator init(7), drop(8);
  GPT model(kCfg, init, drop, gpt_part(grid, kCfg));
  model.to(rank_gpu());
  std::vector<Variable> params = model.parameters();
  AdamW opt({{params, 0.1}}, adamw());
  Pipeline pipe(model, grid.pp_group(), {layout.schedule, layout.micro_batches});
  Run run;
  run.coord = c;
  for (int step = 0; step < kSteps; ++step) {
    auto [x, y] = batch(step);
    opt.zero_grad();
    PipelineStepStats s = pipe.step(x.to(rank_gpu()), y.to(rank_gpu()));
    sync_tied_embedding(model, grid.embedding_group());
    run.losses.push_back(s.loss);
    if (step == 0)
      for (const auto& [name, p] : model.named_parameters()) {
        CHECK(p.grad().device() == rank_gpu());
        run.first_grads.emplace_back(name, host(p.grad()));
      }
    run.norms.push_back(parallel_grad_norm(model, *grid.model_parallel_group()));
    opt.step();
  }
  auto [x, y] = batch(kSteps);
  model.eval();
  run.eval_loss = pipe.evaluate(x.to(rank_gpu()), y.to(rank_gpu()));
  for (const auto& [name, t] : model.state_dict()) run.weights.emplace_back(name, host(t));
  return run;
}

std::vector<Layout> layouts_for(int world) {
  if (world == 1)
    return {{{1, 1, 1}, PipelineSchedule::one_f_one_b, 1},
            {{1, 1, 1}, PipelineSchedule::one_f_one_b, 2}};
  if (world == 2)
    return {{{.pp = 1, .dp = 1, .tp = 2}, PipelineSchedule::one_f_one_b, 1},
            {{.pp = 2, .dp = 1, .tp = 1}, PipelineSchedule::gpipe, 2},
            {{.pp = 2, .dp = 1, .tp = 1}, PipelineSchedule::one_f_one_b, 4}};
  return {};
}

std::string describe(const Layout& l) {
  return fmt::format("pp {} x dp {} x tp {}, {}, {} micro-batches", l.grid.pp, l.grid.dp, l.grid.tp,
                     pipeline_schedule_name(l.schedule), l.micro_batches);
}

}  // namespace

TEST_CASE("VocabParallelEmbedding on GPUs equals its CPU path, gradients and errors included") {
  if (!have_gpus("VocabParallelEmbedding on GPUs")) return;
  auto mpi = world_communicator();
  auto nccl = world_communicator_for(rank_gpu());
  const int64_t V = 13, C = 4;  // uneven over 2 ranks
  Generator g(8);
  Tensor table = randn({V, C}, g);
  VocabParallelEmbedding on_cpu(V, C, mpi), on_gpu(V, C, nccl);
  on_cpu.weight.data().copy_(shard_tensor(table, {0, 1}, mpi->rank(), mpi->size()));
  on_gpu.weight.data().copy_(shard_tensor(table, {0, 1}, mpi->rank(), mpi->size()));
  on_gpu.to(rank_gpu());
  Tensor idx = from_vector<int64_t>({0, 12, 5, 5, 7, 1, 12, 3, 6}).view({3, 3});
  Tensor c = upstream({3, 3, C}, 9);
  for (bool indices_on_gpu : {true, false}) {
    INFO("indices on the " << (indices_on_gpu ? "GPU" : "CPU"));
    on_cpu.weight.zero_grad();
    on_gpu.weight.zero_grad();
    Variable yc = on_cpu.forward(idx);
    Variable yg = on_gpu.forward(indices_on_gpu ? idx.to(rank_gpu()) : idx);
    REQUIRE(yg.data().device() == rank_gpu());
    sum(mul(yc, Variable(c))).backward();
    sum(mul(yg, Variable(c.to(rank_gpu())))).backward();
    // One rank contributes each row, the others zeros: exact on both.
    CHECK(testing::bitwise_equal(host(yg.data()), yc.data()));
    CHECK(max_rel_diff(host(on_gpu.weight.grad()), on_cpu.weight.grad()) <= 1e-6);
  }
  REQUIRE_THROWS_WITH(on_gpu.forward(from_vector<int64_t>({3, 13}).to(rank_gpu())),
                      Contains("index 13 at position 1") && Contains("13 rows"));
  REQUIRE_THROWS_WITH(on_gpu.forward(from_vector<int64_t>({2, 1, -1}).to(rank_gpu())),
                      Contains("index -1 at position 2") && Contains("13 rows"));
}

TEST_CASE("vocab_parallel_cross_entropy on GPUs equals its CPU path and cross_entropy") {
  if (!have_gpus("vocab_parallel_cross_entropy on GPUs")) return;
  auto mpi = world_communicator();
  auto nccl = world_communicator_for(rank_gpu());
  // Odd sizes; ignore_index -100 and one that is a real class (3): its rows count for nothing.
  for (int64_t ignore_index : {int64_t(-100), int64_t(3)}) {
    for (DType dt : {DType::f32, DType::f64}) {
      INFO(dtype_name(dt) << ", ignore_index " << ignore_index);
      const int64_t N = 10, V = 11;
      Generator g(10);
      Tensor logits = mul(randn({N, V}, g, dt), 3.0);
      Tensor targets = ignore_index == -100
                           ? from_vector<int64_t>({0, 10, 3, -100, 5, 9, 1, 2, -100, 10})
                           : from_vector<int64_t>({0, 10, 3, 4, 5, 9, 1, 2, 3, 10});
      const IndexRange vocab = shard_range(V, mpi->size(), mpi->rank());
      Tensor mine = logits.narrow(1, vocab.begin, vocab.size()).contiguous();
      Variable xs(logits, true);
      Variable ls = cross_entropy(xs, targets, ignore_index);
      ls.backward();
      Variable xc(mine, true), xg(mine.to(rank_gpu()), true);
      Variable lc = vocab_parallel_cross_entropy(xc, targets, vocab, V, mpi, ignore_index);
      Variable lg =
          vocab_parallel_cross_entropy(xg, targets.to(rank_gpu()), vocab, V, nccl, ignore_index);
      REQUIRE(lg.data().device() == rank_gpu());
      REQUIRE(lg.dtype() == dt);
      mul(lc, 2.0).backward();
      mul(lg, 2.0).backward();
      const double tol = dt == DType::f64 ? 1e-12 : 1e-6;
      CHECK(std::abs(lg.item() - lc.item()) <= tol * std::abs(lc.item()));
      CHECK(std::abs(lg.item() - ls.item()) <= tol * std::abs(ls.item()));
      REQUIRE(xg.grad().device() == rank_gpu());
      CHECK(max_rel_diff(host(xg.grad()), xc.grad()) <= tol);
      CHECK(max_rel_diff(host(xg.grad()),
                         mul(xs.grad(), 2.0).narrow(1, vocab.begin, vocab.size())) <= tol);
    }
  }
  // Every row ignored: a zero loss and zero gradients, as on the CPU.
  Variable all_ignored(zeros({2, shard_range(5, mpi->size(), mpi->rank()).size()}).to(rank_gpu()),
                       true);
  Variable l0 =
      vocab_parallel_cross_entropy(all_ignored, full({2}, -100.0, DType::i64).to(rank_gpu()),
                                   shard_range(5, mpi->size(), mpi->rank()), 5, nccl);
  l0.backward();
  CHECK(l0.item() == 0.0);
  CHECK(max(abs(host(all_ignored.grad()))).item() == 0.0);
  // The same errors as the CPU path.
  Variable ok(zeros({4, 3}).to(rank_gpu()), true);
  REQUIRE_THROWS_WITH(
      vocab_parallel_cross_entropy(ok, from_vector<int64_t>({0, 1, 7, 2}).to(rank_gpu()), {0, 3}, 3,
                                   single_process_communicator()),
      Contains("target 7 at row 2") && Contains("3 classes"));
  REQUIRE_THROWS_WITH(
      vocab_parallel_cross_entropy(ok, from_vector<int64_t>({0, -5, 1, 2}).to(rank_gpu()), {0, 3},
                                   3, single_process_communicator()),
      Contains("target -5 at row 1") && Contains("3 classes"));
}

TEST_CASE("tensor and pipeline parallel GPT training on GPUs equals the serial CPU run") {
  if (!have_gpus("tensor and pipeline parallel training on GPUs")) return;
  const int world = world_communicator()->size();
  const std::vector<Layout> layouts = layouts_for(world);
  if (layouts.empty()) {
    std::printf("SKIPPED: GPT training on GPUs: no layouts for %d ranks (1 or 2)\n", world);
    return;
  }
  const Run& want = serial_reference();
  for (const Layout& layout : layouts) {
    INFO(describe(layout));
    const Run got = gpu_run(layout);
    const GridCoord c = got.coord;
    double worst_loss = std::abs(got.eval_loss - want.eval_loss) / want.eval_loss, worst_norm = 0;
    REQUIRE(got.losses.size() == size_t(kSteps));
    REQUIRE(got.norms.size() == size_t(kSteps));
    for (size_t s = 0; s < size_t(kSteps); ++s) {
      worst_loss =
          testing::nan_max(worst_loss, std::abs(got.losses[s] - want.losses[s]) / want.losses[s]);
      worst_norm =
          testing::nan_max(worst_norm, std::abs(got.norms[s] - want.norms[s]) / want.norms[s]);
    }
    // The first step's gradients: this rank's slices of the serial ones (the tied embedding's on
    // both ends, summed by sync_tied_embedding). Then the weights after the AdamW steps.
    double worst_grad = 0, worst_weight = 0;
    auto compare = [&](const NamedTensors& got_part, const NamedTensors& serial, double& worst) {
      const NamedTensors mine =
          shard_gpt_state(serial, kCfg, c.tp, layout.grid.tp, c.pp, layout.grid.pp);
      REQUIRE(mine.size() == got_part.size());
      for (size_t i = 0; i < mine.size(); ++i) {
        REQUIRE(got_part[i].first == mine[i].first);
        worst = testing::nan_max(worst, rel_l2(got_part[i].second, mine[i].second));
      }
    };
    compare(got.first_grads, want.first_grads, worst_grad);
    compare(got.weights, want.weights, worst_weight);
    CHECK(worst_loss <= kTol);
    CHECK(worst_norm <= kTol);
    CHECK(worst_grad <= kTol);
    CHECK(worst_weight <= kWeightTol);
    std::printf(
        "%s (rank %d): worst relative difference: loss %.1e, grad norm %.1e, first "
        "gradients %.1e, weights %.1e\n",
        describe(layout).c_str(), world_communicator()->rank(), worst_loss, worst_norm, worst_grad,
        worst_weight);
  }
}
