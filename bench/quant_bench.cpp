// Latency of quantized Linear stacks against f32 (issue 7), in one process.
//
//   build/bench/quant_bench --model stack --batch 1,64 --threads 1    # 4 x Linear(1024, 1024)
//   build/bench/quant_bench --model mnist --batch 1,128               # MLP 784-256-256-10
//
// For each batch size: the model's forward under NoGradGuard in f32, then the same weights after
// quantize_dynamic (int8: activations quantized per batch) and int4 weight-only (group 64), each
// `--repeats` timed runs after `--warmup` untimed ones, min and median. Prints settings lines
// ("# ...") and one line per (model, batch, precision) that bench/compare_quant.py reads:
//   stack batch 64 f32 min_ms 1.234 median_ms 1.300
#include <CLI/CLI.hpp>

#include "bench/bench_util.h"
#include "models/mlp.h"
#include "quant/quantize.h"
#include "tensor/cpu/gemm.h"
#include "tensor/parallel.h"

using namespace forge;

namespace {

std::shared_ptr<Module> make_model(const std::string& kind, Generator& gen) {
  if (kind == "mnist") return std::make_shared<MLP>(std::vector<int64_t>{784, 256, 256, 10}, gen);
  FORGE_CHECK(kind == "stack", "--model must be stack or mnist, got '{}'", kind);
  auto s = std::make_shared<Sequential>();
  for (int i = 0; i < 4; ++i)
    s->add(std::to_string(i), std::make_shared<Linear>(1024, 1024, true, gen));
  return s;
}

int64_t input_size(const std::string& kind) {
  return kind == "mnist" ? 784 : 1024;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"latency of f32, int8 and int4 Linear stacks"};
  std::string model = "stack";
  std::vector<int64_t> batches{1, 64};
  int threads = 1, repeats = 50, warmup = 5;
  app.add_option("--model", model, "stack (4 x Linear 1024x1024) or mnist (MLP 784-256-256-10)");
  app.add_option("--batch", batches, "batch sizes")->delimiter(',');
  app.add_option("--threads", threads, "threads")->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "timed runs per setting")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed runs first")->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    set_num_threads(threads);
    fmt::print(
        "# quant_bench {} | commit {} | threads {} | warm-up {} | repeats {} | f32 gemm {} | int8 "
        "kernel {}\n",
        model, bench::commit(), threads, warmup, repeats, cpu::gemm_kernel_name(),
        int8_kernel_name(int8_kernel()));
    NoGradGuard ng;
    for (std::string precision : {"f32", "int8", "int4"}) {
      Generator gen(0);
      std::shared_ptr<Module> m = make_model(model, gen);
      m->eval();
      if (precision == "int8") quantize_dynamic(*m);
      // int4 groups must divide every layer's inputs; the MNIST MLP's 784 = 16 x 49 does not fit
      // 32, so its first layer would refuse: int4 is measured on the stack only.
      if (precision == "int4") {
        if (model == "mnist") continue;
        quantize_dynamic(*m, {.bits = 4, .group = 64, .config = {}});
      }
      for (int64_t b : batches) {
        Generator xg(1);
        Variable x(randn({b, input_size(model)}, xg));
        auto once = [&] { m->forward(x); };
        for (int i = 0; i < warmup; ++i) once();
        bench::Timings t = bench::time_runs(repeats, once);
        fmt::print("{} batch {} {} min_ms {:.4f} median_ms {:.4f}\n", model, b, precision,
                   1e3 * t.min, 1e3 * t.median);
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
