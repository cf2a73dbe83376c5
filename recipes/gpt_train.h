// The GPT training recipe behind `train gpt`, callable from tests and benchmarks.
//
//   GptTrainConfig c = GptTrainConfig::preset("cpu");
//   c.data = "shakespeare.txt";
//   GptRun run = train_gpt(c);               // logs through the callbacks, checkpoints into c.out
//   run.final_val_loss;
//
// One step: a batch of B random windows (nanoGPT's get_batch), forward, mean cross-entropy,
// backward, gradient clipping, the step's learning rate (warm-up + cosine), AdamW (weight decay on
// matrices only). Validation loss every eval_interval steps and at the end, over eval_iters batches
// drawn by a generator seeded from (seed, step), so evaluating never disturbs the training stream
// and a resumed run reproduces the uninterrupted one bit for bit.
//
// With micro_batches M > 1 each batch runs as M micro-batches whose gradients accumulate (the same
// step, in less activation memory). Under mpirun with dp * tp * pp ranks, every rank draws the
// same global batch of dp * B windows and each of the dp replicas trains on its B of them; DDP
// averages the gradients, so the run matches one process with batch dp * B. A replica is split
// over tp tensor-parallel ranks and pp pipeline stages (parallel/tensor_parallel.h, pipeline.h)
// when either is above 1; its checkpoints are then sharded (recipes/sharded_checkpoint.h), written
// by replica 0's ranks. Rank 0 alone logs; evaluation runs on replica 0's ranks.
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/text_data.h"
#include "models/gpt.h"
#include "recipes/gpt_config.h"

namespace forge {

struct StepStats {
  int64_t step = 0;  // 1-based: steps completed
  double loss = 0;
  double lr = 0;
  double elapsed_s = 0;  // wall time from the start of this call's first step to this one's end
  double ms_per_step = 0;
  double tokens_per_s = 0;
  double gflops = 0;  // achieved, from the model's FLOPs per token
  // This step's peak of live bytes on the training device (the allocator's counters, reset at
  // the step's start), on the rank where it is highest, and that rank's split by tag at its peak
  // (MemoryTag order: other, parameters, gradients, optimizer, activations).
  int64_t peak_bytes = 0;
  int peak_rank = 0;
  std::array<int64_t, size_t(MemoryTag::count)> peak_by_tag{};
  double grad_norm = 0;     // before clipping; NaN on a skipped step (not computed)
  double loss_scale = 1;    // the scale this step's loss was multiplied by (1 without scaling)
  bool skipped = false;     // the optimizer step was skipped (inf/NaN gradients)
  double comm_wait_ms = 0;  // data parallel: waiting for gradient all-reduces (not hidden)
  double allreduce_ms = 0;  // data parallel: time inside them, hidden or not
  std::optional<double> val_loss, train_eval_loss;  // on evaluation steps
};

struct GptRunHooks {
  std::function<void(const StepStats&)> on_step;       // every step
  std::function<void(const std::string&)> on_message;  // setup, checkpoints, stops
  const std::atomic<bool>* stop = nullptr;             // set (e.g. by SIGINT): save and return
};

struct GptRun {
  std::vector<double> losses;  // one per step taken in this call
  std::optional<double> final_val_loss;
  int64_t steps_done = 0;  // including those of a resumed checkpoint
  bool stopped = false;    // interrupted by hooks.stop
  std::string last_checkpoint;
  Device device = Device::cpu();  // where this rank trained
  std::shared_ptr<GPT> model;     // this rank's part of it (the whole model without tp or pp);
                                  // null under ZeRO-3 (partitioned: see the checkpoint)
  Tokenizer tokenizer;
};

// The corpus a config means: its data field, else $TINYSHAKESPEARE, else data/tinyshakespeare.txt.
std::string resolve_data_path(const GptTrainConfig& config);

GptRun train_gpt(const GptTrainConfig& config, const GptRunHooks& hooks = {});

// `train gpt --eval-only`: the losses of a saved model, in f32, quantized now (`quant` "int8" or
// "int4" with `group`), or as a quantized file holds it. It reads `checkpoint` (a model file or a
// checkpoint or out directory) and draws the batches the training run's evaluation drew at the
// model's step (seed, eval_iters, batch_size x dp), so an f32 model reproduces the logged losses.
struct GptEvalResult {
  int64_t step = 0;
  std::string quantization;  // describe_quantization of the evaluated model
  double train_loss = 0, val_loss = 0;
  int64_t model_bytes = 0;  // its tensors as a file holds them
  double seconds = 0;       // the two evaluations
};
GptEvalResult evaluate_checkpoint(const GptTrainConfig& config, const std::string& checkpoint,
                                  const std::string& quant = "none", int64_t group = 64);

// Mean loss over `iters` batches of a split, in eval mode, without a graph.
double estimate_loss(GPT& model, const Tensor& split, int64_t iters, int64_t batch_size,
                     Generator& gen, const char* split_name);

}  // namespace forge
