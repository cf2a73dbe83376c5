// int8 inference GEMM against our f32 GEMM: a stack of four 1024 x 1024 Linear layers, forward
// only, at batch 64 and batch 1, on one thread (or --threads N).
//
//   build/bench/int8_gemm_bench [--threads 1] [--repeats 20]
//
// f32:        y = x @ W^T + b by cpu::gemm<float> (the packed kernels), bias added after.
// int8:       per layer the whole dynamic-quantization step, as PyTorch's quantized dynamic Linear:
//             min_max(x) -> scale, zero (7-bit activations) -> quantize_u8 -> int8_linear_f32
//             (weights packed once, before timing).
// int8 gemm:  int8_linear_f32 alone on already-quantized activations, per layer.
// Each figure is the minimum (and median) over the repeats, after one warm-up, in one process.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "quant/int8_gemm.h"
#include "tensor/cpu/gemm.h"
#include "tensor/parallel.h"

using namespace forge;

namespace {

constexpr int64_t kDim = 1024, kLayers = 4;

struct Layer {
  std::vector<float> w, b;  // (N, K), (N)
  PackedInt8Weight qw;
  std::vector<float> w_scale;
};

// Symmetric per-row weight quantization to [-127, 127].
void quantize_weight(Layer& l) {
  std::vector<int8_t> q(size_t(kDim * kDim));
  l.w_scale.resize(size_t(kDim));
  for (int64_t j = 0; j < kDim; ++j) {
    float amax = 0;
    for (int64_t p = 0; p < kDim; ++p) amax = std::max(amax, std::abs(l.w[size_t(j * kDim + p)]));
    const float scale = amax > 0 ? amax / 127.0f : 1.0f;
    l.w_scale[size_t(j)] = scale;
    for (int64_t p = 0; p < kDim; ++p)
      q[size_t(j * kDim + p)] = int8_t(std::nearbyint(l.w[size_t(j * kDim + p)] / scale));
  }
  l.qw = pack_int8_weight(q.data(), kDim, kDim);
}

// Activation scale and zero point for u8 in [0, 127] ("reduce range"), the range widened to 0.
void activation_params(const float* x, int64_t n, float& scale, int32_t& zero) {
  float lo, hi;
  min_max(x, n, lo, hi);
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  scale = hi > lo ? (hi - lo) / 127.0f : 1.0f;
  zero = std::clamp(int32_t(std::nearbyint(-lo / scale)), 0, 127);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, repeats = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--threads") == 0) threads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--repeats") == 0) repeats = std::atoi(argv[i + 1]);
  }
  set_num_threads(threads);
  fmt::print("int8_gemm_bench  commit {}  threads {}  repeats {}  layers {} x ({} x {})\n",
             bench::commit(), threads, repeats, kLayers, kDim, kDim);
  fmt::print("f32 kernel {}  int8 kernel {}\n", cpu::gemm_kernel_name(),
             int8_kernel_name(int8_kernel()));

  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f / 32.0f);
  std::vector<Layer> layers(kLayers);
  for (Layer& l : layers) {
    l.w.resize(size_t(kDim * kDim));
    l.b.resize(size_t(kDim));
    for (float& v : l.w) v = normal(rng);
    for (float& v : l.b) v = normal(rng);
    quantize_weight(l);
  }

  fmt::print("{:>6} {:>22} {:>22} {:>22} {:>10}\n", "batch", "f32 gemm ms (min/med)",
             "int8 dynamic ms", "int8 gemm only ms", "f32/int8");
  for (int64_t batch : {64, 1}) {
    std::vector<float> x0(size_t(batch * kDim)), h0(x0.size()), h1(x0.size());
    for (float& v : x0) v = normal(rng) * 32.0f;
    std::vector<uint8_t> q(x0.size());

    auto f32_stack = [&] {
      const float* in = x0.data();
      for (int l = 0; l < kLayers; ++l) {
        float* out = l % 2 ? h1.data() : h0.data();
        cpu::gemm<float>(false, true, batch, kDim, kDim, 1.0f, in, kDim, layers[size_t(l)].w.data(),
                         kDim, 0.0f, out, kDim);
        for (int64_t i = 0; i < batch; ++i)
          for (int64_t j = 0; j < kDim; ++j) out[i * kDim + j] += layers[size_t(l)].b[size_t(j)];
        in = out;
      }
    };
    auto int8_stack = [&] {
      const float* in = x0.data();
      for (int l = 0; l < kLayers; ++l) {
        float* out = l % 2 ? h1.data() : h0.data();
        float scale;
        int32_t zero;
        activation_params(in, batch * kDim, scale, zero);
        quantize_u8(in, batch * kDim, 1.0f / scale, zero, 0, 127, q.data());
        const Layer& L = layers[size_t(l)];
        int8_linear_f32(q.data(), batch, kDim, scale, zero, L.qw, L.w_scale.data(), L.b.data(), out,
                        kDim);
        in = out;
      }
    };
    auto int8_gemm_only = [&] {
      for (int l = 0; l < kLayers; ++l) {
        const Layer& L = layers[size_t(l)];
        int8_linear_f32(q.data(), batch, kDim, 0.01f, 64, L.qw, L.w_scale.data(), L.b.data(),
                        h0.data(), kDim);
      }
    };
    f32_stack();
    bench::Timings tf = bench::time_runs(repeats, f32_stack);
    int8_stack();
    bench::Timings ti = bench::time_runs(repeats, int8_stack);
    int8_gemm_only();
    bench::Timings tg = bench::time_runs(repeats, int8_gemm_only);
    fmt::print("{:>6} {:>10.3f} / {:<9.3f} {:>10.3f} / {:<9.3f} {:>10.3f} / {:<9.3f} {:>10.2f}\n",
               batch, tf.min * 1e3, tf.median * 1e3, ti.min * 1e3, ti.median * 1e3, tg.min * 1e3,
               tg.median * 1e3, tf.min / ti.min);
  }
  return 0;
}
