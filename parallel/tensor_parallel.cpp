#include "parallel/tensor_parallel.h"

#include <cmath>
#include <limits>

#include "parallel/tp_mappings.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace forge {

// ---------------------------------------------------------------------------------------------
// Splitting serial tensors

IndexRange shard_range(int64_t n, int parts, int part) {
  FORGE_CHECK(parts > 0 && part >= 0 && part < parts, "shard_range: part {} of {}", part, parts);
  return {n * part / parts, n * (part + 1) / parts};
}

Tensor shard_tensor(const Tensor& full, TpSplit split, int rank, int size) {
  if (split.replicated() || size == 1) return full;
  FORGE_CHECK(split.dim < full.dim() && full.size(split.dim) % split.chunks == 0,
              "shard_tensor: dim {} of {} does not hold {} equal blocks", split.dim, full.shape(),
              split.chunks);
  const int64_t block = full.size(split.dim) / split.chunks;
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

// ---------------------------------------------------------------------------------------------
// Layers

namespace {
Tensor zero_parameter(const Shape& shape) {
  MemoryTagScope tag(MemoryTag::parameters);
  return zeros(shape);
}

int64_t exact_part(int64_t n, const Communicator& tp, const char* layer, const char* what) {
  FORGE_CHECK(n % tp.size() == 0, "{}: {} {} do not split evenly over {} tensor-parallel ranks",
              layer, n, what, tp.size());
  return n / tp.size();
}
}  // namespace

ColumnParallelLinear::ColumnParallelLinear(int64_t in, int64_t out, bool has_bias,
                                           std::shared_ptr<Communicator> tp, bool gather_output)
    : tp_(std::move(tp)), gather_output_(gather_output) {
  const int64_t part = exact_part(out, *tp_, "ColumnParallelLinear", "output features");
  weight = register_parameter("weight", zero_parameter({part, in}));
  if (has_bias) bias = register_parameter("bias", zero_parameter({part}));
}

Variable ColumnParallelLinear::forward(const Variable& x) {
  Variable y = linear(copy_to_tp_region(x, tp_), weight, bias);
  return gather_output_ ? gather_from_tp_region(y, tp_) : y;
}

RowParallelLinear::RowParallelLinear(int64_t in, int64_t out, bool has_bias,
                                     std::shared_ptr<Communicator> tp, bool input_is_parallel)
    : tp_(std::move(tp)), input_is_parallel_(input_is_parallel) {
  const int64_t part = exact_part(in, *tp_, "RowParallelLinear", "input features");
  weight = register_parameter("weight", zero_parameter({out, part}));
  if (has_bias) bias = register_parameter("bias", zero_parameter({out}));
}

Variable RowParallelLinear::forward(const Variable& x) {
  Variable xs = input_is_parallel_ ? x : scatter_to_tp_region(x, tp_);
  Variable y = reduce_from_tp_region(linear(xs, weight, Variable()), tp_);
  return bias.defined() ? add(y, bias) : y;
}

VocabParallelEmbedding::VocabParallelEmbedding(int64_t num, int64_t dim,
                                               std::shared_ptr<Communicator> tp)
    : tp_(std::move(tp)), num_(num), range_(shard_range(num, tp_->size(), tp_->rank())) {
  FORGE_CHECK(range_.size() > 0, "VocabParallelEmbedding: {} rows over {} ranks leaves rank {} none",
              num, tp_->size(), tp_->rank());
  weight = register_parameter("weight", zero_parameter({range_.size(), dim}));
}

Variable VocabParallelEmbedding::forward(const Tensor& indices) {
  if (tp_->size() == 1) return embedding(weight, indices);
  // Indices outside this rank's rows look up row 0 and are zeroed; the sum over the group then
  // holds, for each index, the row of the one rank that has it.
  Tensor idx = indices.to(DType::i64).contiguous();
  Tensor local = Tensor::empty(idx.shape(), DType::i64);
  Shape mask_shape = idx.shape();
  mask_shape.insert(int(mask_shape.size()), 1);  // broadcast over the embedding dim
  Tensor other = Tensor::empty(mask_shape, DType::u8);
  const int64_t* pi = idx.data<int64_t>();
  int64_t* pl = local.data<int64_t>();
  uint8_t* po = other.data<uint8_t>();
  for (int64_t i = 0, n = idx.numel(); i < n; ++i) {
    FORGE_CHECK(pi[i] >= 0 && pi[i] < num_,
                "embedding: index {} at position {} is out of range for {} rows", pi[i], i, num_);
    const bool mine = pi[i] >= range_.begin && pi[i] < range_.end;
    pl[i] = mine ? pi[i] - range_.begin : 0;
    po[i] = !mine;
  }
  return reduce_from_tp_region(masked_fill(embedding(weight, local), other, 0.0), tp_);
}

// ---------------------------------------------------------------------------------------------
// Vocabulary-parallel cross-entropy
//
// With m the row max over the whole vocabulary and S = sum over it of exp(x - m):
//   loss_i = m_i + log S_i - x_i[t_i];   d loss / d x_ic = (exp(x_ic - m_i) / S_i - [c == t_i]) / N

namespace {

// Rows whose target is ignore_index are skipped (t[i] = kSkip); `count` rows take part.
constexpr int64_t kSkip = -1;

template <class T>
void vocab_ce_forward(const Tensor& x, const int64_t* t, int64_t count, IndexRange vocab,
                      Communicator& tp, Tensor& lse, double& loss) {
  const int64_t N = x.size(0), V = x.size(1);
  const T* px = x.data<T>();
  // The row maxima, then the group's.
  Tensor m = Tensor::empty({N}, DType::f64);
  double* pm = m.data<double>();
  parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < V; ++c) mx = std::max(mx, double(px[i * V + c]));
      pm[i] = mx;
    }
  });
  tp.all_reduce(m, ReduceOp::max);
  // Sums of exp(x - m) over this rank's columns, and the target's logit where this rank has it;
  // both summed over the group in one call.
  Tensor sz = Tensor::empty({2, N}, DType::f64);
  double* ps = sz.data<double>();
  double* pz = ps + N;
  parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      double s = 0;
      for (int64_t c = 0; c < V; ++c) s += std::exp(double(px[i * V + c]) - pm[i]);
      ps[i] = s;
      pz[i] = t[i] >= vocab.begin && t[i] < vocab.end ? double(px[i * V + t[i] - vocab.begin]) : 0;
    }
  });
  tp.all_reduce(sz, ReduceOp::sum);
  lse = Tensor::empty({N}, DType::f64);
  double* pl = lse.data<double>();
  double total = 0;
  for (int64_t i = 0; i < N; ++i) {
    pl[i] = pm[i] + std::log(ps[i]);
    if (t[i] != kSkip) total += pl[i] - pz[i];
  }
  loss = count > 0 ? total / double(count) : 0.0;
}

template <class T>
Tensor vocab_ce_backward(const Tensor& x, const int64_t* t, int64_t count, IndexRange vocab,
                         const Tensor& lse, double grad_loss) {
  const int64_t N = x.size(0), V = x.size(1);
  Tensor dx = Tensor::empty(x.shape(), x.dtype());
  const T* px = x.data<T>();
  const double* pl = lse.data<double>();
  T* pd = dx.data<T>();
  const double s = grad_loss / double(std::max<int64_t>(count, 1));
  parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T* dr = pd + i * V;
      if (t[i] == kSkip) {
        std::fill(dr, dr + V, T(0));
        continue;
      }
      for (int64_t c = 0; c < V; ++c) dr[c] = T(std::exp(double(px[i * V + c]) - pl[i]) * s);
      if (t[i] >= vocab.begin && t[i] < vocab.end) dr[t[i] - vocab.begin] -= T(s);
    }
  });
  return dx;
}

}  // namespace

Variable vocab_parallel_cross_entropy(const Variable& logits, const Tensor& targets,
                                      IndexRange vocab, int64_t vocab_size,
                                      const std::shared_ptr<Communicator>& tp,
                                      int64_t ignore_index) {
  const int64_t V = logits.size(-1);
  FORGE_CHECK(V == vocab.size() && vocab.begin >= 0 && vocab.end <= vocab_size,
              "vocab_parallel_cross_entropy: logits have {} columns, the rank's slice [{}, {}) of "
              "a vocabulary of {} has {}",
              V, vocab.begin, vocab.end, vocab_size, vocab.size());
  FORGE_CHECK(logits.dtype() == DType::f32 || logits.dtype() == DType::f64,
              "vocab_parallel_cross_entropy: logits must be f32 or f64, got {}", logits.dtype());
  Variable x2 = reshape(logits, {-1, V});
  const int64_t N = x2.size(0);
  FORGE_CHECK(is_integral(targets.dtype()) && targets.numel() == N,
              "vocab_parallel_cross_entropy: {} targets (integers) for {} rows of logits, got {} {}",
              N, N, targets.dtype(), targets.shape());
  // The targets, with ignored rows marked kSkip.
  Tensor t = targets.to(DType::i64).contiguous().view({N}).clone();
  int64_t* pt = t.data<int64_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (pt[i] == ignore_index) {
      pt[i] = kSkip;
      continue;
    }
    FORGE_CHECK(pt[i] >= 0 && pt[i] < vocab_size,
                "cross_entropy: target {} at row {} is out of range for {} classes", pt[i], i,
                vocab_size);
    ++count;
  }
  Tensor x = x2.data().contiguous();
  Tensor lse;
  double loss = 0;
  if (x.dtype() == DType::f32)
    vocab_ce_forward<float>(x, pt, count, vocab, *tp, lse, loss);
  else
    vocab_ce_forward<double>(x, pt, count, vocab, *tp, lse, loss);
  Tensor out = full({}, loss, x.dtype());
  return make_variable(
      out, "vocab_parallel_cross_entropy", {&x2},
      [x, t, count, vocab, lse](const Tensor& g) -> std::vector<Tensor> {
        const double gl = g.item();
        const int64_t* tt = t.data<int64_t>();
        return {x.dtype() == DType::f32 ? vocab_ce_backward<float>(x, tt, count, vocab, lse, gl)
                                        : vocab_ce_backward<double>(x, tt, count, vocab, lse, gl)};
      });
}

}  // namespace forge
