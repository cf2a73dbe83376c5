// Unit-stride f32 <-> f16 runs through F16C (vcvtps2ph / vcvtph2ps), for processors on the AVX2
// path or wider (cpu_features counts F16C as part of AVX2). They give the bits of the scalar
// f32_to_f16_bits / f16_bits_to_f32 (dtype.h), except that a NaN's payload may differ on widening
// (it stays a NaN); narrowing makes every NaN sign | 0x7e00 as the scalar code does.
//
// Unit-stride f32 <-> bf16 runs in AVX2 integer arithmetic: the scalar recipe of dtype.h (round to
// nearest even on the bits, NaN quieted), eight lanes at a time, so they give its bits exactly,
// denormals included (vcvtneps2bf16 would flush those).
#pragma once

#include <cstdint>

namespace forge::cpu {

void f32_to_f16_run_f16c(const float* x, uint16_t* y, int64_t n);
void f16_to_f32_run_f16c(const uint16_t* x, float* y, int64_t n);
void f32_to_bf16_run_avx2(const float* x, uint16_t* y, int64_t n);
void bf16_to_f32_run_avx2(const uint16_t* x, float* y, int64_t n);

}  // namespace forge::cpu
