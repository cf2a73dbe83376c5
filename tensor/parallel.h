// The one thread pool every CPU kernel shares (OpenMP's), sized by one setting.
//
//   set_num_threads(2);                       // what `--threads 2` does
//   parallel_for(0, rows, 16, [&](int64_t b, int64_t e) { for (i = b; i < e; ++i) ...; });
//
// Kernels must give the same result whatever the thread count. parallel_for hands out chunks
// whose boundaries depend on the thread count, so it suits work where each output element is
// computed by one loop iteration. A reduction splits its input into chunks of a fixed size (see
// `fixed_chunks`) and combines the partial results in chunk order, so the sum is always the same.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace forge {

// Default: all cores (or FORGE_NUM_THREADS when set).
void set_num_threads(int n);
int get_num_threads();

template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, F&& f) {
  int64_t n = end - begin;
  if (n <= 0) return;
  int threads = get_num_threads();
  grain = std::max<int64_t>(grain, 1);
  if (threads <= 1 || n <= grain || omp_in_parallel()) {
    f(begin, end);
    return;
  }
  int nt = int(std::min<int64_t>(threads, (n + grain - 1) / grain));
  int64_t chunk = (n + nt - 1) / nt;
#pragma omp parallel num_threads(nt)
  {
    int64_t b = begin + omp_get_thread_num() * chunk;
    int64_t e = std::min(end, b + chunk);
    if (b < e) f(b, e);
  }
}

// Number of fixed-size chunks of `chunk` covering n; chunk boundaries never depend on threads.
inline int64_t fixed_chunks(int64_t n, int64_t chunk) {
  return (n + chunk - 1) / chunk;
}

}  // namespace forge
