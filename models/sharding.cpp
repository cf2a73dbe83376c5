#include "models/sharding.h"

#include <functional>

#include "tensor/ops.h"

namespace forge {

IndexRange shard_range(int64_t n, int parts, int part) {
  FORGE_CHECK(parts > 0 && part >= 0 && part < parts, "shard_range: part {} of {}", part, parts);
  return {n * part / parts, n * (part + 1) / parts};
}

namespace {
// The size of one block of split.dim, after checking the split fits the shape.
int64_t split_block(const Shape& full, TpSplit split, const char* op) {
  FORGE_CHECK(split.dim < int(full.size()) && split.chunks > 0 &&
                  full[size_t(split.dim)] % split.chunks == 0,
              "{}: dim {} of {} does not hold {} equal blocks", op, split.dim, full, split.chunks);
  return full[size_t(split.dim)] / split.chunks;
}
}  // namespace

namespace {
// A slice's elements as runs of consecutive elements of the full tensor: run q (elements
// q * run .. of the slice, flattened) is full's flat elements start(q) ...
struct SliceRuns {
  int64_t run;
  std::function<int64_t(int64_t)> start;
};
SliceRuns slice_runs(const Shape& full, TpSplit split, int rank, int size) {
  if (split.replicated() || size == 1)
    return {std::max<int64_t>(1, full.numel()), [](int64_t) { return int64_t(0); }};
  // full as (outer, D, inner) around the split dim: for each outer index and chunk, the slice is
  // one contiguous run of r.size() * inner elements of full, and of the shard.
  const size_t d = size_t(split.dim);
  int64_t inner = 1;
  for (size_t i = d + 1; i < size_t(full.size()); ++i) inner *= full[i];
  const int64_t D = full[d], block = D / split.chunks, chunks = split.chunks;
  const IndexRange r = shard_range(block, size, rank);
  return {r.size() * inner, [=](int64_t q) {
            const int64_t o = q / chunks, c = q % chunks;
            return (o * D + c * block + r.begin) * inner;
          }};
}
}  // namespace

Shape shard_shape(const Shape& full, TpSplit split, int rank, int size) {
  if (split.replicated() || size == 1) return full;
  Shape s = full;
  s[size_t(split.dim)] =
      split.chunks * shard_range(split_block(full, split, "shard_shape"), size, rank).size();
  return s;
}

Tensor shard_tensor(const Tensor& full, TpSplit split, int rank, int size) {
  if (split.replicated() || size == 1) return full;
  const int64_t block = split_block(full.shape(), split, "shard_tensor");
  const IndexRange r = shard_range(block, size, rank);
  std::vector<Tensor> parts;
  for (int64_t c = 0; c < split.chunks; ++c)
    parts.push_back(full.narrow(split.dim, c * block + r.begin, r.size()));
  return parts.size() == 1 ? parts[0].contiguous() : concat(parts, split.dim);
}

Tensor merge_shards(const std::vector<Tensor>& shards, TpSplit split) {
  FORGE_CHECK(!shards.empty(), "merge_shards: no shards");
  if (split.replicated() || shards.size() == 1) return shards[0];
  std::vector<Tensor> parts;
  for (int64_t c = 0; c < split.chunks; ++c) {
    for (const Tensor& s : shards) {
      const int64_t n = s.size(split.dim) / split.chunks;
      parts.push_back(s.narrow(split.dim, c * n, n));
    }
  }
  return concat(parts, split.dim);
}

void normal_shard_(Tensor& shard, const Shape& full, TpSplit split, int rank, int size, double mean,
                   double std, Generator::State at) {
  FORGE_CHECK(shard.shape() == shard_shape(full, split, rank, size),
              "normal_shard_: a slice of {} is {}, got {}", full,
              shard_shape(full, split, rank, size), shard.shape());
  if (shard.numel() == 0) return;
  const SliceRuns runs = slice_runs(full, split, rank, size);
  normal_runs_(shard, mean, std, at, runs.run, runs.start);
}

Tensor normal_shard_elements(const Shape& full, TpSplit split, int rank, int size, double mean,
                             double std, Generator::State at, IndexRange elements) {
  FORGE_CHECK(elements.begin >= 0 && elements.begin <= elements.end &&
                  elements.end <= shard_shape(full, split, rank, size).numel(),
              "normal_shard_elements: elements [{}, {}) of a slice of {} ({} elements)",
              elements.begin, elements.end, full, shard_shape(full, split, rank, size).numel());
  if (elements.size() == 0) return Tensor::empty({0});
  const SliceRuns runs = slice_runs(full, split, rank, size);
  if (split.replicated() || size == 1) {  // the slice is the tensor: one run, the elements'
    Tensor out = Tensor::empty({elements.size()});
    normal_runs_(out, mean, std, at, elements.size(), [&](int64_t) { return elements.begin; });
    return out;
  }
  // The whole runs covering the elements (at most two runs more), then the elements.
  const int64_t q0 = elements.begin / runs.run, q1 = (elements.end + runs.run - 1) / runs.run;
  Tensor out = Tensor::empty({(q1 - q0) * runs.run});
  normal_runs_(out, mean, std, at, runs.run, [&](int64_t q) { return runs.start(q0 + q); });
  return out.narrow(0, elements.begin - q0 * runs.run, elements.size()).contiguous();
}

}  // namespace forge
