// Matrix-product throughput (GFLOP/s) of the matmul op, f32 or bf16 inputs, at square and
// transformer shapes. bench/compare_matmul.py runs it beside torch.matmul (OpenBLAS) and prints
// the ratio.
//
//   build/bench/matmul --threads 1 --warmup 10   # one JSON line per shape: m, n, k, min/median
//                                                # seconds, GFLOP/s
//   build/bench/matmul --dtype bf16              # bf16 inputs: the native AVX512_BF16 kernel
//   FORGE_BF16_GEMM=widen build/bench/matmul --dtype bf16   # bf16 widened to the f32 kernels
// Per shape: --warmup untimed products, then --repeats timed runs of ~2 GFLOP each.
#include <CLI/CLI.hpp>

#include "bench/bench_util.h"
#include "recipes/report.h"
#include "tensor/cpu/gemm.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"
#include "tensor/random.h"

using namespace forge;

int main(int argc, char** argv) {
  CLI::App app{"matmul GFLOP/s"};
  int threads = 1, repeats = 7, warmup = 1;
  std::string dtype_name = "f32";
  app.add_option("--threads", threads)->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats)->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed products per shape")->check(CLI::NonNegativeNumber);
  app.add_option("--dtype", dtype_name, "the inputs' type (the product sums in f32)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);
  const DType dtype = parse_dtype(dtype_name);
  fmt::print(
      "# matmul: C(m,n) = A(m,k) @ B(k,n), {} inputs, kernel {}, threads {}, warm-up {}, repeats "
      "{}, commit {}\n",
      dtype_name, dtype == DType::bf16 ? cpu::gemm_bf16_kernel_name() : cpu::gemm_kernel_name(),
      threads, warmup, repeats, bench::commit());
  struct Case {
    int64_t m, n, k;
    const char* name;
  };
  std::vector<Case> cases = {{256, 256, 256, "square"},      {512, 512, 512, "square"},
                             {1024, 1024, 1024, "square"},   {2048, 2048, 2048, "square"},
                             {128, 768, 512, "transformer"}, {512, 768, 128, "transformer"},
                             {128, 3072, 768, "gpt2-mlp"},   {128, 50257, 768, "gpt2-head"}};
  Generator gen(0);
  for (const Case& c : cases) {
    Tensor a = randn({c.m, c.k}, gen).to(dtype), b = randn({c.k, c.n}, gen).to(dtype);
    double flop = 2.0 * double(c.m) * double(c.n) * double(c.k);
    int inner = std::max<int>(1, int(2e9 / flop));  // ~0.02-1 s per timed run
    for (int i = 0; i < warmup; ++i) matmul(a, b);
    bench::Timings t = bench::time_runs(repeats, [&] {
      for (int i = 0; i < inner; ++i) matmul(a, b);
    });
    double best = t.min / inner, med = t.median / inner;
    fmt::print("{}\n", to_json_line({{"impl", std::string("forge")},
                                     {"dtype", dtype_name},
                                     {"shape", std::string(c.name)},
                                     {"threads", int64_t(threads)},
                                     {"m", c.m},
                                     {"n", c.n},
                                     {"k", c.k},
                                     {"min_s", best},
                                     {"median_s", med},
                                     {"gflops", flop / best * 1e-9}}));
    std::fflush(stdout);
  }
  return 0;
}
