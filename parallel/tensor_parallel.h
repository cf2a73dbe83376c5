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
// The layers start from zero weights: a parallel model loads its slices of a serial model's
// weights (shard_tensor), so it starts exactly where the serial run starts, whatever R is.
//
// How a serial parameter is cut (TpSplit): its dim `dim` is seen as `chunks` equal blocks (3 for
// attention's fused q, k, v) and rank r keeps slice r of every block; dim -1 means every rank
// keeps the whole tensor. Slices are balanced, [r n / R, (r + 1) n / R): equal when R divides n,
// as it must for heads and MLP columns; the vocabulary may split unevenly (65 over 2: 32 + 33).
#pragma once

#include <memory>
#include <vector>

#include "models/layers.h"
#include "parallel/communicator.h"

namespace forge {

struct TpSplit {
  int dim = -1;  // -1: replicated
  int64_t chunks = 1;
  bool replicated() const { return dim < 0; }
};

struct IndexRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
// Part `part` of `parts` balanced slices of 0..n.
IndexRange shard_range(int64_t n, int parts, int part);
// Rank `rank`'s slice (of `size`) of a serial tensor, contiguous; the tensor itself if replicated.
Tensor shard_tensor(const Tensor& full, TpSplit split, int rank, int size);
// The inverse: every rank's slice, in rank order, back into the serial tensor.
Tensor merge_shards(const std::vector<Tensor>& shards, TpSplit split);

// y = x W^T + b with W split by output rows: y's columns come out split (each rank its own), or
// gathered whole with gather_output. The input x is whole on every rank; its gradient is summed
// over the group in backward (copy_to_tp_region).
class ColumnParallelLinear : public Module {
 public:
  ColumnParallelLinear(int64_t in_features, int64_t out_features, bool bias,
                       std::shared_ptr<Communicator> tp, bool gather_output = false);
  Variable forward(const Variable& x) override;
  Variable weight, bias;  // (out / R, in), (out / R)

 private:
  std::shared_ptr<Communicator> tp_;
  bool gather_output_;
};

// y = x W^T + b with W split by input columns: x comes in split (input_is_parallel, e.g. from a
// column-parallel layer) or whole (and each rank takes its slice). The partial products are summed
// over the group in forward (reduce_from_tp_region); the bias, whole on every rank, is added once
// after the sum.
class RowParallelLinear : public Module {
 public:
  RowParallelLinear(int64_t in_features, int64_t out_features, bool bias,
                    std::shared_ptr<Communicator> tp, bool input_is_parallel = true);
  Variable forward(const Variable& x) override;
  Variable weight, bias;  // (out, in / R), (out)

 private:
  std::shared_ptr<Communicator> tp_;
  bool input_is_parallel_;
};

// An embedding table split by rows: rank r looks up the indices in its range, zeros for the rest,
// and the group sums the rows (each index is found on exactly one rank).
class VocabParallelEmbedding : public Module {
 public:
  VocabParallelEmbedding(int64_t num, int64_t dim, std::shared_ptr<Communicator> tp);
  Variable forward(const Tensor& indices);  // (...) integers -> (..., dim), whole on every rank
  const IndexRange& range() const { return range_; }
  Variable weight;  // (range().size(), dim)

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

}  // namespace forge
