// The process grid: world ranks arranged as (pp, dp, tp) with tensor-parallel fastest, then data,
// then pipeline (the Megatron order), so a tensor-parallel group is a run of neighbouring ranks.
//
//   ProcessGrid grid(world, {.pp = 2, .dp = 2, .tp = 2});   // 8 ranks
//   grid.coord();            // this rank's {pp, dp, tp}
//   grid.dp_group()->all_reduce(grad, ReduceOp::avg);       // the ranks that differ only in dp
//
//   rank = (pp * dp_size + dp) * tp_size + tp
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace forge {

struct GridSizes {
  int pp = 1, dp = 1, tp = 1;
  int world() const { return pp * dp * tp; }
};

struct GridCoord {
  int pp = 0, dp = 0, tp = 0;
  friend bool operator==(const GridCoord&, const GridCoord&) = default;
};

class ProcessGrid {
 public:
  // Collective over `world`; refuses sizes whose product is not the world's size.
  ProcessGrid(std::shared_ptr<Communicator> world, GridSizes sizes);

  const GridSizes& sizes() const { return sizes_; }
  GridCoord coord() const { return coord_of(world_->rank()); }
  int rank_of(GridCoord c) const;
  GridCoord coord_of(int rank) const;

  const std::shared_ptr<Communicator>& world() const { return world_; }
  const std::shared_ptr<Communicator>& dp_group() const { return dp_; }
  const std::shared_ptr<Communicator>& tp_group() const { return tp_; }
  const std::shared_ptr<Communicator>& pp_group() const { return pp_; }
  // The ranks of one model replica: those that differ only in tp and pp.
  const std::shared_ptr<Communicator>& model_parallel_group() const { return mp_; }
  // The first and the last pipeline stage of one (dp, tp): both hold the tied token embedding and
  // sum its gradient. nullptr on the other stages and without a pipeline.
  const std::shared_ptr<Communicator>& embedding_group() const { return embedding_; }

 private:
  GridSizes sizes_;
  std::shared_ptr<Communicator> world_, dp_, tp_, pp_, mp_, embedding_;
};

}  // namespace forge
