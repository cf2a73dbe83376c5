// Distributed data parallel: every rank holds the whole model, runs its own share of the batch,
// and averages gradients over the data-parallel group before the optimizer step.
//
//   DistributedDataParallel ddp(model.parameters(), grid.dp_group());  // broadcasts rank 0's
//   weights for (...) {
//     ddp.zero_grad();                 // instead of opt.zero_grad(): gradients live in buckets
//     loss.backward();                 // buckets are all-reduced as they fill, during backward
//     ddp.finish_grad_sync();          // the one wait; gradients now hold the average
//     opt.step();
//   }
//   { auto guard = ddp.no_sync(); micro_loss.backward(); }   // accumulate without communicating
//
// Gradients are laid out in buckets (default 25 MiB) in reverse parameter order, roughly the order
// backward finishes them; each parameter's .grad() is a view into its bucket. A bucket's
// asynchronous all-reduce (avg) starts from the grad-ready hook of its last parameter; buckets
// start in index order, so every rank issues the same collectives in the same order. Between
// backward and finish_grad_sync() the gradients belong to the communication: do not touch them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "parallel/communicator.h"

namespace forge {

struct DdpOptions {
  int64_t bucket_bytes = int64_t(25) << 20;
  bool broadcast_parameters = true;  // rank 0's values to every rank at construction
};

// What the last finish_grad_sync() saw.
struct DdpSyncStats {
  int buckets = 0;
  int started_in_backward = 0;  // buckets whose all-reduce a grad-ready hook started
  int64_t bytes = 0;
  double wait_seconds = 0;  // blocked in finish_grad_sync: communication not hidden
  // Time inside the group's all-reduces since the last sync, hidden or not (the buckets', and any
  // other all-reduce issued on the group meanwhile).
  double allreduce_seconds = 0;
};

class DistributedDataParallel {
 public:
  DistributedDataParallel(std::vector<Variable> params, std::shared_ptr<Communicator> group,
                          DdpOptions options = {});
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  // Zeroes the buckets and points every parameter's gradient at its slice.
  void zero_grad();
  // Starts the buckets not yet started, waits for all: gradients hold the group's average.
  void finish_grad_sync();

  // While alive, backward accumulates into the buckets without communicating.
  class NoSync {
   public:
    explicit NoSync(DistributedDataParallel& d);
    ~NoSync();
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    DistributedDataParallel& d_;
    bool saved_;
  };
  NoSync no_sync() { return NoSync(*this); }

  int num_buckets() const;
  // Parameter indices (into the constructor's list) of bucket b, in the order laid out.
  std::vector<int> bucket_params(int b) const;
  const DdpSyncStats& last_sync() const;
  const std::shared_ptr<Communicator>& group() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// Refuses to go on when `text` (a config, a list of shapes) differs between the ranks of `group`:
// every rank throws the same error naming the first rank that differs from rank 0. Collective.
void check_same_on_all_ranks(Communicator& group, const std::string& text, const std::string& what);

// True on every rank when `flag` is true on any (the loss scaler's inf/NaN verdict). Collective.
bool any_rank(Communicator& group, bool flag);

}  // namespace forge
