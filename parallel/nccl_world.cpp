// Which world communicator a run on a device uses (parallel/nccl_communicator.h), in every build.
#include <cstdlib>
#include <map>
#include <mutex>

#include "parallel/nccl_communicator.h"
#include "tensor/cuda/cuda.h"

namespace forge {

std::shared_ptr<Communicator> world_communicator_for(Device device) {
  if (device.is_cpu()) return world_communicator();
  // Made once per device and never destroyed: tearing NCCL down during exit would race the CUDA
  // runtime's own teardown. The process's end releases it.
  static std::mutex mu;
  static auto* made = new std::map<int, std::shared_ptr<Communicator>>;
  std::lock_guard<std::mutex> lock(mu);
  std::shared_ptr<Communicator>& c = (*made)[device.index];
  if (!c) c = nccl_communicator(world_communicator(), device.index);
  return c;
}

int local_cuda_device() {
  const int n = cuda::device_count();
  if (n == 0) return 0;
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* s = std::getenv(v)) return std::atoi(s) % n;
  return 0;
}

}  // namespace forge
