// A build without NCCL (no CUDA backend, or no libnccl found by meson): the NCCL communicator
// cannot be made, and saying so is all these do.
#include "parallel/nccl_communicator.h"

namespace forge {

bool nccl_built() {
  return false;
}

std::shared_ptr<Communicator> nccl_communicator(const std::shared_ptr<Communicator>&, int device) {
  throw_error(fmt::format(
      "nccl_communicator on cuda:{}: this build has no NCCL (it needs the CUDA backend and "
      "libnccl with nccl.h; see parallel/meson.build)",
      device));
}

}  // namespace forge
