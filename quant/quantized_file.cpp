// Quantized models as safetensors files: each quantized Linear's integer tensors and scales under
// the layer's name, every other parameter in f32, and metadata saying how activations quantize.
//
//   layers.0.weight        I8 (N, K)        int8: per-channel symmetric weights
//   layers.0.weight_scale  F32 (N)
//   layers.0.bias          F32 (N)          dynamic; I32 (N) in units of s_x s_w[n] when static
//   layers.0.input_scale   F32 ()           static (QAT) layers only, with input_zero_point I32 ()
//   layers.2.weight        U8 (N, K / 2)    int4: two weights per byte,
//   layers.2.weight_scale  F32 (N, K / g)   a scale and a zero per group of g
//   layers.2.weight_zero   U8 (N, K / g)
//   metadata: quantization ("int8-dynamic", ...), activation_range ("0,127"), activation_scheme
#include <set>

#include "quant/quantize.h"

namespace forge {

namespace {

// A quantized layer's tensors, or nothing for a plain (or QAT) Linear.
std::optional<NamedTensors> layer_state(const Linear& l) {
  if (auto q = std::dynamic_pointer_cast<Int8Linear>(l.quantized())) return q->state();
  if (auto q = std::dynamic_pointer_cast<Int4Linear>(l.quantized())) return q->state();
  return std::nullopt;
}

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

std::string prefix_of(const std::string& param) {
  auto dot = param.rfind('.');
  return dot == std::string::npos ? "" : param.substr(0, dot);
}

std::string range_text(QuantRange r) {
  return fmt::format("{},{}", r.qmin, r.qmax);
}
const char* scheme_text(QScheme s) {
  return s == QScheme::affine ? "affine" : "symmetric";
}

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
  FORGE_CHECK(t->dtype() == dtype && t->shape() == shape,
              "{}: tensor '{}' should be {} {}, is {} {}", path, name, dtype, shape, t->dtype(),
              t->shape());
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
      for (auto& [sub, t] : it->second) out.emplace_back(join(it->first, sub), t);
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
  std::string grid;  // the int8 layers' activation grid: one per file
  for (auto& [name, l] : named_linears(model)) {
    auto q = std::dynamic_pointer_cast<Int8Linear>(l->quantized());
    if (!q) continue;
    std::string g = range_text(q->activation_range()) + " " + scheme_text(q->activation_scheme());
    FORGE_CHECK(grid.empty() || g == grid,
                "save_quantized {}: layer '{}' quantizes its input on the grid {}, earlier layers "
                "on {}; one file holds one",
                path, name, g, grid);
    grid = g;
    metadata["activation_range"] = range_text(q->activation_range());
    metadata["activation_scheme"] = scheme_text(q->activation_scheme());
  }
  save_safetensors(path, quantized_state(model), metadata);
}

void load_quantized(Module& model, const SafetensorsContents& file, const std::string& path) {
  NoGradGuard ng;
  // Everything is read and checked first; the model changes only once all of it fits.
  std::set<std::string> used, quantized_layers;
  std::vector<std::pair<Linear*, std::shared_ptr<Module>>> layers;
  auto use = [&](const std::string& name) { used.insert(name); };
  for (auto& [name, l] : named_linears(model)) {
    FORGE_CHECK(!l->quantized(), "load_quantized {}: layer '{}' of the model is already quantized",
                path, name);
    const std::string weight = join(name, "weight"), bias_name = join(name, "bias");
    const Tensor* w = file.find(weight);
    FORGE_CHECK(w, "{}: tensor '{}' is missing", path, weight);
    const int64_t N = l->out_features(), K = l->in_features();
    const bool has_bias = l->bias.defined();
    try {
      if (w->dtype() == DType::i8) {
        FORGE_CHECK(w->shape() == Shape({N, K}), "tensor '{}' should be i8 ({}, {}), is {}", weight,
                    N, K, w->shape());
        const Tensor& scale = need(file, join(name, "weight_scale"), DType::f32, {N}, path);
        std::optional<QuantParams> input;
        if (file.find(join(name, "input_scale"))) {
          QuantParams q;
          q.scale = need(file, join(name, "input_scale"), DType::f32, Shape{}, path);
          q.zero_point = need(file, join(name, "input_zero_point"), DType::i32, Shape{}, path);
          input = q;
          use(join(name, "input_scale"));
          use(join(name, "input_zero_point"));
        }
        Tensor bias;
        if (has_bias)
          bias = need(file, bias_name, input ? DType::i32 : DType::f32, {N}, path).clone();
        QuantRange range = parse_range(meta_value(file.metadata, "activation_range", path), path);
        QScheme scheme = parse_scheme(meta_value(file.metadata, "activation_scheme", path), path);
        if (input) input->range = range;
        layers.emplace_back(
            l, std::make_shared<Int8Linear>(w->clone(), scale.clone(), bias, range, scheme, input));
        use(join(name, "weight_scale"));
      } else if (w->dtype() == DType::u8) {
        const Tensor* s = file.find(join(name, "weight_scale"));
        FORGE_CHECK(s && s->dim() == 2 && s->size(1) > 0, "tensor '{}' is missing or not 2-d",
                    join(name, "weight_scale"));
        Int4Weight q{
            .n = N,
            .k = K,
            .group = K / s->size(1),
            .packed = w->clone(),
            .scales = s->clone(),
            .zeros = need(file, join(name, "weight_zero"), DType::u8, s->shape(), path).clone()};
        validate_int4(q, fmt::format("layer '{}'", name));
        Tensor bias = has_bias ? need(file, bias_name, DType::f32, {N}, path).clone() : Tensor();
        layers.emplace_back(l, std::make_shared<Int4Linear>(std::move(q), bias));
        use(join(name, "weight_scale"));
        use(join(name, "weight_zero"));
      } else {
        continue;  // a plain f32 layer: its parameters load below with the rest
      }
    } catch (const Error& e) {
      std::string what = e.what();
      throw_error(what.rfind(path, 0) == 0 ? what : fmt::format("{}: {}", path, what));
    }
    quantized_layers.insert(name);
    use(weight);
    if (has_bias) use(bias_name);
  }
  std::vector<std::pair<Variable, const Tensor*>> copies;
  for (auto& [name, v] : model.named_parameters()) {
    if (quantized_layers.count(prefix_of(name))) continue;
    copies.emplace_back(v, &need(file, name, v.data().dtype(), v.shape(), path));
    use(name);
  }
  for (auto& [name, t] : file.tensors)
    FORGE_CHECK(used.count(name), "{}: unexpected tensor '{}' (not in this model)", path, name);

  for (auto& [v, t] : copies) v.data().copy_(*t);
  for (auto& [l, m] : layers) l->set_quantized(m, /*release_weights=*/true);
}

}  // namespace forge
