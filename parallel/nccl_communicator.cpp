// The NCCL backend (parallel/nccl_communicator.h). Operations are enqueued by the calling thread
// on a stream of their own "lane" (collectives; point-to-point towards higher ranks; towards lower
// ranks: three NCCL communicators over the same ranks), after an event that orders them behind the
// device's compute stream. A completion thread per communicator polls each operation's end event,
// finishes its Work (dropping the tensors it kept alive) and, while anything is pending, asks NCCL
// for asynchronous errors.
#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "parallel/comm_internal.h"
#include "tensor/cuda/cuda.h"
#include "tensor/cuda/cuda_check.h"

// Every NCCL call goes through this: a failure throws naming the call, NCCL's error, its last
// message and where the call was made.
#define FORGE_NCCL_CHECK(call)                                                                   \
  do {                                                                                           \
    ncclResult_t forge_nccl_res_ = (call);                                                       \
    if (forge_nccl_res_ != ncclSuccess)                                                          \
      ::forge::throw_error(::fmt::format("NCCL error {} ({}; {}) in {} at {}:{}",                \
                                         int(forge_nccl_res_),                                   \
                                         ncclGetErrorString(forge_nccl_res_),                    \
                                         ncclGetLastError(nullptr), #call, __FILE__, __LINE__)); \
  } while (0)

namespace forge {

namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::bf16:
      return ncclBfloat16;
    case DType::f16:
      return ncclFloat16;
    case DType::i8:
      return ncclInt8;
    case DType::u8:
      return ncclUint8;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
  }
  throw_error(fmt::format("NCCL: dtype {} has no NCCL type", t));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return ncclSum;
    case ReduceOp::avg:
      return ncclAvg;
    case ReduceOp::max:
      return ncclMax;
  }
  return ncclSum;
}

// One NCCL communicator and the stream its operations run on.
struct Lane {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
};

// An operation in flight: its end event, the Work to finish, the tensors it uses (kept alive until
// the GPU is done with them) and what to count in the stats.
struct Pending {
  cudaEvent_t start = nullptr, end = nullptr;
  std::shared_ptr<Work::State> state;
  std::vector<Tensor> keep;
  CommStats::Entry CommStats::*which = nullptr;
  int64_t bytes = 0;
};

class NcclCommunicator final : public Communicator {
 public:
  // Takes over `comm` (a communicator of `device`) and makes the point-to-point lanes from it
  // (collective over its ranks).
  NcclCommunicator(ncclComm_t comm, int device) : device_(device) {
    coll_.comm = comm;
    try {
      FORGE_NCCL_CHECK(ncclCommUserRank(comm, &rank_));
      FORGE_NCCL_CHECK(ncclCommCount(comm, &size_));
      FORGE_CUDA_CHECK(cudaSetDevice(device_));
      FORGE_CUDA_CHECK(cudaStreamCreateWithFlags(&coll_.stream, cudaStreamNonBlocking));
      if (size_ > 1) {
        // Without shared resources: a shared communicator would also share NCCL's internal
        // stream, and the lanes' operations would queue behind one another again.
        ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
        config.splitShare = 0;
        for (Lane* lane : {&up_, &down_}) {
          FORGE_NCCL_CHECK(ncclCommSplit(comm, 0, rank_, &lane->comm, &config));
          FORGE_CUDA_CHECK(cudaStreamCreateWithFlags(&lane->stream, cudaStreamNonBlocking));
        }
      }
      if (size_ > 1) connect_lanes();
      barrier_buffer_ = Tensor::empty({1}, DType::f32, Device::cuda(device_));
      FORGE_CUDA_CHECK(cudaMemsetAsync(barrier_buffer_.raw_data(), 0, sizeof(float),
                                       static_cast<cudaStream_t>(cuda::stream_handle(device_))));
    } catch (...) {
      release(/*abort=*/true);
      throw;
    }
    completion_ = std::thread([this] { complete_loop(); });
  }

  ~NcclCommunicator() override {
    // Unwinding an error, peers may never match what is queued: abort instead of waiting.
    const bool abort = std::uncaught_exceptions() > 0;
    if (abort) abort_lanes("the communicator was destroyed while an error unwound");
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (completion_.joinable()) completion_.join();  // drains what is pending
    release(abort);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  Device device() const override { return Device::cuda(device_); }

  Work all_reduce_async(Tensor t, ReduceOp op) override {
    check(t, "all_reduce");
    check_reduce(t.dtype(), op, "all_reduce");
    return issue(
        coll_, &CommStats::all_reduce, int64_t(t.nbytes()), {t}, t.numel(), "all_reduce",
        [&](const Lane& l) {
          FORGE_NCCL_CHECK(ncclAllReduce(t.raw_data(), t.raw_data(), size_t(t.numel()),
                                         nccl_type(t.dtype()), nccl_op(op), l.comm, l.stream));
        });
  }

  Work all_gather_async(Tensor out, Tensor in) override {
    check(out, "all_gather");
    check(in, "all_gather");
    FORGE_CHECK(out.dtype() == in.dtype() && out.numel() == in.numel() * size_,
                "all_gather: the output has {} elements of {}, expected {} x {} of {}", out.numel(),
                out.dtype(), size_, in.numel(), in.dtype());
    return issue(coll_, &CommStats::all_gather, int64_t(out.nbytes()), {out, in}, in.numel(),
                 "all_gather", [&](const Lane& l) {
                   FORGE_NCCL_CHECK(ncclAllGather(in.raw_data(), out.raw_data(), size_t(in.numel()),
                                                  nccl_type(in.dtype()), l.comm, l.stream));
                 });
  }

  Work reduce_scatter_async(Tensor out, Tensor in, ReduceOp op) override {
    check(out, "reduce_scatter");
    check(in, "reduce_scatter");
    check_reduce(in.dtype(), op, "reduce_scatter");
    FORGE_CHECK(out.dtype() == in.dtype() && in.numel() == out.numel() * size_,
                "reduce_scatter: the input has {} elements of {}, expected {} x {} of {}",
                in.numel(), in.dtype(), size_, out.numel(), out.dtype());
    return issue(
        coll_, &CommStats::reduce_scatter, int64_t(in.nbytes()), {out, in}, out.numel(),
        "reduce_scatter", [&](const Lane& l) {
          FORGE_NCCL_CHECK(ncclReduceScatter(in.raw_data(), out.raw_data(), size_t(out.numel()),
                                             nccl_type(in.dtype()), nccl_op(op), l.comm, l.stream));
        });
  }

  Work broadcast_async(Tensor t, int root) override {
    check(t, "broadcast");
    check_peer(root, "broadcast root");
    return issue(coll_, &CommStats::broadcast, int64_t(t.nbytes()), {t}, t.numel(), "broadcast",
                 [&](const Lane& l) {
                   FORGE_NCCL_CHECK(ncclBroadcast(t.raw_data(), t.raw_data(), size_t(t.numel()),
                                                  nccl_type(t.dtype()), root, l.comm, l.stream));
                 });
  }

  Work barrier_async() override {
    Tensor b = barrier_buffer_;
    return issue(coll_, &CommStats::barrier, 0, {b}, 1, "barrier", [&](const Lane& l) {
      FORGE_NCCL_CHECK(
          ncclAllReduce(b.raw_data(), b.raw_data(), 1, ncclFloat32, ncclSum, l.comm, l.stream));
    });
  }

  // Tags are not carried: NCCL matches the transfers between two ranks in the order posted.
  Work send_async(Tensor t, int dst, int) override {
    check(t, "send");
    check_peer(dst, "send to");
    FORGE_CHECK(dst != rank_, "send to rank {}: the NCCL backend cannot send a rank to itself",
                dst);
    // Towards a higher rank on the `up` lane, where that rank receives from a lower one.
    return issue(dst > rank_ ? up_ : down_, &CommStats::send, int64_t(t.nbytes()), {t}, t.numel(),
                 "send", [&](const Lane& l) {
                   FORGE_NCCL_CHECK(ncclSend(t.raw_data(), size_t(t.numel()), nccl_type(t.dtype()),
                                             dst, l.comm, l.stream));
                 });
  }

  Work recv_async(Tensor t, int src, int) override {
    check(t, "recv");
    check_peer(src, "recv from");
    FORGE_CHECK(src != rank_, "recv from rank {}: the NCCL backend cannot receive from itself",
                src);
    return issue(src < rank_ ? up_ : down_, &CommStats::recv, int64_t(t.nbytes()), {t}, t.numel(),
                 "recv", [&](const Lane& l) {
                   FORGE_NCCL_CHECK(ncclRecv(t.raw_data(), size_t(t.numel()), nccl_type(t.dtype()),
                                             src, l.comm, l.stream));
                 });
  }

  std::shared_ptr<Communicator> split(int color, int key) override {
    ncclComm_t sub = nullptr;
    {
      std::lock_guard<std::mutex> lock(issue_mu_);
      throw_if_failed("split");
      FORGE_CUDA_CHECK(cudaSetDevice(device_));
      cuda::allocator(device_).empty_cache();  // NCCL allocates its buffers with cudaMalloc
      FORGE_NCCL_CHECK(
          ncclCommSplit(coll_.comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, nullptr));
    }
    if (sub == nullptr) return nullptr;
    return std::make_shared<NcclCommunicator>(sub, device_);
  }

  CommStats stats() const override { return counters_.get(); }

 private:
  void check(const Tensor& t, const char* op) const {
    check_comm_tensor(t, op, Device::cuda(device_));
  }

  void check_peer(int r, const char* what) const {
    FORGE_CHECK(r >= 0 && r < size_, "{} rank {}: the communicator has ranks 0..{}", what, r,
                size_ - 1);
  }

  void throw_if_failed(const char* op) const {
    FORGE_CHECK(failed_.empty(), "{} on rank {}: the NCCL communicator was aborted after: {}", op,
                rank_, failed_);
  }

  // Makes `lane` wait for the work queued so far on the device's stream (which produced the
  // tensors, or last used the memory the allocator hands out again).
  void after_compute(const Lane& lane) {
    FORGE_CUDA_CHECK(cudaSetDevice(device_));
    cudaEvent_t ready = nullptr;
    FORGE_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    auto compute = static_cast<cudaStream_t>(cuda::stream_handle(device_));
    cudaError_t e = cudaEventRecord(ready, compute);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(lane.stream, ready, 0);
    cudaEventDestroy(ready);  // released once the wait is satisfied
    FORGE_CUDA_CHECK(e);
  }

  // NCCL connects two ranks on their first transfer, and that first call blocks the host until
  // the peer makes its matching one: a rank sending up while its peer sends down would wait for
  // each other forever. So every pair a lane will carry is connected here, at once, by one group
  // of 1-byte transfers (collective over the ranks, as the constructor is).
  void connect_lanes() {
    Tensor bytes = Tensor::empty({int64_t(size_)}, DType::u8, Device::cuda(device_));
    auto* b = static_cast<uint8_t*>(bytes.raw_data());
    for (Lane* lane : {&up_, &down_}) {
      const bool up = lane == &up_;
      after_compute(*lane);
      FORGE_NCCL_CHECK(ncclGroupStart());
      for (int q = 0; q < size_; ++q) {
        if (q == rank_) continue;
        if ((q > rank_) == up)  // a transfer towards q goes this way
          FORGE_NCCL_CHECK(ncclSend(b + rank_, 1, ncclUint8, q, lane->comm, lane->stream));
        else
          FORGE_NCCL_CHECK(ncclRecv(b + q, 1, ncclUint8, q, lane->comm, lane->stream));
      }
      FORGE_NCCL_CHECK(ncclGroupEnd());
      FORGE_CUDA_CHECK(cudaStreamSynchronize(lane->stream));  // before `bytes` is freed
    }
  }

  // Enqueues `call` on `lane` behind the device's stream, between two events, and hands the
  // operation to the completion thread. With no elements nothing is enqueued (every rank of the
  // operation sees the same count, so all skip it).
  template <class Call>
  Work issue(const Lane& lane, CommStats::Entry CommStats::*which, int64_t bytes,
             std::vector<Tensor> keep, int64_t count, const char* op, Call call) {
    if (count == 0) {
      counters_.add(which, bytes, 0);
      return Work();
    }
    auto p = std::make_unique<Pending>();
    p->state = std::make_shared<Work::State>();
    p->keep = std::move(keep);
    p->which = which;
    p->bytes = bytes;
    {
      std::lock_guard<std::mutex> lock(issue_mu_);
      throw_if_failed(op);
      after_compute(lane);
      FORGE_CUDA_CHECK(cudaEventCreate(&p->start));
      cudaError_t e = cudaEventCreate(&p->end);
      if (e != cudaSuccess) cudaEventDestroy(p->start);
      FORGE_CUDA_CHECK(e);
      try {
        FORGE_CUDA_CHECK(cudaEventRecord(p->start, lane.stream));
        call(lane);
        FORGE_CUDA_CHECK(cudaEventRecord(p->end, lane.stream));
      } catch (...) {
        cudaEventDestroy(p->start);
        cudaEventDestroy(p->end);
        throw;
      }
    }
    Work w(p->state);
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.push_back(std::move(p));
    }
    cv_.notify_one();
    return w;
  }

  // The completion thread: finishes each operation when its end event has completed; while some
  // are pending, polls every ~20 us and checks the lanes for NCCL's asynchronous errors. On
  // stopping, returns once nothing is pending.
  void complete_loop() {
    (void)cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
      if (pending_.empty()) return;  // stopping, and nothing left
      std::vector<std::unique_ptr<Pending>> done, left;
      for (auto& p : pending_)
        (cudaEventQuery(p->end) == cudaErrorNotReady ? left : done).push_back(std::move(p));
      pending_ = std::move(left);
      const bool more = !pending_.empty();
      lock.unlock();
      for (auto& p : done) finish(*p);
      done.clear();  // the tensors go back to the allocator
      if (more) {
        std::string error = async_error();
        if (!error.empty()) abort_lanes(error);  // the pending events then complete
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
      lock.lock();
    }
  }

  // Counts a completed operation and finishes its Work with the error of the CUDA stream or of
  // the aborted communicator, if any.
  void finish(Pending& p) {
    std::exception_ptr error;
    try {
      FORGE_CUDA_CHECK(cudaEventSynchronize(p.end));
      float ms = 0;
      FORGE_CUDA_CHECK(cudaEventElapsedTime(&ms, p.start, p.end));
      {
        std::lock_guard<std::mutex> lock(issue_mu_);
        throw_if_failed("an operation in flight");
      }
      counters_.add(p.which, p.bytes, double(ms) / 1000);
    } catch (...) {
      error = std::current_exception();
    }
    cudaEventDestroy(p.start);
    cudaEventDestroy(p.end);
    p.state->finish(error);
  }

  // NCCL's asynchronous error on any lane, as text; "" when there is none.
  std::string async_error() {
    std::lock_guard<std::mutex> lock(issue_mu_);
    if (!failed_.empty()) return "";
    for (const Lane* lane : {&coll_, &up_, &down_}) {
      if (lane->comm == nullptr) continue;
      ncclResult_t r = ncclSuccess;
      ncclResult_t q = ncclCommGetAsyncError(lane->comm, &r);
      if (q != ncclSuccess) r = q;
      if (r != ncclSuccess && r != ncclInProgress)
        return fmt::format("rank {}: NCCL asynchronous error {} ({}; {})", rank_, int(r),
                           ncclGetErrorString(r), ncclGetLastError(lane->comm));
    }
    return "";
  }

  // Aborts every lane (their queued operations end) and fails every later call with `why`.
  void abort_lanes(const std::string& why) {
    std::lock_guard<std::mutex> lock(issue_mu_);
    if (!failed_.empty()) return;
    failed_ = why;
    for (Lane* lane : {&coll_, &up_, &down_}) {
      if (lane->comm != nullptr) ncclCommAbort(lane->comm);
      lane->comm = nullptr;
    }
  }

  // Frees the lanes (aborting the communicators when asked) and their streams.
  void release(bool abort) {
    for (Lane* lane : {&down_, &up_, &coll_}) {  // those split off first
      if (lane->comm != nullptr) {
        if (abort)
          ncclCommAbort(lane->comm);
        else
          ncclCommDestroy(lane->comm);
        lane->comm = nullptr;
      }
      if (lane->stream != nullptr) cudaStreamDestroy(lane->stream);
      lane->stream = nullptr;
    }
  }

  int device_;
  int rank_ = 0, size_ = 1;
  Lane coll_, up_, down_;  // up_ and down_ only with more than one rank
  Tensor barrier_buffer_;
  CommCounters counters_;

  std::mutex issue_mu_;  // enqueueing, and aborting the lanes; guards failed_ and the comms
  std::string failed_;   // why the lanes were aborted; "" while they work

  std::mutex mu_;  // guards pending_ and stopping_
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Pending>> pending_;
  bool stopping_ = false;
  std::thread completion_;
};

}  // namespace

bool nccl_built() {
  return true;
}

std::shared_ptr<Communicator> nccl_communicator(const std::shared_ptr<Communicator>& mpi_world,
                                                int device) {
  FORGE_CHECK(mpi_world != nullptr, "nccl_communicator: no communicator to start from");
  const int rank = mpi_world->rank();
  // Every rank checks its GPU, then all agree, so that none is left waiting for the others.
  const int n = cuda::device_count();
  std::string problem;
  if (n == 0)
    problem = fmt::format("no GPU ({})", cuda::unavailable_reason());
  else if (device < 0 || device >= n)
    problem = fmt::format("no GPU cuda:{} (this machine has cuda:0..cuda:{})", device, n - 1);
  Tensor failed = from_vector<int32_t>({problem.empty() ? 0 : 1});
  mpi_world->all_reduce(failed, ReduceOp::max);
  FORGE_CHECK(problem.empty(), "nccl_communicator on rank {}: {}", rank, problem);
  FORGE_CHECK(failed.item() == 0, "nccl_communicator on rank {}: another rank has no usable GPU",
              rank);

  // Rank 0's unique id, broadcast as bytes through the CPU communicator; the last byte says
  // whether rank 0 could make one.
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  std::string id_error;
  if (rank == 0) {
    try {
      FORGE_NCCL_CHECK(ncclGetUniqueId(&id));
    } catch (const std::exception& e) {
      id_error = e.what();
    }
  }
  Tensor bytes = Tensor::empty({int64_t(sizeof(id)) + 1}, DType::u8);
  auto* b = static_cast<uint8_t*>(bytes.raw_data());
  std::memcpy(b, &id, sizeof(id));
  b[sizeof(id)] = id_error.empty() ? 1 : 0;
  mpi_world->broadcast(bytes, 0);
  FORGE_CHECK(id_error.empty(), "nccl_communicator on rank 0: {}", id_error);
  FORGE_CHECK(b[sizeof(id)] == 1, "nccl_communicator on rank {}: rank 0 could not make NCCL's id",
              rank);
  std::memcpy(&id, b, sizeof(id));

  FORGE_CUDA_CHECK(cudaSetDevice(device));
  // NCCL allocates its buffers with cudaMalloc, outside our cache: hand the cached blocks back.
  cuda::allocator(device).empty_cache();
  ncclComm_t comm = nullptr;
  FORGE_NCCL_CHECK(ncclCommInitRank(&comm, mpi_world->size(), id, rank));
  return std::make_shared<NcclCommunicator>(comm, device);
}

}  // namespace forge
