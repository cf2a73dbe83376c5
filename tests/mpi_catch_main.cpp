// The Catch2 main of the multi-rank tests: every rank runs every test case, in the same order
// (the collectives inside them must match), and the job fails when any rank failed. Under plain
// execution (no mpirun) the same tests run on the one-rank communicator.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>

#include "parallel/communicator.h"

int main(int argc, char** argv) {
  auto world = forge::world_communicator();
  std::printf("rank %d of %d (%s)\n", world->rank(), world->size(), world->backend().c_str());
  std::fflush(stdout);
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  int failed = session.run();
  forge::Tensor f = forge::from_vector<int64_t>({int64_t(failed)});
  world->all_reduce(f, forge::ReduceOp::max);
  return f.item() > 0 ? 1 : 0;
}
