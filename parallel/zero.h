// ZeRO stage 1 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
// Parameter Models"): AdamW's moments partitioned over the data-parallel group, so each rank
// keeps 1/N of the optimizer state instead of all of it.
//
//   ZeroAdamW opt(named_groups, {.lr = 1e-3}, grid.dp_group());  // rank 0's weights to every rank
//   opt.zero_grad();
//   model.loss(model.forward(my_rows), my_targets).backward();   // this rank's gradients, whole
//   opt.reduce_scatter_gradients();    // the group's average, of this rank's partition only
//   double norm = opt.grad_norm();     // of the whole averaged gradient (an all-reduce of N
//   values) opt.clip_to_norm(norm, 1.0); opt.step();                        // AdamW on the
//   partition, then the parameters all-gathered
//
// The parameters, in group order, form one flat index space of P elements; rank r owns elements
// [r S, min((r + 1) S, P)) with S = ceil(P / N). AdamW runs on the pieces of parameters inside the
// partition, as parameters of their own named "<name>[<begin>:<end>]" (element ranges of the
// parameter), so its moments (8 P / N bytes in f32) exist for those elements alone: per rank
// 4P (parameters) + 4P (gradients) + 8P/N, the paper's stage 1, against DDP's 16P.
// The collectives run in chunks of bucket_bytes per rank: for chunk k every rank's k-th slice of
// its partition is copied, in rank order, into a bucket that is reduce-scattered (avg), and the
// average written back into this rank's slice of the parameters' gradients (where AdamW's pieces
// read it); after the update each rank's k-th slice is all-gathered back into the parameters. The
// traffic is DDP's (a reduce-scatter and an all-gather of P: one all-reduce), the extra memory a
// bucket. Parameters must be f32 and on the CPU.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "optim/optimizer.h"
#include "parallel/communicator.h"

namespace forge {

class ZeroAdamW : public Optimizer {
 public:
  // `groups` must name their parameters (ParamGroup::names).
  ZeroAdamW(std::vector<ParamGroup> groups, AdamWOptions options, std::shared_ptr<Communicator> dp,
            int64_t bucket_bytes = int64_t(25) << 20);

  // The group's average of every rank's gradients, reduce-scattered: this rank's partition.
  void reduce_scatter_gradients();
  // The L2 norm of the whole averaged gradient: this partition's squares summed over the group.
  // With `counted`, only parameters it accepts count here (a model split over tensor-parallel
  // ranks counts a replicated parameter once); the caller sums over its model-parallel group.
  double grad_norm_sq_local(const std::function<bool(const std::string&)>& counted = {}) const;
  double grad_norm();  // over the data-parallel group, every parameter counted
  // Scales the partition's gradient by max_norm / (norm + 1e-6) when that is below 1.
  void clip_to_norm(double norm, double max_norm);
  // AdamW on this rank's partition, then every rank's updated partition all-gathered.
  void step() override;

  int64_t numel() const { return numel_; }            // P: the parameters' elements
  int64_t partition_begin() const { return begin_; }  // this rank's [begin, end)
  int64_t partition_end() const { return end_; }
  const AdamW& partition_optimizer() const { return *opt_; }
  // AdamW's state for this rank's pieces, keyed adamw.m.<name>[<begin>:<end>].
  NamedTensors state() const override { return opt_->state(); }
  // Collective over the group: the state a plain AdamW over the same groups would have
  // (adamw.m.<name> whole, ...), every rank's pieces joined (an all-reduce of 2 P values).
  NamedTensors full_state() const;
  // Either kind: pieces (state()) for this partition, or whole tensors by name (full_state(), a
  // plain AdamW's), of which it keeps its pieces.
  void load_state(const NamedTensors& state) override;

 private:
  // Copies flat elements [flat, flat + count) of the gradients (zeros past P or where a parameter
  // has none) into dst, or of `src` into the parameters.
  void gather_grads(int64_t flat, int64_t count, float* dst) const;
  void read_params(int64_t flat, int64_t count, float* dst) const;
  void write_params(int64_t flat, int64_t count, const float* src);
  template <class F>
  void for_range(int64_t flat, int64_t count, F&& fn) const;

  struct Piece {
    size_t param;           // index into params_
    int64_t offset, count;  // elements of the parameter
  };
  std::vector<Variable> params_;
  std::vector<std::string> names_;
  std::vector<Piece> pieces_;         // inside this rank's partition, in AdamW's parameter order
  std::vector<Variable> piece_vars_;  // AdamW's parameters: views of those elements
  std::vector<int64_t> starts_;       // each parameter's first flat index
  std::shared_ptr<Communicator> dp_;
  int64_t numel_ = 0, part_ = 0, begin_ = 0, end_ = 0, chunk_ = 0;
  std::unique_ptr<AdamW> opt_;  // over the pieces inside the partition
};

}  // namespace forge
