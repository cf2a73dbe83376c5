// The quantization kernels on a GPU (quant/quant_cuda_kernels.h): fake quantization, activation
// quantization to u8, and the u8 x s8 matrix product with its dequantizing epilogue. Compiled with
// -fmad=false (quant/meson.build): no multiply-add is fused, so the float results round as the
// CPU's do.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "quant/quant_cuda_kernels.h"
#include "tensor/cuda/device_types.cuh"

namespace forge::cuda::kernels {

namespace {

dim3 grid_for(int64_t n) {
  int64_t blocks = (n + 255) / 256;
  return dim3(unsigned(blocks < 1 ? 1 : (blocks > 524280 ? 524280 : blocks)));
}

// ---------------------------------------------------------------------------------------------
// Fake quantization: quant/fake_quant.cpp's fake_quantize_run, one element per step. rint rounds
// half to even (the default rounding mode), as the CPU's nearbyint.

template <class T>
__global__ void fake_quantize_kernel(int64_t n, int64_t inner, int64_t channels, const T* x, T* y,
                                     uint8_t* mask, const float* scale, const int32_t* zero,
                                     int32_t qmin, int32_t qmax) {
  using C = typename Compute<T>::type;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i / inner) % channels;
    const C s = C(scale[c]), inv = C(1) / s, z = C(zero[c]), lo = C(qmin), hi = C(qmax);
    const C r = rint(load(x + i) * inv) + z;
    const C q = r < lo ? lo : (r > hi ? hi : r);
    store(y + i, (q - z) * s);
    mask[i] = uint8_t((r >= lo) & (r <= hi));
  }
}

// ---------------------------------------------------------------------------------------------
// Activation quantization to u8: quant/int8_gemm.cpp's quantize_u8, one element per step. The
// clamp comes before the rounding (the same result, since rounding is monotone and lo, hi are
// integers), and a NaN fails both comparisons' first branch, so it becomes lo (qmin), as the CPU's.

__global__ void quantize_u8_kernel(int64_t n, const float* x, float inv_scale, int32_t zero,
                                   float lo, float hi, uint8_t* q) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float t = x[i] * inv_scale;
    t = t >= lo ? t : lo;
    t = t <= hi ? t : hi;
    q[i] = uint8_t(int32_t(rintf(t)) + zero);
  }
}

// ---------------------------------------------------------------------------------------------
// int8 GEMM. A block of 16 x 16 threads computes a 16 x 16 tile of the output: thread (ty, tx)
// row i = 16 by + ty, column j = 16 bx + tx. K goes in steps of 64 bytes: each thread loads one
// 4-byte word of an A row and of a W row into shared memory, then every thread runs 16 dp4a.
// dp4a multiplies signed bytes, so a u8 value a enters as the s8 value a - 128 (its top bit
// flipped) and the sum is corrected by 128 * sum_k w, which the same loop counts:
//   sum_k a w = sum_k (a - 128) w + 128 sum_k w      (exact modulo 2^32, as the CPU's s32 sums)
// Bytes past k load as w = 0, so they add nothing to either sum.

constexpr int kTile = 16, kTileK = 64, kWords = kTileK / 4;

__global__ void int8_gemm_kernel(const uint8_t* a, int64_t m, int64_t k, int64_t lda,
                                 const int8_t* w, int64_t n, int64_t ldw, int32_t* acc, int64_t ldc,
                                 float* y, int64_t ldy, float a_scale, int32_t a_zero,
                                 const float* w_scale, const float* bias) {
  __shared__ int32_t as[kTile][kWords + 1];  // +1: threads of a warp read different banks
  __shared__ int32_t ws[kTile][kWords + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = int64_t(blockIdx.y) * kTile + ty, j = int64_t(blockIdx.x) * kTile + tx;
  const int64_t a_row = i, w_row = int64_t(blockIdx.x) * kTile + ty;  // rows this thread loads
  int32_t sum = 0, w_sum = 0;
  for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
    uint32_t va = 0, vw = 0;
    for (int b = 0; b < 4; ++b) {
      const int64_t kk = k0 + 4 * tx + b;
      if (kk < k) {
        if (a_row < m) va |= uint32_t(a[a_row * lda + kk]) << (8 * b);
        if (w_row < n) vw |= uint32_t(uint8_t(w[w_row * ldw + kk])) << (8 * b);
      }
    }
    as[ty][tx] = int32_t(va ^ 0x80808080u);  // each byte a -> a - 128 as s8
    ws[ty][tx] = int32_t(vw);
    __syncthreads();
    for (int q = 0; q < kWords; ++q) {
      sum = __dp4a(as[ty][q], ws[tx][q], sum);
      w_sum = __dp4a(0x01010101, ws[tx][q], w_sum);
    }
    __syncthreads();
  }
  if (i >= m || j >= n) return;
  // 128 * w_sum and the sum in unsigned arithmetic: wrapping is defined there.
  const int32_t total = int32_t(uint32_t(sum) + 128u * uint32_t(w_sum));
  if (!y) {
    acc[i * ldc + j] = total;
    return;
  }
  float v = float(total - a_zero * w_sum) * (a_scale * w_scale[j]);
  if (bias) v = v + bias[j];
  y[i * ldy + j] = v;
}

}  // namespace

int fake_quantize(int dtype, int64_t n, int64_t inner, int64_t channels, const void* x, void* y,
                  uint8_t* mask, const float* scale, const int32_t* zero, int32_t qmin,
                  int32_t qmax, void* stream) {
  if (n == 0) return 0;
  auto launch = [&]<class T>() {
    fake_quantize_kernel<T><<<grid_for(n), 256, 0, cudaStream_t(stream)>>>(
        n, inner, channels, static_cast<const T*>(x), static_cast<T*>(y), mask, scale, zero, qmin,
        qmax);
  };
  switch (dtype) {  // DType codes of tensor/dtype.h
    case 0:
      launch.template operator()<float>();
      break;
    case 1:
      launch.template operator()<double>();
      break;
    case 2:
      launch.template operator()<__nv_bfloat16>();
      break;
    case 3:
      launch.template operator()<__half>();
      break;
    default:
      return int(cudaErrorInvalidValue);
  }
  return int(cudaGetLastError());
}

int quantize_u8(int64_t n, const float* x, float inv_scale, int32_t zero, float lo, float hi,
                uint8_t* q, void* stream) {
  if (n == 0) return 0;
  quantize_u8_kernel<<<grid_for(n), 256, 0, cudaStream_t(stream)>>>(n, x, inv_scale, zero, lo, hi,
                                                                    q);
  return int(cudaGetLastError());
}

int int8_gemm(const uint8_t* a, int64_t m, int64_t k, int64_t lda, const int8_t* w, int64_t n,
              int64_t ldw, int32_t* acc, int64_t ldc, float* y, int64_t ldy, float a_scale,
              int32_t a_zero, const float* w_scale, const float* bias, void* stream) {
  if (m == 0 || n == 0) return 0;
  const int64_t blocks_m = (m + kTile - 1) / kTile, blocks_n = (n + kTile - 1) / kTile;
  if (blocks_m > 65535 || blocks_n > 2147483647) return int(cudaErrorInvalidConfiguration);
  int8_gemm_kernel<<<dim3(unsigned(blocks_n), unsigned(blocks_m)), dim3(kTile, kTile), 0,
                     cudaStream_t(stream)>>>(a, m, k, lda, w, n, ldw, acc, ldc, y, ldy, a_scale,
                                             a_zero, w_scale, bias);
  return int(cudaGetLastError());
}

}  // namespace forge::cuda::kernels
