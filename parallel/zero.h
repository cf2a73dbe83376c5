// ZeRO (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
// Models"), stages 1 to 3: AdamW whose state, gradients and parameters are partitioned over the
// data-parallel group, so each rank keeps 1/N of what DDP replicates.
//
//   ZeroAdamW opt(named_groups, {.lr = 1e-3}, grid.dp_group(), {.stage = 2});  // rank 0's weights
//   opt.zero_grad();
//   model.loss(model.forward(my_rows), my_targets).backward();  // stages 2-3: reduce-scatters
//   opt.reduce_scatter_gradients();  // the group's average of this rank's partition, complete
//   double norm = opt.grad_norm();   // of the whole averaged gradient (N values all-reduced)
//   opt.clip_to_norm(norm, 1.0);
//   opt.step();  // AdamW on the partition; stages 1-2 all-gather the parameters
//
// The parameters form units (a GPT's blocks, GPT::parameter_units, or consecutive parameters up to
// bucket_bytes). A unit's P_u elements, its parameters one after another, are split evenly: rank
// r owns [r S_u, (r + 1) S_u) with S_u = ceil(P_u / N). AdamW runs on the pieces of parameters
// inside a rank's share, as parameters of their own named "<name>[<begin>:<end>]" (element ranges
// of the parameter), so its moments (8 bytes an element) exist for those elements alone. Per rank,
// in f32 with Ψ parameters:
//
//   stage 1  4Ψ parameters + 4Ψ gradients + 8Ψ/N moments. After backward each unit's gradient is
//            reduce-scattered (avg) and this rank's share written back into its gradients.
//   stage 2  4Ψ + (4Ψ + 8Ψ)/N. A unit's gradient is reduce-scattered the moment backward has
//            finished it (its parameters' grad-ready hooks), asynchronously, at most
//            max_in_flight at a time, and added into the share's own gradient buffer; the
//            parameters' gradients are dropped then, so no full gradient is kept. Gradient
//            accumulation (several backward passes per step) reduces each pass.
//   stage 3  16Ψ/N (FSDP). The parameters' memory exists only while a unit is in use: the model
//            (a ParameterGate client) acquires a unit before its forward and backward, which
//            all-gathers it from the shares (prefetching the next unit while this one computes),
//            and releases it after; AdamW updates the share itself.
//
// The traffic per step: stages 1-2, DDP's (a reduce-scatter and an all-gather of P, an
// all-reduce's worth); stage 3, 1.5x that (an all-gather in forward and one in backward). The
// parameters are re-pointed at one flat buffer per unit (N S_u elements: the parameters, then
// padding). Parameters must be contiguous f32 on the CPU.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/gpt.h"
#include "optim/optimizer.h"
#include "parallel/communicator.h"

namespace forge {

struct ZeroOptions {
  int stage = 1;  // 1, 2 or 3
  // The units, by parameter name; every parameter in exactly one. Empty: consecutive parameters
  // (in group order) up to bucket_bytes each.
  std::vector<std::vector<std::string>> units;
  int64_t bucket_bytes = int64_t(25) << 20;
  int max_in_flight = 2;  // stages 2-3: gradient reduce-scatters outstanding during backward
  // Stage 3 with parameters built without memory (DeferParameterMemory): the initial values of
  // elements of a parameter (GPT::initial_values). Each rank fills its partition from it, so no
  // rank ever holds the model whole; without it every rank starts from rank 0's weights.
  std::function<Tensor(const std::string& name, IndexRange elements)> init = nullptr;
};

class ZeroAdamW : public Optimizer, public ParameterGate {
 public:
  // `groups` must name their parameters (ParamGroup::names). Collective: every rank starts from
  // rank 0's weights.
  ZeroAdamW(std::vector<ParamGroup> groups, AdamWOptions options, std::shared_ptr<Communicator> dp,
            ZeroOptions zero = {});
  ~ZeroAdamW() override;
  ZeroAdamW(const ZeroAdamW&) = delete;
  ZeroAdamW& operator=(const ZeroAdamW&) = delete;

  int stage() const { return zero_.stage; }
  // Drops the parameters' gradients; stages 2-3 also zero the share's gradient.
  void zero_grad() override;
  // After the step's backward passes: this rank's share of the group's average gradient, complete
  // (stage 1 reduce-scatters every unit now; 2-3 the units backward did not finish, then wait).
  void reduce_scatter_gradients();
  // The squared L2 norm of this rank's share of the averaged gradient. With `counted`, only
  // parameters it accepts count (a model split over tensor-parallel ranks counts a replicated
  // parameter once); the caller sums over the data- and model-parallel groups.
  double grad_norm_sq_local(const std::function<bool(const std::string&)>& counted = {}) const;
  double grad_norm();  // over the data-parallel group, every parameter counted
  // Scales the share's gradient by max_norm / (norm + 1e-6) when that is below 1.
  void clip_to_norm(double norm, double max_norm);
  // Sums the share's gradient of parameter `name` over `group` (the tied embedding between the
  // first and the last pipeline stage, whose units hold it alike). Collective over `group`.
  void sum_gradient_over(const std::string& name, Communicator& group);
  // AdamW on this rank's share; stages 1-2 then all-gather every unit.
  void step() override;
  // The share's pieces as parameters (their gradients: the share's): the loss scaler unscales
  // and checks them.
  const std::vector<Variable>& partition_parameters() const { return piece_vars_; }

  // ParameterGate (stage 3; no-ops before): units as ZeroOptions::units numbers them.
  void acquire(int unit) override;
  void release(int unit) override;
  void acquire_for_backward(int unit) override;
  void prefetch(int unit) override;
  // Stage 3: every unit whole while the guard lives (saving, loading weights); when it ends each
  // rank keeps its share of what the parameters hold then. Collective; a no-op before stage 3.
  class WholeParameters {
   public:
    explicit WholeParameters(ZeroAdamW& z);
    ~WholeParameters() noexcept(false);
    WholeParameters(const WholeParameters&) = delete;
    WholeParameters& operator=(const WholeParameters&) = delete;

   private:
    ZeroAdamW& z_;
  };

  int64_t numel() const { return numel_; }  // Ψ: the parameters' elements (without padding)
  int64_t share_numel() const;              // elements of this rank's share, padding excluded
  int num_units() const { return int(units_.size()); }
  int64_t unit_share(int unit) const { return units_[size_t(unit)].share; }  // S_u
  int64_t steps() const { return opt_->steps(); }  // step() calls, the same on every rank
  // AdamW's state for this rank's pieces, keyed adamw.m.<name>[<begin>:<end>].
  NamedTensors state() const override { return opt_->state(); }
  // Collective over the group: the state a plain AdamW over the same groups would have
  // (adamw.m.<name> whole, ...), every rank's pieces joined one parameter at a time (all-reduces
  // of 2 Ψ values in all). Ranks that pass keep = false (those that will not write it) get nothing
  // back and hold one parameter's moments at most.
  NamedTensors full_state(bool keep = true) const;
  // Either kind: pieces (state()) for this share, or whole tensors by name (full_state(), a plain
  // AdamW's), of which it keeps its pieces.
  void load_state(const NamedTensors& state) override;

  // This rank's partition as a checkpoint stores it: its pieces of the weights
  // ("<name>[<begin>:<end>]", element ranges of the parameter) and AdamW's state of them
  // (state() without adamw.step). Views: nothing is copied, nothing gathered.
  NamedTensors partition_state() const;
  // Loads from a checkpoint one piece at a time: read(kind, name, elements) gives elements of
  // parameter `name`'s weight (kind "") or AdamW moment ("m", "v"; undefined when none was
  // saved), flattened, or its step count (kind "t"). Stages 1-2 read every weight whole (each
  // rank holds them), stage 3 its pieces; the moments of its pieces; `steps` is AdamW's count.
  using PieceReader =
      std::function<Tensor(const std::string& kind, const std::string& name, IndexRange elements)>;
  void load_checkpoint(const PieceReader& read, int64_t steps);

 private:
  struct Unit {
    std::vector<size_t> params;  // indices into params_, in order
    int64_t numel = 0, share = 0;
    Tensor flat;    // N * share: the parameters are views of it (stage 3: memory while held)
    Tensor master;  // stage 3: this rank's share of flat, what AdamW updates
    Tensor grad;    // stages 2-3: this rank's share of the averaged gradient
    int holders = 0, backward_holds = 0, ready = 0;
    Work gather;  // stage 3: an all-gather into flat in flight
    bool gathered = true;
  };
  struct InFlight {
    int unit;
    Tensor bucket, out;
    Work work;
  };
  struct Piece {
    size_t param;           // index into params_
    int64_t offset, count;  // elements of the parameter
  };
  void build_units(const ZeroOptions& zero);
  void flatten_unit(Unit& u);
  void on_grad_ready(int unit);
  void launch_reduce(int unit);
  void finish_reduce(InFlight& f);
  void start_gather(Unit& u);
  void check_unit(int unit, const char* what) const;
  // The elements of parameter k inside this rank's share, in its unit's element numbering
  // (empty when none are).
  IndexRange share_part(size_t k) const;
  std::string piece_name(const Piece& p) const;

  ZeroOptions zero_;
  std::vector<Variable> params_;
  std::vector<std::string> names_;
  std::vector<int> unit_of_;          // per parameter
  std::vector<int64_t> unit_offset_;  // per parameter: its first element in its unit
  std::vector<Unit> units_;
  std::vector<Piece> pieces_;         // inside this rank's share, in AdamW's parameter order
  std::vector<Variable> piece_vars_;  // AdamW's parameters: views of those elements
  std::vector<InFlight> in_flight_;   // stages 2-3, oldest first
  std::shared_ptr<Communicator> dp_;
  int64_t numel_ = 0;
  std::unique_ptr<AdamW> opt_;        // over the pieces inside the share
  std::shared_ptr<ZeroAdamW*> self_;  // the grad-ready hooks' way back (weak), gone with this
};

}  // namespace forge
