// One epoch of the Fashion-MNIST MLP (784-256-256-10, ReLU, batch 128, AdamW lr 1e-3), timed.
// bench/compare_mlp.sh runs it beside the same epoch in PyTorch and prints the ratio.
//
//   build/bench/mlp_epoch --threads 1 --epochs 3     # prints settings, then one JSON line per
//   epoch
#include <CLI/CLI.hpp>

#include "bench/bench_util.h"
#include "recipes/mnist.h"
#include "recipes/report.h"
#include "tensor/parallel.h"

using namespace forge;

int main(int argc, char** argv) {
  CLI::App app{"time epochs of the Fashion-MNIST MLP"};
  int threads = 1;
  MnistOptions o;
  o.epochs = 3;
  app.add_option("--threads", threads)->check(CLI::PositiveNumber);
  app.add_option("--epochs", o.epochs)->check(CLI::PositiveNumber);
  app.add_option("--data", o.data_dir);
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);
  fmt::print("# mlp_epoch: MLP 784-256-256-10 relu, batch {}, AdamW, f32, threads {}, commit {}\n",
             o.batch_size, threads, bench::commit());
  std::fflush(stdout);
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
