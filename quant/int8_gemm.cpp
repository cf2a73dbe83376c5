// The int8 GEMM driver: weight packing, kernel selection, A packing, threads; the portable kernel
// and the reference. The per-ISA kernels are in int8_gemm_{avx2,avx_vnni,avx512_vnni}.cpp.
//
// Weight layout (one for every family, so a packed weight serves any kernel):
//   N is cut into panels of 16 output columns; K is rounded up to kp, a multiple of 4, with zeros.
//   Panel p is kp * 16 contiguous bytes: for each k-group g of 4, the 4 weights of column 0, then
//   of column 1, ..., of column 15 (64 bytes):
//     panels[(p * kp + 4 g) * 16 + 4 j + t] = w[16 p + j, 4 g + t]          (0 past n or k)
//   So 64 bytes are one zmm (or two ymm) whose s32 lane j holds column j's four weights, which is
//   what vpdpbusd multiplies against four activation bytes broadcast to every lane; vpmaddubsw +
//   vpmaddwd(1) compute the same four-product sums on AVX2. A microkernel streams a panel once
//   per block of rows, front to back.
//
// Driver loop:
//   for each block of MC rows of A (MC * kp bytes, about 128 KiB, stays in L2):
//     pack the rows, zero-padded to kp (and find the largest byte: see the AVX2 exact path)
//     threads split the panels; for each panel (16 KiB at K = 1024, stays in L1):
//       for each group of MR rows: microkernel (MR x 16 or MR x 32 s32 accumulators in registers),
//       then the epilogue writes s32, or f32 = float(acc - a_zero row_sum[j]) * (a_scale
//       w_scale[j])
//       (+ bias[j]).
// Integer sums are exact, so results never depend on the thread count or on the blocking.
#include "quant/int8_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "quant/int8_gemm_kernels.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace forge {

using int8_detail::Int8Block;
using int8_detail::kPanelCols;

// ---------------------------------------------------------------------------------------------
// Kernel selection

const char* int8_kernel_name(Int8Kernel k) {
  switch (k) {
    case Int8Kernel::portable:
      return "portable";
    case Int8Kernel::avx2:
      return "avx2";
    case Int8Kernel::avx_vnni:
      return "avx_vnni";
    case Int8Kernel::avx512_vnni:
      return "avx512_vnni";
  }
  return "?";
}

Int8Kernel parse_int8_kernel(std::string_view name) {
  for (Int8Kernel k :
       {Int8Kernel::portable, Int8Kernel::avx2, Int8Kernel::avx_vnni, Int8Kernel::avx512_vnni})
    if (name == int8_kernel_name(k)) return k;
  throw_error(fmt::format(
      "unknown int8 kernel '{}' (expected portable, avx2, avx_vnni or avx512_vnni)", name));
}

namespace {

#if defined(__x86_64__)
bool cpu_has_avx2() {
  // libgcc's checks include the OS's support for the ymm state (xgetbv).
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// AVX-VNNI (VEX vpdpbusd on ymm): CPUID.(EAX=7, ECX=1):EAX bit 4, and ymm state enabled by the OS.
bool cpu_has_avx_vnni() {
  if (!cpu_has_avx2()) return false;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
  if (!(eax & (1u << 4))) return false;
  // OSXSAVE (CPUID.1:ECX bit 27), then XCR0 bits 1 and 2 (SSE and AVX state).
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return false;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 6u) == 6u;
}

bool cpu_has_avx512_vnni() {
  // libgcc checks the OS's support for the zmm and mask state too.
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
}
#endif

Int8Kernel initial_kernel() {
  if (const char* env = std::getenv("FORGE_INT8_KERNEL")) {
    Int8Kernel want = parse_int8_kernel(env);
    FORGE_CHECK(int8_kernel_supported(want), "FORGE_INT8_KERNEL={}: this processor cannot run it",
                env);
    return want;
  }
  return best_int8_kernel();
}
Int8Kernel g_kernel = initial_kernel();

}  // namespace

bool int8_kernel_supported(Int8Kernel k) {
  switch (k) {
    case Int8Kernel::portable:
      return true;
#if defined(__x86_64__)
    case Int8Kernel::avx2:
      return cpu_has_avx2();
    case Int8Kernel::avx_vnni:
      return cpu_has_avx_vnni();
    case Int8Kernel::avx512_vnni:
      return cpu_has_avx512_vnni();
#else
    default:
      return false;
#endif
  }
  return false;
}

Int8Kernel best_int8_kernel() {
  for (Int8Kernel k : {Int8Kernel::avx512_vnni, Int8Kernel::avx_vnni, Int8Kernel::avx2})
    if (int8_kernel_supported(k)) return k;
  return Int8Kernel::portable;
}

Int8Kernel int8_kernel() {
  return g_kernel;
}

void set_int8_kernel(Int8Kernel k) {
  FORGE_CHECK(int8_kernel_supported(k), "int8 kernel {} is not supported by this processor",
              int8_kernel_name(k));
  g_kernel = k;
}

// ---------------------------------------------------------------------------------------------
// Weight packing

namespace {
int64_t round_up(int64_t x, int64_t to) {
  return (x + to - 1) / to * to;
}
// Largest K whose sums of u8 x s8 products always fit in s32: 255 * 128 * K < 2^31.
constexpr int64_t kMaxK = 65793;
}  // namespace

PackedInt8Weight pack_int8_weight(const int8_t* w, int64_t n, int64_t k) {
  FORGE_CHECK(n >= 0 && k >= 0, "pack_int8_weight: negative shape ({}, {})", n, k);
  FORGE_CHECK(k <= kMaxK, "pack_int8_weight: K = {} exceeds {}, where s32 sums could overflow", k,
              kMaxK);
  PackedInt8Weight pw;
  pw.n = n;
  pw.k = k;
  const int64_t kp = round_up(k, 4), np = (n + kPanelCols - 1) / kPanelCols;
  pw.panel_bytes = kp * kPanelCols;
  pw.panels = std::make_shared<int8_t[]>(size_t(std::max<int64_t>(1, np * pw.panel_bytes)));
  pw.row_sums = std::make_shared<int32_t[]>(size_t(std::max<int64_t>(1, n)));
  int8_t* dst = pw.panels.get();  // value-initialised: the padding is zero
  for (int64_t j = 0; j < n; ++j) {
    int8_t* col = dst + (j / kPanelCols) * pw.panel_bytes + (j % kPanelCols) * 4;
    int32_t sum = 0;
    for (int64_t p = 0; p < k; ++p) {
      col[(p / 4) * 4 * kPanelCols + p % 4] = w[j * k + p];
      sum += w[j * k + p];
    }
    pw.row_sums[size_t(j)] = sum;
  }
  return pw;
}

// ---------------------------------------------------------------------------------------------
// The portable kernel and the reference

namespace {

// Wrapping s32 subtraction (the vector kernels' vpsubd); exact whenever the true value fits.
int32_t sub_wrap(int32_t a, int32_t b) {
  return int32_t(uint32_t(a) - uint32_t(b));
}

// GCC contracts a * b + c into an FMA in C++ whenever the target has one (-std=c++20 does not
// stop it, unlike C's ISO modes); the epilogue must round twice, like the vector kernels.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
void store_portable(const Int8Block& blk, int64_t i, int64_t j0, const int32_t* acc, int64_t cols) {
  if (blk.acc) {
    for (int64_t j = 0; j < cols; ++j) blk.acc[i * blk.ldc + j0 + j] = acc[j];
    return;
  }
  for (int64_t j = 0; j < cols; ++j) {
    // Two roundings, in this order, in every family: the product, then the bias (no FMA).
    float v = float(sub_wrap(acc[j], blk.col_offset[j0 + j])) * blk.col_scale[j0 + j];
    if (blk.bias) v = v + blk.bias[j0 + j];
    blk.y[i * blk.ldy + j0 + j] = v;
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// One row at a time, 16 columns: plain loops over the packed layout.
void int8_block_portable(const Int8Block& blk, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const int8_t* w = blk.panels + p * blk.kp * kPanelCols;
    const int64_t j0 = p * kPanelCols, cols = std::min<int64_t>(kPanelCols, blk.n - j0);
    for (int64_t i = 0; i < blk.m; ++i) {
      const uint8_t* a = blk.a + i * blk.kp;
      int32_t acc[kPanelCols] = {};
      for (int64_t g = 0; g < blk.kp; g += 4)
        for (int j = 0; j < kPanelCols; ++j)
          for (int t = 0; t < 4; ++t)
            acc[j] += int32_t(a[g + t]) * int32_t(w[g * kPanelCols + 4 * j + t]);
      store_portable(blk, i, j0, acc, cols);
    }
  }
}

int8_detail::Int8BlockKernel block_kernel(Int8Kernel k) {
  FORGE_CHECK(int8_kernel_supported(k), "int8 kernel {} is not supported by this processor",
              int8_kernel_name(k));
#if defined(__x86_64__)
  if (k == Int8Kernel::avx2) return int8_detail::int8_block_avx2;
  if (k == Int8Kernel::avx_vnni) return int8_detail::int8_block_avx_vnni;
  if (k == Int8Kernel::avx512_vnni) return int8_detail::int8_block_avx512_vnni;
#endif
  return int8_block_portable;
}

// Runs `kernel` over all of A: blocks of rows packed, panels split among threads. `out` carries
// the output pointers for row 0 and the epilogue's column arrays.
void run_blocks(const uint8_t* a, int64_t m, int64_t lda, const PackedInt8Weight& w, Int8Block out,
                Int8Kernel kernel) {
  auto fn = block_kernel(kernel);  // throws for a kernel this processor cannot run
  if (m <= 0 || w.n <= 0) return;
  const int64_t kp = round_up(w.k, 4), np = (w.n + kPanelCols - 1) / kPanelCols;
  // Rows per block: about 128 KiB of A, a multiple of every MR (3, 6, 8).
  const int64_t mc =
      std::min(m, std::max<int64_t>(24, (int64_t(1) << 17) / std::max<int64_t>(kp, 1) / 24 * 24));
  std::vector<uint8_t> a_pack(size_t(mc * kp)), a_hi;
  // Each thread's share: at least ~2^18 multiply-adds, so threads pay for themselves.
  const int64_t grain =
      std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, mc * kp * kPanelCols));

  for (int64_t i0 = 0; i0 < m; i0 += mc) {
    const int64_t rows = std::min(mc, m - i0);
    uint8_t largest = 0;
    for (int64_t i = 0; i < rows; ++i) {
      const uint8_t* src = a + (i0 + i) * lda;
      uint8_t* dst = a_pack.data() + i * kp;
      std::memcpy(dst, src, size_t(w.k));
      std::memset(dst + w.k, 0, size_t(kp - w.k));
      for (int64_t p = 0; p < w.k; ++p) largest = std::max(largest, src[p]);
    }
    Int8Block blk = out;
    blk.a = a_pack.data();
    blk.a_hi = nullptr;
    blk.m = rows;
    blk.kp = kp;
    blk.panels = w.panels.get();
    blk.n = w.n;
    if (blk.acc) blk.acc += i0 * blk.ldc;
    if (blk.y) blk.y += i0 * blk.ldy;
    // The AVX2 exact path (see int8_gemm_avx2.cpp): a = (a & 0x7f) + 128 (a >> 7).
    if (kernel == Int8Kernel::avx2 && largest > 127) {
      a_hi.resize(a_pack.size());
      for (int64_t i = 0; i < rows * kp; ++i) {
        a_hi[size_t(i)] = uint8_t(a_pack[size_t(i)] >> 7);
        a_pack[size_t(i)] &= 0x7f;
      }
      blk.a_hi = a_hi.data();
    }
    parallel_for(0, np, grain, [&](int64_t p0, int64_t p1) { fn(blk, p0, p1); });
  }
}

}  // namespace

void int8_gemm_reference(const uint8_t* a, int64_t m, int64_t k, int64_t lda, const int8_t* w,
                         int64_t n, int32_t* acc, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      int64_t sum = 0;
      for (int64_t p = 0; p < k; ++p) sum += int64_t(a[i * lda + p]) * int64_t(w[j * k + p]);
      acc[i * ldc + j] = int32_t(sum);
    }
}

void int8_gemm(const uint8_t* a, int64_t m, int64_t lda, const PackedInt8Weight& w, int32_t* acc,
               int64_t ldc, Int8Kernel kernel) {
  Int8Block out;
  out.acc = acc;
  out.ldc = ldc;
  run_blocks(a, m, lda, w, out, kernel);
}

void int8_linear_f32(const uint8_t* a, int64_t m, int64_t lda, float a_scale, int32_t a_zero,
                     const PackedInt8Weight& w, const float* w_scale, const float* bias, float* y,
                     int64_t ldy, Int8Kernel kernel) {
  // Per-column constants, padded to whole panels so the kernels load full vectors.
  const int64_t padded = round_up(w.n, kPanelCols);
  std::vector<int32_t> offset(size_t(padded), 0);
  std::vector<float> scale(size_t(padded), 0.0f), bias_padded;
  for (int64_t j = 0; j < w.n; ++j) {
    offset[size_t(j)] = int32_t(int64_t(a_zero) * w.row_sums[size_t(j)]);  // mod 2^32
    scale[size_t(j)] = a_scale * w_scale[j];
  }
  if (bias) {
    bias_padded.assign(size_t(padded), 0.0f);
    std::memcpy(bias_padded.data(), bias, size_t(w.n) * sizeof(float));
  }
  Int8Block out;
  out.y = y;
  out.ldy = ldy;
  out.col_offset = offset.data();
  out.col_scale = scale.data();
  out.bias = bias ? bias_padded.data() : nullptr;
  run_blocks(a, m, lda, w, out, kernel);
}

// ---------------------------------------------------------------------------------------------
// Quantizing activations

void quantize_u8(const float* x, int64_t n, float inv_scale, int32_t zero, int32_t qmin,
                 int32_t qmax, uint8_t* q) {
  FORGE_CHECK(0 <= qmin && qmin <= qmax && qmax <= 255,
              "quantize_u8: need 0 <= qmin <= qmax <= 255, got qmin {} and qmax {}", qmin, qmax);
  FORGE_CHECK(zero >= -(1 << 23) && zero <= (1 << 23), "quantize_u8: zero point {} out of range",
              zero);
  // clamp(nearbyint(t) + zero, qmin, qmax) = nearbyint(clamp(t, qmin - zero, qmax - zero)) + zero,
  // since rounding is monotone and leaves integers alone; the bounds are exact floats. NaN gives
  // qmin.
  const float lo = float(qmin - zero), hi = float(qmax - zero);
#if defined(__x86_64__)
  if (int8_kernel() != Int8Kernel::portable)
    return int8_detail::quantize_u8_avx2(x, n, inv_scale, zero, lo, hi, q);
#endif
  for (int64_t i = 0; i < n; ++i) {
    float t = x[i] * inv_scale;
    t = t >= lo ? t : lo;
    t = t <= hi ? t : hi;
    q[i] = uint8_t(int32_t(std::nearbyint(t)) + zero);
  }
}

void min_max(const float* x, int64_t n, float& lo, float& hi) {
  FORGE_CHECK(n > 0, "min_max: empty input");
#if defined(__x86_64__)
  if (int8_kernel() != Int8Kernel::portable) return int8_detail::min_max_avx2(x, n, lo, hi);
#endif
  float a = std::numeric_limits<float>::infinity(), b = -a;
  for (int64_t i = 0; i < n; ++i) {  // a comparison with NaN is false: NaN never replaces a, b
    a = x[i] < a ? x[i] : a;
    b = x[i] > b ? x[i] : b;
  }
  lo = a;
  hi = b;
}

}  // namespace forge
