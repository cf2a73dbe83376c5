// The settings of a GPT training run: presets, a TOML file, command-line overrides.
//
//   GptTrainConfig c = GptTrainConfig::preset("cpu");    // nanoGPT's shakespeare_char on a CPU
//   c.apply_toml_file("run.toml");                      // e.g.  max_iters = 500
//   c.set("lr", "3e-4", "--lr");                        // what a command-line flag does
//   c.validate();
//
// Every field has one name, used as the TOML key (`batch_size`) and, with dashes, as the flag
// (`--batch-size`). Precedence: preset, then file, then flags. Unknown keys, values of the wrong
// type and impossible settings are errors that name the key and where it came from. Settings with a
// fixed set of values (precision, schedule, ...) are enums, parsed once where they are set;
// configs, flags and checkpoints spell them as text (bf16, 1f1b, ...).
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "io/tokenizer.h"
#include "models/gpt.h"
#include "parallel/pipeline.h"

namespace forge {

enum class ActivationCheckpointing { none, blocks };  // blocks: recompute each block in backward
enum class LossScaling { automatic, on, off };        // automatic: on for f16 only
const char* activation_checkpointing_name(ActivationCheckpointing a);  // "none", "blocks"
const char* loss_scaling_name(LossScaling s);                          // "auto", "on", "off"

struct GptTrainConfig {
  // Model (vocab_size comes from the tokenizer).
  GPTConfig model{.n_layer = 4,
                  .n_head = 4,
                  .n_embd = 128,
                  .block_size = 64,
                  .vocab_size = 0,
                  .dropout = 0.0,
                  .bias = false};  // its gelu: the `gelu` setting, tanh (GPT-2) or erf (nanoGPT)
  // Data.
  std::string data;  // corpus path; "" -> $TINYSHAKESPEARE, then data/tinyshakespeare.txt
  Tokenizer::Kind tokenizer = Tokenizer::Kind::chars;  // char | byte
  // Optimisation (AdamW, nanoGPT's schedule: warm-up, cosine to min_lr at lr_decay_iters).
  int64_t max_iters = 2000;
  int64_t batch_size = 12;
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup_iters = 100;
  int64_t lr_decay_iters = 2000;
  double weight_decay = 0.1;  // on matrices (dim >= 2) only, as nanoGPT
  double beta1 = 0.9;
  double beta2 = 0.99;
  double grad_clip = 1.0;                                              // 0: no clipping
  ActivationCheckpointing checkpoint = ActivationCheckpointing::none;  // none | blocks
  // Mixed precision (autograd/autocast.h) and loss scaling (optim/grad_scaler.h).
  DType precision = DType::f32;                     // f32 | bf16 | f16 (autocast's dtype)
  LossScaling loss_scale = LossScaling::automatic;  // auto | on | off
  double init_scale = 65536.0;
  int64_t scale_growth_interval = 2000;
  // Data parallelism (parallel/ddp.h): dp ranks under mpirun, each with batch_size sequences of
  // a global batch of dp * batch_size, gradients averaged in buckets of bucket_mb MiB.
  int64_t dp = 1;
  double bucket_mb = 25.0;
  // ZeRO over the dp ranks (parallel/zero.h): 0 replicates AdamW's state (DDP); 1 partitions it,
  // 2 the gradients too, 3 the parameters too. Each unit (embedding, block, ln_f) is one bucket.
  int64_t zero = 0;
  // A cap on each rank's live memory in MiB (tensor/allocator.h set_memory_cap); 0: none.
  double memory_cap_mb = 0;
  // Model parallelism (parallel/tensor_parallel.h, parallel/pipeline.h): tp tensor-parallel ranks
  // times pp pipeline stages per model replica, so mpirun -np dp * tp * pp. Each step splits the
  // batch into micro_batches, run in the pipeline schedule gpipe or 1f1b.
  int64_t tp = 1;
  int64_t pp = 1;
  int64_t micro_batches = 1;
  PipelineSchedule schedule = PipelineSchedule::one_f_one_b;  // gpipe | 1f1b
  // Evaluation and logging.
  int64_t eval_interval = 250;
  int64_t eval_iters = 200;
  int64_t log_interval = 10;  // steps between log lines (nanoGPT's default); metrics: every step
  // Run.
  int64_t seed = 1337;
  int64_t threads = 0;  // 0: all cores
  std::string device =
      "cpu";  // cpu | cuda | cuda:N (under mpirun, rank r uses cuda:(N + r % GPUs))
  std::string out = "out";
  int64_t checkpoint_interval = 0;  // 0: at every evaluation
  int64_t keep_last = 3;
  std::string metrics;
  std::string resume;  // a checkpoint directory (or its parent) to continue from

  static GptTrainConfig preset(const std::string& name);  // "cpu" or "baby"
  static std::vector<std::string> preset_names();

  // Sets one field from text, as a flag or a config key would. `where` names the source in errors.
  void set(const std::string& key, const std::string& value, const std::string& where);
  // Reads a TOML file of `key = value` lines (tables [model], [train] ... are allowed and ignored
  // as namespaces). Errors name the file and line.
  void apply_toml_file(const std::string& path);
  void validate() const;
  bool mixed_precision() const { return precision != DType::f32; }
  bool loss_scaling() const {
    return loss_scale == LossScaling::on ||
           (loss_scale == LossScaling::automatic && precision == DType::f16);
  }

  struct FieldInfo {
    std::string key;   // TOML key
    std::string flag;  // command-line flag
    std::string help;
    std::string type;  // INT, FLOAT, BOOL or TEXT, for --help
  };
  static std::vector<FieldInfo> fields();
  std::string to_json() const;  // every field, for checkpoints and logs
};

}  // namespace forge
