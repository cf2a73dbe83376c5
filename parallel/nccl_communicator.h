// The NCCL backend of the Communicator: the same collectives on tensors of one CUDA device, so
// DDP, tensor and pipeline parallelism run on GPUs through the interface they already use.
//
//   auto world = world_communicator_for(Device::cuda(local_cuda_device()));  // NCCL over MPI
//   world->all_reduce(grad_on_gpu, ReduceOp::avg);
//
// How a run picks it: world_communicator_for(device) gives the MPI (or single-process) world for
// the CPU and, for a CUDA device, an NCCL communicator over the same ranks, made once per device
// and kept. Each rank uses one GPU, and no two ranks of a communicator may share one (NCCL
// refuses): local_cuda_device() is the usual choice, the rank's index on its node.
//
// Making one (collective over `mpi_world`): rank 0 makes NCCL's unique id, the others receive it
// through mpi_world->broadcast, and every rank joins with ncclCommInitRank on `device`.
//
// Semantics as in communicator.h, with these differences:
//  - Tensors are contiguous tensors on the communicator's device (a CPU tensor is an error naming
//    the op); bf16 and f16 are reduced by NCCL itself, avg is ncclAvg (for floating dtypes NCCL
//    scales each input by 1/size before summing, so an average may differ from the MPI backend's
//    sum-then-divide in the last bit).
//  - Operations run on NCCL's own streams; each first waits for the work already queued on the
//    device's stream (cuda::stream_handle), so a tensor computed just before is complete. wait()
//    blocks the host until the operation is complete on the GPU and rethrows its error, including
//    NCCL's asynchronous errors (a peer gone, a network failure: the communicator is then aborted
//    and every later call throws). Until it returns, the operation keeps its tensors alive.
//  - Point-to-point: tags are not carried; messages between two ranks match in the order they
//    were posted (as the pipeline's do). Transfers towards higher ranks and towards lower ranks
//    travel on two separate NCCL communicators (and streams), so a pipeline's activations going
//    forward never queue behind its gradients going back; within one direction, transfers
//    complete in the order they were posted. A rank cannot send to itself.
//  - barrier() is an all-reduce of one element: it returns when every rank has reached it.
//
// In a build without NCCL (no CUDA, or no libnccl) nccl_built() is false and making one throws
// saying so; world_communicator_for(Device::cpu()) works in every build.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace forge {

// This build has the NCCL backend.
bool nccl_built();

// An NCCL communicator over the ranks of `mpi_world` (collective over it), on GPU `device`.
std::shared_ptr<Communicator> nccl_communicator(const std::shared_ptr<Communicator>& mpi_world,
                                                int device);

// The world communicator of tensors on `device` (see above); made on first use, then the same.
std::shared_ptr<Communicator> world_communicator_for(Device device);

// This rank's GPU: its rank on its node (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID or
// SLURM_LOCALID; 0 without a launcher) modulo the number of GPUs (0 without any).
int local_cuda_device();

}  // namespace forge
