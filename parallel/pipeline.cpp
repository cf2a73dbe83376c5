#include "parallel/pipeline.h"

#include <chrono>
#include <deque>
#include <optional>

#include "tensor/ops.h"

namespace forge {

PipelineSchedule parse_pipeline_schedule(const std::string& name) {
  if (name == "gpipe") return PipelineSchedule::gpipe;
  if (name == "1f1b") return PipelineSchedule::one_f_one_b;
  throw_error(fmt::format("pipeline schedule '{}': expected gpipe or 1f1b", name));
}

const char* pipeline_schedule_name(PipelineSchedule s) {
  return s == PipelineSchedule::gpipe ? "gpipe" : "1f1b";
}

Pipeline::Pipeline(ParallelGPT& model, std::shared_ptr<Communicator> pp, PipelineOptions options)
    : model_(model), pp_(std::move(pp)), options_(options) {
  FORGE_CHECK(pp_->size() == model_.layout().stages && pp_->rank() == model_.layout().stage,
              "pipeline: the model is stage {} of {}, the pipeline group has rank {} of {}",
              model_.layout().stage, model_.layout().stages, pp_->rank(), pp_->size());
  FORGE_CHECK(options_.micro_batches >= 1, "pipeline: micro_batches must be positive, got {}",
              options_.micro_batches);
}

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
constexpr int kForwardTag = 0, kBackwardTag = 1;
}  // namespace

PipelineStepStats Pipeline::step(const Tensor& x, const Tensor& y, double loss_scale,
                                 DistributedDataParallel* ddp) {
  const int M = options_.micro_batches, s = pp_->rank(), P = pp_->size();
  const bool first = model_.first_stage(), last = model_.last_stage();
  const Tensor& shape_source = first ? x : y;
  FORGE_CHECK(shape_source.dim() == 2, "pipeline: expected a (B, T) batch, got {}",
              shape_source.shape());
  const int64_t B = shape_source.size(0), T = shape_source.size(1), C = model_.config().n_embd;
  FORGE_CHECK(B % M == 0, "pipeline: a batch of {} rows does not split into {} micro-batches", B,
              M);
  const int64_t mb = B / M;

  PipelineStepStats stats;
  const auto t_step = Clock::now();
  const int64_t live_at_start = memory_stats(Device::cpu()).live_bytes;
  // Micro-batches forwarded and not yet backwarded: the stage's input (a leaf whose gradient goes
  // back to the previous stage) and its output (hidden state, or the loss on the last stage).
  struct InFlight {
    Variable input, output;
  };
  std::deque<InFlight> in_flight;
  std::vector<Work> sends;
  double loss_sum = 0;
  int forwards = 0, backwards = 0;

  auto forward = [&] {
    const int m = forwards++;
    InFlight f;
    if (!first) {
      Tensor h = Tensor::empty({mb, T, C});
      pp_->recv(h, s - 1, kForwardTag);
      f.input = Variable(h, /*requires_grad=*/true);
    }
    const auto t0 = Clock::now();
    Tensor xm = first ? x.narrow(0, m * mb, mb).contiguous() : Tensor();
    Variable out = model_.forward(xm, f.input);
    if (last) {
      out = model_.loss(out, y.narrow(0, m * mb, mb).contiguous());
      loss_sum += out.item();
    }
    stats.busy_seconds += seconds_since(t0);
    if (!last) sends.push_back(pp_->send_async(out.data().to(DType::f32).contiguous(), s + 1,
                                               kForwardTag));
    f.output = out;
    in_flight.push_back(f);
    stats.max_in_flight = std::max(stats.max_in_flight, int(in_flight.size()));
  };

  auto backward = [&] {
    const int m = backwards++;
    InFlight f = in_flight.front();
    in_flight.pop_front();
    Tensor g;
    if (last) {
      g = full({}, loss_scale / double(M), f.output.dtype());
    } else {
      g = Tensor::empty({mb, T, C});
      pp_->recv(g, s + 1, kBackwardTag);
    }
    const auto t0 = Clock::now();
    {
      // Data parallel: all-reduce only in the last micro-batch's backward.
      std::optional<DistributedDataParallel::NoSync> local;
      if (ddp && m < M - 1) local.emplace(*ddp);
      run_backward({f.output}, {g.to(f.output.dtype())});
    }
    stats.busy_seconds += seconds_since(t0);
    if (!first) sends.push_back(pp_->send_async(f.input.grad().contiguous(), s - 1, kBackwardTag));
  };

  if (options_.schedule == PipelineSchedule::gpipe) {
    for (int m = 0; m < M; ++m) forward();
    for (int m = 0; m < M; ++m) backward();
  } else {
    const int warmup = std::min(P - s - 1, M);
    for (int i = 0; i < warmup; ++i) forward();
    for (int i = 0; i < M - warmup; ++i) {
      forward();
      backward();
    }
    for (int i = 0; i < warmup; ++i) backward();
  }
  for (Work& w : sends) w.wait();

  // Every stage learns the loss from the last one.
  Tensor loss = full({1}, last ? loss_sum / double(M) : 0.0, DType::f64);
  pp_->broadcast(loss, P - 1);
  stats.loss = loss.item();
  stats.step_seconds = seconds_since(t_step);
  stats.peak_activation_bytes = memory_stats(Device::cpu()).peak_bytes - live_at_start;
  return stats;
}

double Pipeline::evaluate(const Tensor& x, const Tensor& y) {
  NoGradGuard no_grad;
  const int M = options_.micro_batches, s = pp_->rank(), P = pp_->size();
  const bool first = model_.first_stage(), last = model_.last_stage();
  const Tensor& batch = first ? x : y;
  const int64_t B = batch.size(0), T = batch.size(1), mb = B / M;
  FORGE_CHECK(B % M == 0, "pipeline: a batch of {} rows does not split into {} micro-batches", B,
              M);
  double loss_sum = 0;
  for (int m = 0; m < M; ++m) {
    Variable in;
    if (!first) {
      Tensor h = Tensor::empty({mb, T, model_.config().n_embd});
      pp_->recv(h, s - 1, kForwardTag);
      in = Variable(h);
    }
    Variable out = model_.forward(first ? x.narrow(0, m * mb, mb).contiguous() : Tensor(), in);
    if (last)
      loss_sum += model_.loss(out, y.narrow(0, m * mb, mb).contiguous()).item();
    else
      pp_->send(out.data().to(DType::f32).contiguous(), s + 1, kForwardTag);
  }
  Tensor loss = full({1}, last ? loss_sum / double(M) : 0.0, DType::f64);
  pp_->broadcast(loss, P - 1);
  return loss.item();
}

void sync_tied_embedding(ParallelGPT& model, const std::shared_ptr<Communicator>& embedding_group) {
  if (!embedding_group) return;
  FORGE_CHECK(model.wte && model.wte->weight.grad().defined(),
              "sync_tied_embedding: stage {} has no gradient of the token embedding",
              model.layout().stage);
  embedding_group->all_reduce(model.wte->weight.grad(), ReduceOp::sum);
}

}  // namespace forge
