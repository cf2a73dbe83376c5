// Seeded random numbers that do not depend on the thread count.
//
//   Generator gen(1337);
//   Tensor u = rand({3, 4}, gen);     // uniform [0, 1)
//   Tensor z = randn({3, 4}, gen);    // standard normal
//   auto s = gen.state();  ...  gen.set_state(s);   // saved in checkpoints for exact resume
//
// The generator is counter-based (Philox4x32-10, the one cuRAND and PyTorch's CUDA backend use):
// the i-th number of a draw is a pure function of (seed, offset + i), so kernels can fill a tensor
// from many threads and still produce the same values. Each draw advances the offset.
#pragma once

#include <array>
#include <cstdint>
#include <functional>

#include "tensor/tensor.h"

namespace forge {

// One Philox4x32-10 block: 4 random 32-bit words for a 128-bit counter and 64-bit key.
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, uint64_t key);

class Generator {
 public:
  struct State {
    uint64_t seed = 0;
    uint64_t offset = 0;  // in 128-bit blocks consumed
    friend bool operator==(const State&, const State&) = default;
  };

  explicit Generator(uint64_t seed = 0) : state_{seed, 0} {}
  uint64_t seed() const { return state_.seed; }
  State state() const { return state_; }
  void set_state(State s) { state_ = s; }

  // Reserves `blocks` consecutive counter values and returns the first.
  uint64_t advance(uint64_t blocks) {
    uint64_t first = state_.offset;
    state_.offset += blocks;
    return first;
  }
  // Block `i` of a reservation starting at `first`.
  std::array<uint32_t, 4> block(uint64_t first, uint64_t i) const {
    uint64_t c = first + i;
    return philox4x32({uint32_t(c), uint32_t(c >> 32), 0, 0}, state_.seed);
  }

  // Blocks 0 .. n - 1 of a reservation starting at `first`, their words in order: out[4 i + w] is
  // word w of block(first, i). Sixteen blocks at a time in vectorised lanes: the same words, about
  // four times faster than block() one by one (dropout's masks draw millions a step).
  void blocks(uint64_t first, int64_t n, uint32_t* out) const;

  // Scalar draws (one block each), for sampling and shuffling.
  double uniform();              // [0, 1)
  uint64_t randint(uint64_t n);  // [0, n)

 private:
  State state_;
};

// A generator for when none is given: seeded by manual_seed(), default 0.
Generator& default_generator();
void manual_seed(uint64_t seed);

// 32 random bits -> float in [0, 1) with 24 bits of precision.
inline float uniform_from_bits(uint32_t x) {
  return float(x >> 8) * (1.0f / 16777216.0f);
}

Tensor rand(const Shape& shape, Generator& gen, DType dtype = DType::f32);
Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::f32);
Tensor rand(const Shape& shape, DType dtype = DType::f32);
Tensor randn(const Shape& shape, DType dtype = DType::f32);
// Fills in place: uniform [lo, hi) or normal(mean, std); t must be contiguous and floating.
void uniform_(Tensor& t, double lo, double hi, Generator& gen);
void normal_(Tensor& t, double mean, double std, Generator& gen);
// normal_ of part of a larger tensor, without the larger tensor: had normal_(full, mean, std, gen)
// run with gen in state `at`, t receives the values of full's elements in runs of `run`: run r
// (elements r * run .. of t) is full's flat elements run_start(r) .. run_start(r) + run. So a
// process can initialise its slice of a parameter exactly as the whole would be (models/gpt.cpp).
void normal_runs_(Tensor& t, double mean, double std, Generator::State at, int64_t run,
                  const std::function<int64_t(int64_t)>& run_start);
// A random permutation of 0..n-1 (i64), Fisher-Yates driven by gen.
Tensor randperm(int64_t n, Generator& gen);

}  // namespace forge
