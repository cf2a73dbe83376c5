// How a tensor is cut into parts, one per process of a group (tensor parallelism, pipeline stages):
// descriptions and slicing only; the communication is parallel/'s.
//
//   TpSplit{0, 3}   dim 0 seen as 3 equal blocks (attention's fused q, k, v), rank r keeps slice r
//                   of every block;   TpSplit{1, 1}: columns;   TpSplit{}: replicated.
//   shard_tensor(w, {0, 1}, 1, 4)               rows [n/4, 2n/4) of w, contiguous
//   normal_shard_(s, w_shape, {0, 1}, 1, 4, 0, 0.02, at)   the same rows, drawn without drawing w
//
// Slices are balanced, [r n / R, (r + 1) n / R): equal when R divides n, as it must for heads and
// MLP columns; the vocabulary may split unevenly (65 over 2: 32 + 33).
#pragma once

#include <vector>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace forge {

struct TpSplit {
  int dim = -1;  // -1: replicated
  int64_t chunks = 1;
  bool replicated() const { return dim < 0; }
};

struct IndexRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
  bool contains(int64_t i) const { return i >= begin && i < end; }
  friend bool operator==(const IndexRange&, const IndexRange&) = default;
};
// Part `part` of `parts` balanced slices of 0..n.
IndexRange shard_range(int64_t n, int parts, int part);
// The shape of rank `rank`'s slice of a tensor of shape `full`.
Shape shard_shape(const Shape& full, TpSplit split, int rank, int size);
// Rank `rank`'s slice (of `size`) of a serial tensor, contiguous; the tensor itself if replicated.
Tensor shard_tensor(const Tensor& full, TpSplit split, int rank, int size);
// The inverse: every rank's slice, in rank order, back into the serial tensor.
Tensor merge_shards(const std::vector<Tensor>& shards, TpSplit split);
// Fills `shard` (contiguous, shard_shape(full, ...)) with the values normal_(whole, mean, std, gen)
// gives the slice's elements of a tensor `whole` of shape `full`, gen in state `at`: the same
// slice of the same initialisation, bit for bit, without ever holding `whole`.
void normal_shard_(Tensor& shard, const Shape& full, TpSplit split, int rank, int size, double mean,
                   double std, Generator::State at);
// Elements `elements` of that slice, flattened (f32): a ZeRO-3 rank's pieces of it, without the
// slice.
Tensor normal_shard_elements(const Shape& full, TpSplit split, int rank, int size, double mean,
                             double std, Generator::State at, IndexRange elements);

}  // namespace forge
