#include "recipes/mnist.h"

#include <chrono>

#include "optim/optimizer.h"
#include "quant/quantize.h"
#include "recipes/report.h"
#include "tensor/cuda/cuda.h"
#include "tensor/ops.h"

namespace forge {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

double evaluate_accuracy(Module& model, const ImageDataset& data, int64_t batch_size) {
  NoGradGuard ng;
  MemoryTagScope tag(MemoryTag::activations);
  bool was_training = model.is_training();
  model.eval();
  const Device device = model.device();
  int64_t n = data.size(), correct = 0;
  for (int64_t at = 0; at < n; at += batch_size) {
    int64_t len = std::min(batch_size, n - at);
    Variable x(data.images.narrow(0, at, len).to(device));
    Tensor pred = argmax(model.forward(x).data(), 1);
    correct += int64_t(sum(eq(pred, data.labels.narrow(0, at, len).to(device))).item());
  }
  model.train(was_training);
  return n ? double(correct) / double(n) : 0.0;
}

void standardize_images(ImageDataset& train, ImageDataset& test) {
  double mu = mean(train.images).item();
  double sd = std::sqrt(mean(pow(add(train.images, -mu), 2.0)).item());
  train.images = mul(add(train.images, -mu), 1.0 / sd);
  test.images = mul(add(test.images, -mu), 1.0 / sd);
}

namespace {
// Quantizes the trained model in place and measures it against its f32 self. For QAT the f32
// figure is the same trained weights without fake quantization (a plain MLP loaded with them).
QuantStats quantize_mnist_model(MnistRun& run, const std::vector<int64_t>& sizes,
                                const std::string& method, const ImageDataset& test) {
  MLP& model = *run.model;
  QuantStats q;
  q.method = method;
  Generator unused(0);
  MLP plain(sizes, unused);
  plain.load_state_dict(model.state_dict());
  q.test_acc_f32 = evaluate_accuracy(plain, test);
  q.bytes_f32 = state_bytes(plain.state_dict());
  if (method == "dynamic")
    quantize_dynamic(model);
  else
    convert(model);
  q.test_acc_int8 = evaluate_accuracy(model, test);
  q.bytes_int8 = state_bytes(quantized_state(model));
  return q;
}
}  // namespace

MnistRun train_mnist(const MnistOptions& o,
                     const std::function<void(const EpochStats&)>& on_epoch) {
  FORGE_CHECK(o.epochs >= 0, "epochs must be >= 0, got {}", o.epochs);
  FORGE_CHECK(o.batch_size > 0, "batch size must be positive, got {}", o.batch_size);
  FORGE_CHECK(o.quant == "none" || o.quant == "dynamic" || o.quant == "qat",
              "quant must be none, dynamic or qat, got '{}'", o.quant);
  FORGE_CHECK(o.quant != "qat" || (o.qat_epochs >= 1 && o.qat_epochs <= o.epochs),
              "--qat-epochs must be between 1 and the {} epochs, got {}", o.epochs, o.qat_epochs);
  FORGE_CHECK(o.qat_freeze_steps == -1 || o.qat_freeze_steps >= 1,
              "--qat-freeze-steps must be at least 1 (or -1: half of the QAT steps), got {}",
              o.qat_freeze_steps);
  FORGE_CHECK(o.save_quantized.empty() || o.quant != "none",
              "--save-quantized needs --quant dynamic or qat");
  const Device device = Device::parse(o.device);
  cuda::check_device(device, "--device");
  FORGE_CHECK(device.is_cpu() || o.quant == "none",
              "--quant {} runs on the cpu; leave out --device {} to quantize", o.quant, o.device);
  ImageDataset train = load_fashion_mnist(o.data_dir, Split::train);
  ImageDataset test = load_fashion_mnist(o.data_dir, Split::test);
  if (o.standardize) standardize_images(train, test);

  Generator init_gen(o.seed), shuffle_gen(o.seed + 1);
  std::vector<int64_t> sizes{train.rows * train.cols};
  sizes.insert(sizes.end(), o.hidden.begin(), o.hidden.end());
  sizes.push_back(10);
  MnistRun run;
  run.model = std::make_shared<MLP>(sizes, init_gen);
  MLP& model = *run.model;
  model.to(device);
  // The training set where the model is (188 MB of f32 pixels); batches are gathered there.
  Tensor train_images = train.images.to(device), train_labels = train.labels.to(device);
  AdamW opt({{model.parameters(), o.weight_decay}}, {.lr = o.lr});
  MetricsWriter metrics(o.metrics_path);

  int64_t n = train.size();
  int64_t steps = (n + o.batch_size - 1) / o.batch_size;
  if (o.max_steps_per_epoch >= 0) steps = std::min(steps, o.max_steps_per_epoch);
  const int first_qat_epoch = o.quant == "qat" ? o.epochs - o.qat_epochs + 1 : o.epochs + 1;
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    if (epoch == first_qat_epoch) {
      // Fake quantization from here on; the optimizer keeps the same weights (QatLinear shares
      // them). Observers freeze midway, so the last steps train against the scales convert keeps.
      int64_t freeze = o.qat_freeze_steps >= 1 ? o.qat_freeze_steps
                                               : std::max<int64_t>(1, steps * o.qat_epochs / 2);
      FORGE_CHECK(steps > 0, "--quant qat: the epochs have no training steps");
      prepare_qat(model, {.freeze_after = freeze});
    }
    auto t0 = std::chrono::steady_clock::now();
    Tensor perm = randperm(n, shuffle_gen);
    ProgressBar bar(steps, fmt::format("epoch {}/{}", epoch, o.epochs), o.progress);
    double loss_sum = 0;
    for (int64_t s = 0; s < steps; ++s) {
      int64_t at = s * o.batch_size, len = std::min(o.batch_size, n - at);
      Tensor idx = perm.narrow(0, at, len).to(device);
      MemoryTagScope tag(MemoryTag::activations);
      Variable x(index_select(train_images, idx));
      Tensor y = index_select(train_labels, idx);
      Variable loss = cross_entropy(model.forward(x), y);
      opt.zero_grad();
      loss.backward();
      opt.step();
      double l = loss.item();
      loss_sum += l;
      bar.update(s + 1, fmt::format("loss {:.4f}", l));
    }
    bar.finish();
    EpochStats st;
    st.epoch = epoch;
    st.epoch_s = seconds_since(t0);
    st.train_loss = steps ? loss_sum / double(steps) : 0.0;
    auto t1 = std::chrono::steady_clock::now();
    st.test_acc = evaluate_accuracy(model, test);
    st.eval_s = seconds_since(t1);
    run.epochs.push_back(st);
    metrics.write({{"epoch", int64_t(epoch)},
                   {"train_loss", st.train_loss},
                   {"test_acc", st.test_acc},
                   {"epoch_s", st.epoch_s}});
    if (on_epoch) on_epoch(st);
  }
  if (o.quant != "none") {
    run.quant = quantize_mnist_model(run, sizes, o.quant, test);
    metrics.write({{"quant", run.quant->method},
                   {"test_acc_f32", run.quant->test_acc_f32},
                   {"test_acc_int8", run.quant->test_acc_int8},
                   {"bytes_f32", run.quant->bytes_f32},
                   {"bytes_int8", run.quant->bytes_int8}});
    if (!o.save_quantized.empty())
      save_quantized(o.save_quantized, model,
                     {{"sizes", fmt::format("{}", fmt::join(sizes, ","))}});
  }
  return run;
}

}  // namespace forge
