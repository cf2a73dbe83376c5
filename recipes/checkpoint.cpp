#include "recipes/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "io/safetensors.h"
#include "quant/quantize.h"

namespace fs = std::filesystem;

namespace forge {

namespace {
constexpr const char* kFormat = kGptCheckpointFormat;
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kStateFile = "state.safetensors";

}  // namespace

std::string generator_to_string(Generator::State s) {
  return fmt::format("{}:{}", s.seed, s.offset);
}

Generator::State generator_from_string(const std::string& text, const std::string& where) {
  Generator::State s;
  size_t colon = text.find(':');
  try {
    FORGE_CHECK(colon != std::string::npos, "");
    s.seed = std::stoull(text.substr(0, colon));
    s.offset = std::stoull(text.substr(colon + 1));
  } catch (const std::exception&) {
    throw_error(fmt::format("{}: generator state '{}' is not seed:offset", where, text));
  }
  return s;
}

const std::string& checkpoint_meta(const std::map<std::string, std::string>& m,
                                   const std::string& key, const std::string& path) {
  auto it = m.find(key);
  FORGE_CHECK(it != m.end(), "{}: metadata '{}' is missing (not a forge GPT checkpoint?)", path,
              key);
  return it->second;
}

namespace {
const std::string& meta(const std::map<std::string, std::string>& m, const std::string& key,
                        const std::string& path) {
  return checkpoint_meta(m, key, path);
}

int64_t parse_int(const std::string& text, const std::string& what) {
  try {
    size_t used = 0;
    int64_t v = std::stoll(text, &used);
    FORGE_CHECK(used == text.size(), "");
    return v;
  } catch (const std::exception&) {
    throw_error(fmt::format("{}: '{}' is not an integer", what, text));
  }
}

void fsync_dir(const fs::path& dir) {
  fsync_directory(dir.string());
}
}  // namespace

std::string gpt_config_to_json(const GPTConfig& c) {
  nlohmann::ordered_json j = {{"n_layer", c.n_layer},
                              {"n_head", c.n_head},
                              {"n_embd", c.n_embd},
                              {"block_size", c.block_size},
                              {"vocab_size", c.vocab_size},
                              {"dropout", c.dropout},
                              {"bias", c.bias},
                              {"gelu", gelu_name(c.gelu)}};
  return j.dump();
}

GPTConfig gpt_config_from_json(const std::string& json, const std::string& where) {
  GPTConfig c;
  try {
    auto j = nlohmann::json::parse(json);
    c.n_layer = j.at("n_layer").get<int64_t>();
    c.n_head = j.at("n_head").get<int64_t>();
    c.n_embd = j.at("n_embd").get<int64_t>();
    c.block_size = j.at("block_size").get<int64_t>();
    c.vocab_size = j.at("vocab_size").get<int64_t>();
    c.dropout = j.at("dropout").get<double>();
    c.bias = j.at("bias").get<bool>();
    if (j.contains("gelu")) c.gelu = parse_gelu(j.at("gelu").get<std::string>());  // older: tanh
  } catch (const std::exception& e) {
    throw_error(fmt::format("{}: malformed model config: {}", where, e.what()));
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw_error(fmt::format("{}: {}", where, e.what()));
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Saving

CheckpointPaths save_checkpoint(const std::string& out_dir, int64_t step, const GPT& model,
                                const Tokenizer& tokenizer, const TrainingState& state,
                                const std::string& train_config_json, int64_t keep_last) {
  fs::create_directories(out_dir);
  std::string name = checkpoint_name(step);
  fs::path final_dir = fs::path(out_dir) / name;
  fs::path tmp_dir = fs::path(out_dir) / (".tmp-" + name);
  fs::remove_all(tmp_dir);
  fs::create_directory(tmp_dir);

  std::string step_text = std::to_string(step);
  std::map<std::string, std::string> model_meta = {
      {"format", "pt"},  // what Hugging Face's tools expect of PyTorch-layout weights
      {"forge.format", kFormat},
      {"forge.config", gpt_config_to_json(model.config())},
      {"forge.tokenizer", tokenizer.to_json()},
      {"forge.step", step_text},
      {"forge.tied", "lm_head.weight = transformer.wte.weight"}};
  save_safetensors((tmp_dir / kModelFile).string(), model.state_dict(), model_meta);

  std::map<std::string, std::string> state_meta = {
      {"forge.format", kFormat},
      {"forge.config", gpt_config_to_json(model.config())},
      {"forge.step", step_text},
      {"forge.generator.batch", generator_to_string(state.batch_gen)},
      {"forge.generator.dropout", generator_to_string(state.dropout_gen)},
      {"forge.train_config", train_config_json}};
  NamedTensors state_tensors = state.optimizer;
  state_tensors.insert(state_tensors.end(), state.scaler.begin(), state.scaler.end());
  save_safetensors((tmp_dir / kStateFile).string(), state_tensors, state_meta);

  publish_checkpoint(tmp_dir.string(), out_dir, step, keep_last);
  return {final_dir.string(), (final_dir / kModelFile).string(), (final_dir / kStateFile).string(),
          step};
}

std::string checkpoint_name(int64_t step) {
  return fmt::format("ckpt-{:06d}", step);
}

void publish_checkpoint(const std::string& tmp_dir, const std::string& out_dir, int64_t step,
                        int64_t keep_last) {
  fsync_dir(tmp_dir);
  const std::string name = checkpoint_name(step);
  const fs::path final_dir = fs::path(out_dir) / name;
  // Swap into place; an older checkpoint of the same step goes only once the new one is there.
  fs::path old_dir = fs::path(out_dir) / (".old-" + name);
  fs::remove_all(old_dir);
  if (fs::exists(final_dir)) fs::rename(final_dir, old_dir);
  fs::rename(tmp_dir, final_dir);
  fsync_dir(out_dir);
  fs::remove_all(old_dir);

  // Keep the newest keep_last checkpoints.
  std::vector<std::pair<int64_t, fs::path>> all;
  for (const auto& e : fs::directory_iterator(out_dir)) {
    std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("ckpt-", 0) == 0) {
      try {
        all.emplace_back(std::stoll(n.substr(5)), e.path());
      } catch (const std::exception&) {
      }
    }
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + size_t(keep_last) < all.size(); ++i) fs::remove_all(all[i].second);
}

// ---------------------------------------------------------------------------------------------
// Finding and loading

std::optional<CheckpointPaths> latest_checkpoint(const std::string& dir) {
  // Directories appear by rename once fully written: the files are there or it is not a
  // checkpoint. A sharded one (a ZeRO one too) has no single model file (model is left empty).
  auto sharded = [](const fs::path& d) {
    return fs::exists(d / "model-pp0-tp0.safetensors") ||
           fs::exists(d / "state-pp0-tp0.safetensors");
  };
  auto complete = [&](const fs::path& d) {
    return (fs::exists(d / kModelFile) && fs::exists(d / kStateFile)) || sharded(d);
  };
  auto paths = [&](const fs::path& d, int64_t step) {
    if (sharded(d)) return CheckpointPaths{d.string(), "", "", step};
    return CheckpointPaths{d.string(), (d / kModelFile).string(), (d / kStateFile).string(), step};
  };
  if (!fs::is_directory(dir)) return std::nullopt;
  if (complete(dir)) {
    fs::path d(dir);
    int64_t step = 0;
    std::string n = d.filename().string();
    if (n.rfind("ckpt-", 0) == 0) step = std::atoll(n.c_str() + 5);
    return paths(d, step);
  }
  std::optional<CheckpointPaths> best;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    if (!e.is_directory() || n.rfind("ckpt-", 0) != 0 || !complete(e.path())) continue;
    int64_t step = std::atoll(n.c_str() + 5);
    if (!best || step > best->step) best = paths(e.path(), step);
  }
  return best;
}

std::string resolve_model_path(const std::string& path) {
  FORGE_CHECK(fs::exists(path), "{}: no such checkpoint file or directory", path);
  if (!fs::is_directory(path)) return path;
  auto latest = latest_checkpoint(path);
  FORGE_CHECK(latest.has_value(), "{}: no complete checkpoint (ckpt-*/{} and {}) found", path,
              kModelFile, kStateFile);
  FORGE_CHECK(!latest->model.empty(),
              "{}: a sharded checkpoint (tensor/pipeline parallel or ZeRO); merge it into one "
              "model first: "
              "build/apps/train reshard --from {} --to DIR",
              latest->dir, latest->dir);
  return latest->model;
}

LoadedModel load_model(const std::string& path) {
  SafetensorsContents c = load_safetensors(path);
  LoadedModel m;
  m.path = path;
  FORGE_CHECK(meta(c.metadata, "forge.format", path) == kFormat,
              "{}: checkpoint format '{}' is not {}", path, meta(c.metadata, "forge.format", path),
              kFormat);
  m.config = gpt_config_from_json(meta(c.metadata, "forge.config", path), path);
  try {
    m.tokenizer = Tokenizer::from_json(meta(c.metadata, "forge.tokenizer", path));
  } catch (const Error& e) {
    throw_error(fmt::format("{}: {}", path, e.what()));
  }
  FORGE_CHECK(m.tokenizer.vocab_size() == m.config.vocab_size,
              "{}: tokenizer has {} symbols but the model's vocab_size is {}", path,
              m.tokenizer.vocab_size(), m.config.vocab_size);
  m.step = parse_int(meta(c.metadata, "forge.step", path), path + ": forge.step");
  if (auto q = c.metadata.find("quantization"); q != c.metadata.end() && q->second != "none") {
    m.quantization = q->second;
    m.metadata = c.metadata;
    m.weights = c.tensors;
    return m;
  }
  // The tensors a model of this config has, each with its shape.
  Generator g0(0), g1(0);
  NamedTensors expected;
  {
    MemoryTagScope tag(MemoryTag::other);
    GPTConfig shape_only = m.config;
    GPT probe(shape_only, g0, g1);
    expected = probe.state_dict();
  }
  for (const auto& [name, t] : expected) {
    const Tensor* got = c.find(name);
    FORGE_CHECK(got != nullptr, "{}: tensor '{}' is missing", path, name);
    FORGE_CHECK(got->shape() == t.shape() && got->dtype() == t.dtype(),
                "{}: tensor '{}' is {} {}, the config needs {} {}", path, name, got->dtype(),
                got->shape(), t.dtype(), t.shape());
  }
  for (const auto& [name, t] : c.tensors) {
    bool known = std::any_of(expected.begin(), expected.end(),
                             [&](const auto& e) { return e.first == name; });
    FORGE_CHECK(known, "{}: unexpected tensor '{}' for this config", path, name);
  }
  m.weights = c.tensors;
  return m;
}

void load_weights(GPT& model, const LoadedModel& loaded) {
  FORGE_CHECK(model.config() == loaded.config,
              "{}: the checkpoint's model config {} differs from this run's {}", loaded.path,
              gpt_config_to_json(loaded.config), gpt_config_to_json(model.config()));
  FORGE_CHECK(
      loaded.quantization == "none",
      "{}: a quantized model ({}); it runs for inference only (infer, train gpt --eval-only)",
      loaded.path, loaded.quantization);
  model.load_state_dict(loaded.weights);
}

TrainingState load_training_state(const std::string& path, const GPTConfig& config) {
  SafetensorsContents c = load_safetensors(path);
  FORGE_CHECK(meta(c.metadata, "forge.format", path) == kFormat,
              "{}: checkpoint format '{}' is not {}", path, meta(c.metadata, "forge.format", path),
              kFormat);
  GPTConfig saved = gpt_config_from_json(meta(c.metadata, "forge.config", path), path);
  FORGE_CHECK(saved == config, "{}: training state is for model {}, not {}", path,
              gpt_config_to_json(saved), gpt_config_to_json(config));
  TrainingState s;
  s.step = parse_int(meta(c.metadata, "forge.step", path), path + ": forge.step");
  s.batch_gen = generator_from_string(meta(c.metadata, "forge.generator.batch", path), path);
  s.dropout_gen = generator_from_string(meta(c.metadata, "forge.generator.dropout", path), path);
  if (auto it = c.metadata.find("forge.train_config"); it != c.metadata.end())
    s.train_config_json = it->second;
  for (auto& [name, t] : c.tensors)
    (name.rfind("scaler.", 0) == 0 ? s.scaler : s.optimizer).emplace_back(name, t);
  return s;
}

std::shared_ptr<GPT> make_model(const LoadedModel& loaded, const std::string& quant,
                                int64_t group) {
  FORGE_CHECK(quant == "none" || quant == "int8" || quant == "int4",
              "--quant must be none, int8 or int4, got '{}'", quant);
  Generator g0(0), g1(0);
  auto model = std::make_shared<GPT>(loaded.config, g0, g1);
  if (loaded.quantization != "none") {
    FORGE_CHECK(quant == "none", "{}: already quantized ({}); --quant {} would quantize it twice",
                loaded.path, loaded.quantization, quant);
    load_quantized(*model, SafetensorsContents{loaded.weights, loaded.metadata}, loaded.path);
  } else {
    load_weights(*model, loaded);
    if (quant != "none")
      quantize_dynamic(*model, {.bits = quant == "int8" ? 8 : 4, .group = group, .config = {}});
  }
  model->eval();
  return model;
}

void save_quantized_model(const std::string& path, const GPT& model, const LoadedModel& source) {
  save_quantized(path, model,
                 {{"forge.format", kFormat},
                  {"forge.config", gpt_config_to_json(model.config())},
                  {"forge.tokenizer", source.tokenizer.to_json()},
                  {"forge.step", std::to_string(source.step)}});
}

}  // namespace forge
