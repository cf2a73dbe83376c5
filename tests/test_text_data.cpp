// Tokenizers, corpus loading with the 90/10 split, and nanoGPT-style random batches.
//
// The reference facts about Tiny Shakespeare are nanoGPT's (data/shakespeare_char/prepare.py):
//   length of dataset in characters: 1,115,394
//   all the unique characters: "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
//   vocab size: 65;  train has 1,003,854 tokens;  val has 111,540 tokens
// and Karpathy's "Let's build GPT" notebook: encode("hii there") == [46, 47, 47, 1, 58, 46, 43, 56,
// 43]. Everything else is checked against small synthetic corpora written to temporary files.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "io/text_data.h"
#include "io/tokenizer.h"
#include "testing.h"

using namespace forge;
using forge::testing::bitwise_equal;
using forge::testing::Contains;
using forge::testing::TempDir;
using forge::testing::write_bytes;
namespace fs = std::filesystem;

namespace {

// The ids a char tokenizer must give: each byte's rank among the text's distinct bytes.
std::vector<int64_t> rank_ids(const std::string& vocab_text, const std::string& text) {
  std::set<unsigned char> distinct(vocab_text.begin(), vocab_text.end());
  std::vector<int64_t> ids;
  for (unsigned char c : text) {
    auto it = distinct.find(c);
    REQUIRE(it != distinct.end());
    ids.push_back(std::distance(distinct.begin(), it));
  }
  return ids;
}

// A deterministic pseudo-random corpus of `n` bytes over `alphabet`.
std::string synthetic_corpus(size_t n, const std::string& alphabet, uint32_t seed) {
  std::string s;
  uint32_t x = seed;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;  // Numerical Recipes' LCG
    s.push_back(alphabet[(x >> 16) % alphabet.size()]);
  }
  return s;
}

// Tiny Shakespeare where the environment names it; empty (and a printed reason) otherwise.
std::string shakespeare_or_skip() {
  const char* env = std::getenv("TINYSHAKESPEARE");
  if (env == nullptr || !fs::exists(env)) {
    testing::skip_optional(
        fmt::format("Tiny Shakespeare not found (set TINYSHAKESPEARE to the corpus path; got {})",
                    env ? env : "unset"));
    return "";
  }
  return env;
}

std::vector<int64_t> concat(const Tensor& a, const Tensor& b) {
  std::vector<int64_t> v = a.to_vector<int64_t>(), w = b.to_vector<int64_t>();
  v.insert(v.end(), w.begin(), w.end());
  return v;
}

}  // namespace

// ---- Tokenizers ----

TEST_CASE("chars_of takes the sorted distinct bytes of the text as its vocabulary") {
  Tokenizer tok = Tokenizer::chars_of("hello world\nhello");
  CHECK(tok.kind() == Tokenizer::Kind::chars);
  CHECK(tok.symbols() == std::string("\n dehlorw"));
  CHECK(tok.vocab_size() == 9);
  // ids are ranks: '\n' 0, ' ' 1, 'd' 2, 'e' 3, 'h' 4, 'l' 5, 'o' 6, 'r' 7, 'w' 8
  CHECK(tok.encode("world\n") == std::vector<int64_t>{8, 6, 7, 5, 2, 0});
  std::string corpus = synthetic_corpus(500, "zyxQ!~ \t", 3);
  CHECK(Tokenizer::chars_of(corpus).encode(corpus) == rank_ids(corpus, corpus));
}

TEST_CASE("Tiny Shakespeare has nanoGPT's 65-symbol alphabet and ids") {
  std::string path = shakespeare_or_skip();
  if (path.empty()) return;
  std::string text = read_text_file(path);
  CHECK(text.size() == 1115394);
  Tokenizer tok = Tokenizer::chars_of(text);
  CHECK(tok.vocab_size() == 65);
  CHECK(tok.symbols() == "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz");
  CHECK(tok.symbols().substr(0, 14) == "\n !$&',-.3:;?A");
  CHECK(tok.encode("hii there") == std::vector<int64_t>{46, 47, 47, 1, 58, 46, 43, 56, 43});
  CHECK(tok.decode({46, 47, 47, 1, 58, 46, 43, 56, 43}) == "hii there");
}

TEST_CASE("encode then decode gives back the text, byte for byte") {
  std::string text = synthetic_corpus(2000, "abc XYZ\n.,;'\xc3\xa9\x01\xff", 11);
  Tokenizer chars = Tokenizer::chars_of(text);
  std::vector<int64_t> ids = chars.encode(text);
  CHECK(ids.size() == text.size());
  CHECK(chars.decode(ids) == text);
  Tokenizer bytes = Tokenizer::bytes();
  CHECK(bytes.decode(bytes.encode(text)) == text);
  for (int64_t id = 0; id < chars.vocab_size(); ++id)
    CHECK(chars.decode_one(id) == std::string(1, chars.symbols()[size_t(id)]));
}

TEST_CASE("the byte tokenizer has 256 symbols and maps each byte to its value") {
  Tokenizer tok = Tokenizer::bytes();
  CHECK(tok.kind() == Tokenizer::Kind::bytes);
  CHECK(tok.vocab_size() == 256);
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(char(b));
  std::vector<int64_t> expected(256);
  for (int b = 0; b < 256; ++b) expected[size_t(b)] = b;
  CHECK(tok.encode(all) == expected);
  CHECK(tok.encode(std::string{'\xff', '\0', 'A'}) == std::vector<int64_t>{255, 0, 65});
  CHECK(Tokenizer() == tok);  // the default tokenizer is the byte one
}

TEST_CASE("to_json and from_json round-trip char and byte tokenizers") {
  Tokenizer ascii = Tokenizer::chars_of("to be or not to be");
  Tokenizer back = Tokenizer::from_json(ascii.to_json());
  CHECK(back == ascii);
  CHECK(back.symbols() == " benort");
  CHECK(back.kind() == Tokenizer::Kind::chars);

  Tokenizer bytes = Tokenizer::bytes();
  CHECK(Tokenizer::from_json(bytes.to_json()) == bytes);
  CHECK(Tokenizer::from_json(bytes.to_json()).vocab_size() == 256);
}

TEST_CASE("to_json round-trips a vocabulary of non-ASCII and control bytes") {
  // UTF-8 "é" and "☃", a lone continuation byte, NUL and 0xff: not valid UTF-8 as a whole.
  std::string text = "caf\xc3\xa9 \xe2\x98\x83 \x80";
  text += std::string{'\0', '\xff'};
  Tokenizer tok = Tokenizer::chars_of(text);
  std::string json = tok.to_json();
  Tokenizer back = Tokenizer::from_json(json);
  CHECK(back == tok);
  CHECK(back.vocab_size() == 12);  // \0 space a c f 0x80 0x83 0x98 0xa9 0xc3 0xe2 0xff
  CHECK(back.symbols() == tok.symbols());
  CHECK(back.encode(text) == tok.encode(text));
  CHECK(back.decode(back.encode(text)) == text);
}

TEST_CASE("from_json refuses malformed tokenizers") {
  CHECK_THROWS_WITH(Tokenizer::from_json("{not json"), Contains("malformed JSON"));
  CHECK_THROWS_WITH(Tokenizer::from_json("[1, 2]"), Contains("kind"));
  CHECK_THROWS_WITH(Tokenizer::from_json(R"({"kind": "word"})"), Contains("'word'"));
  CHECK_THROWS_WITH(Tokenizer::from_json(R"({"kind": "char"})"), Contains("symbols"));
  CHECK_THROWS_WITH(Tokenizer::from_json(R"({"kind": "char", "symbols": [97, 256]})"),
                    Contains("256"));
  CHECK_THROWS_WITH(Tokenizer::from_json(R"({"kind": "char", "symbols": [97, -1]})"),
                    Contains("-1"));
  CHECK_THROWS_WITH(Tokenizer::from_json(R"({"kind": "char", "symbols": [97, 98, 97]})"),
                    Contains("97") && Contains("repeated"));
}

TEST_CASE("encoding an unknown character names the character and its position") {
  Tokenizer tok = Tokenizer::chars_of("abc");
  CHECK_THROWS_AS(tok.encode("abxc"), Error);
  CHECK_THROWS_WITH(tok.encode("abxc"), Contains("'x'") && Contains("position 2"));
  CHECK_THROWS_WITH(tok.encode("ab\xc3\xa9"), Contains("0xc3") && Contains("position 2"));
  CHECK_THROWS_WITH(tok.encode("aaaaaaaaaaaZ"), Contains("'Z'") && Contains("position 11"));
}

TEST_CASE("decoding an id outside the vocabulary names the id") {
  Tokenizer tok = Tokenizer::chars_of("abc");
  CHECK_THROWS_WITH(tok.decode({0, 3}), Contains("3") && Contains("vocabulary of 3"));
  CHECK_THROWS_WITH(tok.decode_one(-1), Contains("-1"));
  CHECK_THROWS_WITH(Tokenizer::bytes().decode_one(256), Contains("256"));
}

// ---- load_text ----

TEST_CASE("load_text splits int(n * 0.9) tokens into train and the rest into val") {
  TempDir dir;
  for (size_t n : {size_t(2), size_t(10), size_t(11), size_t(19), size_t(99), size_t(1001)}) {
    INFO("corpus of " << n << " bytes");
    std::string text = synthetic_corpus(n, "abcdefg \n", uint32_t(n));
    std::string path = write_bytes(dir.file("c.txt"), text);
    TextData d = load_text(path, Tokenizer::Kind::chars);
    int64_t n_train = int64_t(n) * 9 / 10;  // Python's int(n * 0.9) for these n
    CHECK(d.path == path);
    CHECK(d.train.dtype() == DType::i64);
    CHECK(d.train.shape() == Shape{n_train});
    CHECK(d.val.shape() == Shape{int64_t(n) - n_train});
    CHECK(d.tokenizer == Tokenizer::chars_of(text));
    CHECK(concat(d.train, d.val) == rank_ids(text, text));
  }
}

TEST_CASE("load_text with a byte tokenizer gives byte values and honours the fraction") {
  TempDir dir;
  std::string text = synthetic_corpus(40, "\x01\x7f\xfe xyz", 5);
  std::string path = write_bytes(dir.file("b.txt"), text);
  TextData d = load_text(path, Tokenizer::Kind::bytes, 0.75);
  CHECK(d.tokenizer.vocab_size() == 256);
  CHECK(d.train.numel() == 30);
  CHECK(d.val.numel() == 10);
  std::vector<int64_t> expected;
  for (unsigned char c : text) expected.push_back(c);
  CHECK(concat(d.train, d.val) == expected);
}

TEST_CASE("Tiny Shakespeare splits into nanoGPT's 1,003,854 train and 111,540 val tokens") {
  std::string path = shakespeare_or_skip();
  if (path.empty()) return;
  TextData d = load_text(path, Tokenizer::Kind::chars);
  CHECK(d.tokenizer.vocab_size() == 65);
  CHECK(d.train.numel() == 1003854);
  CHECK(d.val.numel() == 111540);
  // "First Citizen:" opens the corpus.
  CHECK(d.train.narrow(0, 0, 14).to_vector<int64_t>() == d.tokenizer.encode("First Citizen:"));
  CHECK(d.tokenizer.decode(d.train.narrow(0, 0, 14).to_vector<int64_t>()) == "First Citizen:");
  CHECK(concat(d.train, d.val) == d.tokenizer.encode(read_text_file(path)));
}

TEST_CASE("load_text with a given tokenizer refuses a character outside it, naming the file") {
  TempDir dir;
  std::string path = write_bytes(dir.file("other.txt"), "abba\ncab!");
  Tokenizer tok = Tokenizer::chars_of("abc\n");
  CHECK_THROWS_WITH(load_text(path, tok),
                    Contains(path) && Contains("'!'") && Contains("position 8"));
  std::string ok = write_bytes(dir.file("ok.txt"), "cabbac\nabc");
  TextData d = load_text(ok, tok);
  CHECK(d.tokenizer == tok);
  CHECK(concat(d.train, d.val) == rank_ids("abc\n", "cabbac\nabc"));
}

TEST_CASE("load_text errors name the path: missing file, directory, empty file") {
  TempDir dir;
  std::string missing = dir.file("no_such_corpus.txt");
  CHECK_THROWS_WITH(load_text(missing, Tokenizer::Kind::chars),
                    Contains(missing) && Contains("not found"));
  CHECK_THROWS_WITH(load_text(missing, Tokenizer::bytes()),
                    Contains(missing) && Contains("not found"));
  CHECK_THROWS_WITH(load_text(dir.path(), Tokenizer::Kind::chars),
                    Contains(dir.path()) && Contains("directory"));
  std::string empty = write_bytes(dir.file("empty.txt"), "");
  CHECK_THROWS_WITH(load_text(empty, Tokenizer::Kind::chars), Contains(empty) && Contains("empty"));
  CHECK_THROWS_WITH(load_text(empty, Tokenizer::bytes()), Contains(empty) && Contains("empty"));
  CHECK_THROWS_WITH(read_text_file(""), Contains("no corpus"));
}

// ---- get_batch ----

TEST_CASE("get_batch draws one start per row with randint(n - T) and y is x shifted by one") {
  // Token i is i + 1000, so a row's first value gives its start offset.
  const int64_t n = 50, B = 8, T = 5;
  Tensor data = arange(1000, 1000 + double(n));
  Generator gen(42), ref(42);
  Batch b = get_batch(data, B, T, gen);
  CHECK(b.x.shape() == Shape{B, T});
  CHECK(b.y.shape() == Shape{B, T});
  CHECK(b.x.dtype() == DType::i64);
  CHECK(b.y.dtype() == DType::i64);
  std::vector<int64_t> x = b.x.to_vector<int64_t>(), y = b.y.to_vector<int64_t>();
  for (int64_t r = 0; r < B; ++r) {
    int64_t start = int64_t(ref.randint(uint64_t(n - T)));
    for (int64_t t = 0; t < T; ++t) {
      INFO("row " << r << " position " << t);
      CHECK(x[size_t(r * T + t)] == 1000 + start + t);
      CHECK(y[size_t(r * T + t)] == 1000 + start + t + 1);
    }
  }
  CHECK(gen.state() == ref.state());  // exactly B draws
}

TEST_CASE("get_batch windows on a real encoding are corpus slices inside the split") {
  TempDir dir;
  std::string text = synthetic_corpus(300, "abcdefghij \n", 9);
  TextData d = load_text(write_bytes(dir.file("c.txt"), text), Tokenizer::Kind::chars);
  std::vector<int64_t> val = d.val.to_vector<int64_t>();  // 30 tokens
  const int64_t T = 7, B = 64;
  // Every start in [0, 30 - 7) is possible; with 64 draws over 23 starts the last ones show up.
  Generator gen(3);
  std::vector<int64_t> x_all, y_all;
  std::set<int64_t> starts;
  for (int rep = 0; rep < 4; ++rep) {
    Batch b = get_batch(d.val, B, T, gen, "val");
    std::vector<int64_t> x = b.x.to_vector<int64_t>(), y = b.y.to_vector<int64_t>();
    for (int64_t r = 0; r < B; ++r) {
      // The window must be val[s .. s + T] for some s with s + T < len: find it by matching.
      bool found = false;
      for (int64_t s = 0; s + T < int64_t(val.size()) && !found; ++s) {
        bool match = true;
        for (int64_t t = 0; t < T && match; ++t)
          match = x[size_t(r * T + t)] == val[size_t(s + t)] &&
                  y[size_t(r * T + t)] == val[size_t(s + t + 1)];
        if (match) {
          found = true;
          starts.insert(s);
        }
      }
      CHECK(found);
    }
  }
  CHECK(int64_t(starts.size()) > 15);  // the draws spread over the starts
  CHECK(*starts.rbegin() <= int64_t(val.size()) - T - 1);
}

TEST_CASE("get_batch is a function of the generator state") {
  Tensor data = arange(0, 200);
  Generator gen(7);
  Generator::State s = gen.state();
  Batch a = get_batch(data, 6, 10, gen);
  Generator::State after = gen.state();
  gen.set_state(s);
  Batch b = get_batch(data, 6, 10, gen);
  CHECK(bitwise_equal(a.x, b.x));
  CHECK(bitwise_equal(a.y, b.y));
  CHECK(gen.state() == after);
  Batch c = get_batch(data, 6, 10, gen);  // the next state draws other windows
  CHECK_FALSE(bitwise_equal(a.x, c.x));
  Generator other(8);
  CHECK_FALSE(bitwise_equal(a.x, get_batch(data, 6, 10, other).x));
}

TEST_CASE("get_batch refuses a split with no more than block_size tokens") {
  Generator gen(1);
  CHECK_THROWS_WITH(get_batch(arange(0, 8), 2, 8, gen, "val"),
                    Contains("block_size 8") && Contains("val") && Contains("8 tokens"));
  CHECK_THROWS_WITH(get_batch(arange(0, 3), 2, 8, gen), Contains("block_size"));
  // One more token than T leaves exactly one window: start 0.
  Batch b = get_batch(arange(0, 9), 3, 8, gen);
  CHECK(b.x.to_vector<int64_t>() == arange(0, 8).expand({3, 8}).contiguous().to_vector<int64_t>());
  CHECK(b.y.to_vector<int64_t>() == arange(1, 9).expand({3, 8}).contiguous().to_vector<int64_t>());
}

TEST_CASE("tinyshakespeare_path is $TINYSHAKESPEARE") {
  const char* env = std::getenv("TINYSHAKESPEARE");
  CHECK(tinyshakespeare_path() == std::string(env ? env : ""));
}
