// GPT training settings: presets against nanoGPT's values, TOML files, flag text, validation and
// the JSON record.
//
// References: nanoGPT's config/train_shakespeare_char.py ("baby GPT": n_layer 6, n_head 6, n_embd
// 384, block_size 256, batch_size 64, dropout 0.2, learning_rate 1e-3, max_iters 5000,
// lr_decay_iters 5000, min_lr 1e-4, beta2 0.99, warmup_iters 100, eval_interval 250, eval_iters
// 200) and its README's CPU run ("--block_size=64 --batch_size=12 --n_layer=4 --n_head=4
// --n_embd=128
// --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0" on top of that config); train.py's
// defaults weight_decay 1e-1, beta1 0.9, grad_clip 1.0, bias False.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "recipes/gpt_config.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;
using forge::testing::TempDir;
namespace fs = std::filesystem;

namespace {

// Every setting, written out independently of the library's table: key -> a JSON value of the
// field's type that differs from both presets.
const nlohmann::ordered_json kAllFields = {
    {"n_layer", 3},
    {"n_head", 5},
    {"n_embd", 35},
    {"block_size", 17},
    {"dropout", 0.125},
    {"bias", true},
    {"gelu", "erf"},
    {"data", "corpus.txt"},
    {"tokenizer", "byte"},
    {"max_iters", 77},
    {"batch_size", 9},
    {"lr", 0.0025},
    {"min_lr", 0.0005},
    {"warmup_iters", 11},
    {"lr_decay_iters", 66},
    {"weight_decay", 0.05},
    {"beta1", 0.8},
    {"beta2", 0.95},
    {"grad_clip", 0.5},
    {"checkpoint", "blocks"},
    {"precision", "bf16"},
    {"loss_scale", "on"},
    {"init_scale", 1024.0},
    {"scale_growth_interval", 50},
    {"dp", 4},
    {"bucket_mb", 5.5},
    {"zero", 3},
    {"memory_cap_mb", 512.5},
    {"tp", 5},
    {"pp", 3},
    {"micro_batches", 3},
    {"schedule", "gpipe"},
    {"eval_interval", 13},
    {"eval_iters", 4},
    {"log_interval", 2},
    {"seed", 2024},
    {"threads", 3},
    {"out", "runs/x"},
    {"device", "cuda:1"},
    {"checkpoint_interval", 19},
    {"keep_last", 6},
    {"metrics", "m.jsonl"},
    {"resume", "runs/old"},
};

std::string as_flag_text(const nlohmann::ordered_json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  return v.dump();
}

GptTrainConfig valid() {
  return GptTrainConfig::preset("cpu");
}

}  // namespace

// ---- Presets ----

TEST_CASE("preset cpu is nanoGPT's shakespeare_char CPU run") {
  GptTrainConfig c = GptTrainConfig::preset("cpu");
  CHECK(c.model.n_layer == 4);
  CHECK(c.model.n_head == 4);
  CHECK(c.model.n_embd == 128);
  CHECK(c.model.block_size == 64);
  CHECK(c.model.dropout == 0.0);
  CHECK(c.model.bias == false);
  CHECK(c.batch_size == 12);
  CHECK(c.lr == 1e-3);
  CHECK(c.min_lr == 1e-4);
  CHECK(c.max_iters == 2000);
  CHECK(c.lr_decay_iters == 2000);
  CHECK(c.warmup_iters == 100);
  CHECK(c.beta1 == 0.9);
  CHECK(c.beta2 == 0.99);
  CHECK(c.weight_decay == 0.1);
  CHECK(c.grad_clip == 1.0);
  CHECK(c.eval_interval == 250);
  CHECK(c.tokenizer == Tokenizer::Kind::chars);
  CHECK_NOTHROW(c.validate());
}

TEST_CASE("preset baby is nanoGPT's train_shakespeare_char baby GPT") {
  GptTrainConfig c = GptTrainConfig::preset("baby");
  CHECK(c.model.n_layer == 6);
  CHECK(c.model.n_head == 6);
  CHECK(c.model.n_embd == 384);
  CHECK(c.model.block_size == 256);
  CHECK(c.model.dropout == 0.2);
  CHECK(c.model.bias == false);
  CHECK(c.batch_size == 64);
  CHECK(c.lr == 1e-3);
  CHECK(c.min_lr == 1e-4);
  CHECK(c.max_iters == 5000);
  CHECK(c.lr_decay_iters == 5000);
  CHECK(c.warmup_iters == 100);
  CHECK(c.beta2 == 0.99);
  CHECK(c.eval_interval == 250);
  CHECK(c.eval_iters == 200);
  CHECK_NOTHROW(c.validate());
}

TEST_CASE("an unknown preset is an error naming it and the known ones") {
  CHECK_THROWS_AS(GptTrainConfig::preset("tiny"), Error);
  CHECK_THROWS_WITH(GptTrainConfig::preset("tiny"),
                    Contains("'tiny'") && Contains("cpu") && Contains("baby"));
  CHECK_THROWS_WITH(GptTrainConfig::preset(""), Contains("preset"));
  CHECK(GptTrainConfig::preset_names() == std::vector<std::string>{"cpu", "baby"});
}

// ---- TOML files ----

TEST_CASE("a TOML file of flat keys sets those fields and leaves the rest") {
  TempDir dir;
  std::string path = dir.write("run.toml",
                               "# a comment\n"
                               "max_iters = 500\n"
                               "lr = 3e-4\n"
                               "min_lr = 3   # an integer where a float is expected is fine\n"
                               "bias = true\n"
                               "tokenizer = \"byte\"\n"
                               "dropout = 0.1\n"
                               "batch_size = 1_024\n"
                               "out = 'single quoted'\n");
  GptTrainConfig c = valid();
  c.apply_toml_file(path);
  CHECK(c.max_iters == 500);
  CHECK(c.lr == 3e-4);
  CHECK(c.min_lr == 3.0);
  CHECK(c.model.bias == true);
  CHECK(c.tokenizer == Tokenizer::Kind::bytes);
  CHECK(c.model.dropout == 0.1);
  CHECK(c.batch_size == 1024);
  CHECK(c.out == "single quoted");
  // Untouched fields keep the preset's values.
  CHECK(c.model.n_layer == 4);
  CHECK(c.lr_decay_iters == 2000);
  CHECK(c.eval_interval == 250);
}

TEST_CASE("keys inside TOML tables set the same fields") {
  TempDir dir;
  std::string path = dir.write("tables.toml",
                               "seed = 7\n"
                               "[model]\n"
                               "n_layer = 2\n"
                               "n_embd = 32\n"
                               "[train]\n"
                               "lr = 0.01\n"
                               "[train.schedule]\n"
                               "warmup_iters = 5\n"
                               "[run]\n"
                               "keep_last = 4\n"
                               "data = \"x.txt\"\n");
  GptTrainConfig c = valid();
  c.apply_toml_file(path);
  CHECK(c.seed == 7);
  CHECK(c.model.n_layer == 2);
  CHECK(c.model.n_embd == 32);
  CHECK(c.lr == 0.01);
  CHECK(c.warmup_iters == 5);
  CHECK(c.keep_last == 4);
  CHECK(c.data == "x.txt");
  CHECK(c.model.n_head == 4);
}

TEST_CASE("a TOML float survives the trip through text exactly") {
  TempDir dir;
  std::string path = dir.write("f.toml", "lr = 0.00030000000000000003\nbeta2 = 0.1\n");
  GptTrainConfig c = valid();
  c.apply_toml_file(path);
  CHECK(c.lr == 0.00030000000000000003);
  CHECK(c.lr != 0.0003);
  CHECK(c.beta2 == 0.1);
}

TEST_CASE("an unknown TOML key is an error naming the file, line and key") {
  TempDir dir;
  std::string path = dir.write("bad.toml", "max_iters = 5\n\nn_layers = 2\n");
  GptTrainConfig c = valid();
  CHECK_THROWS_WITH(c.apply_toml_file(path), Contains(path + ":3") && Contains("'n_layers'"));
  std::string nested = dir.write("nested.toml", "[model]\nn_layer = 2\nn_heads = 2\n");
  CHECK_THROWS_WITH(c.apply_toml_file(nested), Contains(nested + ":3") && Contains("'n_heads'"));
}

TEST_CASE("a TOML value of the wrong type is an error naming the file, line and key") {
  TempDir dir;
  GptTrainConfig c = valid();
  struct Case {
    std::string text;
    std::string key;
    int line;
  };
  for (const Case& k :
       {Case{"n_layer = 2.5\n", "n_layer", 1}, Case{"seed = 1\nn_layer = \"four\"\n", "n_layer", 2},
        Case{"\n\nlr = \"fast\"\n", "lr", 3}, Case{"bias = 1\n", "bias", 1},
        Case{"out = 3\n", "out", 1}, Case{"[model]\nn_embd = [16, 32]\n", "n_embd", 2},
        Case{"dropout = true\n", "dropout", 1}}) {
    INFO(k.text);
    std::string path = dir.write("type.toml", k.text);
    CHECK_THROWS_WITH(c.apply_toml_file(path), Contains(path + ":" + std::to_string(k.line)) &&
                                                   Contains("'" + k.key + "'") &&
                                                   Contains("wrong type"));
  }
}

TEST_CASE("a TOML syntax error names the file and line") {
  TempDir dir;
  GptTrainConfig c = valid();
  std::string path = dir.write("syntax.toml", "max_iters = 5\nlr = 1e-3\n\nbatch_size = = 4\n");
  CHECK_THROWS_WITH(c.apply_toml_file(path), Contains(path + ":4"));
  std::string unterminated = dir.write("quote.toml", "data = \"x.txt\nseed = 1\n");
  CHECK_THROWS_WITH(c.apply_toml_file(unterminated), Contains(unterminated + ":1"));
  std::string missing = (fs::temp_directory_path() / "forge_no_such_config_12345.toml").string();
  CHECK_THROWS_WITH(c.apply_toml_file(missing), Contains(missing));
}

// ---- Flags ----

TEST_CASE("set parses integer flag text and rejects anything else, naming the flag") {
  GptTrainConfig c = valid();
  c.set("batch_size", "32", "--batch-size");
  CHECK(c.batch_size == 32);
  c.set("seed", "-5", "--seed");
  CHECK(c.seed == -5);
  c.set("max_iters", "9223372036854775807", "--max-iters");
  CHECK(c.max_iters == 9223372036854775807);
  for (std::string bad : {"12.5", "1e3", "abc", "", "12x", " 12", "99999999999999999999"}) {
    INFO("'" << bad << "'");
    CHECK_THROWS_WITH(c.set("batch_size", bad, "--batch-size"),
                      Contains("--batch-size") && Contains("integer") && Contains("'" + bad + "'"));
  }
  CHECK(c.batch_size == 32);  // a rejected value changes nothing
}

TEST_CASE("set parses float flag text exactly and rejects garbage") {
  GptTrainConfig c = valid();
  c.set("lr", "3e-4", "--lr");
  CHECK(c.lr == 3e-4);
  c.set("dropout", "0.2", "--dropout");
  CHECK(c.model.dropout == 0.2);
  c.set("weight_decay", "1", "--weight-decay");
  CHECK(c.weight_decay == 1.0);
  c.set("beta2", "0.99000000000000010214", "--beta2");
  CHECK(c.beta2 == 0.99000000000000010214);
  for (std::string bad : {"fast", "", "1.5x", "0.1.2", "--"}) {
    INFO("'" << bad << "'");
    CHECK_THROWS_WITH(c.set("lr", bad, "--lr"), Contains("--lr") && Contains("'" + bad + "'"));
  }
  CHECK(c.lr == 3e-4);
}

TEST_CASE("set parses booleans and strings") {
  GptTrainConfig c = valid();
  c.set("bias", "true", "--bias");
  CHECK(c.model.bias == true);
  c.set("bias", "0", "--bias");
  CHECK(c.model.bias == false);
  c.set("bias", "1", "--bias");
  CHECK(c.model.bias == true);
  c.set("bias", "false", "--bias");
  CHECK(c.model.bias == false);
  for (std::string bad : {"yes", "True", "2", ""})
    CHECK_THROWS_WITH(c.set("bias", bad, "--bias"),
                      Contains("--bias") && Contains("true or false"));
  c.set("data", "some dir/with spaces.txt", "--data");
  CHECK(c.data == "some dir/with spaces.txt");
  c.set("metrics", "", "--metrics");
  CHECK(c.metrics.empty());
}

TEST_CASE("set with an unknown key is an error naming it and where it came from") {
  GptTrainConfig c = valid();
  CHECK_THROWS_WITH(c.set("learning_rate", "1", "--learning-rate"),
                    Contains("--learning-rate") && Contains("'learning_rate'"));
}

TEST_CASE("every field can be set by its key and reaches the struct") {
  GptTrainConfig c = valid();
  for (const auto& [key, v] : kAllFields.items()) c.set(key, as_flag_text(v), "--" + key);
  CHECK(c.model.n_layer == 3);
  CHECK(c.model.n_head == 5);
  CHECK(c.model.n_embd == 35);
  CHECK(c.model.block_size == 17);
  CHECK(c.precision == DType::bf16);
  CHECK(c.loss_scale == LossScaling::on);
  CHECK(c.init_scale == 1024.0);
  CHECK(c.scale_growth_interval == 50);
  CHECK(c.dp == 4);
  CHECK(c.bucket_mb == 5.5);
  CHECK(c.zero == 3);
  CHECK(c.memory_cap_mb == 512.5);
  CHECK(c.tp == 5);
  CHECK(c.pp == 3);
  CHECK(c.micro_batches == 3);
  CHECK(c.schedule == PipelineSchedule::gpipe);
  CHECK(c.checkpoint == ActivationCheckpointing::blocks);
  CHECK(c.model.dropout == 0.125);
  CHECK(c.model.bias == true);
  CHECK(c.data == "corpus.txt");
  CHECK(c.tokenizer == Tokenizer::Kind::bytes);
  CHECK(c.max_iters == 77);
  CHECK(c.batch_size == 9);
  CHECK(c.lr == 0.0025);
  CHECK(c.min_lr == 0.0005);
  CHECK(c.warmup_iters == 11);
  CHECK(c.lr_decay_iters == 66);
  CHECK(c.weight_decay == 0.05);
  CHECK(c.beta1 == 0.8);
  CHECK(c.beta2 == 0.95);
  CHECK(c.grad_clip == 0.5);
  CHECK(c.eval_interval == 13);
  CHECK(c.eval_iters == 4);
  CHECK(c.log_interval == 2);
  CHECK(c.seed == 2024);
  CHECK(c.threads == 3);
  CHECK(c.device == "cuda:1");
  CHECK(c.out == "runs/x");
  CHECK(c.checkpoint_interval == 19);
  CHECK(c.keep_last == 6);
  CHECK(c.metrics == "m.jsonl");
  CHECK(c.resume == "runs/old");
}

TEST_CASE("fields() lists every setting once, its flag the key with dashes") {
  std::vector<GptTrainConfig::FieldInfo> fields = GptTrainConfig::fields();
  std::vector<std::string> keys;
  for (const auto& f : fields) keys.push_back(f.key);
  std::vector<std::string> expected;
  for (const auto& [key, v] : kAllFields.items()) expected.push_back(key);
  CHECK(std::set<std::string>(keys.begin(), keys.end()) ==
        std::set<std::string>(expected.begin(), expected.end()));
  CHECK(keys.size() == expected.size());  // no duplicates
  for (const auto& f : fields) {
    INFO(f.key);
    std::string flag = "--";
    for (char ch : f.key) flag.push_back(ch == '_' ? '-' : ch);
    CHECK(f.flag == flag);
    CHECK_FALSE(f.help.empty());
  }
  auto find = [&](const std::string& key) {
    for (const auto& f : fields)
      if (f.key == key) return f.flag;
    return std::string();
  };
  CHECK(find("batch_size") == "--batch-size");
  CHECK(find("lr_decay_iters") == "--lr-decay-iters");
  CHECK(find("lr") == "--lr");
}

// ---- validate ----

TEST_CASE("validate rejects impossible settings, naming them") {
  struct Case {
    std::string key, value, mentions;
  };
  for (const Case& k : {
           Case{"n_layer", "0", "n_layer"},
           Case{"n_head", "0", "n_head"},
           Case{"n_embd", "130", "n_embd"},  // not a multiple of n_head 4
           Case{"block_size", "0", "block_size"},
           Case{"dropout", "1", "dropout"},
           Case{"dropout", "-0.1", "dropout"},
           Case{"max_iters", "-1", "max_iters"},
           Case{"batch_size", "0", "batch_size"},
           Case{"lr", "0", "lr"},
           Case{"lr", "nan", "lr"},
           Case{"min_lr", "0.01", "min_lr"},  // above lr 1e-3
           Case{"min_lr", "-1e-5", "min_lr"},
           Case{"warmup_iters", "-1", "warmup_iters"},
           Case{"lr_decay_iters", "50", "lr_decay_iters"},  // below warmup 100
           Case{"weight_decay", "-0.1", "weight_decay"},
           Case{"beta1", "1", "beta"},
           Case{"beta2", "-0.5", "beta"},
           Case{"grad_clip", "-1", "grad_clip"},
           Case{"eval_interval", "0", "eval_interval"},
           Case{"eval_iters", "0", "eval_iters"},
           Case{"log_interval", "0", "log_interval"},
           Case{"threads", "-2", "threads"},
           Case{"device", "gpu", "unknown device 'gpu'"},
           Case{"device", "cuda:x", "unknown device 'cuda:x'"},
           Case{"dp", "0", "dp"},
           Case{"bucket_mb", "0", "bucket_mb"},
           Case{"zero", "4", "zero must be 0, 1, 2 or 3"},
           Case{"zero", "-1", "zero must be 0, 1, 2 or 3"},
           Case{"memory_cap_mb", "-1", "memory_cap_mb"},
           Case{"tp", "0", "tp and pp"},
           Case{"tp", "3", "must divide n_head"},
           Case{"pp", "99", "more stages than n_layer"},
           Case{"micro_batches", "5", "must divide batch_size"},
           Case{"checkpoint_interval", "-1", "checkpoint_interval"},
           Case{"keep_last", "0", "keep_last"},
       }) {
    INFO(k.key << " = " << k.value);
    GptTrainConfig c = valid();
    c.set(k.key, k.value, "--" + k.key);
    CHECK_THROWS_WITH(c.validate(), Contains(k.mentions));
  }
}

TEST_CASE("a setting with a fixed set of values is refused where it is set, naming them") {
  struct Case {
    std::string key, value, message;
  };
  for (const Case& k : {
           Case{"gelu", "relu", "--gelu: gelu must be tanh or erf, got 'relu'"},
           Case{"tokenizer", "word", "--tokenizer: tokenizer must be char or byte, got 'word'"},
           Case{"schedule", "zigzag", "--schedule: schedule must be gpipe or 1f1b, got 'zigzag'"},
           Case{"precision", "f8", "--precision: precision must be f32, bf16 or f16, got 'f8'"},
           Case{"loss_scale", "yes", "loss_scale must be auto, on or off, got 'yes'"},
           Case{"checkpoint", "all", "checkpoint must be none or blocks, got 'all'"},
       }) {
    GptTrainConfig c = valid();
    const GptTrainConfig before = c;
    CHECK_THROWS_WITH(c.set(k.key, k.value, "--" + k.key), Contains(k.message));
    CHECK(c.to_json() == before.to_json());  // nothing changed
  }
  GptTrainConfig c = valid();
  c.set("gelu", "erf", "test");
  CHECK(c.model.gelu == GeluApprox::none);
  CHECK(nlohmann::json::parse(c.to_json())["gelu"] == "erf");
}

TEST_CASE("validate accepts edge settings that make a run") {
  GptTrainConfig c = valid();
  c.set("max_iters", "0", "test");
  c.set("grad_clip", "0", "test");
  c.set("min_lr", "1e-3", "test");        // == lr
  c.set("warmup_iters", "2000", "test");  // == lr_decay_iters
  c.set("dropout", "0.99", "test");
  c.set("keep_last", "1", "test");
  c.set("tokenizer", "byte", "test");
  CHECK_NOTHROW(c.validate());
}

// ---- JSON ----

TEST_CASE("to_json records every field with its value") {
  GptTrainConfig c = valid();
  for (const auto& [key, v] : kAllFields.items()) c.set(key, as_flag_text(v), "--" + key);
  nlohmann::json j = nlohmann::json::parse(c.to_json());
  CHECK(j.size() == kAllFields.size());
  for (const auto& [key, v] : kAllFields.items()) {
    INFO(key);
    REQUIRE(j.contains(key));
    CHECK(j[key] == v);
  }
  nlohmann::json cpu = nlohmann::json::parse(valid().to_json());
  CHECK(cpu["n_layer"] == 4);
  CHECK(cpu["lr"] == 1e-3);
  CHECK(cpu["bias"] == false);
  CHECK(cpu["tokenizer"] == "char");
  CHECK(cpu["resume"] == "");
}
