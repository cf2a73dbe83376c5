#include "tensor/random.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "tensor/parallel.h"

namespace forge {

namespace {
constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // key schedule (golden ratio, sqrt 3)
constexpr int kLanes = 16;

// Philox4x32-10 of the 16 counters (c + j, j < 16), each (low word, high word, 0, 0), lane by
// lane in arrays: the compiler vectorises the rounds (the 32 x 32 -> 64-bit products as even and
// odd lanes). Block j's words go to out[4 j .. 4 j + 3].
void philox16(uint64_t c, uint64_t key, uint32_t* out) {
  uint32_t x0[kLanes], x1[kLanes], x2[kLanes], x3[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    const uint64_t cj = c + uint64_t(j);
    x0[j] = uint32_t(cj);
    x1[j] = uint32_t(cj >> 32);
    x2[j] = x3[j] = 0;
  }
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    for (int j = 0; j < kLanes; ++j) {
      const uint64_t p0 = uint64_t(kM0) * x0[j], p1 = uint64_t(kM1) * x2[j];
      const uint32_t y0 = uint32_t(p1 >> 32) ^ x1[j] ^ k0, y2 = uint32_t(p0 >> 32) ^ x3[j] ^ k1;
      x1[j] = uint32_t(p1);
      x3[j] = uint32_t(p0);
      x0[j] = y0;
      x2[j] = y2;
    }
    k0 += kW0;
    k1 += kW1;
  }
  for (int j = 0; j < kLanes; ++j) {
    out[4 * j] = x0[j];
    out[4 * j + 1] = x1[j];
    out[4 * j + 2] = x2[j];
    out[4 * j + 3] = x3[j];
  }
}
}  // namespace

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, uint64_t key) {
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(kM0) * c[0], p1 = uint64_t(kM1) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k1,
         uint32_t(p0)};
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

void Generator::blocks(uint64_t first, int64_t n, uint32_t* out) const {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) philox16(first + uint64_t(i), state_.seed, out + 4 * i);
  for (; i < n; ++i) {
    const std::array<uint32_t, 4> w = block(first, uint64_t(i));
    std::copy(w.begin(), w.end(), out + 4 * i);
  }
}

double Generator::uniform() {
  auto b = block(advance(1), 0);
  uint64_t x = (uint64_t(b[0]) << 32 | b[1]) >> 11;  // 53 bits
  return double(x) * (1.0 / 9007199254740992.0);
}

uint64_t Generator::randint(uint64_t n) {
  FORGE_CHECK(n > 0, "randint: empty range");
  auto b = block(advance(1), 0);
  uint64_t x = uint64_t(b[0]) << 32 | b[1];
  return uint64_t((__uint128_t(x) * n) >>
                  64);  // Lemire's multiply-shift: no modulo bias to speak of
}

Generator& default_generator() {
  static Generator g(0);
  return g;
}

void manual_seed(uint64_t seed) {
  default_generator() = Generator(seed);
}

namespace {

// Fills n values from the generator: fn(block, i) -> 4 values, i the block index.
template <class T, class F>
void fill_blocks(Tensor& t, Generator& gen, F fn) {
  int64_t n = t.numel();
  int64_t blocks = (n + 3) / 4;
  uint64_t first = gen.advance(uint64_t(blocks));
  T* p = t.data<T>();
  parallel_for(0, blocks, 1024, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      std::array<double, 4> v = fn(gen.block(first, uint64_t(i)));
      for (int j = 0; j < 4 && i * 4 + j < n; ++j) store(p + i * 4 + j, compute_t<T>(v[j]));
    }
  });
}

void check_fillable(const Tensor& t, const char* op) {
  FORGE_CHECK(t.is_contiguous() && is_floating(t.dtype()) && t.device().is_cpu(),
              "{}: expected a contiguous floating cpu tensor, got {} {}", op, t.shape(), t.dtype());
}

}  // namespace

void uniform_(Tensor& t, double lo, double hi, Generator& gen) {
  check_fillable(t, "uniform_");
  dispatch_float(t.dtype(), "uniform_", [&]<class T>() {
    // As many random bits as the dtype has significant digits, so u is exact in it and below 1
    // (24 bits of a 16-bit float would round up to 1.0 now and then).
    constexpr int digits = std::is_same_v<T, bf16> ? 8 : std::is_same_v<T, f16> ? 11 : 24;
    const double scale = 1.0 / double(1u << digits);
    fill_blocks<T>(t, gen, [&](std::array<uint32_t, 4> b) {
      std::array<double, 4> v;
      for (int j = 0; j < 4; ++j) v[j] = lo + (hi - lo) * (double(b[j] >> (32 - digits)) * scale);
      return v;
    });
  });
}

namespace {
// The four normal values of one block: Box-Muller on two pairs of uniforms; u1 in (0, 1] so
// log(u1) is finite.
std::array<double, 4> normal_block(std::array<uint32_t, 4> b, double mean, double std) {
  std::array<double, 4> v;
  for (int j = 0; j < 4; j += 2) {
    double u1 = (double(b[j] >> 8) + 1.0) * (1.0 / 16777216.0);
    double u2 = double(uniform_from_bits(b[j + 1]));
    double r = std::sqrt(-2.0 * std::log(u1));
    v[j] = mean + std * r * std::cos(2.0 * M_PI * u2);
    v[j + 1] = mean + std * r * std::sin(2.0 * M_PI * u2);
  }
  return v;
}
}  // namespace

void normal_(Tensor& t, double mean, double std, Generator& gen) {
  check_fillable(t, "normal_");
  dispatch_float(t.dtype(), "normal_", [&]<class T>() {
    fill_blocks<T>(t, gen, [&](std::array<uint32_t, 4> b) { return normal_block(b, mean, std); });
  });
}

void normal_runs_(Tensor& t, double mean, double std, Generator::State at, int64_t run,
                  const std::function<int64_t(int64_t)>& run_start) {
  check_fillable(t, "normal_runs_");
  FORGE_CHECK(run > 0 && t.numel() % run == 0, "normal_runs_: {} elements are not runs of {}",
              t.numel(), run);
  const Generator gen(at.seed);
  dispatch_float(t.dtype(), "normal_runs_", [&]<class T>() {
    T* p = t.data<T>();
    parallel_for(0, t.numel() / run, std::max<int64_t>(1, 4096 / run), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t first = run_start(r);
        uint64_t have = ~uint64_t(0);  // the block in v
        std::array<double, 4> v{};
        for (int64_t k = 0; k < run; ++k) {
          const uint64_t element = uint64_t(first + k), block = element / 4;
          if (block != have) {
            v = normal_block(gen.block(at.offset, block), mean, std);
            have = block;
          }
          store(p + r * run + k, compute_t<T>(v[element % 4]));
        }
      }
    });
  });
}

Tensor rand(const Shape& shape, Generator& gen, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  uniform_(t, 0.0, 1.0, gen);
  return t;
}

Tensor randn(const Shape& shape, Generator& gen, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  normal_(t, 0.0, 1.0, gen);
  return t;
}

Tensor rand(const Shape& shape, DType dtype) {
  return rand(shape, default_generator(), dtype);
}
Tensor randn(const Shape& shape, DType dtype) {
  return randn(shape, default_generator(), dtype);
}

Tensor randperm(int64_t n, Generator& gen) {
  Tensor t = arange(0, double(n), 1, DType::i64);
  int64_t* p = t.data<int64_t>();
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[gen.randint(uint64_t(i + 1))]);
  return t;
}

}  // namespace forge
