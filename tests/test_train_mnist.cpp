// The Fashion-MNIST recipe end to end (slow suite): default options train to the target accuracy
// and write one metrics line per epoch.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "recipes/mnist.h"
#include "testing.h"

using namespace forge;

namespace {

// The number after "key": in a JSON line; NaN when the key is missing.
double json_number(const std::string& line, const std::string& key) {
  std::smatch m;
  std::regex re("\"" + key + "\": (-?[0-9.eE+-]+)[,}]");
  if (!std::regex_search(line, m, re)) return std::nan("");
  return std::stod(m[1].str());
}

}  // namespace

TEST_CASE("train_mnist with default options reaches 87.5% test accuracy in 5 epochs") {
  auto metrics = std::filesystem::temp_directory_path() /
                 ("forge_train_mnist_" + std::to_string(::getpid()) + ".jsonl");
  std::filesystem::remove(metrics);
  MnistOptions o;
  o.data_dir = testing::fashion_mnist_dir();
  o.metrics_path = metrics.string();
  REQUIRE(o.epochs == 5);
  int callbacks = 0;
  MnistRun run = train_mnist(o, [&](const EpochStats& e) {
    ++callbacks;
    CHECK(e.epoch == callbacks);
  });
  REQUIRE(run.epochs.size() == 5);
  CHECK(callbacks == 5);
  const EpochStats& first = run.epochs.front();
  const EpochStats& last = run.epochs.back();
  INFO("epoch 1 loss " << first.train_loss << ", epoch 5 loss " << last.train_loss << ", test acc "
                       << last.test_acc);
  CHECK(last.test_acc >= 0.875);
  CHECK(last.test_acc <= 1.0);
  CHECK(last.train_loss < first.train_loss);
  CHECK(first.train_loss < 2.302585);  // below chance level, ln 10, already in epoch 1
  // The returned model is the trained one: its accuracy (on the test set standardised as in
  // training) is the last epoch's.
  ImageDataset train = load_fashion_mnist(o.data_dir, Split::train);
  ImageDataset test = load_fashion_mnist(o.data_dir, Split::test);
  standardize_images(train, test);
  CHECK(evaluate_accuracy(*run.model, test) == last.test_acc);

  // One JSON line per epoch with the same figures.
  std::ifstream in(metrics);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  REQUIRE(lines.size() == 5);
  for (size_t i = 0; i < lines.size(); ++i) {
    INFO(lines[i]);
    const EpochStats& e = run.epochs[i];
    CHECK(lines[i].front() == '{');
    CHECK(lines[i].back() == '}');
    CHECK(json_number(lines[i], "epoch") == double(i + 1));
    CHECK(json_number(lines[i], "train_loss") == Approx(e.train_loss).epsilon(1e-8));
    CHECK(json_number(lines[i], "test_acc") == Approx(e.test_acc).epsilon(1e-8));
    CHECK(json_number(lines[i], "epoch_s") == Approx(e.epoch_s).epsilon(1e-8));
    CHECK(e.epoch_s > 0);
  }
  std::filesystem::remove(metrics);
}
