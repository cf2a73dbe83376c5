// GPT training-step time: forward, loss, backward, gradient clipping, AdamW, on random tokens.
// bench/compare_gpt.py runs it beside the same model in PyTorch and prints the ratio.
//
//   build/bench/gpt_step --shape cpu --threads 1 --steps 20
//   build/bench/gpt_step --shape gpt2-small --threads 2 --steps 5
// Shapes: cpu = the `cpu` preset (4 layers, 4 heads, 128 wide, vocab 65, B=12, T=64);
//         gpt2-small = 12 layers, 12 heads, 768 wide, vocab 50257, B=4, T=64.
#include <CLI/CLI.hpp>

#include "bench/bench_util.h"
#include "models/gpt.h"
#include "optim/optimizer.h"
#include "recipes/report.h"
#include "tensor/cpu/gemm.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

using namespace forge;

int main(int argc, char** argv) {
  CLI::App app{"time GPT training steps"};
  std::string shape = "cpu";
  int threads = 1, steps = 10, warmup = 2;
  app.add_option("--shape", shape, "cpu or gpt2-small")->check(CLI::IsMember({"cpu", "gpt2-small"}));
  app.add_option("--threads", threads)->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);

  GPTConfig cfg;
  int64_t B = 12, T = 64;
  if (shape == "cpu") {
    cfg = {.n_layer = 4, .n_head = 4, .n_embd = 128, .block_size = 64, .vocab_size = 65,
           .dropout = 0.0, .bias = false};
  } else {
    cfg = {.n_layer = 12, .n_head = 12, .n_embd = 768, .block_size = 64, .vocab_size = 50257,
           .dropout = 0.0, .bias = false};
    B = 4;
  }
  Generator init(1337), drop(1338), data(1339);
  GPT model(cfg, init, drop);
  ParamGroup decay{{}, 0.1}, no_decay{{}, 0.0};
  for (const auto& [n, p] : model.named_parameters()) (p.dim() >= 2 ? decay : no_decay).params.push_back(p);
  AdamW opt({decay, no_decay}, {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8});
  const std::vector<Variable> params = model.parameters();
  double flops = cfg.flops_per_token(T) * double(B * T);
  fmt::print("# gpt_step: shape {} ({:.2f}M params, B={}, T={}), f32, gemm {}, threads {}, commit {}\n",
             shape, double(model.num_parameters()) / 1e6, B, T, cpu::gemm_kernel_name(), threads,
             bench::commit());
  std::fflush(stdout);

  double last_loss = 0;
  auto step = [&] {
    Tensor x = mul(rand({B, T}, data), double(cfg.vocab_size)).to(DType::i64);
    Tensor y = mul(rand({B, T}, data), double(cfg.vocab_size)).to(DType::i64);
    MemoryTagScope tag(MemoryTag::activations);
    Variable loss = GPT::loss(model.forward(x), y);
    opt.zero_grad();
    loss.backward();
    clip_grad_norm(params, 1.0);
    opt.step();
    last_loss = loss.item();
  };
  for (int i = 0; i < warmup; ++i) step();
  reset_peak_memory(Device::cpu());
  bench::Timings t = bench::time_runs(steps, step);
  MemoryStats mem = memory_stats(Device::cpu());
  fmt::print("{}\n", to_json_line({{"impl", std::string("forge")},
                                   {"shape", shape},
                                   {"threads", int64_t(threads)},
                                   {"steps", int64_t(steps)},
                                   {"min_ms", t.min * 1e3},
                                   {"median_ms", t.median * 1e3},
                                   {"tokens_per_s", double(B * T) / t.median},
                                   {"gflops", flops / t.median * 1e-9},
                                   {"peak_bytes", mem.peak_bytes},
                                   {"loss", last_loss}}));
  return 0;
}
