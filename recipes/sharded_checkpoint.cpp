#include "recipes/sharded_checkpoint.h"

#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "parallel/tensor_parallel.h"

namespace fs = std::filesystem;

namespace forge {

// ---------------------------------------------------------------------------------------------
// Optimizer state by parameter name

std::vector<std::vector<std::string>> gpt_param_group_names(const Module& model) {
  std::vector<std::vector<std::string>> groups(2);
  for (const auto& [name, p] : model.named_parameters())
    groups[p.dim() >= 2 ? 0 : 1].push_back(name);
  return groups;
}

namespace {

// "adamw.m.3.1" -> {"m", group 3, index 1}; kind empty when the key is not a per-parameter one.
struct IndexKey {
  std::string kind;
  size_t group = 0, index = 0;
};
IndexKey parse_index_key(const std::string& key) {
  IndexKey k;
  char kind = 0;
  unsigned long g = 0, i = 0;
  int used = 0;
  if (std::sscanf(key.c_str(), "adamw.%c.%lu.%lu%n", &kind, &g, &i, &used) == 3 &&
      size_t(used) == key.size() && (kind == 'm' || kind == 'v' || kind == 't'))
    k = {std::string(1, kind), g, i};
  return k;
}

// "adamw.m.transformer.wte.weight" -> {"m", "transformer.wte.weight"}; empty for other keys.
std::pair<std::string, std::string> parse_name_key(const std::string& key) {
  for (const char* kind : {"m", "v", "t"}) {
    const std::string head = fmt::format("adamw.{}.", kind);
    if (key.rfind(head, 0) == 0) return {kind, key.substr(head.size())};
  }
  return {};
}

// How an optimizer entry splits: the moments as their parameter, step counts whole.
TpSplit optimizer_entry_split(const std::string& key) {
  auto [kind, param] = parse_name_key(key);
  return kind == "m" || kind == "v" ? gpt_tp_split(param) : TpSplit{};
}

}  // namespace

NamedTensors optimizer_state_by_name(const NamedTensors& state,
                                     const std::vector<std::vector<std::string>>& groups) {
  NamedTensors out;
  for (const auto& [key, t] : state) {
    IndexKey k = parse_index_key(key);
    if (k.kind.empty()) {  // adamw.step, or already by name
      out.emplace_back(key, t);
      continue;
    }
    FORGE_CHECK(k.group < groups.size() && k.index < groups[k.group].size(),
                "optimizer state: '{}' names no parameter of this model", key);
    out.emplace_back(fmt::format("adamw.{}.{}", k.kind, groups[k.group][k.index]), t);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Files

namespace {
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kStateFile = "state.safetensors";

std::string model_shard_file(int stage, int tp_rank) {
  return fmt::format("model-pp{}-tp{}.safetensors", stage, tp_rank);
}
std::string state_shard_file(int stage, int tp_rank) {
  return fmt::format("state-pp{}-tp{}.safetensors", stage, tp_rank);
}

std::string layout_to_json(ShardLayout l, int stage, int tp_rank) {
  return nlohmann::json{{"tp", l.tp}, {"pp", l.pp}, {"stage", stage}, {"tp_rank", tp_rank}}.dump();
}

ShardLayout layout_from_json(const std::string& text, const std::string& where) {
  try {
    auto j = nlohmann::json::parse(text);
    ShardLayout l{j.at("tp").get<int>(), j.at("pp").get<int>()};
    FORGE_CHECK(l.tp >= 1 && l.pp >= 1, "");
    return l;
  } catch (const std::exception&) {
    throw_error(fmt::format("{}: malformed layout '{}'", where, text));
  }
}

// The groups of the serial model of `config`, for a serial checkpoint whose optimizer state is
// keyed by position (written before issue 19); none needed (nor a model built) otherwise.
std::vector<std::vector<std::string>> legacy_group_names(const TrainingState& st,
                                                         const GPTConfig& config) {
  const bool by_position = std::any_of(st.optimizer.begin(), st.optimizer.end(), [](auto& e) {
    return !parse_index_key(e.first).kind.empty();
  });
  if (!by_position) return {};
  MemoryTagScope tag(MemoryTag::other);
  Generator g0(0), g1(0);
  return gpt_param_group_names(GPT(config, g0, g1));
}
}  // namespace

bool is_sharded_checkpoint(const std::string& dir) {
  return fs::exists(fs::path(dir) / model_shard_file(0, 0));
}

FullCheckpoint load_full_checkpoint(const std::string& dir) {
  FullCheckpoint full;
  full.dir = dir;
  if (!is_sharded_checkpoint(dir)) {
    LoadedModel m = load_model((fs::path(dir) / kModelFile).string());
    FORGE_CHECK(m.quantization == "none",
                "{}: a quantized model ({}); quantized models are for inference (infer, train gpt "
                "--eval-only) and cannot be trained or resharded",
                m.path, m.quantization);
    full.state = load_training_state((fs::path(dir) / kStateFile).string(), m.config);
    full.config = m.config;
    full.tokenizer = m.tokenizer;
    full.weights = m.weights;
    full.optimizer =
        optimizer_state_by_name(full.state.optimizer, legacy_group_names(full.state, m.config));
    full.state.optimizer.clear();
    full.dropout_gens = {{full.state.dropout_gen}};
    return full;
  }

  // The first shard says the layout, the model and the tokenizer; every shard must agree.
  const std::string first = (fs::path(dir) / model_shard_file(0, 0)).string();
  SafetensorsContents c0 = load_safetensors(first);
  FORGE_CHECK(checkpoint_meta(c0.metadata, "forge.format", first) == kGptCheckpointFormat,
              "{}: not a forge GPT checkpoint shard", first);
  full.layout = layout_from_json(checkpoint_meta(c0.metadata, "forge.layout", first), first);
  full.config = gpt_config_from_json(checkpoint_meta(c0.metadata, "forge.config", first), first);
  full.tokenizer = Tokenizer::from_json(checkpoint_meta(c0.metadata, "forge.tokenizer", first));
  const int T = full.layout.tp, P = full.layout.pp;
  std::vector<std::vector<NamedTensors>> weights(static_cast<size_t>(P)), moments(weights);
  full.dropout_gens.assign(size_t(P), std::vector<Generator::State>(size_t(T)));
  for (int s = 0; s < P; ++s) {
    for (int r = 0; r < T; ++r) {
      const std::string mp = (fs::path(dir) / model_shard_file(s, r)).string();
      const std::string sp = (fs::path(dir) / state_shard_file(s, r)).string();
      FORGE_CHECK(fs::exists(mp) && fs::exists(sp),
                  "{}: shard (stage {}, tp rank {}) of a {} x {} checkpoint is missing", dir, s, r,
                  P, T);
      SafetensorsContents m = load_safetensors(mp), st = load_safetensors(sp);
      for (auto [c, path] :
           {std::pair<const SafetensorsContents*, const std::string*>{&m, &mp}, {&st, &sp}}) {
        FORGE_CHECK(layout_from_json(checkpoint_meta(c->metadata, "forge.layout", *path), *path) ==
                        full.layout,
                    "{}: its layout differs from {}'s", *path, first);
        FORGE_CHECK(gpt_config_from_json(checkpoint_meta(c->metadata, "forge.config", *path),
                                         *path) == full.config,
                    "{}: its model config differs from {}'s", *path, first);
      }
      weights[size_t(s)].push_back(m.tensors);
      NamedTensors opt;
      for (auto& [name, t] : st.tensors) {
        if (name.rfind("scaler.", 0) == 0) {
          if (s == 0 && r == 0) full.state.scaler.emplace_back(name, t);
        } else {
          opt.emplace_back(name, t);
        }
      }
      moments[size_t(s)].push_back(opt);
      full.dropout_gens[size_t(s)][size_t(r)] =
          generator_from_string(checkpoint_meta(st.metadata, "forge.generator.dropout", sp), sp);
      if (s == 0 && r == 0) {
        full.state.step = std::stoll(checkpoint_meta(st.metadata, "forge.step", sp));
        full.state.batch_gen =
            generator_from_string(checkpoint_meta(st.metadata, "forge.generator.batch", sp), sp);
        full.state.dropout_gen = full.dropout_gens[0][0];
        full.state.train_config_json = checkpoint_meta(st.metadata, "forge.train_config", sp);
      }
    }
  }
  full.weights = merge_gpt_shards(weights);
  full.optimizer = merge_gpt_shards(moments, optimizer_entry_split);
  return full;
}

CheckpointShard shard_checkpoint(const FullCheckpoint& full, ShardLayout layout, int stage,
                                 int tp_rank) {
  CheckpointShard shard;
  shard.stage = stage;
  shard.tp_rank = tp_rank;
  shard.weights = shard_gpt_state(full.weights, full.config, tp_rank, layout.tp, stage, layout.pp);
  for (const auto& [key, t] : full.optimizer) {
    auto [kind, param] = parse_name_key(key);
    if (kind.empty() || gpt_stage_holds(full.config, param, stage, layout.pp))
      shard.optimizer.emplace_back(key,
                                   shard_tensor(t, optimizer_entry_split(key), tp_rank, layout.tp));
  }
  // The same layout continues each shard's dropout stream; another starts from the first one's.
  shard.dropout_gen = full.layout == layout ? full.dropout_gens[size_t(stage)][size_t(tp_rank)]
                                            : full.dropout_gens[0][0];
  return shard;
}

CheckpointPaths save_sharded_checkpoint(Communicator& comm, const std::string& out_dir,
                                        int64_t step, ShardLayout layout, const GPTConfig& config,
                                        const Tokenizer& tokenizer, const TrainingState& state,
                                        const std::vector<CheckpointShard>& shards,
                                        int64_t keep_last) {
  const std::string name = checkpoint_name(step);
  const fs::path tmp = fs::path(out_dir) / (".tmp-" + name);
  if (comm.rank() == 0) {
    fs::create_directories(out_dir);
    fs::remove_all(tmp);
    fs::create_directory(tmp);
  }
  comm.barrier();
  const std::string step_text = std::to_string(step), config_json = gpt_config_to_json(config);
  for (const CheckpointShard& sh : shards) {
    const std::string where = layout_to_json(layout, sh.stage, sh.tp_rank);
    save_safetensors((tmp / model_shard_file(sh.stage, sh.tp_rank)).string(), sh.weights,
                     {{"format", "pt"},
                      {"forge.format", kGptCheckpointFormat},
                      {"forge.config", config_json},
                      {"forge.tokenizer", tokenizer.to_json()},
                      {"forge.step", step_text},
                      {"forge.layout", where}});
    NamedTensors st = sh.optimizer;
    st.insert(st.end(), state.scaler.begin(), state.scaler.end());
    save_safetensors((tmp / state_shard_file(sh.stage, sh.tp_rank)).string(), st,
                     {{"forge.format", kGptCheckpointFormat},
                      {"forge.config", config_json},
                      {"forge.step", step_text},
                      {"forge.layout", where},
                      {"forge.generator.batch", generator_to_string(state.batch_gen)},
                      {"forge.generator.dropout", generator_to_string(sh.dropout_gen)},
                      {"forge.train_config", state.train_config_json}});
  }
  comm.barrier();  // every shard is on disk
  if (comm.rank() == 0) publish_checkpoint(tmp.string(), out_dir, step, keep_last);
  comm.barrier();  // in place before anyone reads it or starts the next
  return {(fs::path(out_dir) / name).string(), "", "", step};
}

CheckpointPaths reshard_checkpoint(const std::string& from, const std::string& out_dir,
                                   ShardLayout layout) {
  auto latest = latest_checkpoint(from);
  FORGE_CHECK(latest.has_value(), "{}: no complete checkpoint found there", from);
  FullCheckpoint full = load_full_checkpoint(latest->dir);
  const fs::path target = fs::path(out_dir) / checkpoint_name(full.state.step);
  FORGE_CHECK(
      !fs::exists(target) || !fs::equivalent(target, latest->dir),
      "reshard: --to {} would replace the checkpoint it reads ({}); choose another directory",
      out_dir, latest->dir);
  FORGE_CHECK(full.config.n_head % layout.tp == 0,
              "reshard: tp {} does not divide the model's {} heads", layout.tp, full.config.n_head);
  FORGE_CHECK(layout.pp <= full.config.n_layer, "reshard: pp {} is more stages than {} layers",
              layout.pp, full.config.n_layer);
  const int64_t keep_all = std::numeric_limits<int64_t>::max();
  if (layout.serial()) {
    Generator g0(0), g1(0);
    GPT model(full.config, g0, g1);
    model.load_state_dict(full.weights);
    TrainingState st = full.state;
    st.optimizer = full.optimizer;
    return save_checkpoint(out_dir, st.step, model, full.tokenizer, st, st.train_config_json,
                           keep_all);
  }
  std::vector<CheckpointShard> shards;
  for (int s = 0; s < layout.pp; ++s)
    for (int r = 0; r < layout.tp; ++r) shards.push_back(shard_checkpoint(full, layout, s, r));
  return save_sharded_checkpoint(*single_process_communicator(), out_dir, full.state.step, layout,
                                 full.config, full.tokenizer, full.state, shards, keep_all);
}

}  // namespace forge
