// cuBLASLt products (tensor/cuda/blaslt.h): a handle and a 32 MiB workspace per device, and a cache
// of the descriptors and the algorithm chosen for each distinct problem, so a shape seen before
// (every training step repeats its shapes) skips the heuristic and the descriptor set-up.
//
// Row-major to column-major: the row-major (m, n) output D is the column-major (n, m) matrix D^T,
// and D^T = op(B)^T op(A)^T. So cuBLASLt gets B as its first operand and A as its second, with
// m and n swapped. A row-major B of (k, n) read column-major is the (n, k) matrix B^T, exactly
// op(B)^T: no transpose (trans_b would store B as (n, k), read as (k, n): transposed). Likewise
// for A. The bias (n) then runs along cuBLASLt's rows, broadcast over its columns: the rows of D.
//
// Arguments are validated at the op surface (tensor/ops_matmul.cpp) before dispatch; only
// CUDA-specific limits (batch count, device index) and cuBLASLt's statuses are checked here.
#include "tensor/cuda/blaslt.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <atomic>
#include <map>
#include <mutex>
#include <tuple>

#include "tensor/cuda/cuda.h"
#include "tensor/cuda/cuda_check.h"
#include "tensor/tensor.h"

namespace forge::cuda {

namespace {

constexpr int kMaxDevices = 16;               // as tensor/cuda/cuda_backend.cpp
constexpr size_t kWorkspaceBytes = 32 << 20;  // cuBLASLt's recommendation for Hopper

std::atomic<bool> g_allow_tf32{false};

cudaDataType_t data_type(DType t) {
  switch (t) {
    case DType::f32:
      return CUDA_R_32F;
    case DType::f64:
      return CUDA_R_64F;
    case DType::bf16:
      return CUDA_R_16BF;
    case DType::f16:
      return CUDA_R_16F;
    default:
      throw_error(fmt::format("cuda::matmul: {} is not a matrix-product dtype", t));
  }
}

// The largest power of two (up to 256) that divides the address: cuBLASLt's kernels assume 256
// unless told, and views (narrow, select) can start anywhere.
uint32_t alignment(const void* p) {
  auto v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

// Everything the descriptors and the algorithm depend on. Pointers are not part of it (set per
// call), only their alignments.
using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t,  // device, m, n, k, batch
                       int, int, bool, bool, int,                // dtypes, transposes, epilogue
                       int64_t, int64_t, int64_t,                // lda, ldb, ldd
                       int64_t, int64_t, int64_t,                // batch strides
                       uint32_t, uint32_t, uint32_t, bool>;      // alignments of a, b, d; tf32

// The descriptors of one problem and its algorithm; kept for the life of the process.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;  // cuBLASLt's A (ours B), B, D
  cublasLtMatmulAlgo_t algo{};
  bool f64 = false;  // alpha and beta as double
};

struct DeviceState {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};

std::mutex g_mu;  // guards the states and the plans, and the bias pointer set on a shared desc

DeviceState& state(int device) {
  static DeviceState states[kMaxDevices];
  FORGE_CHECK(device >= 0 && device < kMaxDevices, "cuda::matmul: device {}", device);
  DeviceState& s = states[device];
  if (!s.handle) {
    FORGE_CUDA_CHECK(cudaSetDevice(device));
    FORGE_CUBLAS_CHECK(cublasLtCreate(&s.handle));
    s.workspace = allocator(device).allocate(kWorkspaceBytes, MemoryTag::other);
  }
  return s;
}

cublasLtMatrixLayout_t layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                              int64_t batch, int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  FORGE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, type, uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    int32_t count = int32_t(batch);
    FORGE_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                        &count, sizeof(count)));
    FORGE_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
        l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
  return l;
}

cublasLtEpilogue_t epilogue(const Gemm& g) {
  if (g.bias) return g.gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
  return g.gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT;
}

Plan make_plan(const Gemm& g, cublasLtHandle_t handle, bool tf32) {
  Plan p;
  const cudaDataType_t in = data_type(g.in_dtype), out = data_type(g.out_dtype);
  p.f64 = g.in_dtype == DType::f64;
  const cublasComputeType_t compute = p.f64  ? CUBLAS_COMPUTE_64F
                                      : tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                             : CUBLAS_COMPUTE_32F;
  FORGE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute, p.f64 ? CUDA_R_64F : CUDA_R_32F));
  const cublasOperation_t ta = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
  const cublasOperation_t tb = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  FORGE_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  FORGE_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const cublasLtEpilogue_t epi = epilogue(g);
  FORGE_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (g.bias) {
    // Set per call too (run below); the heuristic wants one to see the epilogue's inputs.
    FORGE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                      &g.bias, sizeof(g.bias)));
  }
  // cuBLASLt's (n, k) op-A from our B, (k, m) op-B from our A, (n, m) D; stored shapes before op.
  p.a = layout(in, g.trans_b ? g.k : g.n, g.trans_b ? g.n : g.k, g.ldb, g.batch, g.stride_b);
  p.b = layout(in, g.trans_a ? g.m : g.k, g.trans_a ? g.k : g.m, g.lda, g.batch, g.stride_a);
  p.d = layout(out, g.n, g.m, g.ldd, g.batch, g.stride_d);

  cublasLtMatmulPreference_t pref = nullptr;
  FORGE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  FORGE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const uint32_t align_a = alignment(g.b), align_b = alignment(g.a), align_d = alignment(g.d);
  FORGE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
  FORGE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
  FORGE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof(align_d)));
  FORGE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof(align_d)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  // C is D (beta reads the output in place), so it has D's layout.
  cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.a, p.b, p.d, p.d, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  FORGE_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0,
              "cuda::matmul: cuBLASLt has no algorithm for ({}, {}) x ({}, {}) batch {}, {} -> {}, "
              "trans_a={} trans_b={}, epilogue {}, lda={} ldb={} ldd={}, alignments {}/{}/{} ({})",
              g.m, g.k, g.k, g.n, g.batch, g.in_dtype, g.out_dtype, g.trans_a, g.trans_b, int(epi),
              g.lda, g.ldb, g.ldd, align_b, align_a, align_d, cublasLtGetStatusString(st));
  p.algo = result.algo;
  return p;
}

}  // namespace

void set_allow_tf32(bool allow) {
  g_allow_tf32 = allow;
}
bool allow_tf32() {
  return g_allow_tf32;
}

void matmul(const Gemm& g) {
  FORGE_ASSERT(g.m > 0 && g.n > 0 && g.k > 0 && g.batch > 0);
  FORGE_CHECK(g.batch <= INT32_MAX, "cuda::matmul: batch {} is too large", g.batch);
  const bool tf32 = g.in_dtype == DType::f32 && g_allow_tf32;
  static std::map<Key, Plan> plans;
  std::lock_guard lock(g_mu);
  DeviceState& s = state(g.device);
  const Key key{g.device,
                g.m,
                g.n,
                g.k,
                g.batch,
                int(g.in_dtype),
                int(g.out_dtype),
                g.trans_a,
                g.trans_b,
                int(epilogue(g)),
                g.lda,
                g.ldb,
                g.ldd,
                g.batch > 1 ? g.stride_a : 0,
                g.batch > 1 ? g.stride_b : 0,
                g.batch > 1 ? g.stride_d : 0,
                alignment(g.a),
                alignment(g.b),
                alignment(g.d),
                tf32};
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, make_plan(g, s.handle, tf32)).first;
  const Plan& p = it->second;
  if (g.bias) {
    FORGE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                      &g.bias, sizeof(g.bias)));
  }
  const float alpha32 = float(g.alpha), beta32 = float(g.beta);
  const void* alpha = p.f64 ? static_cast<const void*>(&g.alpha) : &alpha32;
  const void* beta = p.f64 ? static_cast<const void*>(&g.beta) : &beta32;
  FORGE_CUDA_CHECK(cudaSetDevice(g.device));
  FORGE_CUBLAS_CHECK(cublasLtMatmul(s.handle, p.desc, alpha, g.b, p.a, g.a, p.b, beta, g.d, p.d,
                                    g.d, p.d, &p.algo, s.workspace, kWorkspaceBytes,
                                    cudaStream_t(stream_handle(g.device))));
}

double measure_matmul_tflops(DType dtype, int64_t n, int iters) {
  FORGE_CHECK(n > 0 && iters > 0, "measure_matmul_tflops: n {} and iters {} must be positive", n,
              iters);
  const Device dev = Device::cuda(0);
  Tensor a = Tensor::empty({n, n}, dtype, dev), b = Tensor::empty({n, n}, dtype, dev),
         d = Tensor::empty({n, n}, dtype, dev);
  a.fill_(0.5);
  b.fill_(0.25);
  Gemm g;
  g.m = g.n = g.k = n;
  g.a = a.raw_data();
  g.b = b.raw_data();
  g.d = d.raw_data();
  g.lda = g.ldb = g.ldd = n;
  g.in_dtype = g.out_dtype = dtype;
  matmul(g);  // warm-up: the plan, the workspace, the clocks
  cudaStream_t stream = cudaStream_t(stream_handle(0));
  cudaEvent_t start = nullptr, stop = nullptr;
  FORGE_CUDA_CHECK(cudaEventCreate(&start));
  FORGE_CUDA_CHECK(cudaEventCreate(&stop));
  FORGE_CUDA_CHECK(cudaEventRecord(start, stream));
  for (int i = 0; i < iters; ++i) matmul(g);
  FORGE_CUDA_CHECK(cudaEventRecord(stop, stream));
  FORGE_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  FORGE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  FORGE_CUDA_CHECK(cudaEventDestroy(start));
  FORGE_CUDA_CHECK(cudaEventDestroy(stop));
  const double flops = 2.0 * double(n) * double(n) * double(n) * iters;
  return flops / (double(ms) * 1e-3) / 1e12;
}

}  // namespace forge::cuda
