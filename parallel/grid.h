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

 private:
  GridSizes sizes_;
  std::shared_ptr<Communicator> world_, dp_, tp_, pp_;
};

}  // namespace forge
