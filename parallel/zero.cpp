#include "parallel/zero.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "tensor/ops.h"

namespace forge {

ZeroAdamW::ZeroAdamW(std::vector<ParamGroup> groups, AdamWOptions options,
                     std::shared_ptr<Communicator> dp, int64_t bucket_bytes)
    : dp_(std::move(dp)) {
  FORGE_CHECK(dp_, "ZeroAdamW: no data-parallel group");
  const int N = dp_->size(), me = dp_->rank();
  for (const ParamGroup& g : groups) {
    FORGE_CHECK(g.names.size() == g.params.size(),
                "ZeroAdamW: every parameter needs a name (ParamGroup::names)");
    for (size_t i = 0; i < g.params.size(); ++i) {
      const Variable& p = g.params[i];
      FORGE_CHECK(p.dtype() == DType::f32 && p.data().device().is_cpu() && p.data().is_contiguous(),
                  "ZeroAdamW: parameter '{}' is {} on {}; ZeRO needs contiguous f32 on the CPU",
                  g.names[i], p.dtype(), p.data().device().str());
      starts_.push_back(numel_);
      numel_ += p.numel();
      params_.push_back(p);
      names_.push_back(g.names[i]);
    }
  }
  // Every rank starts from rank 0's weights, as DDP does.
  for (Variable& p : params_) dp_->broadcast(p.data(), 0);
  part_ = (numel_ + N - 1) / N;
  begin_ = std::min(numel_, int64_t(me) * part_);
  end_ = std::min(numel_, begin_ + part_);
  chunk_ = std::max<int64_t>(1, std::min(part_, bucket_bytes / int64_t(sizeof(float)) / N));
  {
    MemoryTagScope tag(MemoryTag::gradients);
    grad_ = zeros({std::max<int64_t>(part_, 1)});
  }
  // The pieces of parameters inside [begin_, end_), in their groups, as AdamW's parameters.
  std::vector<ParamGroup> pieces;
  size_t k = 0;
  for (const ParamGroup& g : groups) {
    ParamGroup pg({}, g.weight_decay, {});
    for (size_t i = 0; i < g.params.size(); ++i, ++k) {
      const int64_t lo = std::max(begin_, starts_[k]);
      const int64_t hi = std::min(end_, starts_[k] + params_[k].numel());
      if (lo >= hi) continue;
      const int64_t off = lo - starts_[k];
      Variable piece(params_[k].data().reshape({-1}).narrow(0, off, hi - lo), true);
      piece.set_grad(grad_.narrow(0, lo - begin_, hi - lo));
      pg.params.push_back(piece);
      pg.names.push_back(fmt::format("{}[{}:{}]", names_[k], off, off + (hi - lo)));
    }
    pieces.push_back(std::move(pg));
  }
  opt_ = std::make_unique<AdamW>(std::move(pieces), options);
}

template <class F>
void ZeroAdamW::for_range(int64_t flat, int64_t count, F&& fn) const {
  // The parameter holding `flat`, then each parameter's segment of the range in turn.
  size_t i = size_t(std::upper_bound(starts_.begin(), starts_.end(), flat) - starts_.begin());
  i = i == 0 ? 0 : i - 1;
  int64_t done = 0;
  while (done < count && flat + done < numel_) {
    const int64_t at = flat + done, off = at - starts_[i];
    const int64_t n = std::min(count - done, params_[i].numel() - off);
    if (n > 0) fn(i, off, done, n);
    done += std::max<int64_t>(n, 0);
    ++i;
  }
}

void ZeroAdamW::gather_grads(int64_t flat, int64_t count, float* dst) const {
  std::memset(dst, 0, size_t(count) * sizeof(float));
  for_range(flat, count, [&](size_t i, int64_t off, int64_t pos, int64_t n) {
    const Tensor& g = params_[i].grad();
    if (!g.defined()) return;
    const Tensor gc = g.contiguous();
    std::memcpy(dst + pos, gc.data<float>() + off, size_t(n) * sizeof(float));
  });
}

void ZeroAdamW::read_params(int64_t flat, int64_t count, float* dst) const {
  std::memset(dst, 0, size_t(count) * sizeof(float));
  for_range(flat, count, [&](size_t i, int64_t off, int64_t pos, int64_t n) {
    std::memcpy(dst + pos, params_[i].data().data<float>() + off, size_t(n) * sizeof(float));
  });
}

void ZeroAdamW::write_params(int64_t flat, int64_t count, const float* src) {
  for_range(flat, count, [&](size_t i, int64_t off, int64_t pos, int64_t n) {
    std::memcpy(params_[i].data().data<float>() + off, src + pos, size_t(n) * sizeof(float));
  });
}

void ZeroAdamW::zero_grad() {
  for (Variable& p : params_) p.set_grad(Tensor());
}

void ZeroAdamW::reduce_scatter_gradients() {
  const int N = dp_->size();
  MemoryTagScope tag(MemoryTag::other);  // buckets
  for (int64_t k = 0; k < part_; k += chunk_) {
    const int64_t c = std::min(chunk_, part_ - k);
    Tensor bucket = Tensor::empty({int64_t(N) * c});
    for (int r = 0; r < N; ++r)
      gather_grads(int64_t(r) * part_ + k, c, bucket.data<float>() + r * c);
    dp_->reduce_scatter_async(grad_.narrow(0, k, c), bucket, ReduceOp::avg).wait();
  }
}

double ZeroAdamW::grad_norm_sq_local(const std::function<bool(const std::string&)>& counted) const {
  double total = 0;
  const float* g = grad_.data<float>();
  for_range(begin_, end_ - begin_, [&](size_t i, int64_t, int64_t pos, int64_t n) {
    if (counted && !counted(names_[i])) return;
    double s = 0;
    for (int64_t j = 0; j < n; ++j) s += double(g[pos + j]) * double(g[pos + j]);
    total += s;
  });
  return total;
}

double ZeroAdamW::grad_norm() {
  Tensor t = full({1}, grad_norm_sq_local(), DType::f64);
  dp_->all_reduce(t, ReduceOp::sum);
  return std::sqrt(t.item());
}

void ZeroAdamW::clip_to_norm(double norm, double max_norm) {
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) mul_(grad_, coef);
}

void ZeroAdamW::step() {
  opt_->step();
  const int N = dp_->size(), me = dp_->rank();
  MemoryTagScope tag(MemoryTag::other);  // buckets
  for (int64_t k = 0; k < part_; k += chunk_) {
    const int64_t c = std::min(chunk_, part_ - k);
    Tensor mine = Tensor::empty({c}), all = Tensor::empty({int64_t(N) * c});
    read_params(int64_t(me) * part_ + k, c, mine.data<float>());
    dp_->all_gather_async(all, mine).wait();
    for (int r = 0; r < N; ++r)
      if (r != me) write_params(int64_t(r) * part_ + k, c, all.data<float>() + r * c);
  }
}

}  // namespace forge
