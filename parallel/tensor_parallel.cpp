#include "parallel/tensor_parallel.h"

#include <cmath>
#include <limits>

#include "parallel/tp_mappings.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace forge {

// ---------------------------------------------------------------------------------------------
// Layers

namespace {
int64_t exact_part(int64_t n, const Communicator& tp, const char* layer, const char* what) {
  FORGE_CHECK(n % tp.size() == 0, "{}: {} {} do not split evenly over {} tensor-parallel ranks",
              layer, n, what, tp.size());
  return n / tp.size();
}
}  // namespace

ColumnParallelLinear::ColumnParallelLinear(int64_t in, int64_t out, bool has_bias,
                                           std::shared_ptr<Communicator> tp, bool gather_output)
    : Linear(in, exact_part(out, *tp, "ColumnParallelLinear", "output features"), has_bias),
      tp_(std::move(tp)),
      gather_output_(gather_output) {}

Variable ColumnParallelLinear::forward(const Variable& x) {
  Variable y = Linear::forward(copy_to_tp_region(x, tp_));
  return gather_output_ ? gather_from_tp_region(y, tp_) : y;
}

RowParallelLinear::RowParallelLinear(int64_t in, int64_t out, bool has_bias,
                                     std::shared_ptr<Communicator> tp, bool input_is_parallel)
    : Linear(exact_part(in, *tp, "RowParallelLinear", "input features"), out, has_bias),
      tp_(std::move(tp)),
      input_is_parallel_(input_is_parallel) {}

Variable RowParallelLinear::forward(const Variable& x) {
  Variable xs = input_is_parallel_ ? x : scatter_to_tp_region(x, tp_);
  Variable y = reduce_from_tp_region(product(xs), tp_);
  return bias.defined() ? add(y, bias) : y;
}

VocabParallelEmbedding::VocabParallelEmbedding(int64_t num, int64_t dim,
                                               std::shared_ptr<Communicator> tp)
    : Embedding(shard_range(num, tp->size(), tp->rank()).size(), dim),
      tp_(std::move(tp)),
      num_(num),
      range_(shard_range(num, tp_->size(), tp_->rank())) {
  FORGE_CHECK(range_.size() > 0,
              "VocabParallelEmbedding: {} rows over {} ranks leaves rank {} none", num, tp_->size(),
              tp_->rank());
}

namespace {

// 1 where lo <= idx < hi does not hold (u8, idx's shape, on idx's device): two comparisons.
Tensor outside(const Tensor& idx, int64_t lo, int64_t hi) {
  const Tensor below = lt(idx, full({}, double(lo), DType::i64, idx.device()));
  const Tensor above = gt(idx, full({}, double(hi - 1), DType::i64, idx.device()));
  return where(below, below, above);
}

// Whether every value of idx (i64, on a GPU) is in [lo, hi): one flag read back.
bool all_inside(const Tensor& idx, int64_t lo, int64_t hi) {
  return idx.numel() == 0 || max(outside(idx, lo, hi)).item() == 0;
}

}  // namespace

Variable VocabParallelEmbedding::forward(const Tensor& indices) {
  const Device device = weight.data().device();
  if (tp_->size() == 1) return embedding(weight, indices.to(device));
  // Indices outside this rank's rows look up row 0 and are zeroed; the sum over the group then
  // holds, for each index, the row of the one rank that has it.
  if (device.is_cuda()) {
    // The loop below as comparisons on the device; the range check reads back one flag.
    Tensor idx = indices.to(device).to(DType::i64).contiguous();
    if (!all_inside(idx, 0, num_)) {  // the error path: find the index as the loop below does
      const std::vector<int64_t> host = idx.to_vector<int64_t>();
      for (size_t i = 0; i < host.size(); ++i)
        FORGE_CHECK(host[i] >= 0 && host[i] < num_,
                    "embedding: index {} at position {} is out of range for {} rows", host[i], i,
                    num_);
    }
    Tensor other = outside(idx, range_.begin, range_.end);  // not this rank's rows
    Tensor local = where(other, zeros({}, DType::i64, device),
                         sub(idx, full({}, double(range_.begin), DType::i64, device)));
    return reduce_from_tp_region(
        masked_fill(embedding(weight, local), other.unsqueeze(other.dim()), 0.0), tp_);
  }
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

// The device version of the loops above, from tensor ops on the GPU: the same formulas and the
// same f64 arithmetic (logits are widened to f64 for exp and the sums; the row maxima are exact in
// any dtype), the same all-reduces (on device tensors: NCCL; skipped in a one-rank group, so a
// single-process communicator serves too), the same checks and gradient. The target's logit is
// picked by comparing each row's target with this rank's column indices.
// x (N, V) contiguous on a GPU; t (N) i64 on the same GPU, ignored rows already kSkip.
struct DeviceCeForward {
  Tensor lse;   // (N) f64
  Tensor loss;  // 0-d, x's dtype
};

// 1 where row i's target is this rank's column c: (N, V) u8.
Tensor target_columns(const Tensor& t, IndexRange vocab) {
  const Tensor cols = arange(double(vocab.begin), double(vocab.end), 1, DType::i64).to(t.device());
  return eq(t.view({t.numel(), 1}), cols.view({1, vocab.size()}));
}

DeviceCeForward vocab_ce_forward_device(const Tensor& x, const Tensor& t, int64_t count,
                                        IndexRange vocab, Communicator& tp) {
  const int64_t N = x.size(0);
  const Device device = x.device();
  const Tensor xd = x.to(DType::f64);  // (N, V)
  // The row maxima, then the group's.
  Tensor m = max(xd, 1).values.contiguous();  // (N)
  if (tp.size() > 1) tp.all_reduce(m, ReduceOp::max);
  // Sums of exp(x - m) over this rank's columns, and the target's logit where this rank has it
  // (0 elsewhere); both summed over the group in one call.
  const Tensor e = exp(sub(xd, m.view({N, 1})));
  const Tensor picked = where(target_columns(t, vocab), xd, zeros({}, DType::f64, device));
  Tensor sz = concat({sum(e, {1}).view({1, N}), sum(picked, {1}).view({1, N})}, 0);  // (2, N)
  if (tp.size() > 1) tp.all_reduce(sz, ReduceOp::sum);
  DeviceCeForward r;
  r.lse = add(m, log(sz.select(0, 0)));  // (N)
  const Tensor skip = eq(t, full({}, double(kSkip), DType::i64, device));
  const Tensor per_row = where(skip, zeros({}, DType::f64, device), sub(r.lse, sz.select(0, 1)));
  r.loss = mul(sum(per_row), count > 0 ? 1.0 / double(count) : 0.0).to(x.dtype());
  return r;
}

// (exp(x - lse) - [c == t]) * grad_loss / count on the rank's columns; 0 on skipped rows.
Tensor vocab_ce_backward_device(const Tensor& x, const Tensor& t, int64_t count, IndexRange vocab,
                                const Tensor& lse, const Tensor& grad_loss) {
  const int64_t N = x.size(0);
  const Device device = x.device();
  const Tensor s = mul(grad_loss.to(device).to(DType::f64).reshape({}),
                       1.0 / double(std::max<int64_t>(count, 1)));
  const Tensor p = exp(sub(x.to(DType::f64), lse.view({N, 1})));
  const Tensor d = mul(sub(p, target_columns(t, vocab).to(DType::f64)), s);
  const Tensor skip = eq(t, full({}, double(kSkip), DType::i64, device)).view({N, 1});
  return where(skip, zeros({}, DType::f64, device), d).to(x.dtype());
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
  FORGE_CHECK(
      is_integral(targets.dtype()) && targets.numel() == N,
      "vocab_parallel_cross_entropy: {} targets (integers) for {} rows of logits, got {} {}", N, N,
      targets.dtype(), targets.shape());
  if (x2.data().device().is_cuda()) {
    // The targets on the device, checked there: the number of ignored rows and of bad targets
    // read back together.
    const Device device = x2.data().device();
    Tensor t = targets.to(device).to(DType::i64).contiguous().view({N});
    const Tensor ignored = eq(t, full({}, double(ignore_index), DType::i64, device));
    const Tensor bad = where(ignored, zeros({}, DType::u8, device), outside(t, 0, vocab_size));
    const std::vector<int64_t> counts =
        concat({sum(ignored).view({1}), sum(bad).view({1})}, 0).to_vector<int64_t>();
    if (counts[1] > 0) {  // the error path: name the target as the loop below does
      const std::vector<int64_t> host = t.to_vector<int64_t>();
      for (int64_t i = 0; i < N; ++i)
        FORGE_CHECK(host[size_t(i)] == ignore_index ||
                        (host[size_t(i)] >= 0 && host[size_t(i)] < vocab_size),
                    "cross_entropy: target {} at row {} is out of range for {} classes",
                    host[size_t(i)], i, vocab_size);
    }
    const int64_t count = N - counts[0];
    t = where(ignored, full({}, double(kSkip), DType::i64, device), t);
    Tensor x = x2.data().contiguous();
    DeviceCeForward f = vocab_ce_forward_device(x, t, count, vocab, *tp);
    Tensor lse = f.lse;
    return make_variable(f.loss, "vocab_parallel_cross_entropy", {&x2},
                         [x, t, count, vocab, lse](const Tensor& g) -> std::vector<Tensor> {
                           return {vocab_ce_backward_device(x, t, count, vocab, lse, g)};
                         });
  }
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
  return make_variable(out, "vocab_parallel_cross_entropy", {&x2},
                       [x, t, count, vocab, lse](const Tensor& g) -> std::vector<Tensor> {
                         const double gl = g.item();
                         const int64_t* tt = t.data<int64_t>();
                         return {x.dtype() == DType::f32
                                     ? vocab_ce_backward<float>(x, tt, count, vocab, lse, gl)
                                     : vocab_ce_backward<double>(x, tt, count, vocab, lse, gl)};
                       });
}

// ---------------------------------------------------------------------------------------------
// The GPT's tensor-parallel layers

TensorParallelLayers::TensorParallelLayers(std::shared_ptr<Communicator> tp) : tp_(std::move(tp)) {
  FORGE_CHECK(tp_, "TensorParallelLayers: no communicator");
}

std::shared_ptr<Linear> TensorParallelLayers::column_linear(int64_t in, int64_t out, bool bias) {
  return std::make_shared<ColumnParallelLinear>(in, out, bias, tp_);
}

std::shared_ptr<Linear> TensorParallelLayers::row_linear(int64_t in, int64_t out, bool bias) {
  return std::make_shared<RowParallelLinear>(in, out, bias, tp_);
}

std::shared_ptr<Embedding> TensorParallelLayers::token_embedding(int64_t vocab_size, int64_t dim) {
  return std::make_shared<VocabParallelEmbedding>(vocab_size, dim, tp_);
}

Variable TensorParallelLayers::logits(const Variable& x, const Variable& wte) {
  return linear(copy_to_tp_region(x, tp_), wte, Variable());
}

Variable TensorParallelLayers::loss(const Variable& logits, const Tensor& targets,
                                    int64_t vocab_size) {
  return vocab_parallel_cross_entropy(
      logits, targets, shard_range(vocab_size, tp_->size(), tp_->rank()), vocab_size, tp_);
}

GptPart gpt_part(const ProcessGrid& grid, const GPTConfig& cfg) {
  std::shared_ptr<GptLayers> layers;  // one tensor-parallel rank: the serial layers
  if (grid.sizes().tp > 1) layers = std::make_shared<TensorParallelLayers>(grid.tp_group());
  return {layers, gpt_stage_layers(cfg, grid.coord().pp, grid.sizes().pp)};
}

bool grad_norm_counts(const GPT& model, const std::string& name) {
  if (gpt_tp_split(name).replicated() && model.layer_factory().part() != 0) return false;
  return name != "transformer.wte.weight" || model.first_stage();
}

double parallel_grad_norm(const GPT& model, Communicator& model_parallel_group) {
  double local = 0;
  for (const auto& [name, p] : model.named_parameters())
    if (p.grad().defined() && grad_norm_counts(model, name))
      local += sum_of_squares(p.grad()).item();
  Tensor total = full({1}, local, DType::f64, model_parallel_group.device());
  model_parallel_group.all_reduce(total, ReduceOp::sum);
  return std::sqrt(total.item());
}

}  // namespace forge
