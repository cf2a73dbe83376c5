#include "parallel/grid.h"

namespace forge {

ProcessGrid::ProcessGrid(std::shared_ptr<Communicator> world, GridSizes sizes)
    : sizes_(sizes), world_(std::move(world)) {
  FORGE_CHECK(sizes_.pp >= 1 && sizes_.dp >= 1 && sizes_.tp >= 1,
              "process grid: sizes must be positive, got pp={} dp={} tp={}", sizes_.pp, sizes_.dp,
              sizes_.tp);
  FORGE_CHECK(sizes_.world() == world_->size(),
              "process grid pp={} x dp={} x tp={} needs {} ranks; this job has {} (mpirun -np)",
              sizes_.pp, sizes_.dp, sizes_.tp, sizes_.world(), world_->size());
  GridCoord c = coord();
  tp_ = world_->split(c.pp * sizes_.dp + c.dp, c.tp);
  dp_ = world_->split(c.pp * sizes_.tp + c.tp, c.dp);
  pp_ = world_->split(c.dp * sizes_.tp + c.tp, c.pp);
  mp_ = world_->split(c.dp, c.pp * sizes_.tp + c.tp);
  const bool ends = c.pp == 0 || c.pp == sizes_.pp - 1;
  embedding_ = world_->split(sizes_.pp > 1 && ends ? c.dp * sizes_.tp + c.tp : -1, c.pp);
}

int ProcessGrid::rank_of(GridCoord c) const {
  FORGE_CHECK(c.pp >= 0 && c.pp < sizes_.pp && c.dp >= 0 && c.dp < sizes_.dp && c.tp >= 0 &&
                  c.tp < sizes_.tp,
              "process grid: coordinate (pp {}, dp {}, tp {}) is outside {} x {} x {}", c.pp, c.dp,
              c.tp, sizes_.pp, sizes_.dp, sizes_.tp);
  return (c.pp * sizes_.dp + c.dp) * sizes_.tp + c.tp;
}

GridCoord ProcessGrid::coord_of(int rank) const {
  FORGE_CHECK(rank >= 0 && rank < sizes_.world(), "process grid: rank {} is outside 0..{}", rank,
              sizes_.world() - 1);
  return {rank / (sizes_.dp * sizes_.tp), (rank / sizes_.tp) % sizes_.dp, rank % sizes_.tp};
}

}  // namespace forge
