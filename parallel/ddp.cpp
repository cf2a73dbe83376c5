#include "parallel/ddp.h"

#include <chrono>

#include "parallel/comm_internal.h"
#include "tensor/ops.h"

namespace forge {

struct DistributedDataParallel::Impl {
  struct Bucket {
    Tensor flat;              // f32, all its parameters' gradients back to back
    std::vector<int> params;  // indices into `params`
    int pending = 0;  // parameters whose gradient is not final yet in this backward (0: ready)
    Work work;
  };

  std::vector<Variable> params;
  std::vector<Tensor> views;   // params[i]'s slice of its bucket, in its shape
  std::vector<int> bucket_of;  // params[i] -> bucket
  std::vector<Bucket> buckets;
  std::shared_ptr<Communicator> group;
  bool sync = true;
  int next_launch = 0;
  DdpSyncStats last;
  double allreduce_seconds_before = 0;

  void reset_round() {
    for (Bucket& b : buckets) {
      b.pending = int(b.params.size());
      b.work = Work();
    }
    next_launch = 0;
  }

  // Makes params[i]'s gradient its bucket view again, keeping what was accumulated (someone may
  // have replaced it: Optimizer::zero_grad, or a fresh tensor).
  void attach(int i) {
    Tensor& g = params[size_t(i)].grad();
    Tensor v = views[size_t(i)];
    if (g.defined() && g.raw_data() == v.raw_data()) return;
    if (g.defined())
      v.copy_(g);
    else
      v.zero_();
    params[size_t(i)].set_grad(v);
  }

  void on_ready(int i) {
    if (!sync) return;
    Bucket& b = buckets[size_t(bucket_of[size_t(i)])];
    FORGE_CHECK(b.pending > 0,
                "DDP: parameter '{}' got a second synchronised gradient before finish_grad_sync() "
                "(its bucket is already being all-reduced); accumulate micro-steps under no_sync() "
                "and let only the last one synchronise",
                params[size_t(i)].name());
    attach(i);
    --b.pending;
    while (next_launch < int(buckets.size()) && buckets[size_t(next_launch)].pending == 0)
      launch(next_launch++);
  }

  void launch(int b) {
    Bucket& bk = buckets[size_t(b)];
    bk.work = group->all_reduce_async(bk.flat, ReduceOp::avg);
  }
};

DistributedDataParallel::DistributedDataParallel(std::vector<Variable> params,
                                                 std::shared_ptr<Communicator> group,
                                                 DdpOptions options)
    : impl_(std::make_shared<Impl>()) {
  FORGE_CHECK(group != nullptr, "DistributedDataParallel: no communicator");
  FORGE_CHECK(options.bucket_bytes > 0,
              "DistributedDataParallel: bucket_bytes must be positive, got {}",
              options.bucket_bytes);
  Impl& m = *impl_;
  m.params = std::move(params);
  m.group = std::move(group);

  // Every rank must hold the same parameters, or the all-reduces would mix unrelated tensors.
  std::string layout;
  for (const Variable& p : m.params)
    layout += fmt::format("{}{}{};", p.name(), p.shape(), p.dtype());
  check_same_on_all_ranks(*m.group, layout, "the model's parameters (names, shapes and dtypes)");
  for (const Variable& p : m.params)  // after the check, so that every rank throws alike
    FORGE_CHECK(p.dtype() == DType::f32,
                "DistributedDataParallel: parameter '{}' is {}; master weights are f32", p.name(),
                p.dtype());

  if (options.broadcast_parameters)
    for (Variable& p : m.params) m.group->broadcast(p.data(), 0);

  // Buckets in reverse parameter order, each closed once it reaches bucket_bytes.
  const int n = int(m.params.size());
  m.bucket_of.assign(size_t(n), -1);
  std::vector<std::vector<int>> groups;
  int64_t filled = 0;
  for (int i = n - 1; i >= 0; --i) {
    if (!m.params[size_t(i)].requires_grad()) continue;
    if (groups.empty() || filled >= options.bucket_bytes) {
      groups.emplace_back();
      filled = 0;
    }
    groups.back().push_back(i);
    filled += m.params[size_t(i)].numel() * 4;
  }
  m.views.resize(size_t(n));
  {
    MemoryTagScope tag(MemoryTag::gradients);
    for (auto& g : groups) {
      Impl::Bucket b;
      int64_t total = 0;
      for (int i : g) total += m.params[size_t(i)].numel();
      b.flat = zeros({total}, DType::f32, m.group->device());
      int64_t off = 0;
      for (int i : g) {
        const Variable& p = m.params[size_t(i)];
        m.views[size_t(i)] = b.flat.narrow(0, off, p.numel()).view(p.shape());
        m.bucket_of[size_t(i)] = int(m.buckets.size());
        off += p.numel();
      }
      b.params = g;
      m.buckets.push_back(std::move(b));
    }
  }
  m.reset_round();

  std::weak_ptr<Impl> weak = impl_;
  for (int i = 0; i < n; ++i) {
    if (m.bucket_of[size_t(i)] < 0) continue;
    m.params[size_t(i)].register_grad_ready_hook([weak, i](Variable&) {
      if (auto s = weak.lock()) s->on_ready(i);
    });
  }
}

DistributedDataParallel::~DistributedDataParallel() {
  // Outstanding all-reduces write into the buckets: let them finish before the buckets go.
  for (auto& b : impl_->buckets) {
    try {
      b.work.wait();
    } catch (...) {
    }
  }
}

void DistributedDataParallel::zero_grad() {
  Impl& m = *impl_;
  for (auto& b : m.buckets) {
    b.work.wait();
    b.flat.zero_();
  }
  for (int i = 0; i < int(m.params.size()); ++i)
    if (m.bucket_of[size_t(i)] >= 0) m.params[size_t(i)].set_grad(m.views[size_t(i)]);
  m.reset_round();
}

void DistributedDataParallel::finish_grad_sync() {
  Impl& m = *impl_;
  auto t0 = std::chrono::steady_clock::now();
  const int started = m.next_launch;  // by the grad-ready hooks, during backward
  // Buckets whose parameters got no gradient in this backward still take part (as zeros), so
  // that every rank issues the same all-reduces.
  for (int i = 0; i < int(m.params.size()); ++i)
    if (m.bucket_of[size_t(i)] >= 0) m.attach(i);
  while (m.next_launch < int(m.buckets.size())) m.launch(m.next_launch++);
  int64_t bytes = 0;
  for (auto& b : m.buckets) {
    b.work.wait();
    bytes += int64_t(b.flat.nbytes());
  }
  double total = m.group->stats().all_reduce.seconds;
  m.last = {int(m.buckets.size()), started, bytes, seconds_since(t0),
            total - m.allreduce_seconds_before};
  m.allreduce_seconds_before = total;
  m.reset_round();
}

DistributedDataParallel::NoSync::NoSync(DistributedDataParallel& d) : d_(d), saved_(d.impl_->sync) {
  d_.impl_->sync = false;
}
DistributedDataParallel::NoSync::~NoSync() {
  d_.impl_->sync = saved_;
}

int DistributedDataParallel::num_buckets() const {
  return int(impl_->buckets.size());
}
std::vector<int> DistributedDataParallel::bucket_params(int b) const {
  return impl_->buckets.at(size_t(b)).params;
}
const DdpSyncStats& DistributedDataParallel::last_sync() const {
  return impl_->last;
}
const std::shared_ptr<Communicator>& DistributedDataParallel::group() const {
  return impl_->group;
}

void check_same_on_all_ranks(Communicator& group, const std::string& text,
                             const std::string& what) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  Tensor mine = from_vector<int64_t>({int64_t(h)}).to(group.device());
  Tensor all = Tensor::empty({group.size()}, DType::i64, group.device());
  group.all_gather(all, mine);
  const std::vector<int64_t> hs = all.to_vector<int64_t>();
  for (int r = 1; r < group.size(); ++r)
    FORGE_CHECK(hs[r] == hs[0],
                "{} differ between ranks: rank {} does not match rank 0 (rank {} "
                "of {} here)",
                what, r, group.rank(), group.size());
}

bool any_rank(Communicator& group, bool flag) {
  Tensor t = full({1}, flag ? 1.0 : 0.0, DType::i32, group.device());
  group.all_reduce(t, ReduceOp::max);
  return t.item() != 0;
}

}  // namespace forge
