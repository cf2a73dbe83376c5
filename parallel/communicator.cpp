#include "parallel/communicator.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "parallel/comm_internal.h"
#include "tensor/ops.h"

namespace forge {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::avg:
      return "avg";
    case ReduceOp::max:
      return "max";
  }
  return "?";
}

void check_comm_tensor(const Tensor& t, const char* op, Device device) {
  FORGE_CHECK(t.defined(), "{}: the tensor is undefined", op);
  FORGE_CHECK(t.device() == device, "{}: the tensor is on {}; this communicator carries {} tensors",
              op, t.device().str(), device.is_cpu() ? std::string("CPU") : device.str());
  FORGE_CHECK(t.is_contiguous(), "{}: the tensor of shape {} is not contiguous", op, t.shape());
}

void check_reduce(DType dtype, ReduceOp op, const char* what) {
  FORGE_CHECK(op != ReduceOp::avg || is_floating(dtype),
              "{}: avg of {} tensors is not defined (integer division); use sum", what, dtype);
}

// ---------------------------------------------------------------------------------------------
// Work

void Work::wait() {
  if (!state_) return;
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->cv.wait(lock, [&] { return state_->finished; });
  if (state_->error) std::rethrow_exception(state_->error);
}

bool Work::done() const {
  if (!state_) return true;
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->finished;
}

Work run_now(const std::function<void()>& fn) {
  auto s = std::make_shared<Work::State>();
  try {
    fn();
    s->finish();
  } catch (...) {
    s->finish(std::current_exception());
  }
  return Work(s);
}

// ---------------------------------------------------------------------------------------------
// CommWorker

CommWorker::CommWorker() : thread_([this] { loop(); }) {}

CommWorker::~CommWorker() {
  stop();
}

void CommWorker::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Work CommWorker::post(std::function<void()> job) {
  auto s = std::make_shared<Work::State>();
  {
    std::lock_guard<std::mutex> lock(mu_);
    FORGE_CHECK(!stopping_, "communicator used after it was shut down");
    queue_.push_back({std::move(job), s});
  }
  cv_.notify_one();
  return Work(s);
}

void CommWorker::loop() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    std::exception_ptr error;
    try {
      job.fn();
    } catch (...) {
      error = std::current_exception();
    }
    // The job's captures (the tensors it read and wrote) go before anyone waiting learns it is
    // done: a caller that drops its own references after wait() then frees the memory at once,
    // not whenever this thread gets round to it.
    job.fn = nullptr;
    job.state->finish(error);
  }
}

// ---------------------------------------------------------------------------------------------
// The single-process backend: one rank, so every reduction is the identity and every gather a
// copy. It still checks its arguments as the MPI backend does, so code written against it fails
// the same way.

namespace {

class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }

  Work all_reduce_async(Tensor t, ReduceOp op) override {
    return run_now([&] {
      check_comm_tensor(t, "all_reduce");
      check_reduce(t.dtype(), op, "all_reduce");
      counters_.add(&CommStats::all_reduce, int64_t(t.nbytes()), 0);
    });
  }
  Work all_gather_async(Tensor out, Tensor in) override {
    return run_now([&] {
      check_comm_tensor(out, "all_gather");
      check_comm_tensor(in, "all_gather");
      FORGE_CHECK(out.numel() == in.numel() && out.dtype() == in.dtype(),
                  "all_gather: the output has {} elements of {}, expected 1 x {} of {}",
                  out.numel(), out.dtype(), in.numel(), in.dtype());
      std::memcpy(out.raw_data(), in.raw_data(), in.nbytes());
      counters_.add(&CommStats::all_gather, int64_t(out.nbytes()), 0);
    });
  }
  Work reduce_scatter_async(Tensor out, Tensor in, ReduceOp op) override {
    return run_now([&] {
      check_comm_tensor(out, "reduce_scatter");
      check_comm_tensor(in, "reduce_scatter");
      check_reduce(in.dtype(), op, "reduce_scatter");
      FORGE_CHECK(out.numel() == in.numel() && out.dtype() == in.dtype(),
                  "reduce_scatter: the input has {} elements of {}, expected 1 x {} of {}",
                  in.numel(), in.dtype(), out.numel(), out.dtype());
      std::memcpy(out.raw_data(), in.raw_data(), in.nbytes());
      counters_.add(&CommStats::reduce_scatter, int64_t(in.nbytes()), 0);
    });
  }
  Work broadcast_async(Tensor t, int root) override {
    return run_now([&] {
      check_comm_tensor(t, "broadcast");
      FORGE_CHECK(root == 0, "broadcast root rank {}: the communicator has ranks 0..0", root);
      counters_.add(&CommStats::broadcast, int64_t(t.nbytes()), 0);
    });
  }
  Work send_async(Tensor, int dst, int) override {
    return run_now([&] {
      throw_error(fmt::format("send to rank {}: a 1-rank communicator has no peer", dst));
    });
  }
  Work recv_async(Tensor, int src, int) override {
    return run_now([&] {
      throw_error(fmt::format("recv from rank {}: a 1-rank communicator has no peer", src));
    });
  }
  Work barrier_async() override {
    return run_now([&] { counters_.add(&CommStats::barrier, 0, 0); });
  }
  std::shared_ptr<Communicator> split(int color, int) override {
    if (color < 0) return nullptr;
    return std::make_shared<SingleProcessCommunicator>();
  }
  CommStats stats() const override { return counters_.get(); }

 private:
  CommCounters counters_;
};

}  // namespace

std::shared_ptr<Communicator> single_process_communicator() {
  return std::make_shared<SingleProcessCommunicator>();
}

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

std::shared_ptr<Communicator> world_communicator() {
  static std::shared_ptr<Communicator> world =
      launched_by_mpi() ? mpi_world_communicator() : single_process_communicator();
  return world;
}

void abort_job(const std::string& message, int code) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  if (mpi_initialized()) mpi_abort(code);
  std::exit(code);
}

}  // namespace forge
