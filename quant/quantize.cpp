#include "quant/quantize.h"

#include <cmath>
#include <limits>
#include <set>

#include "autograd/functions.h"
#include "tensor/ops.h"

namespace forge {

namespace {

// Each Linear of a model with its dotted name.
std::vector<std::pair<std::string, std::shared_ptr<Linear>>> named_linears(const Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<Linear>>> out;
  for (auto& [name, m] : model.named_modules())
    if (auto l = std::dynamic_pointer_cast<Linear>(m)) out.emplace_back(name, l);
  return out;
}

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
  Observer obs({.kind = ObserverKind::min_max, .range = range, .scheme = QScheme::symmetric,
                .axis = 0});
  obs.observe(w);
  return obs.qparams();
}

// A static layer's bias in units of the accumulator, s_x s_w[n], rounded to s32 (clamped).
Tensor quantize_bias(const Tensor& bias, float input_scale, const Tensor& weight_scale) {
  const int64_t N = bias.numel();
  Tensor b = bias.to(DType::f32).contiguous();
  Tensor out = Tensor::empty({N}, DType::i32);
  for (int64_t n = 0; n < N; ++n) {
    double unit = double(input_scale * weight_scale.data<float>()[n]);
    double q = std::nearbyint(double(b.data<float>()[n]) / unit);
    q = std::clamp(q, double(std::numeric_limits<int32_t>::min()),
                   double(std::numeric_limits<int32_t>::max()));
    out.data<int32_t>()[n] = int32_t(q);
  }
  return out;
}

float scalar_f32(const Tensor& t) { return float(t.item()); }

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

Variable Int8Linear::forward(const Variable& x) {
  const int64_t N = weight_q_.size(0), K = weight_q_.size(1);
  Tensor rows = as_rows(x, K, "Int8Linear");
  const int64_t M = rows.size(0);
  const float* xf = rows.data<float>();
  float sx;
  int32_t zx;
  if (input_) {
    sx = scalar_f32(input_->scale);
    zx = int32_t(input_->zero_point.item());
  } else {
    // Dynamic: this batch's own range.
    float lo = 0, hi = 0;
    if (rows.numel() > 0) min_max(xf, rows.numel(), lo, hi);
    QuantParams q = choose_qparams(scalar_tensor(lo), scalar_tensor(hi), activation_range_,
                                   activation_scheme_);
    sx = scalar_f32(q.scale);
    zx = int32_t(q.zero_point.item());
  }
  // The kernels take u8: an s8 grid moves up by 128, zero point with it (q - z is unchanged).
  const int32_t shift = activation_range_.dtype == DType::i8 ? 128 : 0;
  zx += shift;
  Tensor qx = Tensor::empty({M, K}, DType::u8);
  quantize_u8(xf, rows.numel(), 1.0f / sx, zx, activation_range_.qmin + shift,
              activation_range_.qmax + shift, qx.data<uint8_t>());
  Tensor y = Tensor::empty({M, N});
  int8_linear_f32(qx.data<uint8_t>(), M, K, sx, zx, packed_, weight_scale_.data<float>(),
                  bias_f32_.defined() ? bias_f32_.data<float>() : nullptr, y.data<float>(), N);
  return Variable(y.view(output_shape(x.shape(), N)));
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
  return Variable(int4_linear(x.data(), weight_, bias_));
}

NamedTensors Int4Linear::state() const {
  NamedTensors s{{"weight", weight_.packed},
                 {"weight_scale", weight_.scales},
                 {"weight_zero", weight_.zeros}};
  if (bias_.defined()) s.emplace_back("bias", bias_);
  return s;
}

// ---------------------------------------------------------------------------------------------
// QAT

QatLinear::QatLinear(const Linear& linear, const QuantConfig& config)
    : weight_(linear.weight), bias_(linear.bias) {
  input_fake_quant = register_module(
      "input_fake_quant",
      std::make_shared<FakeQuantize>(FakeQuantizeConfig{
          .observer = {.kind = config.activation_observer,
                       .range = config.activation_range,
                       .scheme = config.activation_scheme},
          .freeze_after = config.freeze_after}));
  // Weights: per output channel, symmetric, a moving average as PyTorch's default QAT config.
  weight_fake_quant = register_module(
      "weight_fake_quant",
      std::make_shared<FakeQuantize>(FakeQuantizeConfig{
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
  FORGE_CHECK(!l.quantized(), "{}: layer '{}' is already quantized", what, name);
}
}  // namespace

int quantize_dynamic(Module& model, const QuantizeOptions& o) {
  FORGE_CHECK(o.bits == 8 || o.bits == 4, "quantize_dynamic: bits must be 8 or 4, got {}", o.bits);
  NoGradGuard ng;
  int changed = 0;
  for (auto& [name, l] : named_linears(model)) {
    check_not_quantized(name, *l, "quantize_dynamic");
    const Tensor& w = l->weight.data();
    Tensor b = l->bias.defined() ? l->bias.data() : Tensor();
    if (o.bits == 8) {
      l->set_quantized(std::make_shared<Int8Linear>(w, b, o.config));
    } else {
      FORGE_CHECK(w.size(1) % o.group == 0,
                  "quantize_dynamic: layer '{}' has {} inputs, not a multiple of the int4 group {}",
                  name, w.size(1), o.group);
      l->set_quantized(std::make_shared<Int4Linear>(quantize_int4(w, o.group), b));
    }
    ++changed;
  }
  return changed;
}

int prepare_qat(Module& model, const QuantConfig& config) {
  int changed = 0;
  for (auto& [name, l] : named_linears(model)) {
    check_not_quantized(name, *l, "prepare_qat");
    l->set_quantized(std::make_shared<QatLinear>(*l, config));
    ++changed;
  }
  return changed;
}

void freeze_observers(Module& model) {
  for (auto& [name, l] : named_linears(model)) {
    if (auto q = std::dynamic_pointer_cast<QatLinear>(l->quantized())) {
      q->input_fake_quant->freeze();
      q->weight_fake_quant->freeze();
    }
  }
}

int convert(Module& model) {
  NoGradGuard ng;
  int changed = 0;
  for (auto& [name, l] : named_linears(model)) {
    auto qat = std::dynamic_pointer_cast<QatLinear>(l->quantized());
    if (!qat) continue;
    FORGE_CHECK(qat->input_fake_quant->observer().observed(),
                "convert: layer '{}' saw no data in training mode; its input scale is unknown",
                name);
    QuantParams in = qat->input_fake_quant->qparams();
    QuantParams wq = qat->weight_fake_quant->observer().observed()
                         ? qat->weight_fake_quant->qparams()
                         : observe_weight(l->weight.data(), QuantConfig{}.weight_range);
    Tensor w_q = quantize_weight(l->weight.data(), wq);
    Tensor scale = wq.scale.contiguous();
    Tensor bias;
    if (l->bias.defined()) bias = quantize_bias(l->bias.data(), scalar_f32(in.scale), scale);
    QScheme scheme = qat->input_fake_quant->observer().config().scheme;
    l->set_quantized(std::make_shared<Int8Linear>(w_q, scale, bias, in.range, scheme, in));
    ++changed;
  }
  FORGE_CHECK(changed > 0, "convert: the model has no layer prepared for QAT (call prepare_qat)");
  return changed;
}

// ---------------------------------------------------------------------------------------------
// Files

namespace {
// A quantized layer's tensors, or nothing for a plain (or QAT) Linear.
std::optional<NamedTensors> layer_state(const Linear& l) {
  if (auto q = std::dynamic_pointer_cast<Int8Linear>(l.quantized())) return q->state();
  if (auto q = std::dynamic_pointer_cast<Int4Linear>(l.quantized())) return q->state();
  return std::nullopt;
}

std::string prefix_of(const std::string& param) {
  auto dot = param.rfind('.');
  return dot == std::string::npos ? "" : param.substr(0, dot);
}

std::string range_text(QuantRange r) { return fmt::format("{},{}", r.qmin, r.qmax); }

const std::string& meta_value(const std::map<std::string, std::string>& metadata,
                              const std::string& key, const std::string& path) {
  auto it = metadata.find(key);
  FORGE_CHECK(it != metadata.end(), "{}: metadata '{}' is missing", path, key);
  return it->second;
}

// "0,127" (u8) or "-128,127" (s8).
QuantRange parse_range(const std::string& text, const std::string& path) {
  QuantRange r;
  bool ok = std::sscanf(text.c_str(), "%d,%d", &r.qmin, &r.qmax) == 2 && r.qmin < r.qmax;
  r.dtype = r.qmin < 0 ? DType::i8 : DType::u8;
  ok = ok && (r.dtype == DType::u8 ? r.qmax <= 255 : r.qmin >= -128 && r.qmax <= 127);
  FORGE_CHECK(ok, "{}: activation_range '{}' is not 'qmin,qmax' within 0..255 or -128..127", path,
              text);
  return r;
}

QScheme parse_scheme(const std::string& text, const std::string& path) {
  FORGE_CHECK(text == "affine" || text == "symmetric",
              "{}: activation_scheme '{}' is not affine or symmetric", path, text);
  return text == "affine" ? QScheme::affine : QScheme::symmetric;
}

const Tensor& need(const SafetensorsContents& file, const std::string& name, DType dtype,
                   const Shape& shape, const std::string& path) {
  const Tensor* t = file.find(name);
  FORGE_CHECK(t, "{}: tensor '{}' is missing", path, name);
  FORGE_CHECK(t->dtype() == dtype && t->shape() == shape, "{}: tensor '{}' should be {} {}, is {} {}",
              path, name, dtype, shape, t->dtype(), t->shape());
  return *t;
}
}  // namespace

NamedTensors quantized_state(const Module& model) {
  std::map<std::string, NamedTensors> layers;
  for (auto& [name, l] : named_linears(model))
    if (auto s = layer_state(*l)) layers[name] = std::move(*s);
  NamedTensors out;
  std::set<std::string> written;
  for (auto& [name, v] : model.named_parameters()) {
    auto it = layers.find(prefix_of(name));
    if (it == layers.end()) {
      out.emplace_back(name, v.data());
    } else if (written.insert(it->first).second) {
      for (auto& [sub, t] : it->second) out.emplace_back(it->first + "." + sub, t);
    }
  }
  return out;
}

int64_t state_bytes(const NamedTensors& state) {
  int64_t n = 0;
  for (auto& [name, t] : state) n += int64_t(t.nbytes());
  return n;
}

std::string describe_quantization(const Module& model) {
  std::set<std::string> kinds;
  for (auto& [name, l] : named_linears(model)) {
    if (auto q = std::dynamic_pointer_cast<Int8Linear>(l->quantized()))
      kinds.insert(q->is_static() ? "int8-static" : "int8-dynamic");
    else if (auto q4 = std::dynamic_pointer_cast<Int4Linear>(l->quantized()))
      kinds.insert(fmt::format("int4-g{}", q4->weight().group));
    else if (std::dynamic_pointer_cast<QatLinear>(l->quantized()))
      kinds.insert("qat");
    else
      kinds.insert("f32");
  }
  if (kinds.empty() || (kinds.size() == 1 && kinds.count("f32"))) return "none";
  std::string s;
  for (auto& k : kinds) s += (s.empty() ? "" : "+") + k;
  return s;
}

void save_quantized(const std::string& path, const Module& model,
                    std::map<std::string, std::string> metadata) {
  metadata["quantization"] = describe_quantization(model);
  // Every Int8Linear of a model shares the activation range (one QuantConfig made them all).
  for (auto& [name, l] : named_linears(model))
    if (auto q = std::dynamic_pointer_cast<Int8Linear>(l->quantized())) {
      metadata["activation_range"] = range_text(q->activation_range());
      metadata["activation_scheme"] =
          q->activation_scheme() == QScheme::affine ? "affine" : "symmetric";
    }
  save_safetensors(path, quantized_state(model), metadata);
}

void load_quantized(Module& model, const SafetensorsContents& file, const std::string& path) {
  NoGradGuard ng;
  std::set<std::string> used, quantized_layers;
  auto use = [&](const std::string& name) { used.insert(name); };
  for (auto& [name, l] : named_linears(model)) {
    check_not_quantized(name, *l, "load_quantized");
    const Tensor* w = file.find(name + ".weight");
    FORGE_CHECK(w, "{}: tensor '{}.weight' is missing", path, name);
    const int64_t N = l->out_features(), K = l->in_features();
    const bool has_bias = l->bias.defined();
    if (w->dtype() == DType::i8) {
      FORGE_CHECK(w->shape() == Shape({N, K}), "{}: tensor '{}.weight' should be i8 ({}, {}), is {}",
                  path, name, N, K, w->shape());
      Tensor scale = need(file, name + ".weight_scale", DType::f32, {N}, path);
      std::optional<QuantParams> input;
      if (file.find(name + ".input_scale")) {
        QuantParams q;
        q.scale = need(file, name + ".input_scale", DType::f32, Shape{}, path);
        q.zero_point = need(file, name + ".input_zero_point", DType::i32, Shape{}, path);
        input = q;
        use(name + ".input_scale");
        use(name + ".input_zero_point");
      }
      Tensor bias;
      if (has_bias) bias = need(file, name + ".bias", input ? DType::i32 : DType::f32, {N}, path);
      QuantRange range = parse_range(meta_value(file.metadata, "activation_range", path), path);
      QScheme scheme = parse_scheme(meta_value(file.metadata, "activation_scheme", path), path);
      if (input) input->range = range;
      l->set_quantized(std::make_shared<Int8Linear>(w->clone(), scale.clone(),
                                                    has_bias ? bias.clone() : Tensor(), range,
                                                    scheme, input));
      use(name + ".weight_scale");
    } else if (w->dtype() == DType::u8) {
      const Tensor* s = file.find(name + ".weight_scale");
      FORGE_CHECK(s && s->dim() == 2 && s->size(1) > 0, "{}: tensor '{}.weight_scale' is missing or not 2-d",
                  path, name);
      Int4Weight q{.n = N,
                   .k = K,
                   .group = K / s->size(1),
                   .packed = w->clone(),
                   .scales = s->clone(),
                   .zeros = need(file, name + ".weight_zero", DType::u8, s->shape(), path).clone()};
      validate_int4(q, fmt::format("{}: layer '{}'", path, name));
      Tensor bias = has_bias ? need(file, name + ".bias", DType::f32, {N}, path).clone() : Tensor();
      l->set_quantized(std::make_shared<Int4Linear>(std::move(q), bias));
      use(name + ".weight_scale");
      use(name + ".weight_zero");
    } else {
      continue;  // a plain f32 layer: its parameters load below with the rest
    }
    quantized_layers.insert(name);
    use(name + ".weight");
    if (has_bias) use(name + ".bias");
  }
  for (auto& [name, v] : model.named_parameters()) {
    if (quantized_layers.count(prefix_of(name))) continue;
    const Tensor& t = need(file, name, v.data().dtype(), v.shape(), path);
    v.data().copy_(t);
    use(name);
  }
  for (auto& [name, t] : file.tensors)
    FORGE_CHECK(used.count(name), "{}: unexpected tensor '{}' (not in this model)", path, name);
}

}  // namespace forge
