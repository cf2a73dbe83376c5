// One epoch of the Fashion-MNIST MLP (784-256-256-10, ReLU, batch 128, AdamW lr 1e-3), timed.
// bench/compare_mlp.py runs it beside the same epoch in PyTorch and prints the ratio.
//
//   build/bench/mlp_epoch --threads 1 --epochs 3 --warmup 10   # prints settings, then one JSON
//                                                              # line per epoch
// --warmup N first trains a throwaway model for N steps (untimed: thread pool, allocator, code
// warm), then the timed run starts from the same seed as without it.
#include <CLI/CLI.hpp>

#include "bench/bench_util.h"
#include "recipes/mnist.h"
#include "recipes/report.h"
#include "tensor/parallel.h"

using namespace forge;

int main(int argc, char** argv) {
  CLI::App app{"time epochs of the Fashion-MNIST MLP"};
  int threads = 1, warmup = 0;
  MnistOptions o;
  o.epochs = 3;
  app.add_option("--threads", threads)->check(CLI::PositiveNumber);
  app.add_option("--epochs", o.epochs)->check(CLI::PositiveNumber);
  app.add_option("--data", o.data_dir);
  app.add_option("--warmup", warmup, "untimed training steps first")->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);
  fmt::print(
      "# mlp_epoch: MLP 784-256-256-10 relu, batch {}, AdamW, f32, threads {}, warm-up {} steps, "
      "commit {}\n",
      o.batch_size, threads, warmup, bench::commit());
  std::fflush(stdout);
  if (warmup > 0) {
    MnistOptions w = o;
    w.epochs = 1;
    w.max_steps_per_epoch = warmup;
    train_mnist(w);
  }
  train_mnist(o, [&](const EpochStats& e) {
    fmt::print("{}\n", to_json_line({{"impl", std::string("forge")},
                                     {"threads", int64_t(threads)},
                                     {"epoch", int64_t(e.epoch)},
                                     {"epoch_s", e.epoch_s},
                                     {"train_loss", e.train_loss},
                                     {"test_acc", e.test_acc}}));
    std::fflush(stdout);
  });
  return 0;
}
