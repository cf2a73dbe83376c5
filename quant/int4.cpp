// int4 group-wise weights: quantization, dequantization, checks, and the product int4_linear.
//
// int4_linear has two regimes:
//  - few rows of x (token generation, M = 1): a GEMV per row of x that streams the packed nibbles
//    once and never materialises w_hat; threads split the output columns (rows of w).
//  - many rows (evaluation, prefill): blocks of w's rows are dequantized into a small f32 buffer
//    and multiplied by the packed GEMM (tensor/cpu/gemm.h), which reuses each weight M times.
// Both have an AVX2 kernel (int4_avx2.cpp) and a portable loop; cpu_isa() picks.
#include "quant/int4.h"

#include <cfloat>
#include <cmath>
#include <vector>

#include "quant/int4_kernels.h"
#include "tensor/cpu/cpu_features.h"
#include "tensor/cpu/gemm.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace forge {

namespace {

bool valid_group(int64_t group) {
  return group == 32 || group == 64 || group == 128;
}

bool use_avx2() {
#if defined(__x86_64__)
  return cpu::cpu_isa() != cpu::Isa::portable && cpu::isa_supported(cpu::Isa::avx2);
#else
  return false;  // the AVX2 kernels are not built
#endif
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Quantize / dequantize. Per group of `group` weights of a row (lo, hi its extremes widened to 0):
//   scale = (hi - lo) / 15     (1 for an all-zero group, whose weights are then q = zero: 0
//   exactly) zero  = clamp(round(-lo / scale), 0, 15) q     = clamp(round(w / scale) + zero, 0, 15)
//   round half to even, as torch.round

Int4Weight quantize_int4(const Tensor& w_in, int64_t group) {
  FORGE_CHECK(w_in.defined() && w_in.dim() == 2 && is_floating(w_in.dtype()),
              "quantize_int4: expected a 2-D float weight (N, K), got {} {}",
              w_in.defined() ? dtype_name(w_in.dtype()) : "undefined", w_in.shape());
  FORGE_CHECK(valid_group(group), "quantize_int4: group {} (expected 32, 64 or 128)", group);
  const int64_t n = w_in.size(0), k = w_in.size(1);
  FORGE_CHECK(k % group == 0, "quantize_int4: K = {} (weight {}) is not a multiple of group {}", k,
              w_in.shape(), group);
  Tensor w = w_in.to(DType::f32).contiguous();
  const int64_t groups = k / group;
  Int4Weight q{n,
               k,
               group,
               Tensor::empty({n, k / 2}, DType::u8),
               Tensor::empty({n, groups}, DType::f32),
               Tensor::empty({n, groups}, DType::u8)};
  const float* pw = w.data<float>();
  uint8_t* packed = q.packed.data<uint8_t>();
  float* scales = q.scales.data<float>();
  uint8_t* zeros = q.zeros.data<uint8_t>();
  parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    std::vector<uint8_t> codes(static_cast<size_t>(group));
    for (int64_t row = b; row < e; ++row)
      for (int64_t g = 0; g < groups; ++g) {
        const float* wg = pw + row * k + g * group;
        float lo = 0.0f, hi = 0.0f;
        for (int64_t j = 0; j < group; ++j) {
          lo = std::min(lo, wg[j]);
          hi = std::max(hi, wg[j]);
        }
        float s = (hi - lo) / 15.0f;
        if (s == 0.0f) s = 1.0f;
        float z = std::clamp(std::nearbyint(-lo / s), 0.0f, 15.0f);
        for (int64_t j = 0; j < group; ++j)
          codes[size_t(j)] = uint8_t(std::clamp(std::nearbyint(wg[j] / s) + z, 0.0f, 15.0f));
        scales[row * groups + g] = s;
        zeros[row * groups + g] = uint8_t(z);
        uint8_t* pg = packed + row * (k / 2) + g * group / 2;
        for (int64_t j = 0; j < group / 2; ++j)  // element 2j low nibble, 2j+1 high nibble
          pg[j] = uint8_t(codes[size_t(2 * j)] | (codes[size_t(2 * j + 1)] << 4));
      }
  });
  return q;
}

namespace {

// Portable: w_hat rows [n0, n1) into out ((n1 - n0), K).
void dequantize_rows_portable(const uint8_t* packed, const float* scales, const uint8_t* zeros,
                              int64_t k, int64_t group, int64_t n0, int64_t n1, float* out) {
  const int64_t groups = k / group;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t j = 0; j < k; j += 2) {
      int64_t g = j / group;
      uint8_t byte = packed[n * (k / 2) + j / 2];
      float s = scales[n * groups + g], z = float(zeros[n * groups + g]);
      out[(n - n0) * k + j] = (float(byte & 15) - z) * s;
      out[(n - n0) * k + j + 1] = (float(byte >> 4) - z) * s;
    }
}

void dequantize_rows(const Int4Weight& q, int64_t n0, int64_t n1, float* out) {
  const uint8_t* packed = q.packed.data<uint8_t>();
  const float* scales = q.scales.data<float>();
  const uint8_t* zeros = q.zeros.data<uint8_t>();
#if defined(__x86_64__)
  if (use_avx2())
    return cpu::int4_dequantize_rows_avx2(packed, scales, zeros, q.k, q.group, n0, n1, out);
#endif
  dequantize_rows_portable(packed, scales, zeros, q.k, q.group, n0, n1, out);
}

// Shapes and dtypes (cheap; validate_int4 also reads every zero point).
void check_layout(const Int4Weight& q, const std::string& what) {
  FORGE_CHECK(valid_group(q.group), "{}: int4 group {} (expected 32, 64 or 128)", what, q.group);
  FORGE_CHECK(q.n > 0 && q.k > 0, "{}: int4 weight of size N = {}, K = {}", what, q.n, q.k);
  FORGE_CHECK(q.k % q.group == 0, "{}: int4 K = {} is not a multiple of group {}", what, q.k,
              q.group);
  auto check = [&](const Tensor& t, const char* name, DType dtype, Shape shape) {
    FORGE_CHECK(t.defined(), "{}: int4 {} is missing", what, name);
    FORGE_CHECK(t.dtype() == dtype && t.shape() == shape,
                "{}: int4 {} is {} {}, expected {} {} (N = {}, K = {}, group {})", what, name,
                t.dtype(), t.shape(), dtype, shape, q.n, q.k, q.group);
  };
  check(q.packed, "packed", DType::u8, {q.n, q.k / 2});
  check(q.scales, "scales", DType::f32, {q.n, q.k / q.group});
  check(q.zeros, "zeros", DType::u8, {q.n, q.k / q.group});
}

// Contiguous copies of q's tensors (they are already, unless built by hand from views).
Int4Weight contiguous(const Int4Weight& q) {
  return {q.n, q.k, q.group, q.packed.contiguous(), q.scales.contiguous(), q.zeros.contiguous()};
}

}  // namespace

Tensor dequantize_int4(const Int4Weight& q_in) {
  check_layout(q_in, "dequantize_int4");
  Int4Weight q = contiguous(q_in);
  Tensor out = Tensor::empty({q.n, q.k}, DType::f32);
  float* po = out.data<float>();
  parallel_for(0, q.n, 16, [&](int64_t b, int64_t e) { dequantize_rows(q, b, e, po + b * q.k); });
  return out;
}

void validate_int4(const Int4Weight& q_in, const std::string& what) {
  check_layout(q_in, what);
  Int4Weight q = contiguous(q_in);
  const uint8_t* zeros = q.zeros.data<uint8_t>();
  const float* scales = q.scales.data<float>();
  for (int64_t i = 0; i < q.zeros.numel(); ++i) {
    FORGE_CHECK(zeros[i] <= 15, "{}: int4 zero point {} at (row {}, group {}) is outside [0, 15]",
                what, zeros[i], i / (q.k / q.group), i % (q.k / q.group));
    FORGE_CHECK(std::isfinite(scales[i]) && scales[i] > 0,
                "{}: int4 scale {} at (row {}, group {}) is not a positive finite number", what,
                scales[i], i / (q.k / q.group), i % (q.k / q.group));
  }
}

// ---------------------------------------------------------------------------------------------
// int4_linear: y (M, N) = x (M, K) @ w_hat^T + bias

namespace {

// Below this many rows of x, a GEMV per row; from it on, dequantized blocks and the GEMM.
constexpr int64_t kGemvMaxRows = 4;

// Portable GEMV: y[n] = sum_g s_g * sum_{k in g} x_k (q_k - z_g), rows [n0, n1).
void gemv_portable(const uint8_t* packed, const float* scales, const uint8_t* zeros, int64_t k,
                   int64_t group, const float* x, int64_t n0, int64_t n1, float* y) {
  const int64_t groups = k / group;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = packed + n * (k / 2);
    float acc = 0.0f;
    for (int64_t g = 0; g < groups; ++g) {
      float z = float(zeros[n * groups + g]), dot = 0.0f;
      for (int64_t j = g * group; j < (g + 1) * group; j += 2) {
        uint8_t byte = row[j / 2];
        dot += x[j] * (float(byte & 15) - z) + x[j + 1] * (float(byte >> 4) - z);
      }
      acc += scales[n * groups + g] * dot;
    }
    y[n] = acc;
  }
}

// One row of x (K) against every row of w: y (N).
void gemv(const Int4Weight& q, const float* x, float* y, bool avx2) {
  const uint8_t* packed = q.packed.data<uint8_t>();
  const float* scales = q.scales.data<float>();
  const uint8_t* zeros = q.zeros.data<uint8_t>();
  constexpr int64_t kGrain = 64;  // output columns per task
#if defined(__x86_64__)
  if (avx2) {
    const int64_t groups = q.k / q.group;
    std::vector<float> x_perm(size_t(q.k)), x_sum(size_t(groups), 0.0f);
    for (int64_t b = 0; b < q.k; b += 32)  // evens then odds, per 32 (int4_kernels.h)
      for (int i = 0; i < 16; ++i) {
        x_perm[size_t(b + i)] = x[b + 2 * i];
        x_perm[size_t(b + 16 + i)] = x[b + 2 * i + 1];
      }
    for (int64_t j = 0; j < q.k; ++j) x_sum[size_t(j / q.group)] += x[j];
    parallel_for(0, q.n, kGrain, [&](int64_t b, int64_t e) {
      cpu::int4_gemv_avx2(packed, scales, zeros, q.k, q.group, x_perm.data(), x_sum.data(), b, e,
                          y);
    });
    return;
  }
#endif
  (void)avx2;
  parallel_for(0, q.n, kGrain, [&](int64_t b, int64_t e) {
    gemv_portable(packed, scales, zeros, q.k, q.group, x, b, e, y);
  });
}

// Many rows: w's rows in blocks of `block` (a size fixed by K, so the GEMM's summation order,
// and the result, never depend on the thread count), each dequantized into one buffer (threads
// split its rows) and multiplied by the packed GEMM (threads split its tiles).
void blocked_gemm(const Int4Weight& q, const float* x, int64_t m, float* y) {
  const int64_t block = std::clamp<int64_t>((int64_t(1) << 17) / q.k, 16, 256);  // ~512 KiB
  std::vector<float> w_hat(size_t(std::min(block, q.n) * q.k));
  for (int64_t n0 = 0; n0 < q.n; n0 += block) {
    const int64_t nb = std::min(block, q.n - n0);
    parallel_for(0, nb, 8, [&](int64_t b, int64_t e) {
      dequantize_rows(q, n0 + b, n0 + e, w_hat.data() + b * q.k);
    });
    // y[:, n0:n0+nb] = x (m, K) @ w_hat (nb, K)^T
    cpu::gemm<float>(false, true, m, nb, q.k, 1.0f, x, q.k, w_hat.data(), q.k, 0.0f, y + n0, q.n);
  }
}

}  // namespace

Tensor int4_linear(const Tensor& x_in, const Int4Weight& q_in, const Tensor& bias) {
  check_layout(q_in, "int4_linear");
  FORGE_CHECK(x_in.defined() && (x_in.dtype() == DType::f32 || x_in.dtype() == DType::bf16),
              "int4_linear: expected f32 or bf16 x, got {}",
              x_in.defined() ? dtype_name(x_in.dtype()) : "an undefined tensor");
  FORGE_CHECK(x_in.dim() >= 1 && x_in.size(-1) == q_in.k,
              "int4_linear: x {} does not end in K = {} (int4 weight N = {}, K = {})", x_in.shape(),
              q_in.k, q_in.n, q_in.k);
  if (bias.defined())
    FORGE_CHECK(bias.dtype() == DType::f32 && bias.shape() == Shape{q_in.n},
                "int4_linear: bias is {} {}, expected f32 [{}]", bias.dtype(), bias.shape(),
                q_in.n);
  Int4Weight q = contiguous(q_in);
  const int64_t m = x_in.numel() / q.k;
  Tensor x = x_in.to(DType::f32).contiguous();
  Shape out_shape = x_in.shape();
  out_shape[-1] = q.n;
  Tensor y = Tensor::empty(out_shape, DType::f32);
  const float* px = x.data<float>();
  float* py = y.data<float>();
  if (m == 0) return y;

  if (m < kGemvMaxRows) {
    const bool avx2 = use_avx2();
    for (int64_t i = 0; i < m; ++i) gemv(q, px + i * q.k, py + i * q.n, avx2);
  } else {
    blocked_gemm(q, px, m, py);
  }
  if (bias.defined()) {
    Tensor b = bias.contiguous();
    const float* pb = b.data<float>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < q.n; ++j) py[i * q.n + j] += pb[j];
  }
  return y;
}

}  // namespace forge
