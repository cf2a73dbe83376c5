// The Fashion-MNIST classifier recipe behind `train mnist`, callable from tests and benchmarks.
//
//   MnistOptions o;                     // MLP 784-256-256-10, batch 128, AdamW lr 1e-3, 5 epochs
//   o.epochs = 1;
//   MnistRun run = train_mnist(o, [](const EpochStats& e) { fmt::print("{}\n", e.test_acc); });
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/fashion_mnist.h"
#include "models/mlp.h"

namespace forge {

struct MnistOptions {
  std::string data_dir = kFashionMnistDir;
  int epochs = 5;
  int64_t batch_size = 128;
  double lr = 1e-3;
  double weight_decay = 0.01;  // torch.optim.AdamW's default
  uint64_t seed = 0;
  std::vector<int64_t> hidden = {256, 256};
  // Shift and scale pixels to mean 0, variance 1 over the training set (torchvision's
  // Normalize((0.2860,), (0.3530,)) for Fashion-MNIST).
  bool standardize = true;
  std::string device = "cpu";        // cpu, cuda or cuda:N
  std::string metrics_path;          // JSON lines appended per epoch when set
  bool progress = false;             // draw a progress bar (the app turns it on for terminals)
  int64_t max_steps_per_epoch = -1;  // for benchmarks and tests: stop an epoch early
  // Quantization after (or during) training, quant/quantize.h:
  //   "dynamic": train in f32, then int8 weights with activations quantized per batch.
  //   "qat": the last qat_epochs epochs train with fake quantization, then convert to int8.
  // Either appends one metrics line: test_acc_f32, test_acc_int8, bytes_f32, bytes_int8.
  std::string quant = "none";
  int qat_epochs = 1;
  // QAT observers freeze after this many steps of fake-quantized training (-1: half of them).
  int64_t qat_freeze_steps = -1;
  std::string save_quantized;  // write the int8 model here (safetensors) when set
};

// What quantization gave, on the test set.
struct QuantStats {
  std::string method;  // "dynamic" or "qat"
  double test_acc_f32 = 0, test_acc_int8 = 0;
  int64_t bytes_f32 = 0, bytes_int8 = 0;
};

struct EpochStats {
  int epoch = 0;
  double train_loss = 0;  // mean of the epoch's batch losses
  double test_acc = 0;
  double epoch_s = 0;  // training time of the epoch (without the evaluation)
  double eval_s = 0;
};

struct MnistRun {
  std::vector<EpochStats> epochs;
  std::shared_ptr<MLP> model;  // quantized when options.quant asked for it
  std::optional<QuantStats> quant;
};

MnistRun train_mnist(const MnistOptions& options,
                     const std::function<void(const EpochStats&)>& on_epoch = {});

// Standardises both sets' pixels with the training set's mean and standard deviation.
void standardize_images(ImageDataset& train, ImageDataset& test);

// Accuracy of `model` on a dataset, in batches, without building a graph.
double evaluate_accuracy(Module& model, const ImageDataset& data, int64_t batch_size = 1000);

}  // namespace forge
