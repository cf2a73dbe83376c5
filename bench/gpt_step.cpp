// GPT training-step time: forward, loss, backward, gradient clipping, AdamW, on random tokens, in
// f32 or mixed precision, with or without activation checkpointing. bench/compare_gpt.py and
// bench/compare_precision.py run it beside the same model in PyTorch.
//
//   build/bench/gpt_step --shape cpu --threads 1 --steps 20 --warmup 10 --gelu erf
//   build/bench/gpt_step --shape gpt2-small --threads 2 --steps 5 --precision bf16 --checkpoint
//   blocks
//   build/bench/gpt_step --shape gpt2-124m --device cuda --precision bf16 --steps 10   # a GPU
// Shapes: cpu = the `cpu` preset (4 layers, 4 heads, 128 wide, vocab 65, B=12, T=64);
//         gpt2-small = 12 layers, 12 heads, 768 wide, vocab 50257, B=4, T=64;
//         gpt2-124m = GPT-2 small as llm.c trains it: vocab padded to 50304, B=16, T=1024;
//         baby = the `baby` preset (6 layers, 6 heads, 384 wide, vocab 65, B=64, T=256; dropout
//         off here, so runs compare exactly).
// --gelu: the MLP's GELU, tanh (GPT-2's, forge's default) or erf (exact: PyTorch's nn.GELU(),
// which nanoGPT uses); compare_gpt.py times both forms on both sides.
// Under mpirun it trains data-parallel (DDP over all ranks, each with its own B sequences: the
// global batch grows with the ranks) and adds the ranks, the bucket size and, per step, the time
// blocked waiting for gradients (exposed communication) and the time inside the all-reduces:
//   mpirun -np 2 build/bench/gpt_step --shape gpt2-small --threads 1 --bucket-mb 25
// On a GPU (--device cuda) it first times a large bf16 cuBLASLt product, the GPU's measured peak,
// and reports the model FLOP utilisation (MFU) of the training step against it.
// Prints one JSON line (rank 0): step times, the peak bytes and their split by tag at the peak
// (parameters include the 16-bit copies of the cast cache), and the loss after the last step.
#include <CLI/CLI.hpp>

#include "autograd/autocast.h"
#include "bench/bench_util.h"
#include "models/gpt.h"
#include "optim/grad_scaler.h"
#include "optim/optimizer.h"
#include "parallel/ddp.h"
#include "recipes/report.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cuda/blaslt.h"
#include "tensor/cuda/cuda.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

using namespace forge;

static int run(int argc, char** argv) {
  CLI::App app{"time GPT training steps"};
  std::string shape = "cpu";
  int threads = 1, steps = 10, warmup = 2;
  std::string precision = "f32", checkpointing = "none", gelu = "tanh";
  app.add_option("--shape", shape, "cpu, gpt2-small, gpt2-124m or baby")
      ->check(CLI::IsMember({"cpu", "gpt2-small", "gpt2-124m", "baby"}));
  std::string device_text = "cpu";
  app.add_option("--device", device_text, "cpu, cuda or cuda:N");
  int64_t batch = 0;
  app.add_option("--batch", batch, "sequences per step (0: the shape's own)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--precision", precision)->check(CLI::IsMember({"f32", "bf16", "f16"}));
  app.add_option("--checkpoint", checkpointing)->check(CLI::IsMember({"none", "blocks"}));
  app.add_option("--gelu", gelu, "the MLP's GELU: tanh or erf")
      ->check(CLI::IsMember({"tanh", "erf"}));
  app.add_option("--threads", threads)->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  double bucket_mb = 25;
  app.add_option("--bucket-mb", bucket_mb, "DDP gradient bucket size (under mpirun)")
      ->check(CLI::PositiveNumber);
  bool measure_peak = true;
  app.add_flag("!--no-peak", measure_peak,
               "on a GPU, skip timing the bf16 peak (MFU reads 0): for a profiler's trace");
  CLI11_PARSE(app, argc, argv);
  std::shared_ptr<Communicator> world = world_communicator();
  const bool lead = world->rank() == 0;
  set_num_threads(threads);
  const Device device = Device::parse(device_text);
  cuda::check_device(device, "--device");
  FORGE_CHECK(device.is_cpu() || world->size() == 1, "--device {}: one process only for now",
              device_text);

  GPTConfig cfg;
  int64_t B = 12, T = 64;
  if (shape == "cpu") {
    cfg = {.n_layer = 4,
           .n_head = 4,
           .n_embd = 128,
           .block_size = 64,
           .vocab_size = 65,
           .dropout = 0.0,
           .bias = false};
  } else if (shape == "gpt2-small") {
    cfg = {.n_layer = 12,
           .n_head = 12,
           .n_embd = 768,
           .block_size = 64,
           .vocab_size = 50257,
           .dropout = 0.0,
           .bias = false};
    B = 4;
  } else if (shape == "gpt2-124m") {
    cfg = {.n_layer = 12,
           .n_head = 12,
           .n_embd = 768,
           .block_size = 1024,
           .vocab_size = 50304,
           .dropout = 0.0,
           .bias = true};
    B = 16;
    T = 1024;
  } else {
    cfg = {.n_layer = 6,
           .n_head = 6,
           .n_embd = 384,
           .block_size = 256,
           .vocab_size = 65,
           .dropout = 0.0,
           .bias = false};
    B = 64;
    T = 256;
  }
  if (batch > 0) B = batch;
  cfg.gelu = parse_gelu(gelu);
  double peak_tflops = 0;  // measured, on a GPU
  if (device.is_cuda() && measure_peak)
    peak_tflops = cuda::measure_matmul_tflops(DType::bf16, 8192, 20);
  Generator init(1337), drop(1338), data(1339);
  GPT model(cfg, init, drop);
  model.to(device);
  model.set_checkpoint_blocks(checkpointing == "blocks");
  const bool mixed = precision != "f32";
  const DType low = mixed ? parse_dtype(precision) : DType::f32;
  GradScaler scaler({.enabled = precision == "f16"});
  ParamGroup decay{{}, 0.1}, no_decay{{}, 0.0};
  for (const auto& [n, p] : model.named_parameters())
    (p.dim() >= 2 ? decay : no_decay).params.push_back(p);
  AdamW opt({decay, no_decay}, {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8});
  const std::vector<Variable> params = model.parameters();
  std::optional<DistributedDataParallel> ddp;
  if (world->size() > 1)
    ddp.emplace(params, world,
                DdpOptions{.bucket_bytes = std::max<int64_t>(1, int64_t(bucket_mb * (1 << 20)))});
  double flops = cfg.flops_per_token(T) * double(B * T);
  if (lead)
    fmt::print(
        "# gpt_step: shape {} ({:.2f}M params, B={}, T={}, gelu {}) on {}, {}{}, checkpointing {}, "
        "gemm {}, threads {}, ranks {}{}, warm-up {} + {} timed steps, commit {}\n",
        shape, double(model.num_parameters()) / 1e6, B, T, gelu_name(cfg.gelu),
        device.is_cpu() ? std::string("cpu")
                        : fmt::format("{} (measured bf16 peak {:.1f} TFLOP/s)",
                                      cuda::device_name(device.index), peak_tflops),
        precision, scaler.enabled() ? " with loss scaling" : "", checkpointing,
        cpu::gemm_kernel_name(), threads, world->size(),
        ddp ? fmt::format(" (DDP, {} buckets of <= {} MiB)", ddp->num_buckets(), bucket_mb) : "",
        warmup, steps, bench::commit());
  std::fflush(stdout);

  double last_loss = 0;
  std::vector<double> waits, allreduces;  // per step, seconds
  auto step = [&] {
    Tensor x = mul(rand({B, T}, data), double(cfg.vocab_size)).to(DType::i64).to(device);
    Tensor y = mul(rand({B, T}, data), double(cfg.vocab_size)).to(DType::i64).to(device);
    ddp ? ddp->zero_grad() : opt.zero_grad();
    {
      MemoryTagScope tag(MemoryTag::activations);
      std::optional<Autocast> scope;
      if (mixed) scope.emplace(low);
      Variable loss = model.loss(model.forward(x), y);
      scaler.scale(loss).backward();
      last_loss = loss.item();
    }
    if (ddp) {
      ddp->finish_grad_sync();
      waits.push_back(ddp->last_sync().wait_seconds);
      allreduces.push_back(ddp->last_sync().allreduce_seconds);
    }
    scaler.unscale(params);
    if (ddp) scaler.set_found_inf(any_rank(*world, scaler.found_inf()));
    if (!scaler.found_inf()) clip_grad_norm(params, 1.0);
    scaler.step(opt, params);
    scaler.update();
    if (device.is_cuda()) cuda::synchronize(device.index);  // the step's kernels are all done
  };
  for (int i = 0; i < warmup; ++i) step();
  waits.clear();
  allreduces.clear();
  reset_peak_memory(device);
  bench::Timings t = bench::time_runs(steps, step);
  MemoryStats mem = memory_stats(device);
  auto at_peak = [&](MemoryTag t) { return mem.at_peak_by_tag[size_t(t)]; };
  const int ranks = world->size();
  bench::Timings wait = bench::summarize(waits), allreduce = bench::summarize(allreduces);
  if (!lead) return 0;
  fmt::print("{}\n",
             to_json_line({{"impl", std::string("forge")},
                           {"shape", shape},
                           {"precision", precision},
                           {"gelu", std::string(gelu_name(cfg.gelu))},
                           {"device", device.str()},
                           {"batch", B},
                           {"seq", T},
                           {"checkpoint", checkpointing},
                           {"threads", int64_t(threads)},
                           {"steps", int64_t(steps)},
                           {"min_ms", t.min * 1e3},
                           {"median_ms", t.median * 1e3},
                           {"ranks", int64_t(ranks)},
                           {"bucket_mb", ddp ? bucket_mb : 0.0},
                           {"tokens_per_s", double(B * T * ranks) / t.median},
                           {"gflops", flops * ranks / t.median * 1e-9},
                           {"peak_tflops_measured", peak_tflops},
                           {"mfu", peak_tflops > 0 ? flops / t.median * 1e-12 / peak_tflops : 0.0},
                           {"comm_wait_ms_median", wait.median * 1e3},
                           {"allreduce_ms_median", allreduce.median * 1e3},
                           {"peak_bytes", mem.peak_bytes},
                           {"peak_parameters", at_peak(MemoryTag::parameters)},
                           {"peak_gradients", at_peak(MemoryTag::gradients)},
                           {"peak_optimizer", at_peak(MemoryTag::optimizer)},
                           {"peak_activations", at_peak(MemoryTag::activations)},
                           {"peak_other", at_peak(MemoryTag::other)},
                           {"activations_peak", mem.peak_by_tag[size_t(MemoryTag::activations)]},
                           {"loss", last_loss}}));
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpt_step: error: %s\n", e.what());
    return 1;
  }
}
