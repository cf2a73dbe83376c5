#include "quant/quantize.h"

#include <cmath>
#include <functional>
#include <limits>

#include "autograd/functions.h"
#include "quant/int8_gemm_cuda.h"
#include "tensor/ops.h"

namespace forge {

std::vector<std::pair<std::string, Linear*>> named_linears(Module& model) {
  std::vector<std::pair<std::string, Linear*>> out;
  if (auto* self = dynamic_cast<Linear*>(&model)) out.emplace_back("", self);
  for (auto& [name, m] : model.named_modules())
    if (auto* l = dynamic_cast<Linear*>(m.get())) out.emplace_back(name, l);
  return out;
}

std::vector<std::pair<std::string, const Linear*>> named_linears(const Module& model) {
  std::vector<std::pair<std::string, const Linear*>> out;
  for (auto& [name, l] : named_linears(const_cast<Module&>(model))) out.emplace_back(name, l);
  return out;
}

namespace {

// The integers behind a symmetric per-channel fake quantization: round(fake_quantize(w) / s),
// exact since fake_quantize returns q * s with |q| <= 127. Going through fake_quantize makes the
// int8 layer's weights the ones QAT trained against, by construction.
Tensor quantize_weight(const Tensor& w, const QuantParams& q) {
  Tensor wf = fake_quantize(w.to(DType::f32).contiguous(), q);
  const int64_t N = wf.size(0), K = wf.size(1);
  Tensor out = Tensor::empty({N, K}, DType::i8);
  const float* src = wf.data<float>();
  const float* scale = q.scale.data<float>();
  int8_t* dst = out.data<int8_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      dst[n * K + k] = int8_t(std::nearbyint(src[n * K + k] / scale[n]));
  return out;
}

QuantParams observe_weight(const Tensor& w, QuantRange range) {
  Observer obs(
      {.kind = ObserverKind::min_max, .range = range, .scheme = QScheme::symmetric, .axis = 0});
  obs.observe(w);
  return obs.qparams();
}

// A static layer's bias in units of the accumulator, s_x s_w[n], rounded to s32. A bias beyond
// s32 in those units (a channel whose weights are all near zero has a tiny s_w) is refused rather
// than clamped: clamping would change the layer's output without a word.
Tensor quantize_bias(const Tensor& bias, float input_scale, const Tensor& weight_scale) {
  const int64_t N = bias.numel();
  Tensor b = bias.to(DType::f32).contiguous();
  Tensor out = Tensor::empty({N}, DType::i32);
  for (int64_t n = 0; n < N; ++n) {
    float unit = input_scale * weight_scale.data<float>()[n];
    double q = std::nearbyint(double(b.data<float>()[n]) / double(unit));
    FORGE_CHECK(std::abs(q) <= double(std::numeric_limits<int32_t>::max()),
                "the bias {} of output channel {} is {:.3g} units of s_x s_w = {:.3g}, beyond s32 "
                "(the channel's weights are all near zero)",
                b.data<float>()[n], n, q, unit);
    out.data<int32_t>()[n] = int32_t(q);
  }
  return out;
}

float scalar_f32(const Tensor& t) {
  return float(t.item());
}

// x as contiguous f32 rows (M, K).
Tensor as_rows(const Variable& x, int64_t K, const char* layer) {
  FORGE_CHECK(x.dim() >= 1 && x.size(-1) == K, "{}: expected input (..., {}), got {}", layer, K,
              x.shape());
  FORGE_CHECK(!(grad_enabled() && x.requires_grad()),
              "{}: quantized layers are for inference; run under NoGradGuard (no gradient flows "
              "through integer weights)",
              layer);
  return x.data().to(DType::f32).contiguous().reshape({-1, K});
}

Shape output_shape(const Shape& in, int64_t N) {
  std::vector<int64_t> dims(in.begin(), in.end());
  dims.back() = N;
  return Shape(dims);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Int8Linear

Int8Linear::Int8Linear(const Tensor& weight, const Tensor& bias, const QuantConfig& config,
                       std::optional<QuantParams> input)
    : activation_range_(config.activation_range),
      activation_scheme_(config.activation_scheme),
      input_(std::move(input)) {
  FORGE_CHECK(weight.dim() == 2, "Int8Linear: weight must be (out, in), got {}", weight.shape());
  QuantParams wq = observe_weight(weight, config.weight_range);
  weight_q_ = quantize_weight(weight, wq);
  weight_scale_ = wq.scale.contiguous();
  if (bias.defined())
    bias_ = input_ ? quantize_bias(bias, scalar_f32(input_->scale), weight_scale_)
                   : bias.to(DType::f32).contiguous();
  pack();
}

Int8Linear::Int8Linear(Tensor weight_q, Tensor weight_scale, Tensor bias,
                       QuantRange activation_range, QScheme activation_scheme,
                       std::optional<QuantParams> input)
    : weight_q_(std::move(weight_q)),
      weight_scale_(std::move(weight_scale)),
      bias_(std::move(bias)),
      activation_range_(activation_range),
      activation_scheme_(activation_scheme),
      input_(std::move(input)) {
  FORGE_CHECK(weight_q_.dim() == 2 && weight_q_.dtype() == DType::i8,
              "Int8Linear: weight must be i8 (out, in), got {} {}", weight_q_.dtype(),
              weight_q_.shape());
  const int64_t N = weight_q_.size(0);
  FORGE_CHECK(weight_scale_.dtype() == DType::f32 && weight_scale_.shape() == Shape{N},
              "Int8Linear: weight_scale must be f32 ({}), got {} {}", N, weight_scale_.dtype(),
              weight_scale_.shape());
  if (bias_.defined()) {
    DType want = input_ ? DType::i32 : DType::f32;
    FORGE_CHECK(bias_.dtype() == want && bias_.shape() == Shape{N},
                "Int8Linear: bias must be {} ({}) for a {} layer, got {} {}", want, N,
                input_ ? "static" : "dynamic", bias_.dtype(), bias_.shape());
  }
  Tensor ws = weight_scale_.contiguous();
  for (int64_t n = 0; n < N; ++n) {
    float s = ws.data<float>()[n];
    FORGE_CHECK(std::isfinite(s) && s > 0,
                "Int8Linear: weight_scale {} of output channel {} is not "
                "a positive finite number",
                s, n);
  }
  if (input_) {
    float s = scalar_f32(input_->scale);
    double z = input_->zero_point.item();
    FORGE_CHECK(std::isfinite(s) && s > 0,
                "Int8Linear: input_scale {} is not a positive finite "
                "number",
                s);
    FORGE_CHECK(activation_range_.qmin <= z && z <= activation_range_.qmax,
                "Int8Linear: input_zero_point {} is outside the activation range [{}, {}]", z,
                activation_range_.qmin, activation_range_.qmax);
  }
  pack();
}

void Int8Linear::pack() {
  weight_q_ = weight_q_.contiguous();
  weight_scale_ = weight_scale_.contiguous();
  const int64_t N = weight_q_.size(0), K = weight_q_.size(1);
  packed_ = pack_int8_weight(weight_q_.data<int8_t>(), N, K);
  if (!bias_.defined()) return;
  if (!input_) {
    bias_f32_ = bias_.contiguous();
    return;
  }
  // The s32 bias in f32, in the accumulator's units: b_q[n] * (s_x s_w[n]).
  float sx = scalar_f32(input_->scale);
  bias_f32_ = Tensor::empty({N});
  for (int64_t n = 0; n < N; ++n)
    bias_f32_.data<float>()[n] =
        float(bias_.data<int32_t>()[n]) * (sx * weight_scale_.data<float>()[n]);
}

Int8Linear::InputGrid Int8Linear::input_grid(const Tensor& rows) const {
  float sx;
  int32_t zx;
  if (input_) {
    sx = scalar_f32(input_->scale);
    zx = int32_t(input_->zero_point.item());
  } else {
    // Dynamic: this batch's own range, NaNs skipped. On a GPU min = -max(-x), exactly, with NaNs
    // as 0: the same grid, since the range is widened to hold 0 anyway (choose_qparams).
    float lo = 0, hi = 0;
    if (rows.numel() > 0 && rows.device().is_cuda()) {
      const Tensor clean = where(ne(rows, rows), zeros({}, rows.dtype(), rows.device()), rows);
      hi = float(max(clean).item());
      lo = -float(max(neg(clean)).item());
    } else if (rows.numel() > 0) {
      min_max(rows.data<float>(), rows.numel(), lo, hi);
    }
    QuantParams q =
        choose_qparams(scalar_tensor(lo), scalar_tensor(hi), activation_range_, activation_scheme_);
    sx = scalar_f32(q.scale);
    zx = int32_t(q.zero_point.item());
  }
  // The kernels take u8: an s8 grid moves up by 128, zero point with it (q - z is unchanged).
  const int32_t shift = activation_range_.dtype == DType::i8 ? 128 : 0;
  return {sx, zx + shift, activation_range_.qmin + shift, activation_range_.qmax + shift};
}

void Int8Linear::set_per_row(bool on) {
  FORGE_CHECK(!on || !input_,
              "Int8Linear: per-row activations apply to dynamic layers; this one "
              "has a fixed (static) input grid");
  per_row_ = on;
}

namespace {
// y = float(acc - zero * row_sum[j]) * (scale * w_scale[j]) + bias[j] for one row, rounded as the
// int8_linear_f32 kernels round (the s32 offset mod 2^32, no fused multiply-add).
__attribute__((optimize("fp-contract=off"))) void dequantize_row(const int32_t* acc, int64_t n,
                                                                 float scale, int32_t zero,
                                                                 const int32_t* row_sums,
                                                                 const float* w_scale,
                                                                 const float* bias, float* y) {
  for (int64_t j = 0; j < n; ++j) {
    const int32_t offset = int32_t(uint32_t(int64_t(zero) * row_sums[j]));
    const float col_scale = scale * w_scale[j];
    float v = float(int32_t(uint32_t(acc[j]) - uint32_t(offset))) * col_scale;
    y[j] = bias ? v + bias[j] : v;
  }
}
}  // namespace

Variable Int8Linear::forward(const Variable& x) {
  const int64_t N = weight_q_.size(0), K = weight_q_.size(1);
  Tensor rows = as_rows(x, K, "Int8Linear");  // (M, K) f32 on x's device
  const int64_t M = rows.size(0);
  if (per_row_) {
    if (rows.device().is_cuda()) {  // row by row through the per-batch path
      std::vector<Tensor> out;
      for (int64_t i = 0; i < M; ++i) {
        Tensor r = rows.narrow(0, i, 1);
        out.push_back(forward_cuda(r, input_grid(r)));
      }
      return Variable(concat(out, 0).view(output_shape(x.shape(), N)));
    }
    Tensor qx = Tensor::empty({M, K}, DType::u8);
    std::vector<InputGrid> grids;
    for (int64_t i = 0; i < M; ++i) {
      grids.push_back(input_grid(rows.narrow(0, i, 1)));
      const InputGrid& g = grids.back();
      quantize_u8(rows.data<float>() + i * K, K, 1.0f / g.scale, g.zero, g.qmin, g.qmax,
                  qx.data<uint8_t>() + i * K);
    }
    Tensor acc = Tensor::empty({M, N}, DType::i32);
    int8_gemm(qx.data<uint8_t>(), M, K, packed_, acc.data<int32_t>(), N);
    Tensor y = Tensor::empty({M, N});
    for (int64_t i = 0; i < M; ++i)
      dequantize_row(acc.data<int32_t>() + i * N, N, grids[size_t(i)].scale, grids[size_t(i)].zero,
                     packed_.row_sums.get(), weight_scale_.data<float>(),
                     bias_f32_.defined() ? bias_f32_.data<float>() : nullptr,
                     y.data<float>() + i * N);
    return Variable(y.view(output_shape(x.shape(), N)));
  }
  const InputGrid g = input_grid(rows);
  Tensor y;
  if (rows.device().is_cuda()) {
    y = forward_cuda(rows, g);
  } else {
    Tensor qx = Tensor::empty({M, K}, DType::u8);
    quantize_u8(rows.data<float>(), rows.numel(), 1.0f / g.scale, g.zero, g.qmin, g.qmax,
                qx.data<uint8_t>());
    y = Tensor::empty({M, N});
    int8_linear_f32(qx.data<uint8_t>(), M, K, g.scale, g.zero, packed_, weight_scale_.data<float>(),
                    bias_f32_.defined() ? bias_f32_.data<float>() : nullptr, y.data<float>(), N);
  }
  return Variable(y.view(output_shape(x.shape(), N)));
}

// The same steps on the GPU of `rows`: quantize there, then the u8 x s8 product with the epilogue.
Tensor Int8Linear::forward_cuda(const Tensor& rows, const InputGrid& g) {
  const Device device = rows.device();
  if (!(on_device_.device == device)) {
    MemoryTagScope tag(MemoryTag::parameters);
    on_device_ = {device, weight_q_.to(device), weight_scale_.to(device),
                  bias_f32_.defined() ? bias_f32_.to(device) : Tensor()};
  }
  Tensor qx = quantize_u8_cuda(rows, 1.0f / g.scale, g.zero, g.qmin, g.qmax);
  return int8_linear_cuda(qx, g.scale, g.zero, on_device_.weight_q, on_device_.weight_scale,
                          on_device_.bias_f32);
}

NamedTensors Int8Linear::state() const {
  NamedTensors s{{"weight", weight_q_}, {"weight_scale", weight_scale_}};
  if (bias_.defined()) s.emplace_back("bias", bias_);
  if (input_) {
    s.emplace_back("input_scale", input_->scale.to(DType::f32));
    s.emplace_back("input_zero_point", input_->zero_point.to(DType::i32));
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Int4Linear

Int4Linear::Int4Linear(Int4Weight weight, Tensor bias)
    : weight_(std::move(weight)), bias_(std::move(bias)) {
  validate_int4(weight_, "Int4Linear");
  if (bias_.defined()) {
    bias_ = bias_.to(DType::f32).contiguous();
    FORGE_CHECK(bias_.shape() == Shape{weight_.n}, "Int4Linear: bias must be ({}), got {}",
                weight_.n, bias_.shape());
  }
}

Variable Int4Linear::forward(const Variable& x) {
  FORGE_CHECK(!(grad_enabled() && x.requires_grad()),
              "Int4Linear: quantized layers are for inference; run under NoGradGuard");
  FORGE_CHECK(x.data().device().is_cpu(),
              "Int4Linear: int4 layers run on the cpu only, the input is on {} (quantize to int8 "
              "to run on a GPU)",
              x.data().device().str());
  return Variable(int4_linear(x.data(), weight_, bias_));
}

NamedTensors Int4Linear::state() const {
  NamedTensors s{
      {"weight", weight_.packed}, {"weight_scale", weight_.scales}, {"weight_zero", weight_.zeros}};
  if (bias_.defined()) s.emplace_back("bias", bias_);
  return s;
}

// ---------------------------------------------------------------------------------------------
// QAT

QatLinear::QatLinear(const Linear& linear, const QuantConfig& config)
    : weight_(linear.weight), bias_(linear.bias) {
  input_fake_quant =
      register_module("input_fake_quant", std::make_shared<FakeQuantize>(FakeQuantizeConfig{
                                              .observer = {.kind = config.activation_observer,
                                                           .range = config.activation_range,
                                                           .scheme = config.activation_scheme},
                                              .freeze_after = config.freeze_after}));
  // Weights: per output channel, symmetric, a moving average as PyTorch's default QAT config.
  weight_fake_quant =
      register_module("weight_fake_quant", std::make_shared<FakeQuantize>(FakeQuantizeConfig{
                                               .observer = {.kind = ObserverKind::moving_average,
                                                            .range = config.weight_range,
                                                            .scheme = QScheme::symmetric,
                                                            .axis = 0},
                                               .freeze_after = config.freeze_after}));
}

Variable QatLinear::forward(const Variable& x) {
  return linear(input_fake_quant->forward(x), weight_fake_quant->forward(weight_), bias_);
}

namespace {
void check_not_quantized(const std::string& name, const Linear& l, const char* what) {
  FORGE_CHECK(!l.quantized(), "{}: layer '{}' is already quantized ({})", what, name,
              describe_quantization(l));
}

// Runs `make` for every layer before anything changes, then installs the results: a call that
// fails (a layer already quantized, a group that does not divide, an observer that saw nothing)
// leaves the model as it was. Errors name the layer.
int install_all(Module& model, const char* what, bool release_weights,
                const std::function<std::shared_ptr<Module>(const std::string&, Linear&)>& make) {
  std::vector<std::pair<Linear*, std::shared_ptr<Module>>> made;
  for (auto& [name, l] : named_linears(model)) {
    try {
      if (auto m = make(name, *l)) made.emplace_back(l, std::move(m));
    } catch (const Error& e) {
      throw_error(fmt::format("{}: layer '{}': {}", what, name, e.what()));
    }
  }
  for (auto& [l, m] : made) l->set_quantized(m, release_weights);
  return int(made.size());
}
}  // namespace

int quantize_dynamic(Module& model, const QuantizeOptions& o) {
  FORGE_CHECK(o.bits == 8 || o.bits == 4, "quantize_dynamic: bits must be 8 or 4, got {}", o.bits);
  FORGE_CHECK(o.bits == 8 || o.group == 32 || o.group == 64 || o.group == 128,
              "quantize_dynamic: the int4 group must be 32, 64 or 128, got {}", o.group);
  NoGradGuard ng;
  int n = install_all(model, "quantize_dynamic", true,
                      [&](const std::string& name, Linear& l) -> std::shared_ptr<Module> {
                        check_not_quantized(name, l, "quantize_dynamic");
                        const Tensor& w = l.weight.data();
                        Tensor b = l.bias.defined() ? l.bias.data() : Tensor();
                        if (o.bits == 8) return std::make_shared<Int8Linear>(w, b, o.config);
                        FORGE_CHECK(w.size(1) % o.group == 0,
                                    "{} inputs are not a multiple of the int4 group {}", w.size(1),
                                    o.group);
                        return std::make_shared<Int4Linear>(quantize_int4(w, o.group), b);
                      });
  FORGE_CHECK(n > 0, "quantize_dynamic: the model has no Linear layer");
  return n;
}

int prepare_qat(Module& model, const QuantConfig& config) {
  int n = install_all(model, "prepare_qat", false,
                      [&](const std::string& name, Linear& l) -> std::shared_ptr<Module> {
                        check_not_quantized(name, l, "prepare_qat");
                        return std::make_shared<QatLinear>(l, config);
                      });
  FORGE_CHECK(n > 0, "prepare_qat: the model has no Linear layer");
  return n;
}

void freeze_observers(Module& model) {
  for (auto& [name, l] : named_linears(model)) {
    if (auto q = std::dynamic_pointer_cast<QatLinear>(l->quantized())) {
      q->input_fake_quant->freeze();
      q->weight_fake_quant->freeze();
    }
  }
}

int set_int8_per_row(Module& model, bool on) {
  int n = 0;
  for (auto& [name, l] : named_linears(model))
    if (auto q = std::dynamic_pointer_cast<Int8Linear>(l->quantized()); q && !q->is_static()) {
      q->set_per_row(on);
      ++n;
    }
  return n;
}

int convert(Module& model) {
  NoGradGuard ng;
  int n = install_all(
      model, "convert", true, [&](const std::string&, Linear& l) -> std::shared_ptr<Module> {
        auto qat = std::dynamic_pointer_cast<QatLinear>(l.quantized());
        if (!qat) return nullptr;
        FORGE_CHECK(qat->input_fake_quant->observer().observed(),
                    "it saw no data in training mode, so its input scale is unknown");
        QuantParams in = qat->input_fake_quant->qparams();
        const Observer& wobs = qat->weight_fake_quant->observer();
        QuantParams wq =
            wobs.observed() ? wobs.qparams() : observe_weight(l.weight.data(), wobs.config().range);
        Tensor w_q = quantize_weight(l.weight.data(), wq);
        Tensor scale = wq.scale.contiguous();
        Tensor bias;
        if (l.bias.defined()) bias = quantize_bias(l.bias.data(), scalar_f32(in.scale), scale);
        QScheme scheme = qat->input_fake_quant->observer().config().scheme;
        return std::make_shared<Int8Linear>(w_q, scale, bias, in.range, scheme, in);
      });
  FORGE_CHECK(n > 0, "convert: the model has no layer prepared for QAT (call prepare_qat)");
  return n;
}

}  // namespace forge
