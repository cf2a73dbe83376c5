// Timing helpers for the benchmark programs: repeat, keep min and median, print settings.
//
//   Timings t = time_runs(5, [&] { step(); });   // 5 timed runs (after the caller's warm-up)
//   fmt::print("{:.3f} {:.3f}\n", t.min, t.median);
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "bench/version.h"

namespace forge::bench {

struct Timings {
  std::vector<double> runs;  // seconds
  double min = 0, median = 0;
};

inline Timings summarize(std::vector<double> runs) {
  Timings t;
  t.runs = runs;
  std::sort(runs.begin(), runs.end());
  if (!runs.empty()) {
    t.min = runs.front();
    size_t n = runs.size();
    t.median = n % 2 ? runs[n / 2] : 0.5 * (runs[n / 2 - 1] + runs[n / 2]);
  }
  return t;
}

inline Timings time_runs(int repeats, const std::function<void()>& fn) {
  std::vector<double> runs;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    runs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return summarize(runs);
}

inline std::string commit() {
  return kGitCommit;
}

}  // namespace forge::bench
