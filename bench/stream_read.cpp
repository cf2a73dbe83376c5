// STREAM-style read bandwidth: the bound on any pass that must read every byte of a buffer too
// large for the caches (a decoding step reads every weight once per token).
//
//   build/bench/stream_read [--mb 1024] [--threads 1] [--repeats 10]
//                           [--bytes-per-token B]   # also print B's tokens/s bound
//
// Each timed pass sums the buffer's floats into 16 lanes per thread (vectorised, no stores), so
// it moves only reads; the sum is printed so the pass cannot be optimised away.
#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <cstring>
#include <vector>

#include "bench/bench_util.h"
#include "tensor/parallel.h"
#include "tensor/tensor.h"

namespace {

float sum16(const float* x, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j];
  for (; i < n; ++i) acc[0] += x[i];
  float s = 0;
  for (float v : acc) s += v;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"read bandwidth of a buffer larger than the caches"};
  int64_t mb = 1024;
  int threads = 1, repeats = 10;
  double bytes_per_token = 0;
  app.add_option("--mb", mb, "buffer size in MiB")->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "threads")->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "timed passes")->check(CLI::PositiveNumber);
  app.add_option("--bytes-per-token", bytes_per_token,
                 "bytes a decoding step reads (0: none): prints the tokens/s bound");
  CLI11_PARSE(app, argc, argv);
  forge::set_num_threads(threads);

  const int64_t n = mb * (1 << 20) / int64_t(sizeof(float));
  forge::Tensor buf = forge::Tensor::empty({n});
  float* x = buf.data<float>();
  forge::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {  // first touch by the readers
    for (int64_t i = b; i < e; ++i) x[i] = float(i % 7) * 0.25f;
  });
  const int64_t chunk = 1 << 16;
  const int64_t chunks = (n + chunk - 1) / chunk;
  std::vector<float> partial(size_t(chunks), 0.0f);
  double checksum = 0;
  auto pass = [&] {
    forge::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c)
        partial[size_t(c)] = sum16(x + c * chunk, std::min(chunk, n - c * chunk));
    });
    for (float p : partial) checksum += p;
  };
  pass();  // warm-up
  forge::bench::Timings t = forge::bench::time_runs(repeats, pass);
  const double bytes = double(n) * sizeof(float);
  const double best = bytes / t.min * 1e-9, median = bytes / t.median * 1e-9;
  fmt::print(
      "# stream_read | commit {} | threads {} | buffer {} MiB | repeats {} | checksum {:.6g}\n",
      forge::bench::kGitCommit, threads, mb, repeats, checksum);
  fmt::print("read GB/s best {:.2f} median {:.2f}\n", best, median);
  if (bytes_per_token > 0)
    fmt::print("bytes/token {:.0f}: bound tokens/s best {:.2f} median {:.2f}\n", bytes_per_token,
               best * 1e9 / bytes_per_token, median * 1e9 / bytes_per_token);
}
