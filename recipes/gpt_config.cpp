#include "recipes/gpt_config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <functional>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "tensor/error.h"

namespace forge {

namespace {

// An enum setting: its value as text, and the setter from text (false: not one of `options`).
struct Choice {
  std::function<std::string()> get;
  std::function<bool(const std::string&)> set;
  std::string options;  // "gpipe or 1f1b"
};

using FieldPtr = std::variant<int64_t*, double*, bool*, std::string*, Choice>;

template <class E, size_t N>
Choice choice(E& field, const std::array<std::pair<E, const char*>, N>& names) {
  Choice c;
  c.get = [&field, names] {
    for (const auto& [v, n] : names)
      if (v == field) return std::string(n);
    return std::string("?");
  };
  c.set = [&field, names](const std::string& text) {
    for (const auto& [v, n] : names)
      if (text == n) return field = v, true;
    return false;
  };
  for (size_t i = 0; i < N; ++i)
    c.options += (i == 0 ? "" : i + 1 == N ? " or " : ", ") + std::string(names[i].second);
  return c;
}

constexpr std::array<std::pair<GeluApprox, const char*>, 2> kGelu{
    {{GeluApprox::tanh, "tanh"}, {GeluApprox::none, "erf"}}};
constexpr std::array<std::pair<Tokenizer::Kind, const char*>, 2> kTokenizer{
    {{Tokenizer::Kind::chars, "char"}, {Tokenizer::Kind::bytes, "byte"}}};
constexpr std::array<std::pair<ActivationCheckpointing, const char*>, 2> kCheckpointing{
    {{ActivationCheckpointing::none, "none"}, {ActivationCheckpointing::blocks, "blocks"}}};
constexpr std::array<std::pair<DType, const char*>, 3> kPrecision{
    {{DType::f32, "f32"}, {DType::bf16, "bf16"}, {DType::f16, "f16"}}};
constexpr std::array<std::pair<LossScaling, const char*>, 3> kLossScaling{
    {{LossScaling::automatic, "auto"}, {LossScaling::on, "on"}, {LossScaling::off, "off"}}};
constexpr std::array<std::pair<PipelineSchedule, const char*>, 2> kSchedule{
    {{PipelineSchedule::gpipe, "gpipe"}, {PipelineSchedule::one_f_one_b, "1f1b"}}};

template <class E, size_t N>
const char* name_in(const std::array<std::pair<E, const char*>, N>& names, E v) {
  for (const auto& [e, n] : names)
    if (e == v) return n;
  return "?";
}

struct Field {
  const char* key;
  const char* help;
  FieldPtr (*get)(GptTrainConfig&);
};

// The one list of settings: TOML keys, flags (key with dashes), help, and where each value lives.
const std::vector<Field>& field_table() {
  using C = GptTrainConfig;
  static const std::vector<Field> table = {
      {"n_layer", "transformer blocks", [](C& c) -> FieldPtr { return &c.model.n_layer; }},
      {"n_head", "attention heads", [](C& c) -> FieldPtr { return &c.model.n_head; }},
      {"n_embd", "embedding width", [](C& c) -> FieldPtr { return &c.model.n_embd; }},
      {"block_size", "context length T", [](C& c) -> FieldPtr { return &c.model.block_size; }},
      {"dropout", "dropout probability", [](C& c) -> FieldPtr { return &c.model.dropout; }},
      {"bias", "biases in Linear and LayerNorm", [](C& c) -> FieldPtr { return &c.model.bias; }},
      {"gelu", "the MLP's GELU: tanh (GPT-2's approximation) or erf (exact, nanoGPT's)",
       [](C& c) -> FieldPtr { return choice(c.model.gelu, kGelu); }},
      {"data", "text corpus to train on", [](C& c) -> FieldPtr { return &c.data; }},
      {"tokenizer", "char or byte",
       [](C& c) -> FieldPtr { return choice(c.tokenizer, kTokenizer); }},
      {"max_iters", "training steps", [](C& c) -> FieldPtr { return &c.max_iters; }},
      {"batch_size", "sequences per step B", [](C& c) -> FieldPtr { return &c.batch_size; }},
      {"lr", "peak learning rate", [](C& c) -> FieldPtr { return &c.lr; }},
      {"min_lr", "learning rate after decay", [](C& c) -> FieldPtr { return &c.min_lr; }},
      {"warmup_iters", "linear warm-up steps", [](C& c) -> FieldPtr { return &c.warmup_iters; }},
      {"lr_decay_iters", "step where the cosine reaches min_lr",
       [](C& c) -> FieldPtr { return &c.lr_decay_iters; }},
      {"weight_decay", "AdamW weight decay on matrices",
       [](C& c) -> FieldPtr { return &c.weight_decay; }},
      {"beta1", "AdamW beta1", [](C& c) -> FieldPtr { return &c.beta1; }},
      {"beta2", "AdamW beta2", [](C& c) -> FieldPtr { return &c.beta2; }},
      {"grad_clip", "gradient-norm clip (0: off)", [](C& c) -> FieldPtr { return &c.grad_clip; }},
      {"checkpoint", "activation checkpointing: none, or blocks (recompute each block in backward)",
       [](C& c) -> FieldPtr { return choice(c.checkpoint, kCheckpointing); }},
      {"precision", "f32, or bf16 / f16 mixed precision (f32 master weights)",
       [](C& c) -> FieldPtr { return choice(c.precision, kPrecision); }},
      {"loss_scale", "dynamic loss scaling: auto (f16 only), on or off",
       [](C& c) -> FieldPtr { return choice(c.loss_scale, kLossScaling); }},
      {"init_scale", "initial loss scale", [](C& c) -> FieldPtr { return &c.init_scale; }},
      {"scale_growth_interval", "good steps before the loss scale doubles",
       [](C& c) -> FieldPtr { return &c.scale_growth_interval; }},
      {"dp", "data-parallel ranks (start with mpirun -np DP)",
       [](C& c) -> FieldPtr { return &c.dp; }},
      {"bucket_mb", "DDP gradient bucket size in MiB",
       [](C& c) -> FieldPtr { return &c.bucket_mb; }},
      {"zero",
       "ZeRO stage over the dp ranks: 0 (DDP), 1 (AdamW's state partitioned), 2 (and the "
       "gradients), 3 (and the parameters)",
       [](C& c) -> FieldPtr { return &c.zero; }},
      {"memory_cap_mb",
       "cap on each rank's live memory in MiB (0: none): an allocation past it stops the run with "
       "an error naming what it was for (parameters, gradients, optimizer, activations)",
       [](C& c) -> FieldPtr { return &c.memory_cap_mb; }},
      {"tp", "tensor-parallel ranks (Megatron: heads and MLP columns split)",
       [](C& c) -> FieldPtr { return &c.tp; }},
      {"pp", "pipeline stages (blocks split into contiguous stages)",
       [](C& c) -> FieldPtr { return &c.pp; }},
      {"micro_batches", "micro-batches per step (the batch is split; gradients accumulate)",
       [](C& c) -> FieldPtr { return &c.micro_batches; }},
      {"schedule", "pipeline schedule: gpipe or 1f1b",
       [](C& c) -> FieldPtr { return choice(c.schedule, kSchedule); }},
      {"eval_interval", "steps between val-loss evaluations",
       [](C& c) -> FieldPtr { return &c.eval_interval; }},
      {"eval_iters", "batches per evaluation", [](C& c) -> FieldPtr { return &c.eval_iters; }},
      {"log_interval", "steps between log lines (metrics: every step)",
       [](C& c) -> FieldPtr { return &c.log_interval; }},
      {"seed", "seed of initialisation, batches and dropout",
       [](C& c) -> FieldPtr { return &c.seed; }},
      {"threads", "CPU threads (0: all cores)", [](C& c) -> FieldPtr { return &c.threads; }},
      {"device", "cpu, or cuda / cuda:N to train on a GPU",
       [](C& c) -> FieldPtr { return &c.device; }},
      {"out", "directory for checkpoints", [](C& c) -> FieldPtr { return &c.out; }},
      {"checkpoint_interval", "steps between checkpoints (0: at every evaluation)",
       [](C& c) -> FieldPtr { return &c.checkpoint_interval; }},
      {"keep_last", "checkpoints kept in the out directory",
       [](C& c) -> FieldPtr { return &c.keep_last; }},
      {"metrics", "append one JSON line of metrics per step to this file",
       [](C& c) -> FieldPtr { return &c.metrics; }},
      {"resume", "checkpoint directory to continue from",
       [](C& c) -> FieldPtr { return &c.resume; }},
  };
  return table;
}

const Field* find_field(const std::string& key) {
  for (const Field& f : field_table())
    if (key == f.key) return &f;
  return nullptr;
}

std::string flag_of(const std::string& key) {
  std::string f = "--" + key;
  std::replace(f.begin(), f.end(), '_', '-');
  return f;
}

}  // namespace

const char* activation_checkpointing_name(ActivationCheckpointing a) {
  return name_in(kCheckpointing, a);
}
const char* loss_scaling_name(LossScaling s) {
  return name_in(kLossScaling, s);
}

std::vector<GptTrainConfig::FieldInfo> GptTrainConfig::fields() {
  static constexpr const char* kTypeNames[] = {"INT", "FLOAT", "BOOL", "TEXT",
                                               "TEXT"};  // FieldPtr order
  GptTrainConfig probe;
  std::vector<FieldInfo> out;
  for (const Field& f : field_table())
    out.push_back({f.key, flag_of(f.key), f.help, kTypeNames[f.get(probe).index()]});
  return out;
}

std::vector<std::string> GptTrainConfig::preset_names() {
  return {"cpu", "baby"};
}

GptTrainConfig GptTrainConfig::preset(const std::string& name) {
  GptTrainConfig c;  // the defaults are the `cpu` preset
  if (name == "cpu") {
    // nanoGPT's README, "I only have a macbook": shakespeare_char at block 64, batch 12, 4 x 4 x
    // 128, 2000 iterations decaying to 2000, no dropout (val loss 1.88).
    c.eval_iters = 200;
    return c;
  }
  if (name == "baby") {
    // nanoGPT's config/train_shakespeare_char.py: the "baby GPT".
    c.model.n_layer = 6;
    c.model.n_head = 6;
    c.model.n_embd = 384;
    c.model.block_size = 256;
    c.model.dropout = 0.2;
    c.batch_size = 64;
    c.max_iters = 5000;
    c.lr_decay_iters = 5000;
    return c;
  }
  throw_error(fmt::format("unknown preset '{}' (expected cpu or baby)", name));
}

void GptTrainConfig::set(const std::string& key, const std::string& value,
                         const std::string& where) {
  const Field* f = find_field(key);
  FORGE_CHECK(f != nullptr, "{}: unknown setting '{}'", where, key);
  FieldPtr ptr = f->get(*this);
  auto bad = [&](const char* type) {
    throw_error(fmt::format("{}: '{}' expects {}, got '{}'", where, key, type, value));
  };
  if (auto* p = std::get_if<int64_t*>(&ptr)) {
    int64_t v = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (ec != std::errc() || end != value.data() + value.size()) bad("an integer");
    **p = v;
  } else if (auto* p = std::get_if<double*>(&ptr)) {
    try {
      size_t used = 0;
      double v = std::stod(value, &used);
      if (used != value.size()) bad("a number");
      **p = v;
    } catch (const std::logic_error&) {
      bad("a number");
    }
  } else if (auto* p = std::get_if<bool*>(&ptr)) {
    if (value == "true" || value == "1")
      **p = true;
    else if (value == "false" || value == "0")
      **p = false;
    else
      bad("true or false");
  } else if (auto* p = std::get_if<std::string*>(&ptr)) {
    **p = value;
  } else if (!std::get<Choice>(ptr).set(value)) {
    throw_error(fmt::format("{}: {} must be {}, got '{}'", where, key,
                            std::get<Choice>(ptr).options, value));
  }
}

void GptTrainConfig::apply_toml_file(const std::string& path) {
  toml::table tbl;
  try {
    tbl = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    throw_error(fmt::format("{}:{}: {}", path, e.source().begin.line, e.description()));
  }
  std::function<void(const toml::table&)> walk = [&](const toml::table& t) {
    for (const auto& [k, node] : t) {
      std::string key(k.str());
      std::string where = fmt::format("{}:{}", path, node.source().begin.line);
      if (const toml::table* sub = node.as_table()) {
        walk(*sub);
        continue;
      }
      const Field* f = find_field(key);
      FORGE_CHECK(f != nullptr, "{}: unknown setting '{}'", where, key);
      FieldPtr ptr = f->get(*this);
      std::string text;
      bool ok = false;
      if (std::holds_alternative<int64_t*>(ptr)) {
        if (auto v = node.value_exact<int64_t>()) text = std::to_string(*v), ok = true;
      } else if (std::holds_alternative<double*>(ptr)) {
        if (auto v = node.value<double>()) text = fmt::format("{}", *v), ok = true;
      } else if (std::holds_alternative<bool*>(ptr)) {
        if (auto v = node.value_exact<bool>()) text = *v ? "true" : "false", ok = true;
      } else {
        if (auto v = node.value_exact<std::string>()) text = *v, ok = true;
      }
      FORGE_CHECK(ok, "{}: '{}' has the wrong type ({})", where, key,
                  std::holds_alternative<int64_t*>(ptr)  ? "expected an integer"
                  : std::holds_alternative<double*>(ptr) ? "expected a number"
                  : std::holds_alternative<bool*>(ptr)   ? "expected true or false"
                                                         : "expected a string");
      set(key, text, where);
    }
  };
  walk(tbl);
}

void GptTrainConfig::validate() const {
  GPTConfig m = model;
  if (m.vocab_size == 0) m.vocab_size = 1;  // known only once the tokenizer is built
  m.validate();
  FORGE_CHECK(init_scale > 0 && scale_growth_interval > 0,
              "init_scale and scale_growth_interval must be positive (got {}, {})", init_scale,
              scale_growth_interval);
  FORGE_CHECK(max_iters >= 0, "max_iters must be >= 0, got {}", max_iters);
  FORGE_CHECK(batch_size > 0, "batch_size must be positive, got {}", batch_size);
  FORGE_CHECK(lr > 0 && min_lr >= 0 && min_lr <= lr, "need 0 <= min_lr <= lr, got lr {} min_lr {}",
              lr, min_lr);
  FORGE_CHECK(warmup_iters >= 0 && lr_decay_iters >= warmup_iters,
              "need 0 <= warmup_iters <= lr_decay_iters, got {} and {}", warmup_iters,
              lr_decay_iters);
  FORGE_CHECK(weight_decay >= 0, "weight_decay must be >= 0, got {}", weight_decay);
  FORGE_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
              "AdamW betas must be in [0, 1), got {} and {}", beta1, beta2);
  FORGE_CHECK(grad_clip >= 0, "grad_clip must be >= 0, got {}", grad_clip);
  FORGE_CHECK(eval_interval > 0 && eval_iters > 0 && log_interval > 0,
              "eval_interval, eval_iters and log_interval must be positive");
  FORGE_CHECK(threads >= 0, "threads must be >= 0, got {}", threads);
  Device::parse(device);  // names the text when it is not a device
  FORGE_CHECK(dp >= 1, "dp must be >= 1, got {}", dp);
  FORGE_CHECK(bucket_mb > 0, "bucket_mb must be positive, got {}", bucket_mb);
  FORGE_CHECK(memory_cap_mb >= 0, "memory_cap_mb must be 0 (none) or positive, got {}",
              memory_cap_mb);
  FORGE_CHECK(zero >= 0 && zero <= 3, "zero must be 0, 1, 2 or 3, got {}", zero);
  FORGE_CHECK(zero == 0 || Device::parse(device).is_cpu(),
              "zero {} runs on the CPU only for now, not on device {}", zero, device);
  FORGE_CHECK(tp >= 1 && pp >= 1, "tp and pp must be >= 1, got {} and {}", tp, pp);
  FORGE_CHECK(model.n_head % tp == 0, "tp {} must divide n_head {} (heads are split over ranks)",
              tp, model.n_head);
  FORGE_CHECK(pp <= model.n_layer, "pp {} is more stages than n_layer {} blocks", pp,
              model.n_layer);
  FORGE_CHECK(micro_batches >= 1 && batch_size % micro_batches == 0,
              "micro_batches {} must divide batch_size {}", micro_batches, batch_size);
  FORGE_CHECK(checkpoint_interval >= 0, "checkpoint_interval must be >= 0, got {}",
              checkpoint_interval);
  FORGE_CHECK(keep_last >= 1, "keep_last must be at least 1, got {}", keep_last);
}

std::string GptTrainConfig::to_json() const {
  nlohmann::ordered_json j;
  GptTrainConfig copy = *this;
  for (const Field& f : field_table()) {
    FieldPtr ptr = f.get(copy);
    std::visit(
        [&](const auto& p) {
          if constexpr (std::is_same_v<std::decay_t<decltype(p)>, Choice>)
            j[f.key] = p.get();
          else
            j[f.key] = *p;
        },
        ptr);
  }
  return j.dump();
}

}  // namespace forge
