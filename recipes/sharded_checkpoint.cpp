#include "recipes/sharded_checkpoint.h"

#include <algorithm>
#include <array>
#include <cstring>
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
std::string zero_shard_file(int stage, int tp_rank, int dp_rank) {
  return fmt::format("zero-pp{}-tp{}-dp{}.safetensors", stage, tp_rank, dp_rank);
}

// A file's place in its checkpoint; a ZeRO checkpoint's files add the data-parallel size, the
// file's rank (-1: a state file, replica 0's) and the stage.
std::string layout_to_json(ShardLayout l, int stage, int tp_rank, const ZeroShare* zero = nullptr,
                           bool zero_file = false) {
  nlohmann::json j{{"tp", l.tp}, {"pp", l.pp}, {"stage", stage}, {"tp_rank", tp_rank}};
  if (zero) {
    j["zero"] = zero->zero_stage;
    j["dp"] = zero->dp;
    j["dp_rank"] = zero_file ? zero->dp_rank : -1;
  }
  return j.dump();
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

// The ZeRO fields of a layout: {zero stage, dp, dp_rank}, all 0 when it has none.
std::array<int, 3> zero_from_json(const std::string& text, const std::string& where) {
  try {
    auto j = nlohmann::json::parse(text);
    if (!j.contains("zero")) return {0, 0, 0};
    std::array<int, 3> z{j.at("zero").get<int>(), j.at("dp").get<int>(),
                         j.at("dp_rank").get<int>()};
    FORGE_CHECK(z[0] >= 1 && z[0] <= 3 && z[1] >= 1 && z[2] >= -1 && z[2] < z[1], "");
    return z;
  } catch (const std::exception&) {
    throw_error(fmt::format("{}: malformed ZeRO layout '{}'", where, text));
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

// "name[12:40]" -> {"name", 12, 40}; empty name when the key is not a piece.
struct PieceKey {
  std::string name;
  int64_t begin = 0, end = 0;
};
PieceKey parse_piece_key(const std::string& key) {
  const size_t open = key.rfind('[');
  long long a = 0, b = 0;
  int used = 0;
  if (open == std::string::npos || key.back() != ']' ||
      std::sscanf(key.c_str() + open, "[%lld:%lld]%n", &a, &b, &used) != 2 ||
      open + size_t(used) != key.size() || a < 0 || b <= a)
    return {};
  return {key.substr(0, open), a, b};
}

// The files of a checkpoint directory, each opened on first use (its header read and checked), and
// the tensors of a saved shard (stage, tp rank) wherever they are: whole in its model file
// (weights) or state file (the rest), or, in a ZeRO checkpoint, the weights and moments in pieces
// over its data-parallel ranks' files, joined on reading.
class CheckpointFiles {
 public:
  CheckpointFiles(std::string dir, bool sharded, int zero_dp = 0)
      : dir_(std::move(dir)), sharded_(sharded), zero_dp_(zero_dp) {}
  SafetensorsReader& model(int stage, int tp_rank) {
    return open(models_, {stage, tp_rank, 0},
                sharded_ ? model_shard_file(stage, tp_rank) : kModelFile);
  }
  SafetensorsReader& state(int stage, int tp_rank) {
    return open(states_, {stage, tp_rank, 0},
                sharded_ ? state_shard_file(stage, tp_rank) : kStateFile);
  }
  SafetensorsReader& zero(int stage, int tp_rank, int dp_rank) {
    return open(zeros_, {stage, tp_rank, dp_rank}, zero_shard_file(stage, tp_rank, dp_rank));
  }
  int64_t bytes_read() const {
    int64_t n = 0;
    for (const auto* files : {&models_, &states_, &zeros_})
      for (const auto& [key, r] : *files) n += r->bytes_read();
    return n;
  }

  // Tensor `key` of saved shard (stage, tp_rank): a weight (weights) or optimizer state, expected
  // of shape `shape`; has() whether it is there, read() whole, read_slice() [start, start + len)
  // of dim `dim`, read_elements() elements of the flattened tensor.
  bool has(bool weights, int stage, int tp_rank, const std::string& key) {
    if (pieced(weights, key)) return pieces(stage, tp_rank).count(key) > 0;
    return file(weights, stage, tp_rank).find(key) != nullptr;
  }
  Tensor read(bool weights, int stage, int tp_rank, const std::string& key, const Shape& shape) {
    const bool count = key.rfind("adamw.t.", 0) == 0;  // a parameter's step count: any shape
    if (pieced(weights, key)) {
      if (count) {  // the same in every piece
        const Piece& p = piece_list(stage, tp_rank, key, shape).front();
        return zero(stage, tp_rank, p.dp).read(p.entry);
      }
      return read_slice(weights, stage, tp_rank, key, shape, 0, 0, shape.empty() ? 1 : shape[0]);
    }
    SafetensorsReader& f = file(weights, stage, tp_rank);
    if (!count) check_shape(f, key, shape);
    return f.read(key);
  }
  Tensor read_slice(bool weights, int stage, int tp_rank, const std::string& key,
                    const Shape& shape, int dim, int64_t start, int64_t len) {
    if (!pieced(weights, key)) {
      SafetensorsReader& f = file(weights, stage, tp_rank);
      check_shape(f, key, shape);
      return f.read_slice(key, dim, start, len);
    }
    const std::vector<Piece>& ps = piece_list(stage, tp_rank, key, shape);
    Shape out_shape = shape;
    int64_t outer = 1, inner = 1, D = 1;
    if (!shape.empty()) {
      out_shape[size_t(dim)] = len;
      D = shape[size_t(dim)];
      for (int d = 0; d < dim; ++d) outer *= shape[size_t(d)];
      for (int d = dim + 1; d < int(shape.size()); ++d) inner *= shape[size_t(d)];
    }
    Tensor out = Tensor::empty(out_shape, ps.front().dtype);
    char* dst = static_cast<char*>(out.raw_data());
    const size_t es = dtype_size(out.dtype());
    for (int64_t o = 0; o < outer; ++o)
      copy_elements(stage, tp_rank, key, ps, (o * D + start) * inner, (o * D + start + len) * inner,
                    dst + size_t(o * len * inner) * es);
    return out;
  }
  Tensor read_elements(bool weights, int stage, int tp_rank, const std::string& key,
                       const Shape& shape, IndexRange e) {
    if (!pieced(weights, key)) {  // the rows holding them
      if (shape.empty()) return read(weights, stage, tp_rank, key, shape).reshape({-1});
      const int64_t row = shape.numel() / shape[0];
      const int64_t r0 = e.begin / row, r1 = (e.end + row - 1) / row;
      return read_slice(weights, stage, tp_rank, key, shape, 0, r0, r1 - r0)
          .reshape({-1})
          .narrow(0, e.begin - r0 * row, e.size())
          .contiguous();
    }
    const std::vector<Piece>& ps = piece_list(stage, tp_rank, key, shape);
    Tensor out = Tensor::empty({e.size()}, ps.front().dtype);
    copy_elements(stage, tp_rank, key, ps, e.begin, e.end, static_cast<char*>(out.raw_data()));
    return out;
  }

 private:
  struct Piece {
    int dp;
    std::string entry;
    int64_t begin, end;
    DType dtype;
  };
  using Pieces = std::map<std::string, std::vector<Piece>>;  // by tensor key, in element order

  // In a ZeRO checkpoint the weights and the moments are in pieces; the rest (adamw.step, the
  // scaler) is whole in the state files.
  bool pieced(bool weights, const std::string& key) const {
    return zero_dp_ > 0 && (weights || key.rfind("adamw.m.", 0) == 0 ||
                            key.rfind("adamw.v.", 0) == 0 || key.rfind("adamw.t.", 0) == 0);
  }
  SafetensorsReader& file(bool weights, int stage, int tp_rank) {
    return weights ? model(stage, tp_rank) : state(stage, tp_rank);
  }
  static void check_shape(SafetensorsReader& f, const std::string& key, const Shape& shape) {
    const SafetensorsReader::Entry* e = f.find(key);
    FORGE_CHECK(e, "{}: no tensor '{}'", f.path(), key);
    FORGE_CHECK(e->shape == shape, "{}: tensor '{}' is {}, expected {}", f.path(), key, e->shape,
                shape);
  }
  // Every piece of saved shard (stage, tp_rank), from all its data-parallel ranks' files.
  Pieces& pieces(int stage, int tp_rank) {
    auto& index = pieces_[{stage, tp_rank}];
    if (!index) {
      index = std::make_unique<Pieces>();
      for (int d = 0; d < zero_dp_; ++d) {
        SafetensorsReader& f = zero(stage, tp_rank, d);
        for (const SafetensorsReader::Entry& e : f.entries()) {
          PieceKey k = parse_piece_key(e.name);
          FORGE_CHECK(!k.name.empty(), "{}: '{}' is not a piece (name[begin:end])", f.path(),
                      e.name);
          const bool count = k.name.rfind("adamw.t.", 0) == 0;
          FORGE_CHECK(count || e.shape == Shape({k.end - k.begin}),
                      "{}: piece '{}' has shape {}, not its {} elements", f.path(), e.name, e.shape,
                      k.end - k.begin);
          (*index)[k.name].push_back({d, e.name, k.begin, k.end, e.dtype});
        }
      }
      for (auto& [key, ps] : *index)
        std::sort(ps.begin(), ps.end(),
                  [](const Piece& a, const Piece& b) { return a.begin < b.begin; });
    }
    return *index;
  }
  const std::vector<Piece>& piece_list(int stage, int tp_rank, const std::string& key,
                                       const Shape& shape) {
    const Pieces& index = pieces(stage, tp_rank);
    auto it = index.find(key);
    FORGE_CHECK(it != index.end(), "{}: no piece of '{}' in {} (stage {}, tp rank {}, dp 0..{})",
                dir_, key, zero_shard_file(stage, tp_rank, 0), stage, tp_rank, zero_dp_ - 1);
    if (key.rfind("adamw.t.", 0) != 0)
      for (const Piece& p : it->second)
        FORGE_CHECK(p.end <= shape.numel(), "{}: piece '{}' lies outside '{}' of shape {}",
                    zero_shard_file(stage, tp_rank, p.dp), p.entry, key, shape);
    return it->second;
  }
  // Elements [lo, hi) of tensor `key` from the pieces overlapping them, each reading only those.
  void copy_elements(int stage, int tp_rank, const std::string& key, const std::vector<Piece>& ps,
                     int64_t lo, int64_t hi, char* dst) {
    int64_t covered = 0;
    for (const Piece& p : ps) {
      const int64_t a = std::max(lo, p.begin), b = std::min(hi, p.end);
      if (a >= b) continue;
      Tensor t = zero(stage, tp_rank, p.dp).read_slice(p.entry, 0, a - p.begin, b - a);
      const size_t es = dtype_size(t.dtype());
      std::memcpy(dst + size_t(a - lo) * es, t.raw_data(), size_t(b - a) * es);
      covered += b - a;
    }
    FORGE_CHECK(covered == hi - lo,
                "{}: the pieces of '{}' (stage {}, tp rank {}, over {} data-parallel files) cover "
                "{} of its elements [{}, {}), not all of them",
                dir_, key, stage, tp_rank, zero_dp_, covered, lo, hi);
  }
  using Files = std::map<std::array<int, 3>, std::unique_ptr<SafetensorsReader>>;
  SafetensorsReader& open(Files& files, std::array<int, 3> at, const std::string& name) {
    auto& r = files[at];
    if (!r) {
      const fs::path path = fs::path(dir_) / name;
      FORGE_CHECK(fs::exists(path), "{}: shard (stage {}, tp rank {}{}) is missing ({})", dir_,
                  at[0], at[1], &files == &zeros_ ? fmt::format(", dp rank {}", at[2]) : "",
                  path.string());
      r = std::make_unique<SafetensorsReader>(path.string());
    }
    return *r;
  }
  std::string dir_;
  bool sharded_;
  int zero_dp_;
  Files models_, states_, zeros_;
  std::map<std::pair<int, int>, std::unique_ptr<Pieces>> pieces_;
};

// Tensor `key` of saved stage `stage` (its tp ranks at the saved layout), as tp rank `tp_rank` of
// `tp` holds it under `split` (the tensor's serial shape: `full`): each saved shard's overlap
// with the wanted slice, read on its own.
Tensor read_split(CheckpointFiles& files, bool weights, int stage, int saved_tp,
                  const std::string& key, TpSplit split, const Shape& full, int tp_rank, int tp) {
  if (split.replicated()) return files.read(weights, stage, 0, key, full);
  const int64_t block = full[size_t(split.dim)] / split.chunks;
  const IndexRange want = shard_range(block, tp, tp_rank);
  Tensor out;
  for (int r = 0; r < saved_tp; ++r) {
    const IndexRange have = shard_range(block, saved_tp, r);
    const int64_t lo = std::max(want.begin, have.begin), hi = std::min(want.end, have.end);
    if (lo >= hi) continue;
    const Shape saved = shard_shape(full, split, r, saved_tp);
    for (int64_t c = 0; c < split.chunks; ++c) {
      Tensor part = files.read_slice(weights, stage, r, key, saved, split.dim,
                                     c * have.size() + lo - have.begin, hi - lo);
      if (!out.defined()) out = Tensor::empty(shard_shape(full, split, tp_rank, tp), part.dtype());
      out.narrow(split.dim, c * want.size() + lo - want.begin, hi - lo).copy_(part);
    }
  }
  return out;
}

}  // namespace

bool is_sharded_checkpoint(const std::string& dir) {
  return fs::exists(fs::path(dir) / model_shard_file(0, 0)) ||
         fs::exists(fs::path(dir) / state_shard_file(0, 0));
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
    // The first shard says the layout, the model and the tokenizer (a ZeRO checkpoint: its state
    // file, also the data-parallel size); every shard must agree.
    std::string first = (fs::path(dir) / model_shard_file(0, 0)).string();
    if (!fs::exists(first)) first = (fs::path(dir) / state_shard_file(0, 0)).string();
    SafetensorsReader c0(first);
    FORGE_CHECK(checkpoint_meta(c0.metadata(), "forge.format", first) == kGptCheckpointFormat,
                "{}: not a forge GPT checkpoint shard", first);
    const std::string layout = checkpoint_meta(c0.metadata(), "forge.layout", first);
    info.layout = layout_from_json(layout, first);
    const auto [zero_stage, zero_dp, zero_rank] = zero_from_json(layout, first);
    info.zero_stage = zero_stage;
    info.zero_dp = zero_dp;
    info.config =
        gpt_config_from_json(checkpoint_meta(c0.metadata(), "forge.config", first), first);
    info.tokenizer = Tokenizer::from_json(checkpoint_meta(c0.metadata(), "forge.tokenizer", first));
  }
  // Every state file's header: the shards' dropout generators; shard (0, 0)'s step, batch
  // generator and train config; and every file agrees on the layout and the model.
  const int T = info.layout.tp, P = info.layout.pp;
  const bool sharded = is_sharded_checkpoint(dir);
  CheckpointFiles files(dir, sharded, info.zero_dp);
  info.dropout_gens.assign(size_t(P), std::vector<Generator::State>(size_t(T)));
  for (int s = 0; s < P; ++s) {
    for (int r = 0; r < T; ++r) {
      SafetensorsReader& st = files.state(s, r);
      const std::string& sp = st.path();
      if (sharded) {
        std::vector<std::pair<SafetensorsReader*, int>> shard_files{{&st, -1}};
        if (info.zero_dp == 0) shard_files.emplace_back(&files.model(s, r), -1);
        for (int d = 0; d < info.zero_dp; ++d) shard_files.emplace_back(&files.zero(s, r, d), d);
        for (const auto& [c, d] : shard_files) {
          const std::string layout = checkpoint_meta(c->metadata(), "forge.layout", c->path());
          const auto z = zero_from_json(layout, c->path());
          FORGE_CHECK(layout_from_json(layout, c->path()) == info.layout &&
                          z[0] == info.zero_stage && z[1] == info.zero_dp &&
                          z[2] == (info.zero_dp > 0 ? d : 0),
                      "{}: its layout {} differs from the first shard's", c->path(), layout);
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

struct CheckpointShardReader::Impl {
  const CheckpointInfo& info;
  ShardLayout layout;
  int stage, tp_rank;
  CheckpointFiles files;
  std::vector<std::string> names;
  std::map<std::string, Shape> shapes;        // serial shapes
  std::map<std::string, std::string> legacy;  // adamw.<kind>.<name> -> the key in the file
  std::string in_file(const std::string& key) const {
    auto it = legacy.find(key);
    return it == legacy.end() ? key : it->second;
  }
  // The first saved stage holding `name` (the tied wte: stage 0).
  int saved_stage(const std::string& name) const {
    int saved = 0;
    while (!gpt_stage_holds(info.config, name, saved, info.layout.pp)) ++saved;
    return saved;
  }
  const Shape& shape(const std::string& name) const {
    auto it = shapes.find(name);
    FORGE_CHECK(it != shapes.end(), "{}: the model has no parameter '{}'", info.dir, name);
    return it->second;
  }
};

CheckpointShardReader::CheckpointShardReader(const CheckpointInfo& info, ShardLayout layout,
                                             int stage, int tp_rank)
    : impl_(new Impl{info,
                     layout,
                     stage,
                     tp_rank,
                     CheckpointFiles(info.dir, is_sharded_checkpoint(info.dir), info.zero_dp),
                     {},
                     {},
                     {}}) {
  const GPTConfig& cfg = info.config;
  FORGE_CHECK(cfg.n_head % layout.tp == 0, "{}: tp {} does not divide the model's {} heads",
              info.dir, layout.tp, cfg.n_head);
  FORGE_CHECK(layout.pp <= cfg.n_layer, "{}: pp {} is more stages than {} layers", info.dir,
              layout.pp, cfg.n_layer);
  for (const auto& [name, shape] : gpt_parameter_shapes(cfg)) {
    impl_->shapes.emplace(name, shape);
    if (gpt_stage_holds(cfg, name, stage, layout.pp)) impl_->names.push_back(name);
  }
  // A serial state file written before issue 19 keys AdamW's moments by position.
  if (!is_sharded_checkpoint(info.dir)) {
    const auto groups = serial_group_names(cfg);
    for (const SafetensorsReader::Entry& e : impl_->files.state(0, 0).entries())
      if (IndexKey k = parse_index_key(e.name); !k.kind.empty()) {
        FORGE_CHECK(k.group < groups.size() && k.index < groups[k.group].size(),
                    "{}: optimizer state '{}' names no parameter of this model",
                    impl_->files.state(0, 0).path(), e.name);
        impl_->legacy[fmt::format("adamw.{}.{}", k.kind, groups[k.group][k.index])] = e.name;
      }
  }
}

CheckpointShardReader::~CheckpointShardReader() = default;

const std::vector<std::string>& CheckpointShardReader::names() const {
  return impl_->names;
}

Tensor CheckpointShardReader::weight(const std::string& name) {
  Impl& m = *impl_;
  return read_split(m.files, true, m.saved_stage(name), m.info.layout.tp, name, gpt_tp_split(name),
                    m.shape(name), m.tp_rank, m.layout.tp);
}

Tensor CheckpointShardReader::moment(const std::string& kind, const std::string& name) {
  Impl& m = *impl_;
  const int saved = m.saved_stage(name);
  const std::string key = m.in_file(fmt::format("adamw.{}.{}", kind, name));
  if (!m.files.has(false, saved, 0, key)) return {};  // no moments yet
  if (kind == "t") return m.files.read(false, saved, 0, key, {1});
  return read_split(m.files, false, saved, m.info.layout.tp, key, gpt_tp_split(name), m.shape(name),
                    m.tp_rank, m.layout.tp);
}

Tensor CheckpointShardReader::elements(const std::string& kind, const std::string& name,
                                       IndexRange e) {
  Impl& m = *impl_;
  if (kind == "t") return moment(kind, name);
  const bool weights = kind.empty();
  const std::string key = weights ? name : m.in_file(fmt::format("adamw.{}.{}", kind, name));
  const int saved = m.saved_stage(name);
  if (!weights && !m.files.has(false, saved, 0, key)) return {};
  if (m.info.layout == m.layout)  // the saved shard is this one: its elements alone
    return m.files.read_elements(
        weights, saved, m.tp_rank, key,
        shard_shape(m.shape(name), gpt_tp_split(name), m.tp_rank, m.layout.tp), e);
  Tensor whole = weights ? weight(name) : moment(kind, name);
  return whole.reshape({-1}).narrow(0, e.begin, e.size()).contiguous();
}

Tensor CheckpointShardReader::adamw_step() {
  SafetensorsReader& st = impl_->files.state(0, 0);
  return st.find("adamw.step") ? st.read("adamw.step") : Tensor();
}

Generator::State CheckpointShardReader::dropout_gen() const {
  // The same layout continues each shard's dropout stream; another starts from the first one's.
  const Impl& m = *impl_;
  return m.info.layout == m.layout ? m.info.dropout_gens[size_t(m.stage)][size_t(m.tp_rank)]
                                   : m.info.dropout_gens[0][0];
}

CheckpointShard CheckpointShardReader::read_all() {
  CheckpointShard shard;
  shard.stage = impl_->stage;
  shard.tp_rank = impl_->tp_rank;
  if (Tensor step = adamw_step(); step.defined()) shard.optimizer.emplace_back("adamw.step", step);
  for (const std::string& name : names()) {
    shard.weights.emplace_back(name, weight(name));
    for (const char* kind : {"m", "v", "t"})
      if (Tensor t = moment(kind, name); t.defined())
        shard.optimizer.emplace_back(fmt::format("adamw.{}.{}", kind, name), t);
  }
  shard.dropout_gen = dropout_gen();
  shard.bytes_read = bytes_read();
  return shard;
}

int64_t CheckpointShardReader::bytes_read() const {
  return impl_->files.bytes_read();
}

CheckpointShard read_checkpoint_shard(const CheckpointInfo& info, ShardLayout layout, int stage,
                                      int tp_rank) {
  return CheckpointShardReader(info, layout, stage, tp_rank).read_all();
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
                                        int64_t keep_last, const ZeroShare* zero) {
  const std::string name = checkpoint_name(step);
  const fs::path tmp = fs::path(out_dir) / (".tmp-" + name);
  if (comm.rank() == 0) {
    fs::create_directories(out_dir);
    fs::remove_all(tmp);
    fs::create_directory(tmp);
  }
  comm.barrier();
  const std::string step_text = std::to_string(step), config_json = gpt_config_to_json(config);
  if (zero)
    save_safetensors(
        (tmp / zero_shard_file(zero->stage, zero->tp_rank, zero->dp_rank)).string(), zero->pieces,
        {{"forge.format", kGptCheckpointFormat},
         {"forge.config", config_json},
         {"forge.step", step_text},
         {"forge.layout", layout_to_json(layout, zero->stage, zero->tp_rank, zero, true)}});
  for (const CheckpointShard& sh : shards) {
    const std::string where = layout_to_json(layout, sh.stage, sh.tp_rank, zero);
    if (!zero)
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
                      {"forge.tokenizer", tokenizer.to_json()},
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
