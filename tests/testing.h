// Helpers shared by the tests.
//
//   REQUIRE_THROWS_WITH(op(), Contains("matmul") && Contains("[2, 3]"));
//   ThreadCount t(1);                  // sets the thread count, restores it on scope exit
//   CHECK(bitwise_equal(x, y));        // same shape, dtype and bytes
//   for (cpu::Isa isa : runnable_isas("gemm")) { IsaScope s(isa); ... }  // every kernel family
//   TempDir dir;  write_bytes(dir.file("a.bin"), bytes);   // removed at scope exit
//   worst = nan_max(worst, err);       // max that keeps a NaN (std::max drops it)
//   if (!have) return skip_optional("no torch");  // SKIPPED, or a failure under CI's switch
//   Command r = run_command("python3 x.py");      // exit status, stdout, stderr
#pragma once

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tensor/cpu/cpu_features.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"
#include "tensor/random.h"

namespace forge::testing {

using Catch::Matchers::Contains;

// Sets the thread count for a scope.
class ThreadCount {
 public:
  explicit ThreadCount(int n) : saved_(get_num_threads()) { set_num_threads(n); }
  ~ThreadCount() { set_num_threads(saved_); }

 private:
  int saved_;
};

// Forces a CPU kernel family for a scope.
class IsaScope {
 public:
  explicit IsaScope(cpu::Isa isa) : saved_(cpu::cpu_isa()) { cpu::set_cpu_isa(isa); }
  ~IsaScope() { cpu::set_cpu_isa(saved_); }
  IsaScope(const IsaScope&) = delete;
  IsaScope& operator=(const IsaScope&) = delete;

 private:
  cpu::Isa saved_;
};

// The kernel families this processor runs; prints a SKIPPED line naming `what` for each other.
inline std::vector<cpu::Isa> runnable_isas(const char* what) {
  std::vector<cpu::Isa> out;
  for (cpu::Isa isa : {cpu::Isa::portable, cpu::Isa::avx2, cpu::Isa::avx512}) {
    if (cpu::isa_supported(isa))
      out.push_back(isa);
    else
      std::printf("SKIPPED: %s on %s: not supported by this processor\n", what, cpu::isa_name(isa));
  }
  return out;
}

// A fresh directory under the system's temporary folder, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "forge_test_XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  // Writes `name` in the directory and returns its path.
  std::string write(const std::string& name, const std::string& bytes) const;
  // Names of the entries, sorted.
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::filesystem::path path_;
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
// Writes (replaces) a file, creating its directory; returns the path.
inline std::string write_bytes(const std::string& path, const std::string& bytes) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(bytes.data(), std::streamsize(bytes.size()));
  return path;
}
inline std::string TempDir::write(const std::string& name, const std::string& bytes) const {
  return write_bytes(file(name), bytes);
}

// dir/corpus.txt: `chars` characters drawn from "abcdefghi" by a linear congruential generator
// seeded `seed`, every `line`-th a newline (a small text with some structure to learn); its path.
inline std::string write_corpus(const TempDir& dir, int chars, int line, uint32_t seed) {
  std::string s;
  uint32_t x = seed;
  for (int i = 0; i < chars; ++i) {
    x = x * 1664525u + 1013904223u;
    s.push_back(i % line == line - 1 ? '\n' : "abcdefghi"[(x >> 16) % 9]);
  }
  return dir.write("corpus.txt", s);
}

// Bitwise equality of two tensors' contents (same shape and dtype), both finite: two runs that
// both diverged to the same NaNs are not "the same result". A test that means to compare
// non-finite values bit for bit says so with bitwise_identical.
inline bool bitwise_identical(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}
inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return bitwise_identical(a, b) && all_finite(a);
}

// max |a - b| / max |b| (shapes must match): how far a parallel result is from the serial one.
inline double max_rel_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  double num = max(abs(sub(a.to(DType::f64), b.to(DType::f64)))).item();
  double den = max(abs(b.to(DType::f64))).item();
  return num / (den > 0 ? den : 1.0);
}

// ||a - b|| / ||b|| (both copied to the CPU). Parallel runs' weights are compared per tensor this
// way: after a few AdamW steps the largest single element's difference reaches a few 1e-5 of the
// tensor's largest weight on some MLP weights, whose gradients there are rounding-sized sums of
// cancelling terms that AdamW normalises into steps of up to lr, in any two runs that sum in
// different orders.
inline double rel_l2(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  const Tensor a64 = a.to(Device::cpu()).to(DType::f64), b64 = b.to(Device::cpu()).to(DType::f64);
  const Tensor d = sub(a64, b64);
  const double den = sum(mul(b64, b64)).item();
  return std::sqrt(sum(mul(d, d)).item() / (den > 0 ? den : 1.0));
}

// Element `idx` of a tensor of any dtype as double, read straight from memory with its strides
// (independent of the library's own conversions: f16 goes through GCC's _Float16).
inline double read_element(const Tensor& t, const std::vector<int64_t>& idx) {
  const char* p = static_cast<const char*>(t.raw_data());
  for (int d = 0; d < t.dim(); ++d) p += idx[size_t(d)] * t.stride(d) * int64_t(t.itemsize());
  switch (t.dtype()) {
    case DType::f32:
      return *reinterpret_cast<const float*>(p);
    case DType::f64:
      return *reinterpret_cast<const double*>(p);
    case DType::bf16: {
      uint32_t u = uint32_t(*reinterpret_cast<const uint16_t*>(p)) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
    case DType::f16:
      return double(*reinterpret_cast<const _Float16*>(p));
    case DType::i8:
      return *reinterpret_cast<const int8_t*>(p);
    case DType::u8:
      return *reinterpret_cast<const uint8_t*>(p);
    case DType::i32:
      return *reinterpret_cast<const int32_t*>(p);
    case DType::i64:
      return double(*reinterpret_cast<const int64_t*>(p));
  }
  return 0;
}

// The multi-index of row-major position i in shape s.
inline std::vector<int64_t> unravel(int64_t i, const Shape& s) {
  std::vector<int64_t> idx(size_t(s.size()));
  for (int d = s.size() - 1; d >= 0; --d) {
    idx[size_t(d)] = i % s[d];
    i /= s[d];
  }
  return idx;
}

// max(worst, x) that keeps a NaN: std::max(worst, NaN) is worst, so a NaN error would pass any
// bound checked afterwards. Use it wherever a test accumulates the worst of several errors.
inline double nan_max(double worst, double x) {
  return std::isnan(worst) || std::isnan(x) ? std::nan("") : std::max(worst, x);
}

// Optional inputs (PyTorch, numpy, the Tiny Shakespeare corpus, Fashion-MNIST): a test that lacks
// one prints SKIPPED and why, unless FORGE_REQUIRE_OPTIONAL=1 (CI sets it: it installs them all),
// where a missing input is a failure, so a broken environment cannot pass as a skip.
inline bool optional_inputs_required() {
  const char* e = std::getenv("FORGE_REQUIRE_OPTIONAL");
  return e != nullptr && std::string(e) == "1";
}
inline void skip_optional(const std::string& why) {
  if (optional_inputs_required()) FAIL("FORGE_REQUIRE_OPTIONAL=1 and " << why);
  std::printf("SKIPPED: %s\n", why.c_str());
  std::fflush(stdout);
}

// Runs a shell command; its exit status (-1 when it did not exit normally), stdout and stderr.
struct Command {
  int status = -1;
  std::string out, err;
};
inline Command run_command(const std::string& cmd) {
  Command r;
  char err_path[] = "/tmp/forge_test_stderr_XXXXXX";
  int fd = mkstemp(err_path);
  REQUIRE(fd >= 0);
  FILE* pipe = popen((cmd + " 2>" + err_path).c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, pipe)) r.out.append(buf, n);
  int st = pclose(pipe);
  r.status = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream in(err_path, std::ios::binary);
  r.err.assign(std::istreambuf_iterator<char>(in), {});
  ::close(fd);
  std::remove(err_path);
  return r;
}

// Where the test data lives (Debian's dataset-fashion-mnist).
inline const char* fashion_mnist_dir() {
  const char* env = std::getenv("FASHION_MNIST_DIR");
  return env ? env : "/usr/share/datasets/fashion-mnist";
}

}  // namespace forge::testing
