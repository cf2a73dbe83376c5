// Elementwise ops: unary, binary with broadcasting, where/masked_fill, and the activation
// backwards.
#include <algorithm>
#include <array>
#include <cmath>
#include <initializer_list>

#include "tensor/cpu/activations.h"
#include "tensor/cpu/cpu_features.h"
#include "tensor/cpu/loops.h"
#include "tensor/cpu/vec_math.h"
#include "tensor/cuda/cuda_misc.h"
#include "tensor/cuda/cuda_ops.h"
#include "tensor/ops.h"

namespace forge {

namespace {

void check_cpu(const Tensor& a, const char* op) {
  FORGE_CHECK(a.defined(), "{}: undefined tensor", op);
  FORGE_CHECK(a.device().is_cpu(), "{}: not available for tensors on {} yet", op, a.device().str());
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  FORGE_CHECK(a.dtype() == b.dtype(), "{}: dtypes differ ({} {} and {} {})", op, a.dtype(),
              a.shape(), b.dtype(), b.shape());
}

// The message dispatch_float gives, checked before the dispatch on device so a GPU gives it too.
void check_floating(const Tensor& a, const char* op) {
  FORGE_CHECK(is_floating(a.dtype()), "{}: expected a floating dtype, got {}", op, a.dtype());
}

// out[i] = f(a[i]) with T the storage type and f on its compute type.
template <class TOut, class TIn, class F>
void unary_loop(Tensor& out, const Tensor& a, F f) {
  cpu::for_each_strided<2>(
      out.shape(), {static_cast<char*>(out.raw_data()), static_cast<char*>(a.raw_data())},
      {&out.strides(), &a.strides()}, {int64_t(sizeof(TOut)), int64_t(sizeof(TIn))},
      [f](char** p, int64_t n, const int64_t* s) {
        TOut* o = reinterpret_cast<TOut*>(p[0]);
        const TIn* x = reinterpret_cast<const TIn*>(p[1]);
        if (s[0] == sizeof(TOut) && s[1] == sizeof(TIn)) {
          for (int64_t i = 0; i < n; ++i) store(o + i, f(load(x + i)));
        } else {
          for (int64_t i = 0; i < n; ++i)
            store(reinterpret_cast<TOut*>(p[0] + i * s[0]),
                  f(load(reinterpret_cast<const TIn*>(p[1] + i * s[1]))));
        }
      });
}

// out[i] = f(a[i], b[i]); a and b already expanded to out's shape.
template <class TOut, class TIn, class F>
void binary_loop(Tensor& out, const Tensor& a, const Tensor& b, F f) {
  constexpr int64_t eo = sizeof(TOut), ei = sizeof(TIn);
  cpu::for_each_strided<3>(out.shape(),
                           {static_cast<char*>(out.raw_data()), static_cast<char*>(a.raw_data()),
                            static_cast<char*>(b.raw_data())},
                           {&out.strides(), &a.strides(), &b.strides()}, {eo, ei, ei},
                           [f](char** p, int64_t n, const int64_t* s) {
                             TOut* o = reinterpret_cast<TOut*>(p[0]);
                             const TIn* x = reinterpret_cast<const TIn*>(p[1]);
                             const TIn* y = reinterpret_cast<const TIn*>(p[2]);
                             if (s[0] == eo && s[1] == ei && s[2] == ei) {
                               for (int64_t i = 0; i < n; ++i)
                                 store(o + i, f(load(x + i), load(y + i)));
                             } else if (s[0] == eo && s[1] == ei && s[2] == 0) {
                               auto yv = load(y);
                               for (int64_t i = 0; i < n; ++i) store(o + i, f(load(x + i), yv));
                             } else if (s[0] == eo && s[1] == 0 && s[2] == ei) {
                               auto xv = load(x);
                               for (int64_t i = 0; i < n; ++i) store(o + i, f(xv, load(y + i)));
                             } else {
                               for (int64_t i = 0; i < n; ++i)
                                 store(reinterpret_cast<TOut*>(p[0] + i * s[0]),
                                       f(load(reinterpret_cast<const TIn*>(p[1] + i * s[1])),
                                         load(reinterpret_cast<const TIn*>(p[2] + i * s[2]))));
                             }
                           });
}

// Whether f32 tensors can take a unit-stride run kernel of the avx512 family (cpu/activations.h)
// instead of the per-element loops: all contiguous f32 on the CPU, with that family in use.
bool avx512_runs(std::initializer_list<const Tensor*> ts) {
  if (cpu::cpu_isa() != cpu::Isa::avx512) return false;
  for (const Tensor* t : ts)
    if (!t->device().is_cpu() || t->dtype() != DType::f32 || !t->is_contiguous()) return false;
  return true;
}

// Runs of `run` over [0, n) split across threads as for_each_strided splits the loops (each
// element is written by one call, so the split does not change results).
template <class F>
void split_runs(int64_t n, F run) {
  parallel_for(0, n, int64_t(1) << 15, [&](int64_t b, int64_t e) { run(b, e - b); });
}

enum class Kinds { floating, any };

using CudaUnary = cuda::kernels::Unary;
using CudaBinary = cuda::kernels::Binary;

template <class F>
Tensor unary_op(const Tensor& a, const char* op, F f) {
  check_cpu(a, op);
  Tensor out = Tensor::empty(a.shape(), a.dtype());
  dispatch_float(a.dtype(), op, [&]<class T>() { unary_loop<T, T>(out, a, f); });
  return out;
}

// The same with `code`, the map's name for the CUDA kernels, which run it when `a` is on a GPU.
// The checks come first, so both devices refuse the same arguments with the same message.
// run_avx512 (optional): the same op over unit-stride f32 runs (x, out, n), taken where
// avx512_runs allows.
using UnaryRun = void (*)(const float*, float*, int64_t);

template <class F>
Tensor unary_op(const Tensor& a, const char* op, CudaUnary code, F f,
                UnaryRun run_avx512 = nullptr) {
  FORGE_CHECK(a.defined(), "{}: undefined tensor", op);
  check_floating(a, op);
  if (a.device().is_cuda()) return cuda::unary(code, a, op);
  if (run_avx512 && avx512_runs({&a})) {
    Tensor out = Tensor::empty(a.shape(), DType::f32);
    const float* x = a.data<float>();
    float* y = out.data<float>();
    split_runs(a.numel(), [&](int64_t b, int64_t n) { run_avx512(x + b, y + b, n); });
    return out;
  }
  return unary_op(a, op, f);
}

template <class F>
Tensor binary_op(const Tensor& a, const Tensor& b, const char* op, Kinds kinds, CudaBinary code,
                 F f) {
  FORGE_CHECK(a.defined() && b.defined(), "{}: undefined tensor", op);
  check_same_device(a, b, op);
  check_same_dtype(a, b, op);
  Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  if (kinds == Kinds::floating) check_floating(a, op);
  if (a.device().is_cuda()) return cuda::binary(code, a, b, op);
  Tensor out = Tensor::empty(shape, a.dtype());
  Tensor ea = a.expand(shape), eb = b.expand(shape);
  auto run = [&]<class T>() { binary_loop<T, T>(out, ea, eb, f); };
  if (kinds == Kinds::floating)
    dispatch_float(a.dtype(), op, run);
  else
    dispatch_all(a.dtype(), op, run);
  return out;
}

template <class F>
Tensor compare_op(const Tensor& a, const Tensor& b, const char* op, cuda::kernels::Compare code,
                  F f) {
  FORGE_CHECK(a.defined() && b.defined(), "{}: undefined tensor", op);
  check_same_device(a, b, op);
  check_same_dtype(a, b, op);
  Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  if (a.device().is_cuda()) return cuda::compare(code, a, b, op);
  Tensor out = Tensor::empty(shape, DType::u8);
  Tensor ea = a.expand(shape), eb = b.expand(shape);
  dispatch_all(a.dtype(), op, [&]<class T>() {
    binary_loop<uint8_t, T>(out, ea, eb, [&](auto x, auto y) { return uint8_t(f(x, y)); });
  });
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Binary

Tensor add(const Tensor& a, const Tensor& b) {
  return binary_op(a, b, "add", Kinds::any, CudaBinary::add, [](auto x, auto y) { return x + y; });
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return binary_op(a, b, "sub", Kinds::any, CudaBinary::sub, [](auto x, auto y) { return x - y; });
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return binary_op(a, b, "mul", Kinds::any, CudaBinary::mul, [](auto x, auto y) { return x * y; });
}
Tensor div(const Tensor& a, const Tensor& b) {
  return binary_op(a, b, "div", Kinds::floating, CudaBinary::div,
                   [](auto x, auto y) { return x / y; });
}
Tensor maximum(const Tensor& a, const Tensor& b) {
  return binary_op(a, b, "maximum", Kinds::any, CudaBinary::maximum,
                   [](auto x, auto y) { return x > y ? x : y; });
}

Tensor add(const Tensor& a, double s) {
  FORGE_CHECK(a.defined(), "add: undefined tensor");
  if (a.device().is_cuda()) return cuda::affine(a, 1.0, s, "add");
  Tensor out = Tensor::empty(a.shape(), a.dtype());
  dispatch_all(a.dtype(), "add", [&]<class T>() {
    auto v = compute_t<T>(s);
    unary_loop<T, T>(out, a, [v](auto x) { return x + v; });
  });
  return out;
}

Tensor mul(const Tensor& a, double s) {
  FORGE_CHECK(a.defined(), "mul: undefined tensor");
  if (a.device().is_cuda()) return cuda::affine(a, s, 0.0, "mul");
  Tensor out = Tensor::empty(a.shape(), a.dtype());
  dispatch_all(a.dtype(), "mul", [&]<class T>() {
    auto v = compute_t<T>(s);
    unary_loop<T, T>(out, a, [v](auto x) { return x * v; });
  });
  return out;
}

Tensor eq(const Tensor& a, const Tensor& b) {
  return compare_op(a, b, "eq", cuda::kernels::Compare::eq, [](auto x, auto y) { return x == y; });
}
Tensor gt(const Tensor& a, const Tensor& b) {
  return compare_op(a, b, "gt", cuda::kernels::Compare::gt, [](auto x, auto y) { return x > y; });
}
Tensor lt(const Tensor& a, const Tensor& b) {
  return compare_op(a, b, "lt", cuda::kernels::Compare::lt, [](auto x, auto y) { return x < y; });
}
Tensor ne(const Tensor& a, const Tensor& b) {
  return compare_op(a, b, "ne", cuda::kernels::Compare::ne, [](auto x, auto y) { return x != y; });
}

// ---------------------------------------------------------------------------------------------
// Unary

Tensor neg(const Tensor& a) {
  return unary_op(a, "neg", CudaUnary::neg, [](auto x) { return -x; });
}
Tensor exp(const Tensor& a) {
  return unary_op(a, "exp", CudaUnary::exp, [](auto x) { return cpu::vexp(x); });
}
Tensor log(const Tensor& a) {
  return unary_op(a, "log", CudaUnary::log, [](auto x) { return std::log(x); });
}
Tensor sqrt(const Tensor& a) {
  return unary_op(a, "sqrt", CudaUnary::sqrt, [](auto x) { return std::sqrt(x); });
}
Tensor tanh(const Tensor& a) {
  return unary_op(a, "tanh", CudaUnary::tanh, [](auto x) { return cpu::vtanh(x); });
}
Tensor sigmoid(const Tensor& a) {
  return unary_op(a, "sigmoid", CudaUnary::sigmoid, [](auto x) {
    using C = decltype(x);
    return C(1) / (C(1) + cpu::vexp(-x));
  });
}
Tensor relu(const Tensor& a) {
  return unary_op(a, "relu", CudaUnary::relu, [](auto x) { return x > 0 ? x : decltype(x)(0); });
}
Tensor abs(const Tensor& a) {
  return unary_op(a, "abs", CudaUnary::abs, [](auto x) { return std::abs(x); });
}

Tensor pow(const Tensor& a, double exponent) {
  FORGE_CHECK(a.defined(), "pow: undefined tensor");
  check_floating(a, "pow");
  if (a.device().is_cuda()) return cuda::pow_scalar(a, exponent, "pow");
  if (exponent == 2.0) return unary_op(a, "pow", [](auto x) { return x * x; });
  if (exponent == 1.0) return unary_op(a, "pow", [](auto x) { return x; });
  return unary_op(a, "pow", [exponent](auto x) {
    using C = decltype(x);
    return C(std::pow(x, C(exponent)));
  });
}

// GELU. tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); erf form: 0.5 x (1 +
// erf(x/sqrt2)).
namespace {
constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;
}  // namespace

// The tanh form through the identity 0.5 (1 + tanh(u)) = 1 / (1 + e^-2u): one exponential and one
// division per element instead of tanh's two branches, and no cancellation for large |u|.
// Contiguous f32 on the avx512 family takes the same formula in AVX-512 runs (cpu/activations.h).
Tensor gelu(const Tensor& a, GeluApprox approx) {
  if (approx == GeluApprox::tanh)
    return unary_op(
        a, "gelu", CudaUnary::gelu_tanh,
        [](auto x) {
          using C = decltype(x);
          C two_u = C(2 * kSqrt2OverPi) * (x + C(0.044715) * x * x * x);
          return x / (C(1) + cpu::vexp(-two_u));
        },
        cpu::gelu_tanh_run_avx512);
  return unary_op(a, "gelu", CudaUnary::gelu_erf, [](auto x) {
    using C = decltype(x);
    return C(0.5) * x * (C(1) + cpu::verf(x * C(kInvSqrt2)));
  });
}

// ---------------------------------------------------------------------------------------------
// Activation backwards: grad * f'(x)

namespace {
using CudaBackward = cuda::kernels::ActivationBackward;

// run_avx512 (optional): the same backward over unit-stride f32 runs (g, x, out, n), taken where
// avx512_runs allows.
using BackwardRun = void (*)(const float*, const float*, float*, int64_t);

template <class F>
Tensor backward_op(const Tensor& grad, const Tensor& x, const char* op,
                   cuda::kernels::ActivationBackward code, F f, BackwardRun run_avx512 = nullptr) {
  FORGE_CHECK(grad.defined() && x.defined(), "{}: undefined tensor", op);
  check_same_device(grad, x, op);
  check_same_dtype(grad, x, op);
  FORGE_CHECK(grad.shape() == x.shape(), "{}: grad {} and input {} differ in shape", op,
              grad.shape(), x.shape());
  check_floating(x, op);
  if (x.device().is_cuda()) return cuda::activation_backward(code, grad, x, op);
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  if (run_avx512 && avx512_runs({&grad, &x})) {
    const float *g = grad.data<float>(), *v = x.data<float>();
    float* o = out.data<float>();
    split_runs(x.numel(), [&](int64_t b, int64_t n) { run_avx512(g + b, v + b, o + b, n); });
    return out;
  }
  dispatch_float(x.dtype(), op, [&]<class T>() { binary_loop<T, T>(out, grad, x, f); });
  return out;
}
}  // namespace

Tensor relu_backward(const Tensor& grad, const Tensor& x) {
  return backward_op(grad, x, "relu_backward", CudaBackward::relu,
                     [](auto g, auto v) { return v > 0 ? g : decltype(g)(0); });
}

Tensor gelu_backward(const Tensor& grad, const Tensor& x, GeluApprox approx) {
  if (approx == GeluApprox::tanh)
    // With s = 0.5 (1 + tanh(u)): d/dx [x s] = s + 2 x s (1 - s) u'. In terms of q = e^-2|u| <= 1
    // and r = 1 / (1 + q): s = r (u >= 0) or q r (u < 0), and s (1 - s) = q r^2. Nothing overflows
    // (e^-2u does for u < -44 in f32, and inf * 0 made the gradient NaN below x = -10) and
    // nothing cancels as s -> 1. CUDA's kernel is the same (tensor/cuda/misc.cu), and so are the
    // AVX-512 runs (cpu/activations.h).
    return backward_op(
        grad, x, "gelu_backward", CudaBackward::gelu_tanh,
        [](auto g, auto v) {
          using C = decltype(v);
          C v2 = v * v;
          C u = C(kSqrt2OverPi) * (v + C(0.044715) * v2 * v);
          C q = cpu::vexp(C(-2) * (u < C(0) ? -u : u));
          C r = C(1) / (C(1) + q);
          C s = u < C(0) ? q * r : r;
          C du = C(kSqrt2OverPi) * (C(1) + C(3 * 0.044715) * v2);
          return g * (s + C(2) * (q * r * r * v) * du);
        },
        cpu::gelu_tanh_backward_run_avx512);
  return backward_op(grad, x, "gelu_backward", CudaBackward::gelu_erf, [](auto g, auto v) {
    using C = decltype(v);
    C cdf = C(0.5) * (C(1) + cpu::verf(v * C(kInvSqrt2)));
    C pdf = C(kInvSqrt2Pi) * cpu::vexp(C(-0.5) * v * v);
    return g * (cdf + v * pdf);
  });
}

Tensor tanh_backward(const Tensor& grad, const Tensor& y) {
  return backward_op(grad, y, "tanh_backward", CudaBackward::tanh,
                     [](auto g, auto t) { return g * (decltype(t)(1) - t * t); });
}

Tensor sigmoid_backward(const Tensor& grad, const Tensor& y) {
  return backward_op(grad, y, "sigmoid_backward", CudaBackward::sigmoid,
                     [](auto g, auto s) { return g * s * (decltype(s)(1) - s); });
}

// ---------------------------------------------------------------------------------------------
// where, masked_fill

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  FORGE_CHECK(cond.defined() && a.defined() && b.defined(), "where: undefined tensor");
  check_same_device(cond, a, "where");
  check_same_device(cond, b, "where");
  check_same_dtype(a, b, "where");
  FORGE_CHECK(is_integral(cond.dtype()), "where: condition must be an integer mask, got {}",
              cond.dtype());
  Shape shape =
      broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  if (cond.device().is_cuda()) return cuda::where(cond, a, b);
  // Any nonzero value is true: compare, do not convert (a cast to u8 would wrap 256 to 0).
  Tensor c8 = cond.dtype() == DType::u8 ? cond : ne(cond, zeros({}, cond.dtype()));
  Tensor c = c8.expand(shape), ea = a.expand(shape), eb = b.expand(shape);
  Tensor out = Tensor::empty(shape, a.dtype());
  dispatch_all(a.dtype(), "where", [&]<class T>() {
    cpu::for_each_strided<4>(
        shape,
        {static_cast<char*>(out.raw_data()), static_cast<char*>(c.raw_data()),
         static_cast<char*>(ea.raw_data()), static_cast<char*>(eb.raw_data())},
        {&out.strides(), &c.strides(), &ea.strides(), &eb.strides()},
        {int64_t(sizeof(T)), 1, int64_t(sizeof(T)), int64_t(sizeof(T))},
        [](char** p, int64_t n, const int64_t* s) {
          for (int64_t i = 0; i < n; ++i) {
            bool take_a = *reinterpret_cast<const uint8_t*>(p[1] + i * s[1]) != 0;
            *reinterpret_cast<T*>(p[0] + i * s[0]) =
                *reinterpret_cast<const T*>(p[take_a ? 2 : 3] + i * s[take_a ? 2 : 3]);
          }
        });
  });
  return out;
}

Tensor masked_fill(const Tensor& a, const Tensor& mask, double value) {
  FORGE_CHECK(a.defined(), "masked_fill: undefined tensor");
  Tensor v = full({}, value, a.dtype(), a.device());
  return where(mask, v, a);
}

// ---------------------------------------------------------------------------------------------
// Dropout

DropoutResult dropout(const Tensor& x, double p, Generator& gen) {
  FORGE_CHECK(x.defined(), "dropout: undefined tensor");
  check_floating(x, "dropout");
  if (x.device().is_cuda()) {  // the mask drawn on the device: the same bits as the CPU's
    DropoutResult r{Tensor(), cuda::dropout_mask(x.shape(), p, gen, 0, 0, -1, x.device())};
    r.y = cuda::dropout_apply(x, r.mask, p);
    return r;
  }
  DropoutResult r{Tensor(), dropout_mask(x.shape(), p, gen)};
  r.y = dropout_backward(x, r.mask, p);  // the same arithmetic: x * mask / (1 - p)
  return r;
}

Tensor dropout_mask(const Shape& whole, double p, Generator& gen, int dim, int64_t start,
                    int64_t length) {
  FORGE_CHECK(p >= 0.0 && p < 1.0, "dropout: probability must be in [0, 1), got {}", p);
  const int nd = int(whole.size());
  FORGE_CHECK(nd == 0 || (dim >= 0 && dim < nd), "dropout_mask: dim {} of a {}-d shape", dim, nd);
  const int64_t n_dim = nd == 0 ? 1 : whole[dim];
  if (length < 0) length = n_dim - start;
  FORGE_CHECK(start >= 0 && start + length <= n_dim,
              "dropout_mask: slice [{}, {}) of dim {} (size {}) of {}", start, start + length, dim,
              n_dim, whole);
  // The slice is `outer` runs of `length * inner` elements; run o starts at element
  // (o * n_dim + start) * inner of the whole tensor.
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < dim; ++d) outer *= whole[d];
  for (int d = dim + 1; d < nd; ++d) inner *= whole[d];
  const int64_t total = outer * n_dim * inner, run = length * inner;
  Shape out_shape = whole;
  if (nd > 0) out_shape[dim] = length;
  Tensor mask = Tensor::empty(out_shape, DType::u8);
  // Element i of the whole draw keeps when the i-th uniform, uniform_from_bits(w) of word i % 4
  // of block i / 4, is >= p: a pure function of the generator state and i, so any thread split
  // (and any slice) gives the same bits. That uniform is (w >> 8) 2^-24 exactly, so the test is
  // (w >> 8) >= ceil(p 2^24) (p as a float, as the uniform is compared with), in integers.
  const uint64_t first = gen.advance(uint64_t((total + 3) / 4));
  const uint32_t keep_from = uint32_t(std::ceil(double(float(p)) * 16777216.0));
  uint8_t* m = mask.data<uint8_t>();
  parallel_for(0, outer * run, 1 << 14, [&](int64_t b, int64_t e) {
    constexpr int64_t kChunk = 1024;  // elements drawn at a time
    uint32_t words[kChunk + 8];       // their blocks' words, from the block holding the first
    for (int64_t k = b; k < e;) {
      const int64_t o = k / run, j = k % run;             // run and offset in it of slice element k
      const int64_t i = (o * n_dim + start) * inner + j;  // its index in the whole draw
      const int64_t count = std::min({e - k, run - j, kChunk});
      const int64_t block0 = i / 4, blocks = (i + count + 3) / 4 - block0;
      gen.blocks(first + uint64_t(block0), blocks, words);
      const uint32_t* w = words + (i - 4 * block0);
      for (int64_t q = 0; q < count; ++q) m[k + q] = (w[q] >> 8) >= keep_from;
      k += count;
    }
  });
  return mask;
}

namespace {
// out = g * scale where the mask is set, else 0. Restrict pointers: a byte pointer may alias
// anything, and without them the loop stays scalar.
template <class T, class C>
void masked_scale(const T* __restrict g, const uint8_t* __restrict mask, C scale, int64_t n,
                  T* __restrict out) {
  for (int64_t i = 0; i < n; ++i) store(out + i, mask[i] ? C(load(g + i)) * scale : C(0));
}
}  // namespace

Tensor dropout_backward(const Tensor& grad, const Tensor& mask, double p) {
  FORGE_CHECK(grad.defined() && mask.defined(), "dropout_backward: undefined tensor");
  check_same_device(grad, mask, "dropout_backward");
  FORGE_CHECK(mask.dtype() == DType::u8 && mask.shape() == grad.shape(),
              "dropout_backward: mask {} {} does not match grad {}", mask.dtype(), mask.shape(),
              grad.shape());
  check_floating(grad, "dropout");
  if (grad.device().is_cuda()) return cuda::dropout_apply(grad, mask, p);
  Tensor g = grad.contiguous(), mk = mask.contiguous();
  Tensor out = Tensor::empty(g.shape(), g.dtype());
  dispatch_float(g.dtype(), "dropout", [&]<class T>() {
    using C = compute_t<T>;
    C scale = C(1.0 / (1.0 - p));
    const T* pg = g.data<T>();
    const uint8_t* pm = mk.data<uint8_t>();
    T* po = out.data<T>();
    parallel_for(0, g.numel(), 1 << 15,
                 [&](int64_t b, int64_t e) { masked_scale(pg + b, pm + b, scale, e - b, po + b); });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// In place

Tensor& add_(Tensor& a, const Tensor& b, double alpha) {
  FORGE_CHECK(a.defined() && b.defined(), "add_: undefined tensor");
  check_same_device(a, b, "add_");
  check_same_dtype(a, b, "add_");
  if (b.shape() != a.shape())
    FORGE_CHECK(broadcast_shapes(a.shape(), b.shape(), "add_") == a.shape(),
                "add_: {} does not broadcast to the shape of the tensor added into, {}", b.shape(),
                a.shape());
  if (a.device().is_cuda()) {
    cuda::add_(a, b, alpha);
    return a;
  }
  Tensor eb = b.shape() == a.shape() ? b : b.expand(a.shape());
  dispatch_all(a.dtype(), "add_", [&]<class T>() {
    using C = compute_t<T>;
    C al = C(alpha);
    if (alpha == 1.0)
      binary_loop<T, T>(a, a, eb, [](auto x, auto y) { return x + y; });
    else
      binary_loop<T, T>(a, a, eb, [al](auto x, auto y) { return x + al * y; });
  });
  return a;
}

Tensor& mul_(Tensor& a, double s) {
  FORGE_CHECK(a.defined(), "mul_: undefined tensor");
  if (a.device().is_cuda()) {
    cuda::mul_(a, s);
    return a;
  }
  dispatch_all(a.dtype(), "mul_", [&]<class T>() {
    auto v = compute_t<T>(s);
    unary_loop<T, T>(a, a, [v](auto x) { return x * v; });
  });
  return a;
}

}  // namespace forge
