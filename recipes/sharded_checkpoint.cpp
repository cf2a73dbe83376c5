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

// The recipe's groups of the serial model of `config` (gpt_param_group_names), without building
// it: matrices and embeddings, then the rest.
std::vector<std::vector<std::string>> serial_group_names(const GPTConfig& config) {
  std::vector<std::vector<std::string>> groups(2);
  for (const auto& [name, shape] : gpt_parameter_shapes(config))
    groups[shape.size() >= 2 ? 0 : 1].push_back(name);
  return groups;
}

// The files of a checkpoint directory, each opened on first use (its header read and checked).
class CheckpointFiles {
 public:
  CheckpointFiles(std::string dir, bool sharded) : dir_(std::move(dir)), sharded_(sharded) {}
  SafetensorsReader& model(int stage, int tp_rank) {
    return open(models_, stage, tp_rank, sharded_ ? model_shard_file(stage, tp_rank) : kModelFile);
  }
  SafetensorsReader& state(int stage, int tp_rank) {
    return open(states_, stage, tp_rank, sharded_ ? state_shard_file(stage, tp_rank) : kStateFile);
  }
  int64_t bytes_read() const {
    int64_t n = 0;
    for (const auto* files : {&models_, &states_})
      for (const auto& [key, r] : *files) n += r->bytes_read();
    return n;
  }

 private:
  using Files = std::map<std::pair<int, int>, std::unique_ptr<SafetensorsReader>>;
  SafetensorsReader& open(Files& files, int stage, int tp_rank, const std::string& name) {
    auto& r = files[{stage, tp_rank}];
    if (!r) {
      const fs::path path = fs::path(dir_) / name;
      FORGE_CHECK(fs::exists(path), "{}: shard (stage {}, tp rank {}) is missing ({})", dir_, stage,
                  tp_rank, path.string());
      r = std::make_unique<SafetensorsReader>(path.string());
    }
    return *r;
  }
  std::string dir_;
  bool sharded_;
  Files models_, states_;
};

// Tensor `key` of the files of saved stage `stage` (its tp ranks at the saved layout), as tp rank
// `tp_rank` of `tp` holds it under `split` (the tensor's serial shape: `full`): each saved
// shard's overlap with the wanted slice, read on its own.
Tensor read_split(CheckpointFiles& files, bool state_file, int stage, int saved_tp,
                  const std::string& key, const std::string& key_in_file, TpSplit split,
                  const Shape& full, int tp_rank, int tp) {
  auto file = [&](int r) -> SafetensorsReader& {
    return state_file ? files.state(stage, r) : files.model(stage, r);
  };
  if (split.replicated()) return file(0).read(key_in_file);
  const int64_t block = full[size_t(split.dim)] / split.chunks;
  const IndexRange want = shard_range(block, tp, tp_rank);
  const SafetensorsReader::Entry* first = file(0).find(key_in_file);
  FORGE_CHECK(first, "{}: no tensor '{}'", file(0).path(), key_in_file);
  Tensor out = Tensor::empty(shard_shape(full, split, tp_rank, tp), first->dtype);
  for (int r = 0; r < saved_tp; ++r) {
    const IndexRange have = shard_range(block, saved_tp, r);
    const int64_t lo = std::max(want.begin, have.begin), hi = std::min(want.end, have.end);
    if (lo >= hi) continue;
    SafetensorsReader& f = file(r);
    const auto* e = f.find(key_in_file);
    FORGE_CHECK(e && e->shape == shard_shape(full, split, r, saved_tp),
                "{}: tensor '{}' is missing or not the shape of tp rank {} of {}'s slice of {} {}",
                f.path(), key_in_file, r, saved_tp, key, full);
    for (int64_t c = 0; c < split.chunks; ++c)
      out.narrow(split.dim, c * want.size() + lo - want.begin, hi - lo)
          .copy_(f.read_slice(key_in_file, split.dim, c * have.size() + lo - have.begin, hi - lo));
  }
  return out;
}

}  // namespace

bool is_sharded_checkpoint(const std::string& dir) {
  return fs::exists(fs::path(dir) / model_shard_file(0, 0));
}

CheckpointInfo read_checkpoint_info(const std::string& dir) {
  CheckpointInfo info;
  info.dir = dir;
  if (!is_sharded_checkpoint(dir)) {
    const std::string path = (fs::path(dir) / kModelFile).string();
    SafetensorsReader m(path);
    auto q = m.metadata().find("quantization");
    FORGE_CHECK(q == m.metadata().end() || q->second == "none",
                "{}: a quantized model ({}); quantized models are for inference (infer, train gpt "
                "--eval-only) and cannot be trained or resharded",
                path, q == m.metadata().end() ? "" : q->second);
    FORGE_CHECK(checkpoint_meta(m.metadata(), "forge.format", path) == kGptCheckpointFormat,
                "{}: not a forge GPT checkpoint", path);
    info.config = gpt_config_from_json(checkpoint_meta(m.metadata(), "forge.config", path), path);
    info.tokenizer = Tokenizer::from_json(checkpoint_meta(m.metadata(), "forge.tokenizer", path));
    FORGE_CHECK(info.tokenizer.vocab_size() == info.config.vocab_size,
                "{}: the tokenizer has {} symbols, the model a vocabulary of {}", path,
                info.tokenizer.vocab_size(), info.config.vocab_size);
  } else {
    // The first shard says the layout, the model and the tokenizer; every shard must agree.
    const std::string first = (fs::path(dir) / model_shard_file(0, 0)).string();
    SafetensorsReader c0(first);
    FORGE_CHECK(checkpoint_meta(c0.metadata(), "forge.format", first) == kGptCheckpointFormat,
                "{}: not a forge GPT checkpoint shard", first);
    info.layout = layout_from_json(checkpoint_meta(c0.metadata(), "forge.layout", first), first);
    info.config =
        gpt_config_from_json(checkpoint_meta(c0.metadata(), "forge.config", first), first);
    info.tokenizer = Tokenizer::from_json(checkpoint_meta(c0.metadata(), "forge.tokenizer", first));
  }
  // Every state file's header: the shards' dropout generators; shard (0, 0)'s step, batch
  // generator and train config; and every file agrees on the layout and the model.
  const int T = info.layout.tp, P = info.layout.pp;
  const bool sharded = is_sharded_checkpoint(dir);
  CheckpointFiles files(dir, sharded);
  info.dropout_gens.assign(size_t(P), std::vector<Generator::State>(size_t(T)));
  for (int s = 0; s < P; ++s) {
    for (int r = 0; r < T; ++r) {
      SafetensorsReader& st = files.state(s, r);
      const std::string& sp = st.path();
      if (sharded) {
        for (SafetensorsReader* c : {&files.model(s, r), &st}) {
          FORGE_CHECK(layout_from_json(checkpoint_meta(c->metadata(), "forge.layout", c->path()),
                                       c->path()) == info.layout,
                      "{}: its layout differs from the first shard's", c->path());
          FORGE_CHECK(
              gpt_config_from_json(checkpoint_meta(c->metadata(), "forge.config", c->path()),
                                   c->path()) == info.config,
              "{}: its model config differs from the first shard's", c->path());
        }
      } else {
        FORGE_CHECK(gpt_config_from_json(checkpoint_meta(st.metadata(), "forge.config", sp), sp) ==
                        info.config,
                    "{}: training state is for another model than {}", sp, kModelFile);
      }
      info.dropout_gens[size_t(s)][size_t(r)] =
          generator_from_string(checkpoint_meta(st.metadata(), "forge.generator.dropout", sp), sp);
      if (s == 0 && r == 0) {
        info.state.step = std::stoll(checkpoint_meta(st.metadata(), "forge.step", sp));
        info.state.batch_gen =
            generator_from_string(checkpoint_meta(st.metadata(), "forge.generator.batch", sp), sp);
        info.state.dropout_gen = info.dropout_gens[0][0];
        if (auto it = st.metadata().find("forge.train_config"); it != st.metadata().end())
          info.state.train_config_json = it->second;
        for (const SafetensorsReader::Entry& e : st.entries())
          if (e.name.rfind("scaler.", 0) == 0)
            info.state.scaler.emplace_back(e.name, st.read(e.name));
      }
    }
  }
  return info;
}

CheckpointShard read_checkpoint_shard(const CheckpointInfo& info, ShardLayout layout, int stage,
                                      int tp_rank) {
  const GPTConfig& cfg = info.config;
  FORGE_CHECK(cfg.n_head % layout.tp == 0, "{}: tp {} does not divide the model's {} heads",
              info.dir, layout.tp, cfg.n_head);
  FORGE_CHECK(layout.pp <= cfg.n_layer, "{}: pp {} is more stages than {} layers", info.dir,
              layout.pp, cfg.n_layer);
  const bool sharded = is_sharded_checkpoint(info.dir);
  CheckpointFiles files(info.dir, sharded);
  const int T = info.layout.tp, P = info.layout.pp;
  // A serial state file written before issue 19 keys AdamW's moments by position.
  std::map<std::string, std::string> legacy;  // adamw.<kind>.<name> -> the key in the file
  if (!sharded) {
    const auto groups = serial_group_names(cfg);
    for (const SafetensorsReader::Entry& e : files.state(0, 0).entries())
      if (IndexKey k = parse_index_key(e.name); !k.kind.empty()) {
        FORGE_CHECK(k.group < groups.size() && k.index < groups[k.group].size(),
                    "{}: optimizer state '{}' names no parameter of this model",
                    files.state(0, 0).path(), e.name);
        legacy[fmt::format("adamw.{}.{}", k.kind, groups[k.group][k.index])] = e.name;
      }
  }
  auto in_file = [&](const std::string& key) {
    auto it = legacy.find(key);
    return it == legacy.end() ? key : it->second;
  };

  CheckpointShard shard;
  shard.stage = stage;
  shard.tp_rank = tp_rank;
  if (const auto* step = files.state(0, 0).find("adamw.step"))
    shard.optimizer.emplace_back("adamw.step", files.state(0, 0).read(step->name));
  for (const auto& [name, shape] : gpt_parameter_shapes(cfg)) {
    if (!gpt_stage_holds(cfg, name, stage, layout.pp)) continue;
    int saved = 0;  // the first saved stage holding it (the tied wte: stage 0)
    while (!gpt_stage_holds(cfg, name, saved, P)) ++saved;
    const TpSplit split = gpt_tp_split(name);
    shard.weights.emplace_back(
        name, read_split(files, false, saved, T, name, name, split, shape, tp_rank, layout.tp));
    const std::string m = "adamw.m." + name;
    if (!files.state(saved, 0).find(in_file(m))) continue;  // no moments yet
    for (const char* kind : {"m", "v"}) {
      const std::string key = fmt::format("adamw.{}.{}", kind, name);
      shard.optimizer.emplace_back(key, read_split(files, true, saved, T, key, in_file(key), split,
                                                   shape, tp_rank, layout.tp));
    }
    const std::string t = "adamw.t." + name;
    shard.optimizer.emplace_back(t, files.state(saved, 0).read(in_file(t)));
  }
  // The same layout continues each shard's dropout stream; another starts from the first one's.
  shard.dropout_gen = info.layout == layout ? info.dropout_gens[size_t(stage)][size_t(tp_rank)]
                                            : info.dropout_gens[0][0];
  shard.bytes_read = files.bytes_read();
  return shard;
}

FullCheckpoint load_full_checkpoint(const std::string& dir) {
  FullCheckpoint full;
  static_cast<CheckpointInfo&>(full) = read_checkpoint_info(dir);
  CheckpointShard whole = read_checkpoint_shard(full, {1, 1}, 0, 0);
  full.weights = std::move(whole.weights);
  full.optimizer = std::move(whole.optimizer);
  return full;
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
  const CheckpointInfo full = read_checkpoint_info(latest->dir);
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
    CheckpointShard whole = read_checkpoint_shard(full, layout, 0, 0);
    Generator g0(0), g1(0);
    GPT model(full.config, g0, g1);
    model.load_state_dict(whole.weights);
    TrainingState st = full.state;
    st.optimizer = std::move(whole.optimizer);
    return save_checkpoint(out_dir, st.step, model, full.tokenizer, st, st.train_config_json,
                           keep_all);
  }
  std::vector<CheckpointShard> shards;
  for (int s = 0; s < layout.pp; ++s)
    for (int r = 0; r < layout.tp; ++r) shards.push_back(read_checkpoint_shard(full, layout, s, r));
  return save_sharded_checkpoint(*single_process_communicator(), out_dir, full.state.step, layout,
                                 full.config, full.tokenizer, full.state, shards, keep_all);
}

}  // namespace forge
