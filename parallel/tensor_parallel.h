// Megatron-style tensor-parallel layers. Each holds this rank's slice of a serial layer's weights
// and communicates through the mappings of tp_mappings.h, so that the group together computes what
// the serial layer computes:
//
//   auto tp = grid.tp_group();
//   ColumnParallelLinear fc(C, 4 * C, /*bias=*/true, tp);    // weight (4C / R, C), bias (4C / R)
//   RowParallelLinear proj(4 * C, C, /*bias=*/true, tp);     // weight (C, 4C / R), bias (C)
//   Variable y = proj.forward(gelu(fc.forward(x)));          // x and y whole on every rank
//
//   VocabParallelEmbedding wte(V, C, tp);                    // rows [begin, end) of the table
//   Variable h = wte.forward(idx);                           // (B, T, C), whole on every rank
//   Variable logits = linear(copy_to_tp_region(h, tp), wte.weight, {});   // (B, T, end - begin)
//   Variable loss = vocab_parallel_cross_entropy(logits, targets, wte.range(), tp);
//
// The layers are Linear and Embedding layers holding a slice (models/sharding.h says how a serial
// parameter is cut), so a GPT built from them (TensorParallelLayers, the GPT's layer factory for a
// tensor-parallel group) is the serial GPT's code. They start from zero weights; the GPT fills
// each rank's slices with the serial initialisation's values for them.
#pragma once

#include <memory>
#include <vector>

#include "models/gpt.h"
#include "models/layers.h"
#include "models/sharding.h"
#include "parallel/communicator.h"
#include "parallel/grid.h"

namespace forge {

// y = x W^T + b with W split by output rows: y's columns come out split (each rank its own), or
// gathered whole with gather_output. The input x is whole on every rank; its gradient is summed
// over the group in backward (copy_to_tp_region).
class ColumnParallelLinear : public Linear {
 public:
  ColumnParallelLinear(int64_t in_features, int64_t out_features, bool bias,
                       std::shared_ptr<Communicator> tp, bool gather_output = false);
  Variable forward(const Variable& x) override;  // weight (out / R, in), bias (out / R)

 private:
  std::shared_ptr<Communicator> tp_;
  bool gather_output_;
};

// y = x W^T + b with W split by input columns: x comes in split (input_is_parallel, e.g. from a
// column-parallel layer) or whole (and each rank takes its slice). The partial products are summed
// over the group in forward (reduce_from_tp_region); the bias, whole on every rank, is added once
// after the sum.
class RowParallelLinear : public Linear {
 public:
  RowParallelLinear(int64_t in_features, int64_t out_features, bool bias,
                    std::shared_ptr<Communicator> tp, bool input_is_parallel = true);
  Variable forward(const Variable& x) override;  // weight (out, in / R), bias (out)

 private:
  std::shared_ptr<Communicator> tp_;
  bool input_is_parallel_;
};

// An embedding table split by rows: rank r looks up the indices in its range, zeros for the rest,
// and the group sums the rows (each index is found on exactly one rank).
class VocabParallelEmbedding : public Embedding {
 public:
  VocabParallelEmbedding(int64_t num, int64_t dim, std::shared_ptr<Communicator> tp);
  // (...) integers -> (..., dim), whole on every rank; weight (range().size(), dim)
  Variable forward(const Tensor& indices) override;
  const IndexRange& range() const { return range_; }

 private:
  std::shared_ptr<Communicator> tp_;
  int64_t num_;
  IndexRange range_;
};

// Mean cross-entropy over the rows of logits whose columns are split over the group, as
// cross_entropy computes it over whole rows: this rank's logits (..., vocab.size()) hold columns
// [vocab.begin, vocab.end) of a vocabulary of vocab_size, targets (...) index the whole vocabulary,
// rows whose target is ignore_index count for nothing. Forward: the row max all-reduced (max),
// then the sums of exp(x - max) and the targets' logits all-reduced together (sum, 2N values);
// every rank gets the loss. Backward needs no communication: softmax - onehot over the rank's own
// columns.
Variable vocab_parallel_cross_entropy(const Variable& logits, const Tensor& targets,
                                      IndexRange vocab, int64_t vocab_size,
                                      const std::shared_ptr<Communicator>& tp,
                                      int64_t ignore_index = -100);

// The GPT's layer factory for a tensor-parallel group: the column-, row- and vocabulary-parallel
// layers above, the head's logits for this rank's vocabulary rows, and the vocabulary-parallel
// cross-entropy. With it the one GPT class (models/gpt.h) is this rank's shard:
//
//   GPT shard(cfg, init, drop, {.layers = std::make_shared<TensorParallelLayers>(grid.tp_group()),
//                               .blocks = gpt_stage_layers(cfg, stage, stages)});
class TensorParallelLayers : public GptLayers {
 public:
  explicit TensorParallelLayers(std::shared_ptr<Communicator> tp);
  int part() const override { return tp_->rank(); }
  int parts() const override { return tp_->size(); }
  std::shared_ptr<Linear> column_linear(int64_t in, int64_t out, bool bias) override;
  std::shared_ptr<Linear> row_linear(int64_t in, int64_t out, bool bias) override;
  std::shared_ptr<Embedding> token_embedding(int64_t vocab_size, int64_t dim) override;
  Variable logits(const Variable& x, const Variable& wte) override;
  Variable loss(const Variable& logits, const Tensor& targets, int64_t vocab_size) override;
  const std::shared_ptr<Communicator>& group() const { return tp_; }

 private:
  std::shared_ptr<Communicator> tp_;
};

// This rank's part of a GPT on `grid`: its tensor-parallel group's layers (the serial ones when
// the group is one rank) and its stage's blocks.
GptPart gpt_part(const ProcessGrid& grid, const GPTConfig& cfg);

// The norm of the whole model's gradient from every rank's shards: each parameter of the serial
// model counted once (grad_norm_counts), summed over the model-parallel group (the ranks of one
// replica).
double parallel_grad_norm(const GPT& model, Communicator& model_parallel_group);
// Whether this rank counts parameter `name` in the model's gradient norm: a tensor-parallel
// replica on tp rank 0 only, the tied embedding on the first stage only.
bool grad_norm_counts(const GPT& model, const std::string& name);

}  // namespace forge
