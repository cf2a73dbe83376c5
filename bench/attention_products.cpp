// Causal attention's six per-head products (forward S = Q K^T, O = P V; backward dP = dO V^T,
// dV = P^T dO, dQ = dS K, dK = dS^T Q) over one layer's heads, computed whole and with the causal
// skip (cpu::gemm_causal: tiles above the diagonal of S and dP, depths the rows cannot see in the
// other four), in the same run: the products' share of attention and what the skip saves.
//
//   build/bench/attention_products [--batch 12] [--seq 64] [--embd 128] [--heads 4] [--rounds 7]
//
// The `cpu` preset's shape by default; one thread (as attention's heads each run on one).
#include <fmt/core.h>

#include <CLI/CLI.hpp>

#include "bench/bench_util.h"
#include "tensor/cpu/gemm.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

int main(int argc, char** argv) {
  using forge::cpu::Causal;
  CLI::App app{"causal attention's per-head products, whole and with the causal skip"};
  int64_t B = 12, T = 64, C = 128, NH = 4;
  int rounds = 7, inner = 20;
  app.add_option("--batch", B)->check(CLI::PositiveNumber);
  app.add_option("--seq", T)->check(CLI::PositiveNumber);
  app.add_option("--embd", C)->check(CLI::PositiveNumber);
  app.add_option("--heads", NH)->check(CLI::PositiveNumber);
  app.add_option("--rounds", rounds, "timed rounds (min and median)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  if (C % NH != 0) {
    fmt::print(stderr, "attention_products: --embd {} does not split into --heads {}\n", C, NH);
    return 1;
  }
  forge::set_num_threads(1);
  const int64_t hs = C / NH;
  forge::Generator gen(7);
  forge::Tensor qkv = forge::randn({B, T, 3 * C}, gen), dout = forge::randn({B, T, C}, gen);
  forge::Tensor P = forge::randn({T, T}, gen), dS = forge::randn({T, T}, gen);
  forge::Tensor S = forge::Tensor::empty({T, T}), out = forge::Tensor::empty({B, T, C});
  forge::Tensor dqkv = forge::Tensor::empty({B, T, 3 * C});
  for (int64_t t = 0; t < T; ++t)  // probabilities and their gradient: zero above the diagonal
    for (int64_t j = t + 1; j < T; ++j)
      P.data<float>()[t * T + j] = dS.data<float>()[t * T + j] = 0;

  // One layer's products, each head's six, with the skip or without.
  auto layer = [&](bool skip) {
    auto mode = [&](Causal c) { return skip ? c : Causal::none; };
    const float *q = qkv.data<float>(), *go = dout.data<float>(), *p = P.data<float>();
    const float* ds = dS.data<float>();
    float *s = S.data<float>(), *o = out.data<float>(), *d = dqkv.data<float>();
    for (int64_t bh = 0; bh < B * NH; ++bh) {
      const int64_t b = bh / NH, h = bh % NH, head = b * T * 3 * C + h * hs;
      const float *Q = q + head, *K = Q + C, *V = Q + 2 * C, *dO = go + b * T * C + h * hs;
      float *dQ = d + head, *dK = dQ + C, *dV = dQ + 2 * C;
      using forge::cpu::gemm_causal;
      gemm_causal(mode(Causal::c_lower), false, true, T, T, hs, 1, Q, 3 * C, K, 3 * C, 0, s, T);
      gemm_causal(mode(Causal::a_lower), false, false, T, hs, T, 1, p, T, V, 3 * C, 0,
                  o + b * T * C + h * hs, C);
      gemm_causal(mode(Causal::c_lower), false, true, T, T, hs, 1, dO, C, V, 3 * C, 0, s, T);
      gemm_causal(mode(Causal::a_upper), true, false, T, hs, T, 1, p, T, dO, C, 0, dV, 3 * C);
      gemm_causal(mode(Causal::a_lower), false, false, T, hs, T, 1, ds, T, K, 3 * C, 0, dQ, 3 * C);
      gemm_causal(mode(Causal::a_upper), true, false, T, hs, T, 1, ds, T, Q, 3 * C, 0, dK, 3 * C);
    }
  };
  // The whole forward and backward of the op, for the products' share.
  auto op = [&] {
    forge::AttentionResult r = forge::causal_attention(qkv, int(NH));
    forge::Tensor g =
        forge::causal_attention_backward(dout, qkv, r.probs, forge::Tensor(), int(NH), 0.0);
  };
  auto repeat = [&](auto fn) {
    return [&, fn] {
      for (int i = 0; i < inner; ++i) fn();
    };
  };
  layer(false), layer(true), op();  // warm-up
  std::vector<double> whole, skipped, ops;
  for (int r = 0; r < rounds; ++r) {  // interleaved, so that a slow stretch hits all three
    whole.push_back(forge::bench::time_runs(1, repeat([&] { layer(false); })).min / inner);
    skipped.push_back(forge::bench::time_runs(1, repeat([&] { layer(true); })).min / inner);
    ops.push_back(forge::bench::time_runs(1, repeat(op)).min / inner);
  }
  const auto w = forge::bench::summarize(whole), s = forge::bench::summarize(skipped),
             o = forge::bench::summarize(ops);
  fmt::print(
      "# attention_products | commit {} | kernel {} | B {} T {} C {} heads {} | 1 thread | {} "
      "rounds of {}\n",
      forge::bench::kGitCommit, forge::cpu::gemm_kernel_name(), B, T, C, NH, rounds, inner);
  fmt::print("op forward+backward (with the skip) ms  min {:.4f} median {:.4f}\n", o.min * 1e3,
             o.median * 1e3);
  fmt::print("six products, whole ms                  min {:.4f} median {:.4f}\n", w.min * 1e3,
             w.median * 1e3);
  fmt::print("six products, causal skip ms            min {:.4f} median {:.4f}\n", s.min * 1e3,
             s.median * 1e3);
  fmt::print("skip / whole                            min {:.3f} median {:.3f}\n", s.min / w.min,
             s.median / w.median);
}
