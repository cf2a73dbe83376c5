// Collective and point-to-point communication between ranks: the one interface the parallel
// layers use (they never call MPI or NCCL themselves).
//
//   std::shared_ptr<Communicator> world = world_communicator();  // MPI under mpirun, else 1 rank
//   world->all_reduce(grad, ReduceOp::avg);                      // in place, blocking
//   Work w = world->all_reduce_async(bucket, ReduceOp::avg);     // returns at once
//   ...                                                          // compute goes on
//   w.wait();                                                    // the bucket holds the average
//   auto tp = world->split(/*color=*/rank / 2, /*key=*/rank);    // a group of ranks
//
// Tensors are contiguous CPU tensors (GPU ones for NCCL) of one dtype: f32, f64, bf16, f16, i8,
// u8, i32, i64; avg needs a floating dtype, sum and max take any. 16-bit floats are summed in f32
// and rounded once per pairwise reduction, as NCCL does. Where a max meets a NaN, the result may or
// may not be NaN depending on the path (MPI's own MPI_MAX drops it in some operand orders).
// Collectives must be called in the same order on every rank of a communicator; an asynchronous
// call's tensor must not be touched until its wait returns.
//
// Backends: MPI (`mpirun -np N ...`; collectives run on one worker thread per communicator, so an
// asynchronous all-reduce progresses while the caller computes; large f32 all-reduces among ranks
// of one node go through a shared-memory window, 2-3x faster than OpenMPI's own, unless
// FORGE_COMM_SHM=0) and a single-process one (size 1: reductions are the identity; send and recv
// have no peer). NCCL, for tensors on GPUs, comes with the CUDA backend:
// parallel/nccl_communicator.h.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "tensor/tensor.h"

namespace forge {

enum class ReduceOp { sum, avg, max };
const char* reduce_op_name(ReduceOp op);

// What a communicator has done since it was made: calls, bytes, and seconds spent inside the
// operation itself (on the worker for asynchronous ones), per kind. Bytes are the payload each
// call was given (for all_gather / reduce_scatter: the full, gathered size).
struct CommStats {
  struct Entry {
    int64_t calls = 0;
    int64_t bytes = 0;
    double seconds = 0;
  };
  Entry all_reduce, all_gather, reduce_scatter, broadcast, send, recv, barrier;
};

// The completion of an asynchronous operation. wait() blocks until it is done and rethrows its
// error; waiting twice is fine. A default Work is already done.
class Work {
 public:
  struct State;
  Work() = default;
  explicit Work(std::shared_ptr<State> s) : state_(std::move(s)) {}
  void wait();
  bool done() const;

 private:
  std::shared_ptr<State> state_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;
  // Where this communicator's tensors live: the CPU for MPI and the single process, the GPU of an
  // NCCL communicator. Code that makes buffers to send (DDP buckets, pipeline receives, flags)
  // makes them here.
  virtual Device device() const { return Device::cpu(); }

  // In place on every rank.
  virtual Work all_reduce_async(Tensor t, ReduceOp op) = 0;
  // out holds size() * in.numel() elements: rank r's `in` at [r * n, (r+1) * n).
  virtual Work all_gather_async(Tensor out, Tensor in) = 0;
  // in holds size() * out.numel() elements; rank r receives the reduction of chunk r.
  virtual Work reduce_scatter_async(Tensor out, Tensor in, ReduceOp op) = 0;
  virtual Work broadcast_async(Tensor t, int root) = 0;
  virtual Work send_async(Tensor t, int dst, int tag = 0) = 0;
  virtual Work recv_async(Tensor t, int src, int tag = 0) = 0;
  virtual Work barrier_async() = 0;

  void all_reduce(Tensor t, ReduceOp op = ReduceOp::sum) { all_reduce_async(t, op).wait(); }
  void all_gather(Tensor out, Tensor in) { all_gather_async(out, in).wait(); }
  void reduce_scatter(Tensor out, Tensor in, ReduceOp op = ReduceOp::sum) {
    reduce_scatter_async(out, in, op).wait();
  }
  void broadcast(Tensor t, int root = 0) { broadcast_async(t, root).wait(); }
  void send(Tensor t, int dst, int tag = 0) { send_async(t, dst, tag).wait(); }
  void recv(Tensor t, int src, int tag = 0) { recv_async(t, src, tag).wait(); }
  void barrier() { barrier_async().wait(); }

  // A communicator per color, ranks ordered by key (collective over this communicator). A
  // negative color takes part in no group and gets nullptr.
  virtual std::shared_ptr<Communicator> split(int color, int key) = 0;

  virtual CommStats stats() const = 0;
};

// The world: MPI when the process was started by mpirun (or another MPI launcher), else a
// single-process communicator. Initialises MPI on first use; MPI is finalised at exit.
std::shared_ptr<Communicator> world_communicator();
// A fresh one-rank communicator (tests, and runs without mpirun).
std::shared_ptr<Communicator> single_process_communicator();
// True when this process was started by an MPI launcher.
bool launched_by_mpi();

// Ends every process of the job with `code` after printing `message` on this one: what a rank
// does when it fails, so that the others do not wait for it forever. Without MPI, plain exit.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

// Checks shared by the backends: defined, contiguous, on the backend's device (the CPU for MPI and
// the single-process one, its GPU for NCCL); names the op.
void check_comm_tensor(const Tensor& t, const char* op, Device device = Device::cpu());
void check_reduce(DType dtype, ReduceOp op, const char* what);

}  // namespace forge
