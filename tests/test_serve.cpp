// serve/: the batching engine (batch invariance, equality with `infer`'s generation, the window
// rule, cancellation, the bounded queue) and the protocol (request validation naming the field,
// UTF-8 handling, logprobs), all without a socket.
#include <chrono>
#include <thread>

#include "quant/quantize.h"
#include "recipes/generate.h"
#include "serve/auth.h"
#include "serve/engine.h"
#include "serve/protocol.h"
#include "testing.h"

using namespace forge;
using namespace forge::serve;
using forge::testing::Contains;
using json = nlohmann::json;

namespace {

const std::string kAlphabet =
    " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?\n";

std::shared_ptr<GPT> tiny_model(int64_t block_size = 24) {
  GPTConfig cfg;
  cfg.n_layer = 2;
  cfg.n_head = 3;
  cfg.n_embd = 36;
  cfg.block_size = block_size;
  cfg.vocab_size = int64_t(kAlphabet.size());
  static Generator drop(2);
  Generator init(1);
  auto model = std::make_shared<GPT>(cfg, init, drop);
  // Larger weights than GPT-2's init, so that sampling has something to choose between.
  for (auto& [name, p] : model->named_parameters())
    if (name.find("weight") != std::string::npos && p.data().dim() == 2)
      p.data().copy_(mul(p.data(), 8.0));
  model->eval();
  return model;
}

Tokenizer tokenizer() {
  return Tokenizer::chars_of(kAlphabet);
}

struct Result {
  std::vector<int64_t> tokens;
  std::vector<double> logprobs;
  std::vector<std::vector<TopLogprob>> top;
  std::string text, finish;
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

// Reads a stream to its end (bounded: 120 s).
Result collect(Stream& s) {
  Result r;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    auto e = s.next(std::chrono::milliseconds(50));
    if (!e) continue;
    r.tokens.insert(r.tokens.end(), e->tokens.begin(), e->tokens.end());
    r.logprobs.insert(r.logprobs.end(), e->logprobs.begin(), e->logprobs.end());
    r.top.insert(r.top.end(), e->top_logprobs.begin(), e->top_logprobs.end());
    r.text += e->text;
    if (e->finish) {
      r.finish = *e->finish;
      r.prompt_tokens = e->prompt_tokens;
      r.completion_tokens = e->completion_tokens;
      return r;
    }
  }
  FAIL("a stream did not finish within 120 s");
  return r;
}

GenerationParams request(const std::string& prompt, uint64_t seed, int64_t max_tokens = 20) {
  GenerationParams p;
  p.prompt = tokenizer().encode(prompt);
  p.max_tokens = max_tokens;
  p.seed = seed;
  p.temperature = 0.7 + 0.1 * double(seed % 5);
  p.top_k = int64_t(seed % 3) * 10;
  p.top_p = seed % 2 ? 0.9 : 1.0;
  p.logprobs = 3;
  return p;
}

bool same(const Result& a, const Result& b) {
  if (a.top.size() != b.top.size()) return false;
  for (size_t i = 0; i < a.top.size(); ++i) {
    if (a.top[i].size() != b.top[i].size()) return false;
    for (size_t j = 0; j < a.top[i].size(); ++j)
      if (a.top[i][j].token != b.top[i][j].token ||
          std::memcmp(&a.top[i][j].logprob, &b.top[i][j].logprob, sizeof(double)) != 0)
        return false;
  }
  return !a.tokens.empty() && a.tokens == b.tokens && a.text == b.text && a.finish == b.finish &&
         a.logprobs.size() == a.tokens.size() &&
         std::memcmp(a.logprobs.data(), b.logprobs.data(), a.logprobs.size() * sizeof(double)) == 0;
}

}  // namespace

TEST_CASE(
    "serve engine: seeded requests give bit-identical tokens and logprobs alone, all at once "
    "and interleaved with others") {
  const bool int8 = GENERATE(false, true);
  // A step budget of 3 tokens starts one new prompt per step (most prompts are longer): requests
  // then join at other steps, beside other mixes of prompts and next tokens.
  const int64_t budget = GENERATE(512, 3);
  INFO((int8 ? "int8 (dynamic, per row in the engine)" : "f32") << ", max_batch_tokens " << budget);
  auto model = tiny_model();
  if (int8) REQUIRE(quantize_dynamic(*model) == 8);
  Engine engine(model, tokenizer(), {.slots = 8, .max_queue = 64, .max_batch_tokens = budget});
  const std::vector<std::string> prompts = {"a", "hello there",     "ABC", "the king.", "x y z",
                                            "q", "long, long ago;", "Hi!"};
  // Alone: one request at a time.
  std::vector<Result> alone;
  for (size_t i = 0; i < prompts.size(); ++i)
    alone.push_back(collect(*engine.submit(request(prompts[i], 100 + i))));
  for (const Result& r : alone) {
    CHECK(r.finish == "length");
    CHECK(r.completion_tokens == 20);
    CHECK(r.tokens.size() == 20);
  }
  // All at once.
  std::vector<std::shared_ptr<Stream>> streams;
  for (size_t i = 0; i < prompts.size(); ++i)
    streams.push_back(engine.submit(request(prompts[i], 100 + i)));
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("request " << i << " (all at once)");
    CHECK(same(collect(*streams[i]), alone[i]));
  }
  // Interleaved with other requests of other lengths, submitted while they run.
  streams.clear();
  std::vector<std::shared_ptr<Stream>> others;
  for (size_t i = 0; i < prompts.size(); ++i) {
    others.push_back(
        engine.submit(request("other " + std::to_string(i), 7 * i, 5 + int64_t(i) * 4)));
    streams.push_back(engine.submit(request(prompts[i], 100 + i)));
    if (i % 3 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("request " << i << " (interleaved)");
    CHECK(same(collect(*streams[i]), alone[i]));
  }
  for (auto& s : others) CHECK(collect(*s).finish == "length");
  EngineStats st = engine.stats();
  CHECK(st.active == 0);
  CHECK(st.waiting == 0);
  int64_t batched = 0;
  for (size_t m = 2; m < st.batch_sizes.size(); ++m) batched += st.batch_sizes[m];
  CHECK(batched > 0);  // the concurrent phases did run several rows per step
}

TEST_CASE(
    "serve engine: a request's tokens are infer's (recipes generate) for the same seed and "
    "options, past the context window too, with stop strings") {
  auto model = tiny_model(16);
  Tokenizer tok = tokenizer();
  Engine engine(model, tok, {.slots = 3});
  struct Case {
    std::string prompt;
    double temperature;
    int64_t top_k, max_tokens;
    std::vector<std::string> stop;
  };
  for (const Case& c : {Case{"hello", 0.0, 0, 40, {}}, Case{"ab", 0.9, 5, 50, {}},
                        Case{"the", 1.0, 0, 60, {"e", "zz"}}, Case{"Q", 0.8, 0, 30, {"a b"}}}) {
    INFO("prompt '" << c.prompt << "' temperature " << c.temperature);
    SampleOptions o{.max_tokens = c.max_tokens,
                    .temperature = c.temperature,
                    .top_k = c.top_k,
                    .stop = c.stop,
                    .seed = 42};
    Generated want = generate(*model, tok, c.prompt, o);
    GenerationParams p;
    p.prompt = tok.encode(c.prompt);
    p.max_tokens = c.max_tokens;
    p.temperature = c.temperature;
    p.top_k = c.top_k;
    p.stop = c.stop;
    p.seed = 42;
    // Run it beside two others so that it is batched.
    auto a = engine.submit(request("zzz", 1, 70));
    auto s = engine.submit(p);
    auto b = engine.submit(request("yy", 2, 70));
    Result got = collect(*s);
    CHECK(got.tokens == want.tokens);
    CHECK(got.text == want.text);
    CHECK(got.finish == (want.stopped_by_string ? "stop" : "length"));
    CHECK(got.completion_tokens == int64_t(want.tokens.size()));
    CHECK(got.prompt_tokens == int64_t(p.prompt.size()));
    if (c.stop.empty()) CHECK(int64_t(got.tokens.size()) == c.max_tokens);  // past block_size 16
    a->cancel();
    b->cancel();
    collect(*a);
    collect(*b);
  }
}

TEST_CASE(
    "serve engine: a request whose client does not read is paused with a bounded backlog, "
    "then resumes with the same tokens") {
  auto model = tiny_model();
  Engine engine(model, tokenizer(), {.slots = 2, .max_pending_events = 4});
  const Result alone = collect(*engine.submit(request("hello there", 7, 60)));
  auto s = engine.submit(request("hello there", 7, 60));
  // Not read: the engine stops at 4 unread events and reports it paused (bounded wait: 10 s).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (engine.stats().paused != 1 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(engine.stats().paused == 1);
  CHECK(s->pending() == 4);
  // Meanwhile another request runs to its end.
  CHECK(collect(*engine.submit(request("abc", 3, 20))).finish == "length");
  CHECK(s->pending() == 4);
  // Read: it resumes, and its tokens are those it makes alone.
  CHECK(same(collect(*s), alone));
  CHECK(engine.stats().paused == 0);
}

TEST_CASE(
    "serve engine: streamed text never shows a stop string, and holds back only its possible "
    "start") {
  auto model = tiny_model();
  Tokenizer tok = tokenizer();
  Engine engine(model, tok, {.slots = 2});
  // Greedy from this prompt makes some text; stop at a 2-character piece of it.
  GenerationParams p;
  p.prompt = tok.encode("hello");
  p.max_tokens = 30;
  p.temperature = 0;
  Result free_run = collect(*engine.submit(p));
  REQUIRE(free_run.text.size() >= 10);
  const std::string stop = free_run.text.substr(6, 2);
  p.stop = {stop};
  auto s = engine.submit(p);
  std::string streamed;
  std::vector<std::string> pieces;
  Result r;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    auto e = s->next(std::chrono::milliseconds(50));
    if (!e) continue;
    streamed += e->text;
    pieces.push_back(e->text);
    if (e->finish) {
      r.finish = *e->finish;
      break;
    }
  }
  CHECK(r.finish == "stop");
  const size_t at = free_run.text.find(stop);
  CHECK(streamed == free_run.text.substr(0, at));
  CHECK(streamed.find(stop) == std::string::npos);
}

TEST_CASE(
    "serve engine: a cancelled request ends with 'cancelled' and frees its slot; the queue is "
    "bounded") {
  Engine engine(tiny_model(), tokenizer(), {.slots = 1, .max_queue = 1});
  auto long_one = engine.submit(request("abc", 1, 100000));
  // Wait (bounded) until it holds the only slot.
  for (int i = 0; i < 400 && engine.stats().active == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(engine.stats().active == 1);
  auto waiting = engine.submit(request("def", 2, 5));
  CHECK_THROWS_AS(engine.submit(request("ghi", 3, 5)), QueueFull);
  long_one->cancel();
  Result r = collect(*long_one);
  CHECK(r.finish == "cancelled");
  CHECK(r.completion_tokens < 100000);
  CHECK(collect(*waiting).finish == "length");
  CHECK(engine.stats().active == 0);
  engine.shutdown(std::chrono::milliseconds(1000));
  CHECK_THROWS_AS(engine.submit(request("jkl", 4, 5)), ShuttingDown);
}

TEST_CASE(
    "serve engine: shutdown lets in-flight requests finish, or cancels them after the "
    "timeout") {
  Engine engine(tiny_model(), tokenizer(), {.slots = 2});
  auto short_one = engine.submit(request("abc", 1, 10));
  auto endless = engine.submit(request("def", 2, 1000000));
  engine.shutdown(std::chrono::milliseconds(300));
  CHECK(collect(*short_one).finish == "length");
  CHECK(collect(*endless).finish == "cancelled");
}

// ============================================================================================
// Protocol

namespace {
Limits limits() {
  return {.model_name = "tiny", .block_size = 24, .max_tokens_limit = 100};
}
// The ApiError a body raises (status and param), or fails.
std::pair<int, std::string> rejects(const std::string& body) {
  try {
    parse_completion(body, limits(), tokenizer());
  } catch (const ApiError& e) {
    json b = e.body();
    CHECK(b["error"]["message"].get<std::string>().size() > 0);
    CHECK(b["error"]["type"].is_string());
    return {e.status, e.param};
  }
  FAIL("accepted: " << body);
  return {0, ""};
}
}  // namespace

TEST_CASE("serve protocol: a full completion request is read field by field") {
  CompletionRequest r = parse_completion(
      R"({"model": "tiny", "prompt": ["ab", "c d"], "max_tokens": 7, "temperature": 0.5,
          "top_p": 0.9, "top_k": 4, "stop": ["x", "yz"], "seed": 99, "n": 2, "stream": true,
          "stream_options": {"include_usage": true}, "logprobs": 2, "echo": true,
          "user": "ignored", "frequency_penalty": 0})",
      limits(), tokenizer());
  CHECK(r.prompts == std::vector<std::string>{"ab", "c d"});
  CHECK(r.prompt_tokens[1] == tokenizer().encode("c d"));
  CHECK(r.params.max_tokens == 7);
  CHECK(r.params.temperature == 0.5);
  CHECK(r.params.top_p == 0.9);
  CHECK(r.params.top_k == 4);
  CHECK(r.params.stop == std::vector<std::string>{"x", "yz"});
  CHECK(r.params.seed == 99);
  CHECK(r.seeded);
  CHECK(r.n == 2);
  CHECK(r.stream);
  CHECK(r.include_usage);
  CHECK(r.params.logprobs == 2);
  CHECK(r.echo);
  // Defaults, and the stop_sequence alias.
  CompletionRequest d = parse_completion(
      R"({"model": "tiny", "prompt": "a", "stop_sequence": "q"})", limits(), tokenizer());
  CHECK(d.params.max_tokens == 16);
  CHECK(d.params.temperature == 1.0);
  CHECK(d.params.logprobs == -1);
  CHECK(!d.seeded);
  CHECK(d.n == 1);
  CHECK(d.params.stop == std::vector<std::string>{"q"});
}

TEST_CASE("serve protocol: every bad field is a 4xx naming it") {
  using P = std::pair<int, std::string>;
  CHECK(rejects("{not json") == P{400, ""});
  CHECK(rejects("[1, 2]") == P{400, ""});
  CHECK(rejects(R"({"prompt": "a"})") == P{400, "model"});
  CHECK(rejects(R"({"model": "other", "prompt": "a"})") == P{404, "model"});
  CHECK(rejects(R"({"model": 3, "prompt": "a"})") == P{400, "model"});
  CHECK(rejects(R"({"model": "tiny"})") == P{400, "prompt"});
  CHECK(rejects(R"({"model": "tiny", "prompt": ""})") == P{400, "prompt"});
  CHECK(rejects(R"({"model": "tiny", "prompt": []})") == P{400, "prompt"});
  CHECK(rejects(R"({"model": "tiny", "prompt": [1]})") == P{400, "prompt"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a%"})") == P{400, "prompt"});    // not in vocab
  CHECK(rejects("{\"model\": \"tiny\", \"prompt\": \"a\xff\"}") == P{400, ""});  // bad UTF-8 JSON
  CHECK(rejects(R"({"model": "tiny", "prompt": "aaaaaaaaaaaaaaaaaaaaaaaaa"})") == P{400, "prompt"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "max_tokens": 0})") == P{400, "max_tokens"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "max_tokens": 101})") == P{400, "max_tokens"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "max_tokens": "5"})") == P{400, "max_tokens"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "max_tokens": 2.5})") == P{400, "max_tokens"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "temperature": -0.1})") ==
        P{400, "temperature"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "temperature": 2.5})") ==
        P{400, "temperature"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "top_p": 0})") == P{400, "top_p"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "top_p": 1.5})") == P{400, "top_p"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "top_k": -1})") == P{400, "top_k"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "n": 0})") == P{400, "n"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "n": 9})") == P{400, "n"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "logprobs": 6})") == P{400, "logprobs"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "logprobs": true})") == P{400, "logprobs"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "stop": ["a","b","c","d","e"]})") ==
        P{400, "stop"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "stop": [""]})") == P{400, "stop"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "stop_sequence": 5})") ==
        P{400, "stop_sequence"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "seed": "x"})") == P{400, "seed"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "stream": "yes"})") == P{400, "stream"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "stream_options": {"include_usage": true}})") ==
        P{400, "stream_options"});
  CHECK(rejects(R"({"model": "tiny", "prompt": "a", "echo": 1})") == P{400, "echo"});
}

TEST_CASE("serve protocol: UTF-8 held back while incomplete, repaired for JSON") {
  CHECK(complete_utf8_prefix("abc") == 3);
  CHECK(complete_utf8_prefix("ab\xC3") == 2);             // lead of a 2-byte sequence
  CHECK(complete_utf8_prefix("ab\xC3\xA9") == 4);         // é complete
  CHECK(complete_utf8_prefix("a\xE2\x98") == 1);          // 2 of 3 bytes
  CHECK(complete_utf8_prefix("a\xF0\x9F\x98") == 1);      // 3 of 4 bytes
  CHECK(complete_utf8_prefix("a\xF0\x9F\x98\x80") == 5);  // complete
  CHECK(valid_utf8("caf\xC3\xA9") == "caf\xC3\xA9");
  CHECK(valid_utf8("a\xFF"
                   "b") ==
        "a\xEF\xBF\xBD"
        "b");
  CHECK_NOTHROW(json(valid_utf8("\xC3")).dump());
}

TEST_CASE("serve protocol: logprobs in OpenAI's completion shape") {
  Tokenizer tok = tokenizer();
  std::vector<int64_t> ids = tok.encode("ab");
  json lp = logprobs_json(tok, ids, {-0.5, -1.25},
                          {{{ids[0], -0.5}, {ids[1], -2.0}}, {{ids[1], -1.25}}}, 3);
  CHECK(lp["tokens"] == json::array({"a", "b"}));
  CHECK(lp["token_logprobs"] == json::array({-0.5, -1.25}));
  CHECK(lp["top_logprobs"][0]["a"] == -0.5);
  CHECK(lp["top_logprobs"][0]["b"] == -2.0);
  CHECK(lp["text_offset"] == json::array({3, 4}));
}

TEST_CASE("serve protocol: chat messages become a prompt through the template") {
  ChatTemplate chat;
  CompletionRequest r = parse_chat(
      R"({"model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
          {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}],
          "max_completion_tokens": 9, "logprobs": true, "top_logprobs": 2, "seed": 3})",
      {.model_name = "tiny", .block_size = 200, .max_tokens_limit = 100}, tokenizer(), chat);
  CHECK(r.prompts[0] == "System: Be brief.\nUser: Hi!\nAssistant:");
  CHECK(r.prompt_tokens[0] == tokenizer().encode(r.prompts[0]));
  CHECK(r.params.max_tokens == 9);
  CHECK(r.params.logprobs == 2);
  CHECK(r.params.stop == std::vector<std::string>{"\nUser:"});  // the template's default
  // A template from a file, and its errors.
  ChatTemplate t = ChatTemplate::from_json(
      R"({"role_prefix": {"user": "Q: ", "assistant": "A: "}, "generation_prefix": "A:",
          "default_stop": ["\nQ:"]})",
      "t.json");
  CompletionRequest q = parse_chat(
      R"({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": "."})",
      {.model_name = "tiny", .block_size = 200, .max_tokens_limit = 100}, tokenizer(), t);
  CHECK(q.prompts[0] == "Q: x\nA:");
  CHECK(q.params.stop == std::vector<std::string>{"."});
  CHECK_THROWS_WITH(ChatTemplate::from_json(R"({"prefix": 1})", "t.json"),
                    Contains("t.json") && Contains("unknown key 'prefix'"));
  CHECK_THROWS_WITH(ChatTemplate::from_json("{", "t.json"), Contains("t.json"));
  // Bad messages name 'messages'.
  auto chat_rejects = [&](const std::string& body) {
    try {
      parse_chat(body, {.model_name = "tiny", .block_size = 30, .max_tokens_limit = 100},
                 tokenizer(), chat);
    } catch (const ApiError& e) {
      return std::pair<int, std::string>{e.status, e.param};
    }
    return std::pair<int, std::string>{0, ""};
  };
  using P = std::pair<int, std::string>;
  CHECK(chat_rejects(R"({"model": "tiny"})") == P{400, "messages"});
  CHECK(chat_rejects(R"({"model": "tiny", "messages": []})") == P{400, "messages"});
  CHECK(chat_rejects(R"({"model": "tiny", "messages": [{"role": "robot", "content": "a"}]})") ==
        P{400, "messages"});
  CHECK(chat_rejects(R"({"model": "tiny", "messages": [{"role": "user"}]})") == P{400, "messages"});
  CHECK(chat_rejects(R"({"model": "tiny", "messages": [{"role": "user", "content": 5}]})") ==
        P{400, "messages"});
  CHECK(
      chat_rejects(
          R"({"model": "tiny", "messages": [{"role": "user", "content": "a very long message indeed"}]})") ==
      P{400, "messages"});  // past the context once rendered
  CHECK(
      chat_rejects(
          R"({"model": "tiny", "messages": [{"role": "user", "content": "a"}], "top_logprobs": 2})") ==
      P{400, "top_logprobs"});
  CHECK(
      chat_rejects(
          R"({"model": "tiny", "messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0})") ==
      P{400, "max_completion_tokens"});
}

// ============================================================================================
// Fuzzing the request parsers (a replay of a generated corpus; the unit suite also runs under
// AddressSanitizer + UndefinedBehaviorSanitizer): whatever the bytes, a parser returns or throws
// ApiError, nothing else.

namespace {

// Deterministic mutations of valid bodies: flipped and inserted bytes, cuts, fields set to values
// of every JSON type, deep nesting, huge numbers, invalid UTF-8.
class Mutator {
 public:
  explicit Mutator(uint64_t seed) : gen_(seed) {}
  uint64_t next(uint64_t n) { return gen_.randint(n); }

  std::string mutate(const std::string& body) {
    std::string s = body;
    const int edits = 1 + int(next(4));
    for (int e = 0; e < edits; ++e) {
      switch (next(6)) {
        case 0:  // flip a byte
          if (!s.empty()) s[size_t(next(s.size()))] ^= char(1 + next(255));
          break;
        case 1:  // cut
          s.resize(size_t(next(s.size() + 1)));
          break;
        case 2:  // insert a piece
          s.insert(size_t(next(s.size() + 1)), kPieces[next(std::size(kPieces))]);
          break;
        case 3:  // duplicate a span
          if (!s.empty()) {
            size_t a = size_t(next(s.size())), n = size_t(next(s.size() - a + 1));
            s.insert(size_t(next(s.size() + 1)), s.substr(a, n));
          }
          break;
        default:  // replace a field's value by another JSON value
          s = with_field(s);
      }
    }
    return s;
  }

 private:
  std::string with_field(const std::string& s) {
    json j = json::parse(s, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return s;
    static const char* kFields[] = {
        "model",  "prompt",       "max_tokens",     "temperature",
        "top_p",  "top_k",        "stop",           "seed",
        "n",      "stream",       "stream_options", "logprobs",
        "echo",   "messages",     "top_logprobs",   "max_completion_tokens",
        "tokens", "stop_sequence"};
    j[kFields[next(std::size(kFields))]] = json::parse(kValues[next(std::size(kValues))]);
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
  }

  static constexpr const char* kPieces[] = {"\"",
                                            "{",
                                            "}",
                                            "[",
                                            "]",
                                            ",",
                                            ":",
                                            "null",
                                            "1e999",
                                            "-0",
                                            "\\u0000",
                                            "\\ud800",
                                            "\xff",
                                            "\xc3",
                                            "\xe2\x82",
                                            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
                                            "9999999999999999999999",
                                            "\"a\"",
                                            "true",
                                            "{\"role\":\"user\"}",
                                            "\\",
                                            "\n"};
  static constexpr const char* kValues[] = {
      "null",
      "true",
      "0",
      "-1",
      "1.5",
      "1e308",
      "-1e308",
      "18446744073709551615",
      "9223372036854775807",
      "-9223372036854775808",
      "\"\"",
      "\"a\"",
      "\"ab%\"",
      "[]",
      "[1]",
      "[\"a\", 2]",
      "{}",
      "{\"include_usage\": 1}",
      "[{\"role\": \"user\", \"content\": \"a\"}]",
      "[{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": 5}]}]",
      "[0, 1, 999]",
      "[\"a\",\"b\",\"c\",\"d\",\"e\"]",
      "0.0000001",
      "2.0000001",
      "[[[[[[[[1]]]]]]]]"};
  Generator gen_;
};

}  // namespace

TEST_CASE(
    "serve protocol: fuzzed bodies are parsed or refused with an ApiError, never anything "
    "else") {
  const Tokenizer tok = tokenizer();
  const Limits lim = limits();
  const ChatTemplate chat;
  const std::vector<std::string> seeds = {
      R"({"model": "tiny", "prompt": ["ab", "c d"], "max_tokens": 7, "temperature": 0.5,
          "top_p": 0.9, "top_k": 4, "stop": ["x", "yz"], "seed": 99, "n": 2, "stream": true,
          "stream_options": {"include_usage": true}, "logprobs": 2, "echo": true})",
      R"({"model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
          {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "logprobs": true,
          "top_logprobs": 2, "max_completion_tokens": 5})",
      R"({"model": "tiny", "prompt": "hello"})", R"({"tokens": [1, 2, 3]})"};
  Mutator m(2024);
  int parsed = 0, refused = 0;
  const int kCases = 4000;
  for (int i = 0; i < kCases; ++i) {
    const std::string body = m.mutate(seeds[size_t(i) % seeds.size()]);
    for (int parser = 0; parser < 4; ++parser) {
      try {
        switch (parser) {
          case 0:
            parse_completion(body, lim, tok);
            break;
          case 1:
            parse_chat(body, lim, tok, chat);
            break;
          case 2:
            tokenize_response(body, lim, tok);
            break;
          default:
            detokenize_response(body, lim, tok);
        }
        ++parsed;
      } catch (const ApiError& e) {
        ++refused;
        if (e.status < 400 || e.status >= 500) FAIL("status " << e.status << " for " << body);
        CHECK_NOTHROW(e.body().dump());
      } catch (const std::exception& e) {
        FAIL("parser " << parser << " threw '" << e.what() << "' (not an ApiError) for: " << body);
      }
    }
  }
  WARN("fuzzed " << kCases << " bodies x 4 parsers: " << parsed << " accepted, " << refused
                 << " refused");
  CHECK(parsed > 100);    // the mutations keep some bodies valid...
  CHECK(refused > 1000);  // ...and break most
}

TEST_CASE(
    "serve auth: fuzzed Authorization headers are refused with a 401 ApiError, never "
    "anything else") {
  Auth auth = Auth::from_values({"key-one"}, std::string(40, 's'), "aud", "iss");
  auto b64 = [](const std::string& in) {  // base64url without padding
    static const char* kAlphabet64 =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    std::string out;
    uint32_t buf = 0;
    int bits = 0;
    for (unsigned char c : in) {
      buf = (buf << 8) | c;
      bits += 8;
      while (bits >= 6) out += kAlphabet64[(buf >> (bits -= 6)) & 63];
    }
    if (bits > 0) out += kAlphabet64[(buf << (6 - bits)) & 63];
    return out;
  };
  const std::vector<std::string> headers = {R"({"alg":"HS256","typ":"JWT"})",
                                            R"({"alg":"none"})",
                                            R"({"alg":"HS512"})",
                                            R"({"alg":5})",
                                            R"([1,2])",
                                            "{",
                                            R"({"alg":"HS256","crit":["x"]})"};
  const std::vector<std::string> payloads = {R"({"exp":99999999999,"aud":"aud","iss":"iss"})",
                                             R"({"exp":"soon"})",
                                             R"({"exp":1e999})",
                                             R"({"exp":-1,"nbf":1e300})",
                                             R"({"aud":[1,{}],"exp":1})",
                                             "null",
                                             "\xff\xfe"};
  Mutator m(77);
  int refused = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string token = b64(headers[m.next(headers.size())]) + "." +
                        b64(payloads[m.next(payloads.size())]) + "." + b64(std::string(32, 'x'));
    std::string header = (m.next(4) == 0 ? "bearer " : "Bearer ") + m.mutate(token);
    try {
      auth.check(header);
      FAIL("accepted: " << header);
    } catch (const ApiError& e) {
      CHECK(e.status == 401);
      ++refused;
    } catch (const std::exception& e) {
      FAIL("threw '" << e.what() << "' (not an ApiError) for: " << header);
    }
  }
  CHECK(refused == 3000);
}
