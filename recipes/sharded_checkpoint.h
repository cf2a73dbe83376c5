// Checkpoints of tensor- and pipeline-parallel runs: one model file and one state file per shard,
// written by the ranks that hold them (data-parallel replicas hold the same shards; replica 0
// writes).
//
//   out/ckpt-000250/model-pp0-tp1.safetensors   stage 0, tensor-parallel rank 1: its slices of the
//                                               weights, under the serial model's names
//   out/ckpt-000250/state-pp0-tp1.safetensors   its AdamW moments under the parameters' names
//                                               (adamw.m.transformer.wte.weight, ...), generators
//
// A serial or data-parallel checkpoint (model.safetensors + state.safetensors,
// recipes/checkpoint.h) is the 1 x 1 layout of the same thing. load_full_checkpoint reads either
// kind back into the serial model's tensors; read_checkpoint_shard reads one rank's share for any
// layout, touching only its bytes; `train reshard` writes every share of another layout, so a run
// saved at tp = 2, pp = 2 samples in `infer` as one process once merged, and resumes under another
// layout.
//
// A ZeRO run (--zero 1-3) saves no whole tensors: every rank writes its partition, the pieces of
// its shard's weights and AdamW moments it owns, keyed by name and element range:
//
//   out/ckpt-000250/zero-pp0-tp1-dp3.safetensors   data-parallel rank 3 of that shard:
//       transformer.h.0.ln_1.weight[0:768], adamw.m.transformer.h.0.ln_1.weight[0:768], ...
//   out/ckpt-000250/state-pp0-tp1.safetensors      replica 0: step, generators, scaler, headers
//
// so a save holds nothing beyond what training holds. Readers join the pieces by name and range:
// a resume under the same dp reads its own bytes, under another dp or stage (or without ZeRO) the
// overlapping pieces, and `reshard` merges them into one file for `infer`.
//
// The directory is written under a hidden name and renamed into place by rank 0 once every writer
// is done, so an interrupted save never leaves a checkpoint with missing shards.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/module.h"
#include "models/sharding.h"
#include "parallel/communicator.h"
#include "recipes/checkpoint.h"

namespace forge {

struct ShardLayout {
  int tp = 1, pp = 1;
  bool serial() const { return tp == 1 && pp == 1; }
  friend bool operator==(const ShardLayout&, const ShardLayout&) = default;
};

// One rank's share of a checkpoint.
struct CheckpointShard {
  int stage = 0, tp_rank = 0;
  NamedTensors weights;    // serial names, this shard's slices
  NamedTensors optimizer;  // by parameter name (adamw.m.<name>, ...), this shard's slices
  Generator::State dropout_gen;
  int64_t bytes_read = 0;  // what reading it fetched from the files (read_checkpoint_shard)
};

// A ZeRO run's part of a checkpoint: data-parallel rank dp_rank's pieces of shard (stage,
// tp_rank), "<name>[<begin>:<end>]" and "adamw.m.<name>[<begin>:<end>]", ... (element ranges of the
// flattened tensor; ZeroAdamW::partition_state).
struct ZeroShare {
  int zero_stage = 1, dp = 1, dp_rank = 0;
  int stage = 0, tp_rank = 0;
  NamedTensors pieces;
};

// What a checkpoint says about itself, from its files' headers (and the small scaler tensors).
struct CheckpointInfo {
  std::string dir;
  ShardLayout layout;  // what it was saved with
  int zero_dp = 0;     // a ZeRO checkpoint: its pieces are in this many ranks' files per shard
  int zero_stage = 0;
  GPTConfig config;
  Tokenizer tokenizer;
  TrainingState state;  // step, generators, scaler, train config (optimizer left empty)
  std::vector<std::vector<Generator::State>> dropout_gens;  // [stage][tp_rank]
};

// The whole of a checkpoint, in the serial model's terms.
struct FullCheckpoint : CheckpointInfo {
  NamedTensors weights;    // the serial model's state dict
  NamedTensors optimizer;  // by parameter name
};

// The GPT recipe's AdamW groups, by parameter name: tensors of 2+ dims (weight decay: matrices and
// embeddings), then the rest (biases, LayerNorm gains), each in the module's parameter order. The
// training loop names its optimizer's parameters, so AdamW keys its state by name
// (adamw.m.<name>) in every checkpoint.
std::vector<std::vector<std::string>> gpt_param_group_names(const Module& model);
// Optimizer state with every AdamW entry keyed by name: checkpoints written before issue 19 keyed
// the moments by position in these groups (adamw.m.<group>.<index>), which this translates; keys
// by name pass through.
NamedTensors optimizer_state_by_name(const NamedTensors& state,
                                     const std::vector<std::vector<std::string>>& groups);

// Whether `dir` (a ckpt-* directory) holds a sharded checkpoint.
bool is_sharded_checkpoint(const std::string& dir);
// The headers of a serial or sharded checkpoint directory: layout, model, tokenizer, step,
// generators; every file checked to agree.
CheckpointInfo read_checkpoint_info(const std::string& dir);
// The share of (stage, tp_rank) at `layout` of the checkpoint `info` describes, whatever layout it
// was saved with (and ZeRO pieces or whole tensors), tensor by tensor, reading only what that
// share holds: the byte ranges of its tensors, and of each saved shard's (or piece's) overlap with
// its slices (io/safetensors.h SafetensorsReader). A caller holds one tensor at a time.
class CheckpointShardReader {
 public:
  CheckpointShardReader(const CheckpointInfo& info, ShardLayout layout, int stage, int tp_rank);
  ~CheckpointShardReader();
  CheckpointShardReader(const CheckpointShardReader&) = delete;
  CheckpointShardReader& operator=(const CheckpointShardReader&) = delete;

  // The parameters the share holds, in the serial model's order.
  const std::vector<std::string>& names() const;
  // Elements `elements` of the flattened slice of parameter `name` (kind "") or of its AdamW
  // moment (kind "m" or "v"); its step count (kind "t", elements ignored). Moments are undefined
  // when the checkpoint has none for it (saved before its first step). Where the saved layout is
  // this one, only those elements' bytes are read.
  Tensor elements(const std::string& kind, const std::string& name, IndexRange elements);
  Tensor weight(const std::string& name);                           // the slice, shaped
  Tensor moment(const std::string& kind, const std::string& name);  // likewise, or undefined
  Tensor adamw_step();  // the optimizer's step count, undefined when none was saved
  Generator::State dropout_gen() const;
  // Every tensor of the share at once.
  CheckpointShard read_all();
  int64_t bytes_read() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};
CheckpointShard read_checkpoint_shard(const CheckpointInfo& info, ShardLayout layout, int stage,
                                      int tp_rank);
// The whole checkpoint as the serial model's tensors (read_checkpoint_shard at 1 x 1).
FullCheckpoint load_full_checkpoint(const std::string& dir);

// Writes `shards` (this rank's, or every shard of the layout from one process) into
// out_dir/ckpt-<step>. Collective over `comm`: rank 0 makes the directory, every rank writes its
// shards, rank 0 renames it into place and keeps the newest keep_last checkpoints. `state` gives
// the step, the batch generator, the scaler and the train config; optimizer and dropout are per
// shard. With `zero` (every rank of a ZeRO run), each rank writes its pieces and the shards
// (replica 0's) write no model file, and no moments in their state files.
CheckpointPaths save_sharded_checkpoint(Communicator& comm, const std::string& out_dir,
                                        int64_t step, ShardLayout layout, const GPTConfig& config,
                                        const Tokenizer& tokenizer, const TrainingState& state,
                                        const std::vector<CheckpointShard>& shards,
                                        int64_t keep_last, const ZeroShare* zero = nullptr);

// `train reshard`: the checkpoint at `from` written at `layout` into out_dir (serial files when
// the layout is 1 x 1). Returns where.
CheckpointPaths reshard_checkpoint(const std::string& from, const std::string& out_dir,
                                   ShardLayout layout);

}  // namespace forge
