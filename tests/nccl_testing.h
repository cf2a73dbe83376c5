// Shared by the tests that run on one GPU per MPI rank (NCCL): whether every rank has a GPU of its
// own (else every rank prints SKIPPED and why), and this rank's GPU.
//
//   if (!have_gpus("all_reduce")) return;   // collective: every rank takes the same decision
//   Tensor t = x.to(rank_gpu());
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "parallel/communicator.h"
#include "parallel/nccl_communicator.h"
#include "tensor/cuda/cuda.h"

namespace forge::testing {

// Whether every rank of the MPI world has a GPU of its own and NCCL is built. Collective; prints
// SKIPPED and why when not. Under FORGE_REQUIRE_GPU=1 a rank without any usable GPU, or a build
// without NCCL, fails instead (fewer GPUs than ranks still skips: one GPU runs the np1 tests).
inline bool have_gpus(const char* test) {
  auto w = world_communicator();
  const int n = cuda::device_count();
  Tensor short_of = from_vector<int32_t>({n >= w->size() ? 0 : 1});
  w->all_reduce(short_of, ReduceOp::max);
  if (short_of.item() == 0 && nccl_built()) return true;
  std::string why = !nccl_built() ? std::string("this build has no NCCL")
                    : n == 0      ? "no GPU: " + cuda::unavailable_reason()
                                  : fmt::format(
                                        "{} GPU(s) here for {} ranks on some rank; NCCL "
                                             "needs one per rank",
                                        n, w->size());
  const char* required = std::getenv("FORGE_REQUIRE_GPU");
  if (required != nullptr && std::string(required) == "1" && (n == 0 || !nccl_built()))
    throw std::runtime_error(
        fmt::format("{} (rank {}): FORGE_REQUIRE_GPU=1 and {}", test, w->rank(), why));
  std::printf("SKIPPED: %s (rank %d): %s\n", test, w->rank(), why.c_str());
  return false;
}

// This rank's GPU: its index on its node.
inline Device rank_gpu() {
  return Device::cuda(local_cuda_device());
}

}  // namespace forge::testing
