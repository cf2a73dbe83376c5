// build/apps/train: trains the project's models. Thin on purpose: it parses options and calls the
// recipes (recipes/), which tests and benchmarks call too.
//
//   build/apps/train mnist --epochs 5 --threads 2 --metrics run.jsonl
#include <CLI/CLI.hpp>
#include <cstdio>

#include "recipes/mnist.h"
#include "recipes/report.h"
#include "tensor/parallel.h"

using namespace forge;

namespace {

int run_mnist(const MnistOptions& o) {
  fmt::print("train mnist: MLP {}-{}-10, batch {}, AdamW lr {}, {} epochs, {} threads, data {}\n",
             784, fmt::join(o.hidden, "-"), o.batch_size, o.lr, o.epochs, get_num_threads(),
             o.data_dir);
  std::fflush(stdout);
  MnistRun run = train_mnist(o, [](const EpochStats& e) {
    fmt::print("epoch {:2d}  train_loss {:.4f}  test_acc {:.4f}  {:.2f}s (+{:.2f}s eval)\n",
               e.epoch, e.train_loss, e.test_acc, e.epoch_s, e.eval_s);
    std::fflush(stdout);
  });
  if (!run.epochs.empty()) fmt::print("test accuracy: {:.4f}\n", run.epochs.back().test_acc);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"forge: train models from scratch"};
  app.require_subcommand(1);
  int threads = get_num_threads();
  app.add_option("--threads", threads, "CPU threads for all kernels (default: all cores)")
      ->check(CLI::PositiveNumber);

  MnistOptions mnist;
  CLI::App* m = app.add_subcommand("mnist", "MLP classifier on Fashion-MNIST");
  m->add_option("--epochs", mnist.epochs, "epochs")->check(CLI::NonNegativeNumber);
  m->add_option("--batch-size", mnist.batch_size, "batch size")->check(CLI::PositiveNumber);
  m->add_option("--lr", mnist.lr, "AdamW learning rate")->check(CLI::PositiveNumber);
  m->add_option("--seed", mnist.seed, "seed for initialisation and shuffling");
  m->add_option("--data", mnist.data_dir, "directory with the gzip'd IDX files");
  m->add_option("--metrics", mnist.metrics_path, "append one JSON line per epoch to FILE");
  m->add_option("--threads", threads, "CPU threads (default: all cores)")
      ->check(CLI::PositiveNumber);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    set_num_threads(threads);
    if (m->parsed()) {
      mnist.progress = stdout_is_terminal();
      return run_mnist(mnist);
    }
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
