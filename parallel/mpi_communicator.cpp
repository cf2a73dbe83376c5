// The MPI backend. MPI is initialised with MPI_THREAD_MULTIPLE: each communicator runs its
// collectives on its own worker thread (blocking MPI calls there, so an asynchronous all-reduce
// progresses while the caller computes, which MPI's nonblocking collectives would not do without
// the caller polling), and point-to-point transfers are MPI_Isend / MPI_Irecv driven to completion
// by a progress thread (P2pProgress).
// The C API only: the deprecated C++ bindings would come in otherwise (and warn).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "parallel/comm_internal.h"
#include "tensor/ops.h"

namespace forge {

namespace {

void mpi_check(int code, const char* op, int rank) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw_error(fmt::format("rank {}: MPI {} failed: {}", rank, op, std::string(text, size_t(len))));
}

// 16-bit floats travel as MPI_UINT16_T; their reductions decode to f32, combine, and round back.
template <class H, bool Max>
void reduce16(void* in, void* inout, int* len, MPI_Datatype*) {
  const H* a = static_cast<const H*>(in);
  H* b = static_cast<H*>(inout);
  for (int i = 0; i < *len; ++i) {
    float x = float(a[i]), y = float(b[i]);
    b[i] = H(Max ? (x > y || x != x ? x : y) : x + y);
  }
}

struct MpiOps {
  MPI_Op sum_bf16, max_bf16, sum_f16, max_f16;
};
MpiOps g_ops;

// Drives point-to-point transfers to completion in the background. A message larger than MPI's
// eager limit (4 KB in OpenMPI's shared-memory transport) moves only while its sender and receiver
// are inside MPI: a pipeline stage that posts a send and goes on computing would otherwise hold its
// neighbour up until its own next MPI call (GPipe ran its stages one after the other). While
// transfers are pending this thread tests them every ~50 us, and finishes each Work as its request
// completes; it sleeps when there are none. It alone tests the requests it was given.
class P2pProgress {
 public:
  ~P2pProgress() { stop(/*drain=*/true); }

  // Takes over `request`: when it completes, runs on_done and finishes `state`.
  void add(MPI_Request request, std::shared_ptr<Work::State> state, std::function<void()> on_done,
           const char* op, int rank) {
    std::lock_guard<std::mutex> lock(mu_);
    FORGE_CHECK(!stopping_, "rank {}: MPI {} after the communicator was shut down", rank, op);
    pending_.push_back({request, std::move(state), std::move(on_done), op, rank});
    if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
    cv_.notify_one();
  }

  // With drain, returns once every transfer is complete; without (a rank unwinding an error, whose
  // peers may be gone), abandons them.
  void stop(bool drain) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      abandon_ = !drain;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

 private:
  struct Entry {
    MPI_Request request;
    std::shared_ptr<Work::State> state;
    std::function<void()> on_done;
    const char* op;
    int rank;
  };

  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
      if (abandon_ || (stopping_ && pending_.empty())) return;
      std::erase_if(pending_, [](Entry& e) {
        int flag = 0;
        std::exception_ptr error;
        try {
          mpi_check(MPI_Test(&e.request, &flag, MPI_STATUS_IGNORE), e.op, e.rank);
          if (!flag) return false;
          e.on_done();
        } catch (...) {
          error = std::current_exception();
        }
        e.state->finish(error);
        return true;
      });
      if (!pending_.empty()) {
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::microseconds(50));
        lock.lock();
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Entry> pending_;
  bool stopping_ = false, abandon_ = false;
  std::thread thread_;
};

// Live communicators, stopped (their workers joined, their MPI_Comm freed) before MPI_Finalize.
class MpiCommunicator;
std::mutex g_live_mu;
std::vector<MpiCommunicator*> g_live;

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::bf16:
    case DType::f16:
      return MPI_UINT16_T;
    case DType::i8:
      return MPI_INT8_T;
    case DType::u8:
      return MPI_UINT8_T;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(DType t, ReduceOp op) {
  const bool max = op == ReduceOp::max;  // avg is a sum, then a division
  if (t == DType::bf16) return max ? g_ops.max_bf16 : g_ops.sum_bf16;
  if (t == DType::f16) return max ? g_ops.max_f16 : g_ops.sum_f16;
  return max ? MPI_MAX : MPI_SUM;
}

int count_of(const Tensor& t, const char* op) {
  FORGE_CHECK(t.numel() <= int64_t(INT32_MAX), "{}: {} elements is more than MPI's int count", op,
              t.numel());
  return int(t.numel());
}

// The f32 collectives of ranks that share a node, through a shared-memory window instead of
// MPI's message pipeline. All-reduce: every rank copies its piece into its slot; each reduces 1/R
// of the piece across all slots, in rank order, in place in its own slot; each copies the R
// reduced parts out. Per rank that moves about 4 bytes per byte reduced, where OpenMPI's
// shared-memory transport copies each fragment in and out of a queue per step of its algorithm:
// 2-3x faster for large buffers here, and CPU time matters when communication shares the cores
// with compute. Reduce-scatter is the first half of that (each rank's part stays with it),
// all-gather the second (each rank's part copied in, all copied out). Pieces of kSlotBytes; two
// or three barriers per piece. Built on first use (collective).
class NodeCollectives {
 public:
  static constexpr int64_t kSlotBytes = int64_t(8) << 20;
  static constexpr int64_t kMinBytes = int64_t(64) << 10;  // below, MPI's latency is better

  // Null when the ranks of `comm` do not all share one node or the window cannot be had.
  static std::unique_ptr<NodeCollectives> make(MPI_Comm comm, int size) {
    MPI_Comm node = MPI_COMM_NULL;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS)
      return nullptr;
    int node_size = 0;
    MPI_Comm_size(node, &node_size);
    // Every rank must take the same decision: agree on it.
    int ok = node_size == size ? 1 : 0, all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm);
    if (!all) {
      MPI_Comm_free(&node);
      return nullptr;
    }
    auto r = std::unique_ptr<NodeCollectives>(new NodeCollectives);
    r->node_ = node;
    MPI_Comm_set_errhandler(node, MPI_ERRORS_RETURN);
    MPI_Comm_rank(node, &r->rank_);
    r->size_ = node_size;
    void* base = nullptr;
    ok = MPI_Win_allocate_shared(kSlotBytes, 1, MPI_INFO_NULL, node, &base, &r->win_) == MPI_SUCCESS
             ? 1
             : 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm);
    if (!all) {
      if (ok) MPI_Win_free(&r->win_);
      MPI_Comm_free(&r->node_);
      return nullptr;
    }
    MPI_Win_lock_all(MPI_MODE_NOCHECK, r->win_);
    for (int i = 0; i < node_size; ++i) {
      MPI_Aint bytes = 0;
      int disp = 0;
      void* p = nullptr;
      MPI_Win_shared_query(r->win_, i, &bytes, &disp, &p);
      r->slots_.push_back(static_cast<float*>(p));
    }
    return r;
  }

  ~NodeCollectives() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    // Freeing the window is collective (a barrier). While an exception unwinds this rank, the
    // others are elsewhere (waiting in the next step's all-reduce): freeing would hang the job
    // instead of letting the error end it. Leave the window to MPI_Abort or MPI_Finalize.
    if (finalized || std::uncaught_exceptions() > 0) return;
    MPI_Win_unlock_all(win_);
    MPI_Win_free(&win_);
    MPI_Comm_free(&node_);
  }

  // x[0, n) <- the sum (or max) over ranks, times `scale`.
  void run(float* x, int64_t n, bool max, float scale) {
    const int64_t piece = kSlotBytes / int64_t(sizeof(float));
    const int R = size_;
    for (int64_t o = 0; o < n; o += piece) {
      const int64_t m = std::min(piece, n - o);
      std::memcpy(slots_[size_t(rank_)], x + o, size_t(m) * sizeof(float));
      sync();
      // My part [b, e) of the piece, reduced across the slots in rank order.
      const int64_t b = m * rank_ / R, e = m * (rank_ + 1) / R;
      float* mine = slots_[size_t(rank_)];
      reduce_part(mine + b, b, e - b, max, scale);
      sync();
      for (int r = 0; r < R; ++r) {
        const int64_t rb = m * r / R, re = m * (r + 1) / R;
        std::memcpy(x + o + rb, slots_[size_t(r)] + rb, size_t(re - rb) * sizeof(float));
      }
      sync();  // before the slots are written again
    }
  }

  // out[0, n) <- this rank's part of the reduction of in[0, R n): the sum (or max) over ranks of
  // in[rank n, (rank + 1) n), times `scale`. Per piece of m elements of a part, every rank puts
  // its R parts' pieces side by side in its slot; each reduces its own across the slots.
  void reduce_scatter(const float* in, float* out, int64_t n, bool max, float scale) {
    const int R = size_;
    const int64_t piece = kSlotBytes / int64_t(sizeof(float)) / R;
    for (int64_t o = 0; o < n; o += piece) {
      const int64_t m = std::min(piece, n - o);
      for (int r = 0; r < R; ++r)
        std::memcpy(slots_[size_t(rank_)] + r * m, in + r * n + o, size_t(m) * sizeof(float));
      sync();
      reduce_part(out + o, rank_ * m, m, max, scale);
      sync();  // before the slots are written again
    }
  }

  // out[0, R n) <- every rank's in[0, n), in rank order.
  void all_gather(const float* in, float* out, int64_t n) {
    const int64_t piece = kSlotBytes / int64_t(sizeof(float));
    for (int64_t o = 0; o < n; o += piece) {
      const int64_t m = std::min(piece, n - o);
      std::memcpy(slots_[size_t(rank_)], in + o, size_t(m) * sizeof(float));
      sync();
      for (int r = 0; r < size_; ++r)
        std::memcpy(out + r * n + o, slots_[size_t(r)], size_t(m) * sizeof(float));
      sync();
    }
  }

 private:
  NodeCollectives() = default;

  // out[i] = op over r of slots_[r][at + i], r = 0..R-1, times scale (out aliases this rank's
  // slot). In blocks that stay in L1, so each slot is read once.
  void reduce_part(float* out, int64_t at, int64_t len, bool max, float scale) {
    constexpr int64_t kBlock = 1024;
    float acc[kBlock];
    for (int64_t b = 0; b < len; b += kBlock) {
      const int64_t k = std::min(kBlock, len - b);
      std::memcpy(acc, slots_[0] + at + b, size_t(k) * sizeof(float));
      for (int r = 1; r < size_; ++r) {
        const float* s = slots_[size_t(r)] + at + b;
        if (max) {
          for (int64_t i = 0; i < k; ++i) acc[i] = s[i] > acc[i] || s[i] != s[i] ? s[i] : acc[i];
        } else {
          for (int64_t i = 0; i < k; ++i) acc[i] += s[i];
        }
      }
      for (int64_t i = 0; i < k; ++i) out[b + i] = acc[i] * scale;
    }
  }

  // Everyone's writes to the window visible to everyone.
  void sync() {
    MPI_Win_sync(win_);
    MPI_Barrier(node_);
    MPI_Win_sync(win_);
  }

  MPI_Comm node_ = MPI_COMM_NULL;
  MPI_Win win_ = MPI_WIN_NULL;
  int rank_ = 0, size_ = 1;
  std::vector<float*> slots_;
};

// FORGE_COMM_SHM=0 sends every collective through MPI (to compare, or where shared windows fail).
bool node_all_reduce_allowed() {
  const char* v = std::getenv("FORGE_COMM_SHM");
  return v == nullptr || std::string(v) != "0";
}

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
    std::lock_guard<std::mutex> lock(g_live_mu);
    g_live.push_back(this);
  }
  ~MpiCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(g_live_mu);
      std::erase(g_live, this);
    }
    shut_down();
  }

  // Joins the worker and frees the MPI communicator (before MPI_Finalize, or at destruction).
  void shut_down() {
    p2p_progress_.stop(/*drain=*/std::uncaught_exceptions() == 0);
    worker_.stop();
    node_shm_.reset();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    comm_ = MPI_COMM_NULL;
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  Work all_reduce_async(Tensor t, ReduceOp op) override {
    check_comm_tensor(t, "all_reduce");
    check_reduce(t.dtype(), op, "all_reduce");
    int n = count_of(t, "all_reduce");
    return post(&CommStats::all_reduce, int64_t(t.nbytes()), [this, t, op, n]() mutable {
      if (use_shm(t)) {
        node_shm_->run(static_cast<float*>(t.raw_data()), t.numel(), op == ReduceOp::max,
                       op == ReduceOp::avg ? 1.0f / float(size_) : 1.0f);
        return;
      }
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, t.raw_data(), n, mpi_type(t.dtype()),
                              mpi_op(t.dtype(), op), comm_),
                "all_reduce", world_rank_);
      if (op == ReduceOp::avg && size_ > 1) mul_(t, 1.0 / double(size_));
    });
  }

  Work all_gather_async(Tensor out, Tensor in) override {
    check_comm_tensor(out, "all_gather");
    check_comm_tensor(in, "all_gather");
    FORGE_CHECK(out.dtype() == in.dtype() && out.numel() == in.numel() * size_,
                "all_gather: the output has {} elements of {}, expected {} x {} of {}", out.numel(),
                out.dtype(), size_, in.numel(), in.dtype());
    int n = count_of(in, "all_gather");
    count_of(out, "all_gather");
    return post(&CommStats::all_gather, int64_t(out.nbytes()), [this, out, in, n] {
      if (use_shm(out)) {
        node_shm_->all_gather(static_cast<const float*>(in.raw_data()),
                              static_cast<float*>(out.raw_data()), in.numel());
        return;
      }
      MPI_Datatype dt = mpi_type(in.dtype());
      mpi_check(MPI_Allgather(in.raw_data(), n, dt, out.raw_data(), n, dt, comm_), "all_gather",
                world_rank_);
    });
  }

  Work reduce_scatter_async(Tensor out, Tensor in, ReduceOp op) override {
    check_comm_tensor(out, "reduce_scatter");
    check_comm_tensor(in, "reduce_scatter");
    check_reduce(in.dtype(), op, "reduce_scatter");
    FORGE_CHECK(out.dtype() == in.dtype() && in.numel() == out.numel() * size_,
                "reduce_scatter: the input has {} elements of {}, expected {} x {} of {}",
                in.numel(), in.dtype(), size_, out.numel(), out.dtype());
    int n = count_of(out, "reduce_scatter");
    count_of(in, "reduce_scatter");
    return post(&CommStats::reduce_scatter, int64_t(in.nbytes()), [this, out, in, op, n]() mutable {
      if (use_shm(in)) {
        node_shm_->reduce_scatter(
            static_cast<const float*>(in.raw_data()), static_cast<float*>(out.raw_data()),
            out.numel(), op == ReduceOp::max, op == ReduceOp::avg ? 1.0f / float(size_) : 1.0f);
        return;
      }
      mpi_check(MPI_Reduce_scatter_block(in.raw_data(), out.raw_data(), n, mpi_type(in.dtype()),
                                         mpi_op(in.dtype(), op), comm_),
                "reduce_scatter", world_rank_);
      if (op == ReduceOp::avg && size_ > 1) mul_(out, 1.0 / double(size_));
    });
  }

  Work broadcast_async(Tensor t, int root) override {
    check_comm_tensor(t, "broadcast");
    check_peer(root, "broadcast root");
    int n = count_of(t, "broadcast");
    return post(&CommStats::broadcast, int64_t(t.nbytes()), [this, t, root, n] {
      mpi_check(MPI_Bcast(t.raw_data(), n, mpi_type(t.dtype()), root, comm_), "broadcast",
                world_rank_);
    });
  }

  Work barrier_async() override {
    return post(&CommStats::barrier, 0,
                [this] { mpi_check(MPI_Barrier(comm_), "barrier", world_rank_); });
  }

  Work send_async(Tensor t, int dst, int tag) override {
    check_comm_tensor(t, "send");
    check_peer(dst, "send to");
    return p2p(
        &CommStats::send, t,
        [&](MPI_Request* r) {
          return MPI_Isend(t.raw_data(), count_of(t, "send"), mpi_type(t.dtype()), dst, tag, comm_,
                           r);
        },
        "send");
  }

  Work recv_async(Tensor t, int src, int tag) override {
    check_comm_tensor(t, "recv");
    check_peer(src, "recv from");
    return p2p(
        &CommStats::recv, t,
        [&](MPI_Request* r) {
          return MPI_Irecv(t.raw_data(), count_of(t, "recv"), mpi_type(t.dtype()), src, tag, comm_,
                           r);
        },
        "recv");
  }

  std::shared_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    // Collective on this communicator: ordered with its other collectives on the worker.
    worker_
        .post([&] {
          mpi_check(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub), "split",
                    world_rank_);
        })
        .wait();
    if (sub == MPI_COMM_NULL) return nullptr;
    return std::make_shared<MpiCommunicator>(sub);
  }

  CommStats stats() const override { return counters_.get(); }

 private:
  void check_peer(int r, const char* what) const {
    FORGE_CHECK(r >= 0 && r < size_, "{} rank {}: the communicator has ranks 0..{}", what, r,
                size_ - 1);
  }

  Work post(CommStats::Entry CommStats::*which, int64_t bytes, std::function<void()> fn) {
    return worker_.post([this, which, bytes, fn = std::move(fn)] {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      counters_.add(which, bytes, seconds_since(t0));
    });
  }

  template <class Start>
  // The progress thread keeps every transfer (and its tensor) until it is complete, so that
  // dropping a Work without waiting cannot free a tensor MPI still writes into; shut_down()
  // completes them.
  Work p2p(CommStats::Entry CommStats::*which, const Tensor& t, Start start, const char* op) {
    auto s = std::make_shared<Work::State>();
    MPI_Request request = MPI_REQUEST_NULL;
    mpi_check(start(&request), op, world_rank_);
    auto t0 = std::chrono::steady_clock::now();
    int64_t bytes = int64_t(t.nbytes());
    // The lambda keeps the tensor alive until the transfer is done.
    p2p_progress_.add(
        request, s, [this, t, which, bytes, t0] { counters_.add(which, bytes, seconds_since(t0)); },
        op, world_rank_);
    return Work(s);
  }

  // Whether a collective over `t` (the larger buffer: every rank's) takes the shared-memory
  // path: large f32 buffers, when the window could be made. The same answer on every rank.
  bool use_shm(const Tensor& t) {
    return t.dtype() == DType::f32 && size_ > 1 &&
           int64_t(t.nbytes()) >= NodeCollectives::kMinBytes && node_shm();
  }

  // The shared-memory collectives, made on the first large f32 one (on the worker, in collective
  // order); null when they cannot be used.
  NodeCollectives* node_shm() {
    if (!node_shm_tried_) {
      node_shm_tried_ = true;
      if (node_all_reduce_allowed()) node_shm_ = NodeCollectives::make(comm_, size_);
    }
    return node_shm_.get();
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1, world_rank_ = 0;
  std::unique_ptr<NodeCollectives> node_shm_;
  bool node_shm_tried_ = false;
  P2pProgress p2p_progress_;
  CommCounters counters_;
  CommWorker worker_;
};

void finalize_mpi() {
  std::vector<MpiCommunicator*> live;
  {
    std::lock_guard<std::mutex> lock(g_live_mu);
    live = g_live;
  }
  for (MpiCommunicator* c : live) c->shut_down();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

bool mpi_initialized() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

void mpi_abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);  // not reached
}

std::shared_ptr<Communicator> mpi_world_communicator() {
  int init = 0;
  MPI_Initialized(&init);
  if (!init) {
    // A rank waiting in a collective polls; by default it spins without yielding whenever the
    // ranks do not oversubscribe the cores. Here each rank's communication runs on a worker thread
    // beside its compute thread, so a spinning worker takes a core from compute: yield instead
    // (GPT-2-small, 2 ranks on 2 cores: 3.8 s per step instead of 4.4 s). A setting from the
    // environment or mpirun wins.
    setenv("OMPI_MCA_mpi_yield_when_idle", "1", /*overwrite=*/0);
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    if (provided < MPI_THREAD_MULTIPLE) {
      MPI_Finalize();
      throw_error(
          "this MPI library does not provide MPI_THREAD_MULTIPLE, which the communicator's worker "
          "threads need (OpenMPI 4 does)");
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Op_create(&reduce16<bf16, false>, 1, &g_ops.sum_bf16);
    MPI_Op_create(&reduce16<bf16, true>, 1, &g_ops.max_bf16);
    MPI_Op_create(&reduce16<f16, false>, 1, &g_ops.sum_f16);
    MPI_Op_create(&reduce16<f16, true>, 1, &g_ops.max_f16);
    std::atexit(finalize_mpi);
  }
  MPI_Comm dup;
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  return std::make_shared<MpiCommunicator>(dup);
}

}  // namespace forge
