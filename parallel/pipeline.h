// Pipeline parallelism: the forwards and backwards of one training step of a GPT stage (a GPT
// holding a range of blocks, models/gpt.h),
// over M micro-batches, in GPipe or 1F1B order.
//
//   Pipeline pipe(model, grid.pp_group(), {.schedule = PipelineSchedule::one_f_one_b,
//                                           .micro_batches = 4});
//   PipelineStepStats s = pipe.step(x, y);   // gradients of the step accumulate in .grad()
//   sync_tied_embedding(model, grid.embedding_group());
//   opt.step();
//
// Stage s receives each micro-batch's hidden state (mb, T, C) from stage s - 1 and sends its own to
// s + 1; in backward the gradients of those states travel the other way. Sends are asynchronous
// and receives block, so a stage waits only for what it needs next. A sent tensor is let go as
// soon as its receiver has provably taken it: a hidden state once its gradient comes back, a
// gradient once the previous stage sends a forward it runs after that backward (in its schedule's
// order), so a step holds a few transfers, not one per micro-batch, and no wait can deadlock.
// The transfers use buffers on the group's device (Communicator::device(): a GPU for an NCCL
// group, whose sends and receives then stay on the GPUs); the stage computes on its model's.
//
//   GPipe:  F1 F2 .. FM  B1 B2 .. BM              every micro-batch's activations held at once
//   1F1B:   P - s - 1 warm-up forwards, then one forward and one backward in turn, then the
//           remaining backwards: stage s holds at most P - s micro-batches' activations.
//
// With M micro-batches of B / M rows, each micro-batch's loss is scaled by 1 / M, so the
// accumulated gradients are those of the mean loss over the whole batch B: the serial run's.
// When every stage costs the same, (P - 1) / (M + P - 1) of the stages' time is idle in both
// schedules (the bubble): stage 0, which starts first and finishes last, idles that share of its
// step; later stages finish their backwards earlier and idle less of their own.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/gpt.h"
#include "parallel/ddp.h"

namespace forge {

enum class PipelineSchedule { gpipe, one_f_one_b };
PipelineSchedule parse_pipeline_schedule(const std::string& name);  // "gpipe" or "1f1b"
const char* pipeline_schedule_name(PipelineSchedule s);
// Stage `stage` of `stages`' work in one step, in its schedule's order: true for a forward, false
// for a backward; the i-th forward and the i-th backward are both micro-batch i.
std::vector<bool> pipeline_order(PipelineSchedule schedule, int stages, int stage,
                                 int micro_batches);

struct PipelineOptions {
  PipelineSchedule schedule = PipelineSchedule::one_f_one_b;
  int micro_batches = 1;
};

struct PipelineStepStats {
  double loss = 0;          // mean loss of the batch, on every stage (sent from the last)
  double step_seconds = 0;  // the whole schedule on this stage
  double busy_seconds = 0;  // of which forward and backward computation
  int max_in_flight = 0;    // micro-batches forwarded and not yet backwarded, at most at once
  // The allocator's peak above the step's start (activations): scoped to the step when the
  // caller calls reset_peak_memory before it (the pipeline leaves the process's peak alone).
  int64_t peak_activation_bytes = 0;
  double idle_fraction() const { return step_seconds > 0 ? 1 - busy_seconds / step_seconds : 0; }
};

class Pipeline {
 public:
  // `pp`: this rank's pipeline group (rank = stage). The model's stage must match pp's rank.
  Pipeline(GPT& model, std::shared_ptr<Communicator> pp, PipelineOptions options);

  // One step over the batch x, y (B, T): the first stage reads x, the last y, and the others take
  // the micro-batches' shape from y (pass both everywhere). The backward of each micro-batch starts
  // from loss * loss_scale / M. With `ddp`, the gradients are all-reduced during the last
  // micro-batch's backward only (no_sync before).
  PipelineStepStats step(const Tensor& x, const Tensor& y, double loss_scale = 1.0,
                         DistributedDataParallel* ddp = nullptr);

  // The mean loss over x, y without gradients (evaluation; the model's train/eval mode is the
  // caller's), through the same micro-batches and stages. Returned on every stage.
  double evaluate(const Tensor& x, const Tensor& y);

  const PipelineOptions& options() const { return options_; }

 private:
  // One micro-batch through this stage: its input (received, except on the first stage) and its
  // output (the loss on the last stage; otherwise sent on asynchronously, the Work kept in sends).
  // `received` runs once the input has arrived, before the compute.
  struct MicroBatch {
    Variable input, output;
  };
  MicroBatch forward(const Tensor& x, const Tensor& y, int m, int64_t rows, std::deque<Work>& sends,
                     double& busy_seconds, const std::function<void()>& received = {});
  int64_t micro_batch_rows(const Tensor& x, const Tensor& y) const;

  GPT& model_;
  std::shared_ptr<Communicator> pp_;
  PipelineOptions options_;
};

// Sums the tied token embedding's gradient between the first and the last stage (the embedding
// lookup's part and the output head's part). No-op without a group (one stage).
void sync_tied_embedding(GPT& model, const std::shared_ptr<Communicator>& embedding_group);

}  // namespace forge
