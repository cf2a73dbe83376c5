// GELU's tanh form over unit-stride f32 runs, in AVX-512, for processors on the avx512 family
// (ops_elementwise.cpp takes them for contiguous f32 tensors; everything else runs its portable
// per-element formulas, which these follow):
//
//   y  = x / (1 + e^-2u),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   dx = g (s + 2 q r^2 x u'),  q = e^-2|u|, r = 1 / (1 + q), s = r (u >= 0) or q r (u < 0)
//
// e^t is 2^n p(t - n ln2) with the portable exp_f32's polynomial (vec_math.h), but n rounded by
// vrndscaleps and 2^n applied by vscalefps (one clamp and one compare for the ends, where exp_f32
// takes integer shifts, two scalings and three selects), and every product-sum one fused
// multiply-add: about half the instructions of the auto-vectorised formula, so twice the speed.
// The results are not that formula's bits, but as close to GELU computed in f64 (the tests
// measure both), and the special values come out as the formulas give them (NaN, +-inf, the tails
// where e^-2u overflows or vanishes).
#pragma once

#include <cstdint>

namespace forge::cpu {

void gelu_tanh_run_avx512(const float* x, float* y, int64_t n);
void gelu_tanh_backward_run_avx512(const float* g, const float* x, float* dx, int64_t n);

}  // namespace forge::cpu
