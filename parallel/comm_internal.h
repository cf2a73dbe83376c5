// Pieces the communicator backends share: the state behind a Work, and a worker thread that runs
// a communicator's operations one at a time, in the order they were issued.
#pragma once

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "parallel/communicator.h"

namespace forge {

struct Work::State {
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  std::exception_ptr error;

  void finish(std::exception_ptr e = nullptr) {
    {
      std::lock_guard<std::mutex> lock(mu);
      finished = true;
      error = e;
    }
    cv.notify_all();
  }
};

// Runs `fn` now and returns a finished Work that carries its error, if any.
Work run_now(const std::function<void()>& fn);

// One thread, one FIFO queue: post() returns a Work at once; the job runs after those posted
// before it. The destructor runs what is queued, then joins.
class CommWorker {
 public:
  CommWorker();
  ~CommWorker();
  CommWorker(const CommWorker&) = delete;
  CommWorker& operator=(const CommWorker&) = delete;

  Work post(std::function<void()> job);
  void stop();  // drains the queue and joins; post() afterwards throws

 private:
  struct Job {
    std::function<void()> fn;
    std::shared_ptr<Work::State> state;
  };
  void loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

// Accumulates one CommStats entry under a lock (the worker and the caller both record).
class CommCounters {
 public:
  void add(CommStats::Entry CommStats::*which, int64_t bytes, double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    CommStats::Entry& e = stats_.*which;
    ++e.calls;
    e.bytes += bytes;
    e.seconds += seconds;
  }
  CommStats get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

 private:
  mutable std::mutex mu_;
  CommStats stats_;
};

// Seconds since `t0`.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The MPI backend's world (mpi_communicator.cpp).
std::shared_ptr<Communicator> mpi_world_communicator();
[[noreturn]] void mpi_abort(int code);
bool mpi_initialized();

}  // namespace forge
