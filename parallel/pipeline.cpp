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

std::vector<bool> pipeline_order(PipelineSchedule schedule, int stages, int stage,
                                 int micro_batches) {
  const int M = micro_batches;
  std::vector<bool> order;
  if (schedule == PipelineSchedule::gpipe) {
    order.assign(size_t(M), true);
    order.resize(size_t(2 * M), false);
    return order;
  }
  const int warmup = std::min(stages - stage - 1, M);
  order.assign(size_t(warmup), true);
  for (int i = 0; i < M - warmup; ++i) {
    order.push_back(true);
    order.push_back(false);
  }
  order.resize(size_t(2 * M), false);
  return order;
}

Pipeline::Pipeline(GPT& model, std::shared_ptr<Communicator> pp, PipelineOptions options)
    : model_(model), pp_(std::move(pp)), options_(options) {
  FORGE_CHECK(model_.first_stage() == (pp_->rank() == 0) &&
                  model_.last_stage() == (pp_->rank() == pp_->size() - 1),
              "pipeline: the model holds blocks [{}, {}) of {}, which is not stage {} of {}",
              model_.layers().begin, model_.layers().end, model_.config().n_layer, pp_->rank(),
              pp_->size());
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

int64_t Pipeline::micro_batch_rows(const Tensor& x, const Tensor& y) const {
  const Tensor& batch = model_.first_stage() ? x : y;
  FORGE_CHECK(batch.dim() == 2, "pipeline: expected a (B, T) batch, got {}", batch.shape());
  const int64_t B = batch.size(0), M = options_.micro_batches;
  FORGE_CHECK(B % M == 0, "pipeline: a batch of {} rows does not split into {} micro-batches", B,
              M);
  return B / M;
}

Pipeline::MicroBatch Pipeline::forward(const Tensor& x, const Tensor& y, int m, int64_t mb,
                                       std::deque<Work>& sends, double& busy_seconds,
                                       const std::function<void()>& received) {
  const int s = pp_->rank();
  const int64_t T = (model_.first_stage() ? x : y).size(1);
  MicroBatch f;
  if (!model_.first_stage()) {
    Tensor h = Tensor::empty({mb, T, model_.config().n_embd}, DType::f32, pp_->device());
    pp_->recv(h, s - 1, kForwardTag);
    if (received) received();
    // On the model's device (the communicator's, unless an MPI group carries a GPU model's states).
    f.input = Variable(h.to(model_.device()), /*requires_grad=*/grad_enabled());
  }
  const auto t0 = Clock::now();
  Tensor xm = model_.first_stage() ? x.narrow(0, m * mb, mb).contiguous() : Tensor();
  f.output = model_.forward(xm, f.input);
  if (model_.last_stage()) f.output = model_.loss(f.output, y.narrow(0, m * mb, mb).contiguous());
  busy_seconds += seconds_since(t0);
  if (!model_.last_stage())
    sends.push_back(pp_->send_async(f.output.data().to(DType::f32).contiguous().to(pp_->device()),
                                    s + 1, kForwardTag));
  return f;
}

PipelineStepStats Pipeline::step(const Tensor& x, const Tensor& y, double loss_scale,
                                 DistributedDataParallel* ddp) {
  const int M = options_.micro_batches, s = pp_->rank(), P = pp_->size();
  const bool first = model_.first_stage(), last = model_.last_stage();
  const int64_t mb = micro_batch_rows(x, y);
  const int64_t T = (first ? x : y).size(1), C = model_.config().n_embd;

  PipelineStepStats stats;
  const auto t_step = Clock::now();
  const Device device = model_.device();  // where the activations are
  const int64_t live_at_start = memory_stats(device).live_bytes;
  // Micro-batches forwarded and not yet backwarded: the stage's input (a leaf whose gradient goes
  // back to the previous stage) and its output (hidden state, or the loss on the last stage).
  std::deque<MicroBatch> in_flight;
  // Sends not yet known to be received: hidden states to s + 1, gradients to s - 1, oldest first.
  std::deque<Work> forward_sends, backward_sends;
  // The previous stage's order: its k-th forward follows the backwards before it there, whose
  // gradients it must have received from this stage first.
  const std::vector<bool> previous =
      first ? std::vector<bool>{} : pipeline_order(options_.schedule, P, s - 1, M);
  size_t previous_at = 0;  // in `previous`, past the forward last received from s - 1
  double loss_sum = 0;
  int forwards = 0, backwards = 0;
  auto received_forward = [&] {
    for (; !previous[previous_at]; ++previous_at) {
      backward_sends.front().wait();
      backward_sends.pop_front();
    }
    ++previous_at;
  };

  auto forward_one = [&] {
    in_flight.push_back(
        forward(x, y, forwards++, mb, forward_sends, stats.busy_seconds, received_forward));
    if (last) loss_sum += in_flight.back().output.item();
    stats.max_in_flight = std::max(stats.max_in_flight, int(in_flight.size()));
  };

  auto backward_one = [&] {
    const int m = backwards++;
    MicroBatch f = in_flight.front();
    in_flight.pop_front();
    Tensor g;
    if (last) {
      g = full({}, loss_scale / double(M), f.output.dtype(), f.output.data().device());
    } else {
      g = Tensor::empty({mb, T, C}, DType::f32, pp_->device());
      pp_->recv(g, s + 1, kBackwardTag);
      // Stage s + 1 ran this micro-batch's forward before its backward: the state arrived.
      forward_sends.front().wait();
      forward_sends.pop_front();
    }
    const auto t0 = Clock::now();
    {
      // Data parallel: all-reduce only in the last micro-batch's backward.
      std::optional<DistributedDataParallel::NoSync> local;
      if (ddp && m < M - 1) local.emplace(*ddp);
      run_backward({f.output}, {g.to(f.output.data().device()).to(f.output.dtype())});
    }
    stats.busy_seconds += seconds_since(t0);
    if (!first)
      backward_sends.push_back(
          pp_->send_async(f.input.grad().contiguous().to(pp_->device()), s - 1, kBackwardTag));
  };

  for (bool forward : pipeline_order(options_.schedule, P, s, M))
    forward ? forward_one() : backward_one();
  for (Work& w : backward_sends) w.wait();  // the previous stage's last backwards

  // Every stage learns the loss from the last one.
  Tensor loss = full({1}, last ? loss_sum / double(M) : 0.0, DType::f64, pp_->device());
  pp_->broadcast(loss, P - 1);
  stats.loss = loss.item();
  stats.step_seconds = seconds_since(t_step);
  stats.peak_activation_bytes = memory_stats(device).peak_bytes - live_at_start;
  return stats;
}

double Pipeline::evaluate(const Tensor& x, const Tensor& y) {
  NoGradGuard no_grad;
  const int M = options_.micro_batches, P = pp_->size();
  const int64_t mb = micro_batch_rows(x, y);
  std::deque<Work> sends;
  double loss_sum = 0, busy = 0;
  for (int m = 0; m < M; ++m) {
    MicroBatch f = forward(x, y, m, mb, sends, busy);
    if (model_.last_stage()) loss_sum += f.output.item();
  }
  for (Work& w : sends) w.wait();
  Tensor loss =
      full({1}, model_.last_stage() ? loss_sum / double(M) : 0.0, DType::f64, pp_->device());
  pp_->broadcast(loss, P - 1);
  return loss.item();
}

void sync_tied_embedding(GPT& model, const std::shared_ptr<Communicator>& embedding_group) {
  if (!embedding_group) return;
  FORGE_CHECK(model.wte && model.wte->weight.grad().defined(),
              "sync_tied_embedding: the stage of blocks [{}, {}) has no gradient of the token "
              "embedding",
              model.layers().begin, model.layers().end);
  embedding_group->all_reduce(model.wte->weight.grad(), ReduceOp::sum);
}

}  // namespace forge
