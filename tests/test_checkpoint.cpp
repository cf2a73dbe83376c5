// GPT checkpoints: save/load round trips, pruning, finding the latest, refusing files that do not
// make the model, and the property checkpoints exist for: a run stopped and resumed is bit for bit
// the run that never stopped.
//
// Models are tiny (1 layer, n_embd 16, block 8-16) so every test runs in well under a second.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "optim/optimizer.h"
#include "recipes/checkpoint.h"
#include "recipes/gpt_train.h"
#include "recipes/sharded_checkpoint.h"
#include "testing.h"

using namespace forge;
using forge::testing::bitwise_equal;
using forge::testing::Contains;
using forge::testing::read_bytes;
using forge::testing::TempDir;
using forge::testing::ThreadCount;
using forge::testing::write_bytes;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

const Tokenizer kTok = Tokenizer::chars_of("abcdefg\n");  // 8 symbols

GPTConfig tiny_config(int64_t n_layer = 1, bool bias = true) {
  return {.n_layer = n_layer,
          .n_head = 2,
          .n_embd = 16,
          .block_size = 8,
          .vocab_size = 8,
          .dropout = 0.1,
          .bias = bias};
}

NamedTensors clone_all(const NamedTensors& ts) {
  NamedTensors out;
  for (const auto& [n, t] : ts) out.emplace_back(n, t.clone());
  return out;
}

void check_same(const NamedTensors& a, const NamedTensors& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("tensor " << a[i].first);
    CHECK(a[i].first == b[i].first);
    CHECK(bitwise_equal(a[i].second, b[i].second));
  }
}

// A model that took one AdamW step, so the weights and the optimizer state are not their defaults.
struct Trained {
  GPTConfig cfg = tiny_config();
  Generator init{11}, dropout{12};
  GPT model{cfg, init, dropout};
  AdamW opt{{{model.parameters(), 0.1}}, {.lr = 1e-2}};
  Trained() {
    Tensor idx = from_vector<int64_t>({0, 1, 2, 3, 4, 5, 6, 7, 7, 6, 5, 4, 3, 2, 1, 0}, {2, 8});
    Tensor targets = from_vector<int64_t>({1, 2, 3, 4, 5, 6, 7, 0, 6, 5, 4, 3, 2, 1, 0, 7}, {2, 8});
    Variable loss = model.loss(model.forward(idx), targets);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  TrainingState state(int64_t step) const {
    return {step, {5, 123}, dropout.state(), opt.state(), {}, {}};
  }
};

// The metadata a forge model file carries (as recipes/checkpoint.cpp writes it).
std::map<std::string, std::string> model_meta(const GPTConfig& cfg, const Tokenizer& tok,
                                              const std::string& step = "7") {
  return {{"format", "pt"},
          {"forge.format", "forge-gpt-1"},
          {"forge.config", gpt_config_to_json(cfg)},
          {"forge.tokenizer", tok.to_json()},
          {"forge.step", step}};
}

NamedTensors fresh_weights(const GPTConfig& cfg) {
  Generator a(1), b(2);
  GPT m(cfg, a, b);
  return clone_all(m.state_dict());
}

NamedTensors without(NamedTensors ts, const std::string& name) {
  std::erase_if(ts, [&](const auto& p) { return p.first == name; });
  return ts;
}
NamedTensors replaced(NamedTensors ts, const std::string& name, Tensor t) {
  for (auto& [n, v] : ts)
    if (n == name) v = t;
  return ts;
}

}  // namespace

// ---- Save and load ----

TEST_CASE("save_checkpoint then load_model and load_training_state give back everything") {
  TempDir dir;
  Trained t;
  std::string train_json = R"({"lr": 0.01, "note": "train config"})";
  CheckpointPaths p = save_checkpoint(dir.path(), 7, t.model, kTok, t.state(7), train_json, 3);
  CHECK(p.dir == dir.file("ckpt-000007"));
  CHECK(p.model == dir.file("ckpt-000007/model.safetensors"));
  CHECK(p.state == dir.file("ckpt-000007/state.safetensors"));
  CHECK(p.step == 7);
  CHECK(entries(dir.path()) == std::vector<std::string>{"ckpt-000007"});
  CHECK(entries(p.dir) == std::vector<std::string>{"model.safetensors", "state.safetensors"});

  LoadedModel m = load_model(p.model);
  CHECK(m.path == p.model);
  CHECK(m.config == t.cfg);
  CHECK(m.tokenizer == kTok);
  CHECK(m.step == 7);
  check_same(m.weights, t.model.state_dict());

  // Into a model initialised differently: the weights become the saved ones.
  Generator g1(99), g2(98);
  GPT other(t.cfg, g1, g2);
  CHECK_FALSE(bitwise_equal(other.state_dict()[0].second, t.model.state_dict()[0].second));
  load_weights(other, m);
  check_same(other.state_dict(), t.model.state_dict());

  TrainingState s = load_training_state(p.state, t.cfg);
  CHECK(s.step == 7);
  CHECK(s.batch_gen == Generator::State{5, 123});
  CHECK(s.dropout_gen == t.dropout.state());
  CHECK(s.dropout_gen.offset > 0);  // the forward pass drew dropout masks
  check_same(s.optimizer, t.opt.state());
  CHECK(load_safetensors(p.state).metadata.at("forge.train_config") == train_json);

  // The stored config is plain JSON with the model's fields.
  auto cfg = nlohmann::json::parse(load_safetensors(p.model).metadata.at("forge.config"));
  CHECK(cfg["n_layer"] == 1);
  CHECK(cfg["n_embd"] == 16);
  CHECK(cfg["vocab_size"] == 8);
  CHECK(cfg["dropout"] == 0.1);
  CHECK(cfg["gelu"] == "tanh");
}

TEST_CASE("the GELU form is part of the model config: saved, read, and old configs mean tanh") {
  GPTConfig c{.n_layer = 1, .n_head = 2, .n_embd = 16, .block_size = 8, .vocab_size = 8};
  CHECK(gpt_config_from_json(gpt_config_to_json(c), "x").gelu == GeluApprox::tanh);
  c.gelu = GeluApprox::none;
  CHECK(nlohmann::json::parse(gpt_config_to_json(c))["gelu"] == "erf");
  CHECK(gpt_config_from_json(gpt_config_to_json(c), "x") == c);
  // Checkpoints written before the setting existed used the tanh form.
  const std::string old =
      R"({"n_layer":1,"n_head":2,"n_embd":16,"block_size":8,"vocab_size":8,"dropout":0.0,"bias":true})";
  CHECK(gpt_config_from_json(old, "x").gelu == GeluApprox::tanh);
  CHECK_THROWS_WITH(
      gpt_config_from_json(
          R"({"n_layer":1,"n_head":2,"n_embd":16,"block_size":8,"vocab_size":8,"dropout":0.0,"bias":true,"gelu":"relu"})",
          "f.safetensors"),
      Contains("f.safetensors") && Contains("gelu must be tanh or erf, got 'relu'"));
}

TEST_CASE("saving a step again replaces that checkpoint and leaves no temporary directory") {
  TempDir dir;
  Trained t;
  save_checkpoint(dir.path(), 4, t.model, kTok, t.state(4), "{}", 3);
  Trained u;  // same weights; change one so the files differ
  u.model.state_dict()[0].second.fill_(0.5);
  CheckpointPaths p = save_checkpoint(dir.path(), 4, u.model, kTok, u.state(4), "{}", 3);
  CHECK(entries(dir.path()) == std::vector<std::string>{"ckpt-000004"});
  check_same(load_model(p.model).weights, u.model.state_dict());
}

TEST_CASE("keep_last prunes to the newest checkpoints by step") {
  TempDir dir;
  Trained t;
  for (int64_t step : {1, 2, 3, 4, 5})
    save_checkpoint(dir.path(), step, t.model, kTok, t.state(step), "{}", 2);
  CHECK(entries(dir.path()) == std::vector<std::string>{"ckpt-000004", "ckpt-000005"});
  save_checkpoint(dir.path(), 1000000, t.model, kTok, t.state(1000000), "{}", 2);
  CHECK(entries(dir.path()) == std::vector<std::string>{"ckpt-000005", "ckpt-1000000"});
  save_checkpoint(dir.path(), 6, t.model, kTok, t.state(6), "{}", 1);
  CHECK(entries(dir.path()) == std::vector<std::string>{"ckpt-1000000"});
}

// ---- Finding checkpoints ----

TEST_CASE("latest_checkpoint picks the highest complete step, ignoring incomplete and temporary") {
  TempDir dir;
  auto complete = [&](const std::string& name) {
    write_bytes(dir.file(name + "/model.safetensors"), "m");
    write_bytes(dir.file(name + "/state.safetensors"), "s");
  };
  complete("ckpt-000003");
  complete("ckpt-000010");
  write_bytes(dir.file("ckpt-000020/model.safetensors"), "m");  // state missing
  write_bytes(dir.file("ckpt-000021/state.safetensors"), "s");  // model missing
  complete(".tmp-ckpt-000030");                                 // a save in progress
  complete(".old-ckpt-000040");                                 // a replaced one
  complete("notckpt-000050");
  write_bytes(dir.file("ckpt-000060"), "a file, not a directory");
  auto latest = latest_checkpoint(dir.path());
  REQUIRE(latest.has_value());
  CHECK(latest->step == 10);
  CHECK(latest->dir == dir.file("ckpt-000010"));
  CHECK(latest->model == dir.file("ckpt-000010/model.safetensors"));
  CHECK(latest->state == dir.file("ckpt-000010/state.safetensors"));

  // Steps compare as numbers, not text.
  complete("ckpt-999999");
  complete("ckpt-1000000");
  CHECK(latest_checkpoint(dir.path())->step == 1000000);

  // A checkpoint directory is its own latest.
  auto self = latest_checkpoint(dir.file("ckpt-000003"));
  REQUIRE(self.has_value());
  CHECK(self->step == 3);
  CHECK(self->model == dir.file("ckpt-000003/model.safetensors"));

  CHECK_FALSE(latest_checkpoint(dir.file("no_such_dir")).has_value());
  fs::create_directory(dir.file("empty"));
  CHECK_FALSE(latest_checkpoint(dir.file("empty")).has_value());
}

TEST_CASE("resolve_model_path accepts a model file, a checkpoint or an out directory") {
  TempDir dir;
  Trained t;
  CheckpointPaths p3 = save_checkpoint(dir.path(), 3, t.model, kTok, t.state(3), "{}", 5);
  CheckpointPaths p9 = save_checkpoint(dir.path(), 9, t.model, kTok, t.state(9), "{}", 5);
  CHECK(resolve_model_path(p3.model) == p3.model);
  CHECK(resolve_model_path(p3.dir) == p3.model);
  CHECK(resolve_model_path(dir.path()) == p9.model);
  CHECK_THROWS_WITH(resolve_model_path(dir.file("nothing")), Contains(dir.file("nothing")));
  fs::create_directory(dir.file("empty"));
  CHECK_THROWS_WITH(resolve_model_path(dir.file("empty")),
                    Contains(dir.file("empty")) && Contains("no complete checkpoint"));
}

// ---- Refusing files that do not make the model ----

TEST_CASE("a hand-built model file with the real metadata keys loads") {
  TempDir dir;
  std::string path = dir.file("m.safetensors");
  GPTConfig cfg = tiny_config();
  NamedTensors w = fresh_weights(cfg);
  save_safetensors(path, w, model_meta(cfg, kTok));
  LoadedModel m = load_model(path);
  CHECK(m.config == cfg);
  CHECK(m.step == 7);
  check_same(m.weights, w);
  // The names follow nanoGPT's.
  std::vector<std::string> names;
  for (const auto& [n, t] : w) names.push_back(n);
  CHECK(std::find(names.begin(), names.end(), "transformer.wte.weight") != names.end());
  CHECK(std::find(names.begin(), names.end(), "transformer.h.0.attn.c_attn.weight") != names.end());
  CHECK(std::find(names.begin(), names.end(), "transformer.ln_f.bias") != names.end());
}

TEST_CASE("load_model refuses a missing, wrong-shape, wrong-dtype or extra tensor, naming it") {
  TempDir dir;
  std::string path = dir.file("m.safetensors");
  GPTConfig cfg = tiny_config();
  NamedTensors w = fresh_weights(cfg);
  auto meta = model_meta(cfg, kTok);

  save_safetensors(path, without(w, "transformer.h.0.attn.c_attn.weight"), meta);
  CHECK_THROWS_WITH(load_model(path), Contains(path) &&
                                          Contains("'transformer.h.0.attn.c_attn.weight'") &&
                                          Contains("missing"));
  save_safetensors(path, replaced(w, "transformer.ln_f.weight", zeros({17})), meta);
  CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("'transformer.ln_f.weight'"));
  save_safetensors(path, replaced(w, "transformer.h.0.mlp.c_fc.weight", zeros({16, 64})), meta);
  CHECK_THROWS_WITH(load_model(path),
                    Contains(path) && Contains("'transformer.h.0.mlp.c_fc.weight'"));
  auto wte_it = std::find_if(w.begin(), w.end(),
                             [](const auto& p) { return p.first == "transformer.wte.weight"; });
  Tensor wte = wte_it->second.to(DType::bf16);
  save_safetensors(path, replaced(w, "transformer.wte.weight", wte), meta);
  CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("'transformer.wte.weight'"));
  NamedTensors extra = w;
  extra.emplace_back("lm_head.weight", zeros({8, 16}));  // the head is tied: never stored
  save_safetensors(path, extra, meta);
  CHECK_THROWS_WITH(load_model(path),
                    Contains(path) && Contains("'lm_head.weight'") && Contains("unexpected"));
}

TEST_CASE("load_model refuses a config that disagrees with the tensors") {
  TempDir dir;
  std::string path = dir.file("m.safetensors");
  NamedTensors w = fresh_weights(tiny_config());
  GPTConfig wider = tiny_config();
  wider.n_embd = 32;
  save_safetensors(path, w, model_meta(wider, kTok));
  CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("'transformer.wte.weight'"));
  save_safetensors(path, w, model_meta(tiny_config(2), kTok));
  CHECK_THROWS_WITH(load_model(path),
                    Contains(path) && Contains("'transformer.h.1.") && Contains("missing"));
  save_safetensors(path, fresh_weights(tiny_config(2)), model_meta(tiny_config(1), kTok));
  CHECK_THROWS_WITH(load_model(path),
                    Contains(path) && Contains("'transformer.h.1.") && Contains("unexpected"));
  save_safetensors(path, w, model_meta(tiny_config(1, /*bias=*/false), kTok));
  CHECK_THROWS_WITH(load_model(path),
                    Contains(path) && Contains(".bias'") && Contains("unexpected"));
  GPTConfig longer = tiny_config();
  longer.block_size = 9;
  save_safetensors(path, w, model_meta(longer, kTok));
  CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("'transformer.wpe.weight'"));
}

TEST_CASE("load_model refuses a tokenizer whose vocabulary differs from the config") {
  TempDir dir;
  std::string path = dir.file("m.safetensors");
  NamedTensors w = fresh_weights(tiny_config());
  save_safetensors(path, w, model_meta(tiny_config(), Tokenizer::chars_of("abcdefg")));  // 7
  CHECK_THROWS_WITH(load_model(path),
                    Contains(path) && Contains("7 symbols") && Contains("vocab_size is 8"));
  save_safetensors(path, w, model_meta(tiny_config(), Tokenizer::bytes()));  // 256
  CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("256"));
}

TEST_CASE("load_model refuses missing or malformed metadata, naming the field") {
  TempDir dir;
  std::string path = dir.file("m.safetensors");
  GPTConfig cfg = tiny_config();
  NamedTensors w = fresh_weights(cfg);
  for (const std::string key : {"forge.format", "forge.config", "forge.tokenizer", "forge.step"}) {
    INFO("without " << key);
    auto meta = model_meta(cfg, kTok);
    meta.erase(key);
    save_safetensors(path, w, meta);
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("'" + key + "'"));
  }
  struct Case {
    std::string key, value, mentions;
  };
  for (
      const Case& k : {
          Case{"forge.format", "other-format-9", "other-format-9"},
          Case{"forge.config", "{not json", "malformed model config"},
          Case{
              "forge.config",
              R"({"n_layer":1,"n_head":2,"n_embd":16,"block_size":8,"vocab_size":8,"dropout":0.1})",
              "bias"},
          Case{
              "forge.config",
              R"({"n_layer":1,"n_head":3,"n_embd":16,"block_size":8,"vocab_size":8,"dropout":0.1,"bias":true})",
              "n_head"},
          Case{"forge.tokenizer", R"({"kind": "word"})", "tokenizer"},
          Case{"forge.step", "seven", "forge.step"},
      }) {
    INFO(k.key << " = " << k.value);
    auto meta = model_meta(cfg, kTok);
    meta[k.key] = k.value;
    save_safetensors(path, w, meta);
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains(k.mentions));
  }
}

TEST_CASE("truncated and bit-flipped model files are refused, naming the file") {
  TempDir dir;
  Trained t;
  CheckpointPaths p = save_checkpoint(dir.path(), 1, t.model, kTok, t.state(1), "{}", 3);
  const std::string good = read_bytes(p.model);
  std::string bad = dir.file("bad.safetensors");
  for (size_t len : {size_t(0), size_t(7), size_t(100), good.size() / 2, good.size() - 1}) {
    INFO("truncated to " << len);
    write_bytes(bad, good.substr(0, len));
    CHECK_THROWS_WITH(load_model(bad), Contains(bad));
  }
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(uint8_t(good[size_t(i)])) << (8 * i);
  size_t config_at = good.find("n_embd");
  REQUIRE(config_at != std::string::npos);
  for (size_t pos :
       {size_t(3), config_at + 2, size_t(8 + n), size_t(8 + n) + 1000, good.size() - 1}) {
    INFO("bit flipped at byte " << pos);
    std::string f = good;
    f[pos] = char(uint8_t(f[pos]) ^ 0x04);
    write_bytes(bad, f);
    CHECK_THROWS_WITH(load_model(bad), Contains(bad));
  }
}

TEST_CASE("load_training_state and load_weights refuse a state for another model") {
  TempDir dir;
  Trained t;
  CheckpointPaths p = save_checkpoint(dir.path(), 2, t.model, kTok, t.state(2), "{}", 3);
  GPTConfig other = tiny_config(2);
  CHECK_THROWS_WITH(load_training_state(p.state, other),
                    Contains(p.state) && Contains("training state"));
  Generator a(1), b(2);
  GPT m(other, a, b);
  CHECK_THROWS_WITH(load_weights(m, load_model(p.model)), Contains(p.model));
  // A malformed generator state.
  SafetensorsContents c = load_safetensors(p.state);
  c.metadata["forge.generator.dropout"] = "12-34";
  std::string bad = dir.file("bad_state.safetensors");
  save_safetensors(bad, c.tensors, c.metadata);
  CHECK_THROWS_WITH(load_training_state(bad, t.cfg), Contains(bad) && Contains("'12-34'"));
}

// ---- Resuming a run ----

namespace {

// A corpus of 1200 bytes over 10 symbols, with some structure to learn.
std::string write_corpus(const TempDir& dir) {
  return forge::testing::write_corpus(dir, 1200, 7, 5);
}

GptTrainConfig tiny_run(const std::string& data, const std::string& out) {
  GptTrainConfig c = GptTrainConfig::preset("cpu");
  c.model.n_layer = 1;
  c.model.n_head = 2;
  c.model.n_embd = 16;
  c.model.block_size = 16;
  c.model.dropout = 0.2;
  c.model.bias = true;
  c.data = data;
  c.batch_size = 4;
  c.max_iters = 6;
  c.lr = 1e-2;
  c.min_lr = 1e-3;
  c.warmup_iters = 2;
  c.lr_decay_iters = 6;
  c.eval_interval = 2;
  c.eval_iters = 2;
  c.seed = 99;
  c.out = out;
  c.keep_last = 10;
  return c;
}

std::vector<double> concat(std::vector<double> a, const std::vector<double>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Bitwise equal and finite: two runs that both diverged to NaN are not "the same run".
bool same_doubles(const std::vector<double>& a, const std::vector<double>& b) {
  return !a.empty() && a.size() == b.size() &&
         std::all_of(a.begin(), a.end(), [](double v) { return std::isfinite(v); }) &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

}  // namespace

TEST_CASE("k steps, then resume for the rest, is bitwise the uninterrupted run") {
  ThreadCount threads(1);
  TempDir dir;
  std::string data = write_corpus(dir);
  GptRun full = train_gpt(tiny_run(data, dir.file("full")));
  REQUIRE(full.losses.size() == 6);
  CHECK(full.steps_done == 6);
  CHECK(full.losses.front() != full.losses.back());

  // Stop after 3 steps (evaluating at 2 and at 3, which the full run does not do at 3) ...
  GptTrainConfig first = tiny_run(data, dir.file("split"));
  first.max_iters = 3;
  GptRun a = train_gpt(first);
  CHECK(a.steps_done == 3);
  CHECK(a.last_checkpoint == dir.file("split/ckpt-000003"));
  // ... then resume from the out directory for steps 4..6.
  GptTrainConfig second = tiny_run(data, dir.file("split"));
  second.resume = dir.file("split");
  GptRun b = train_gpt(second);
  CHECK(b.steps_done == 6);
  CHECK(b.losses.size() == 3);
  CHECK(same_doubles(concat(a.losses, b.losses), full.losses));
  check_same(b.model->state_dict(), full.model->state_dict());
  REQUIRE(full.final_val_loss.has_value());
  REQUIRE(b.final_val_loss.has_value());
  CHECK(*b.final_val_loss == *full.final_val_loss);

  // The final checkpoints agree too: weights, optimizer moments, generator states.
  auto fa = latest_checkpoint(dir.file("full")), fb = latest_checkpoint(dir.file("split"));
  REQUIRE(fa.has_value());
  REQUIRE(fb.has_value());
  CHECK(fa->step == 6);
  CHECK(fb->step == 6);
  check_same(load_model(fa->model).weights, load_model(fb->model).weights);
  TrainingState sa = load_training_state(fa->state, full.model->config());
  TrainingState sb = load_training_state(fb->state, full.model->config());
  CHECK(sa.batch_gen == sb.batch_gen);
  CHECK(sa.dropout_gen == sb.dropout_gen);
  check_same(sa.optimizer, sb.optimizer);
}

TEST_CASE("evaluations and checkpoints do not disturb training; dropout does change it") {
  ThreadCount threads(1);
  TempDir dir;
  std::string data = write_corpus(dir);
  GptRun with_evals = train_gpt(tiny_run(data, dir.file("a")));
  GptTrainConfig quiet = tiny_run(data, "");  // no checkpoints; one evaluation, at the end
  quiet.eval_interval = 1000;
  GptRun without = train_gpt(quiet);
  CHECK(same_doubles(with_evals.losses, without.losses));
  check_same(with_evals.model->state_dict(), without.model->state_dict());
  CHECK(*with_evals.final_val_loss == *without.final_val_loss);
  CHECK(without.last_checkpoint.empty());

  // The dropout masks matter (so the resume test above depends on the dropout generator's state).
  GptTrainConfig no_dropout = quiet;
  no_dropout.model.dropout = 0.0;
  GptRun plain = train_gpt(no_dropout);
  CHECK(plain.losses.front() != without.losses.front());
}

TEST_CASE("a stop request saves a checkpoint and returns; resuming it matches the full run") {
  ThreadCount threads(1);
  TempDir dir;
  std::string data = write_corpus(dir);
  GptRun full = train_gpt(tiny_run(data, dir.file("full")));

  std::atomic<bool> stop{false};
  GptRunHooks hooks;
  hooks.stop = &stop;
  std::vector<std::string> messages;
  hooks.on_message = [&](const std::string& m) { messages.push_back(m); };
  hooks.on_step = [&](const StepStats& s) {
    if (s.step == 3) stop = true;  // e.g. SIGINT arriving during step 3
  };
  GptTrainConfig cfg = tiny_run(data, dir.file("stopped"));
  cfg.max_iters = 6;
  GptRun run = train_gpt(cfg, hooks);
  CHECK(run.stopped);
  CHECK(run.steps_done == 3);
  CHECK(run.losses.size() == 3);
  CHECK(run.last_checkpoint == dir.file("stopped/ckpt-000003"));
  auto latest = latest_checkpoint(dir.file("stopped"));
  REQUIRE(latest.has_value());
  CHECK(latest->step == 3);
  check_same(load_model(latest->model).weights, run.model->state_dict());
  CHECK(load_training_state(latest->state, run.model->config()).step == 3);
  CHECK(std::any_of(messages.begin(), messages.end(),
                    [](const std::string& m) { return m.find("stopped at step 3") != m.npos; }));

  GptTrainConfig again = cfg;
  again.resume = dir.file("stopped");
  GptRun rest = train_gpt(again);
  CHECK_FALSE(rest.stopped);
  CHECK(same_doubles(concat(run.losses, rest.losses), full.losses));
  check_same(rest.model->state_dict(), full.model->state_dict());
}

TEST_CASE("resuming with another architecture is refused, naming the field") {
  ThreadCount threads(1);
  TempDir dir;
  std::string data = write_corpus(dir);
  GptTrainConfig cfg = tiny_run(data, dir.file("out"));
  cfg.max_iters = 1;
  train_gpt(cfg);
  GptTrainConfig wider = cfg;
  wider.model.n_embd = 32;
  wider.resume = dir.file("out");
  CHECK_THROWS_WITH(train_gpt(wider), Contains("n_embd") && Contains("ckpt-000001"));
  GptTrainConfig nowhere = cfg;
  nowhere.resume = dir.file("empty");
  fs::create_directory(nowhere.resume);
  CHECK_THROWS_WITH(train_gpt(nowhere), Contains(nowhere.resume));
}

// ---- Sharded checkpoints (tensor/pipeline-parallel runs) ----

namespace {
// Optimizer states merged from pipeline stages list their entries stage by stage: compare by name.
NamedTensors sorted(NamedTensors ts) {
  std::sort(ts.begin(), ts.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return ts;
}
}  // namespace

TEST_CASE("sharded checkpoints of any layout merge back to the serial weights and AdamW state") {
  TempDir dir;
  GPTConfig cfg = tiny_config(/*n_layer=*/3);
  cfg.n_head = 4;
  Generator init(21), drop(22);
  GPT model(cfg, init, drop);
  // The recipe's groups (gpt_param_group_names): matrices with weight decay, then the rest, named.
  ParamGroup decay{{}, 0.1, {}}, rest{{}, 0.0, {}};
  for (const auto& [n, p] : model.named_parameters()) {
    (p.dim() >= 2 ? decay : rest).params.push_back(p);
    (p.dim() >= 2 ? decay : rest).names.push_back(n);
  }
  AdamW opt({decay, rest}, {.lr = 1e-2});
  Tensor idx = from_vector<int64_t>({0, 1, 2, 3, 4, 5, 6, 7}, {1, 8});
  opt.zero_grad();
  model.loss(model.forward(idx), idx).backward();
  opt.step();
  TrainingState st{7, {5, 123}, drop.state(), opt.state(), {}, "{\"dp\": 1}"};
  save_checkpoint(dir.file("serial"), 7, model, kTok, st, st.train_config_json, 3);

  FullCheckpoint full = load_full_checkpoint(dir.file("serial/ckpt-000007"));
  CHECK(full.layout == ShardLayout{1, 1});
  check_same(full.weights, model.state_dict());
  check_same(sorted(full.optimizer), sorted(opt.state()));
  CHECK(opt.state()[1].first == "adamw.m.transformer.wte.weight");

  for (ShardLayout layout : {ShardLayout{2, 1}, ShardLayout{4, 1}, ShardLayout{1, 3},
                             ShardLayout{2, 2}, ShardLayout{4, 3}}) {
    INFO("tp " << layout.tp << " pp " << layout.pp);
    const std::string name = fmt::format("tp{}pp{}", layout.tp, layout.pp);
    CheckpointPaths p = reshard_checkpoint(dir.file("serial"), dir.file(name), layout);
    CHECK(is_sharded_checkpoint(p.dir));
    CHECK(fs::exists(fs::path(p.dir) /
                     fmt::format("state-pp{}-tp{}.safetensors", layout.pp - 1, layout.tp - 1)));
    FullCheckpoint back = load_full_checkpoint(p.dir);
    CHECK(back.layout == layout);
    CHECK(back.state.step == 7);
    CHECK(back.state.batch_gen == st.batch_gen);
    check_same(back.weights, model.state_dict());
    check_same(sorted(back.optimizer), sorted(opt.state()));
    // And merged into one model again: the serial files, bit for bit.
    CheckpointPaths merged = reshard_checkpoint(p.dir, dir.file(name + "-merged"), {1, 1});
    check_same(load_model(merged.model).weights, model.state_dict());
    check_same(sorted(load_training_state(merged.state, cfg).optimizer), sorted(opt.state()));
  }
  // One shard missing: named.
  fs::remove(dir.file("tp2pp2/ckpt-000007/state-pp1-tp0.safetensors"));
  REQUIRE_THROWS_WITH(load_full_checkpoint(dir.file("tp2pp2/ckpt-000007")),
                      Contains("stage 1, tp rank 0") && Contains("missing"));
  // infer's path resolution points sharded checkpoints to reshard.
  REQUIRE_THROWS_WITH(resolve_model_path(dir.file("tp4pp1")),
                      Contains("sharded checkpoint") && Contains("train reshard"));
}

TEST_CASE("a checkpoint whose AdamW state is keyed by position (before issue 19) loads by name") {
  TempDir dir;
  GPTConfig cfg = tiny_config(/*n_layer=*/2);
  Generator init(31), drop(32);
  GPT model(cfg, init, drop);
  // The old recipe's optimizer: the same groups, unnamed, so its state says adamw.m.<g>.<i>.
  ParamGroup decay{{}, 0.1, {}}, rest{{}, 0.0, {}};
  ParamGroup named_decay = decay, named_rest = rest;
  for (const auto& [n, p] : model.named_parameters()) {
    (p.dim() >= 2 ? decay : rest).params.push_back(p);
    (p.dim() >= 2 ? named_decay : named_rest).params.push_back(p);
    (p.dim() >= 2 ? named_decay : named_rest).names.push_back(n);
  }
  AdamW old_opt({decay, rest}, {.lr = 1e-2});
  Tensor idx = from_vector<int64_t>({0, 1, 2, 3, 4, 5, 6, 7}, {1, 8});
  old_opt.zero_grad();
  model.loss(model.forward(idx), idx).backward();
  old_opt.step();
  CHECK(old_opt.state()[1].first == "adamw.m.0.0");
  TrainingState st{3, {5, 1}, drop.state(), old_opt.state(), {}, "{\"dp\": 1}"};
  save_checkpoint(dir.file("old"), 3, model, kTok, st, st.train_config_json, 3);

  FullCheckpoint full = load_full_checkpoint(dir.file("old/ckpt-000003"));
  AdamW opt({named_decay, named_rest}, {.lr = 1e-2});
  opt.load_state(full.optimizer);  // what --resume does
  const NamedTensors got = opt.state(), was = old_opt.state();
  REQUIRE(got.size() == was.size());
  CHECK(got[1].first == "adamw.m.transformer.wte.weight");
  for (size_t i = 0; i < got.size(); ++i)
    CHECK(testing::bitwise_equal(got[i].second, was[i].second));
  // Two parameters under one name are refused.
  ParamGroup twice{{decay.params[0], decay.params[1]}, 0.0, {"w", "w"}};
  REQUIRE_THROWS_WITH(AdamW({twice}, {}), Contains("two parameters are called 'w'"));
}

TEST_CASE("a rank reads only its share of a checkpoint of any layout, bit for bit its slices") {
  TempDir dir;
  GPTConfig cfg = tiny_config(/*n_layer=*/3);
  cfg.n_head = 4;
  Generator init(41), drop(42);
  GPT model(cfg, init, drop);
  std::vector<ParamGroup> groups(2);
  for (const auto& [n, p] : model.named_parameters()) {
    groups[p.dim() >= 2 ? 0 : 1].params.push_back(p);
    groups[p.dim() >= 2 ? 0 : 1].names.push_back(n);
  }
  AdamW opt(groups, {.lr = 1e-2});
  Tensor idx = from_vector<int64_t>({0, 1, 2, 3, 4, 5, 6, 7}, {1, 8});
  opt.zero_grad();
  model.loss(model.forward(idx), idx).backward();
  opt.step();
  TrainingState st{5, {5, 1}, drop.state(), opt.state(), {}, "{\"dp\": 1}"};
  save_checkpoint(dir.file("1x1"), 5, model, kTok, st, st.train_config_json, 3);
  const NamedTensors weights = model.state_dict();
  std::map<std::string, Tensor> moments;
  for (const auto& [k, t] : opt.state()) moments[k] = t;

  for (ShardLayout saved : {ShardLayout{1, 1}, ShardLayout{2, 1}, ShardLayout{4, 3}}) {
    const std::string from = fmt::format("{}x{}", saved.tp, saved.pp);
    if (!saved.serial()) reshard_checkpoint(dir.file("1x1"), dir.file(from), saved);
    const std::string ckpt = dir.file(from + "/ckpt-000005");
    const CheckpointInfo info = read_checkpoint_info(ckpt);
    CHECK(info.layout == saved);
    int64_t total = 0, headers = 0;  // the checkpoint's bytes, and its files' headers
    for (const auto& f : fs::directory_iterator(ckpt)) {
      total += int64_t(fs::file_size(f.path()));
      headers += SafetensorsReader(f.path().string()).bytes_read();
    }
    for (ShardLayout layout : {ShardLayout{1, 1}, ShardLayout{4, 1}, ShardLayout{2, 3}}) {
      for (int s = 0; s < layout.pp; ++s) {
        for (int r = 0; r < layout.tp; ++r) {
          INFO(fmt::format("saved {}, read as stage {} tp rank {} of tp {} x pp {}", from, s, r,
                           layout.tp, layout.pp));
          CheckpointShard sh = read_checkpoint_shard(info, layout, s, r);
          const NamedTensors want = shard_gpt_state(weights, cfg, r, layout.tp, s, layout.pp);
          REQUIRE(sh.weights.size() == want.size());
          int64_t mine = 0;
          for (size_t i = 0; i < want.size(); ++i) {
            CHECK(sh.weights[i].first == want[i].first);
            CHECK(testing::bitwise_equal(sh.weights[i].second, want[i].second));
            mine += sh.weights[i].second.nbytes();
          }
          for (const auto& [key, t] : sh.optimizer) {
            INFO(key);
            const std::string param = key.substr(key.find('.', 6) + 1);  // adamw.<k>.<name>
            const bool moment = key.rfind("adamw.m.", 0) == 0 || key.rfind("adamw.v.", 0) == 0;
            CHECK(testing::bitwise_identical(
                t, moment ? shard_tensor(moments.at(key), gpt_tp_split(param), r, layout.tp)
                          : moments.at(key)));
            mine += t.nbytes();
          }
          // Nothing but this share's bytes and the headers: a quarter of the model at tp 4.
          CHECK(sh.bytes_read <= mine + headers);
          if (layout.tp * layout.pp >= 4) CHECK(sh.bytes_read < total / 2);
        }
      }
    }
  }
}
