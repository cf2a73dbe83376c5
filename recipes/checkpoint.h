// GPT checkpoints: weights as safetensors, the rest of the training state beside them.
//
//   save_checkpoint("out", step, model, tokenizer, state, config_json, /*keep_last=*/3);
//     -> out/ckpt-000250/model.safetensors   weights; metadata: config, tokenizer, step
//        out/ckpt-000250/state.safetensors   AdamW moments; metadata: step, generator states
//   auto latest = latest_checkpoint("out");  // the highest complete ckpt-*
//   LoadedModel m = load_model("out/ckpt-000250/model.safetensors");
//
// A checkpoint is written into a hidden temporary directory, every file fsynced, then renamed into
// place, so an interrupted save never replaces a good checkpoint with a broken one. Loading refuses
// a file whose config, tokenizer or tensors do not make the model, naming the file and the tensor.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "io/tokenizer.h"
#include "models/gpt.h"
#include "tensor/random.h"

namespace forge {

inline constexpr const char* kGptCheckpointFormat = "forge-gpt-1";

// Everything besides the weights that a run needs to continue exactly where it stopped.
struct TrainingState {
  int64_t step = 0;  // steps completed
  Generator::State batch_gen, dropout_gen;
  NamedTensors optimizer;         // Optimizer::state()
  NamedTensors scaler;            // GradScaler::state() ("scaler.*"); empty without loss scaling
  std::string train_config_json;  // the run's settings when saved ("" in older checkpoints)
};

struct CheckpointPaths {
  std::string dir, model, state;
  int64_t step = 0;
};

CheckpointPaths save_checkpoint(const std::string& out_dir, int64_t step, const GPT& model,
                                const Tokenizer& tokenizer, const TrainingState& state,
                                const std::string& train_config_json, int64_t keep_last);

// The newest complete checkpoint under `dir` (or `dir` itself when it is one); nullopt if none.
std::optional<CheckpointPaths> latest_checkpoint(const std::string& dir);

struct LoadedModel {
  std::string path;
  GPTConfig config;
  Tokenizer tokenizer;
  NamedTensors weights;
  int64_t step = 0;
  // "none" for an f32 model; a quantized file's kind ("int8-dynamic", "int4-g64", ...), whose
  // weights then hold integer tensors and scales (quant/quantize.h) and whose metadata is kept.
  std::string quantization = "none";
  std::map<std::string, std::string> metadata;
};

// Reads and checks a model file: config and tokenizer from its metadata, and every tensor the
// config implies present with its shape and dtype, nothing else. A quantized file (written by
// save_quantized_model) is checked when make_model installs its layers.
LoadedModel load_model(const std::string& path);
// The GPT of a loaded file, ready for inference: f32 as saved, or quantized now with `quant`
// ("none", "int8": dynamic int8, "int4": weight-only, group `group`), or as the file was quantized.
std::shared_ptr<GPT> make_model(const LoadedModel& loaded, const std::string& quant = "none",
                                int64_t group = 64);
// Writes a quantized GPT as one safetensors file with the metadata load_model reads (config,
// tokenizer and step of `source`, the file it came from).
void save_quantized_model(const std::string& path, const GPT& model, const LoadedModel& source);
// Finds the model file for a path that is a model file, a checkpoint directory or an out directory.
std::string resolve_model_path(const std::string& path);
// Copies loaded weights into a model built from the same config.
void load_weights(GPT& model, const LoadedModel& loaded);
// Reads the training state, checking it belongs to a model with `config`.
TrainingState load_training_state(const std::string& path, const GPTConfig& config);

std::string gpt_config_to_json(const GPTConfig& c);
GPTConfig gpt_config_from_json(const std::string& json, const std::string& where);

// Building blocks shared with sharded checkpoints (recipes/sharded_checkpoint.h).
std::string checkpoint_name(int64_t step);  // ckpt-000250
// Moves a fully written directory to out_dir/ckpt-<step> (an older one of the same step goes only
// once the new one is in place) and keeps the newest keep_last checkpoints.
void publish_checkpoint(const std::string& tmp_dir, const std::string& out_dir, int64_t step,
                        int64_t keep_last);
std::string generator_to_string(Generator::State s);  // seed:offset
Generator::State generator_from_string(const std::string& text, const std::string& where);
// metadata[key], or an error naming the file.
const std::string& checkpoint_meta(const std::map<std::string, std::string>& metadata,
                                   const std::string& key, const std::string& path);

}  // namespace forge
