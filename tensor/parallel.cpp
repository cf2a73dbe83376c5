#include "tensor/parallel.h"

#include <cstdlib>
#include <string>
#include <thread>

#include "tensor/error.h"

namespace forge {

namespace {
int initial_threads() {
  if (const char* env = std::getenv("FORGE_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1, int(std::thread::hardware_concurrency()));
}
int g_threads = initial_threads();
}  // namespace

void set_num_threads(int n) {
  FORGE_CHECK(n >= 1, "threads: expected at least 1, got {}", n);
  g_threads = n;
  omp_set_num_threads(n);
}

int get_num_threads() {
  return g_threads;
}

}  // namespace forge
