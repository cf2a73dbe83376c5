// Text generation: the cached and uncached paths agree token for token (also past block_size,
// where the context window slides), top-k/top-p limits, sample_token's distribution, stop strings
// and streaming, and prompt errors. The model is a small untrained GPT over a character vocabulary.
#include <cmath>
#include <map>

#include "models/gpt.h"
#include "recipes/generate.h"
#include "testing.h"

using namespace forge;
using namespace forge::testing;

namespace {

// No 'z' and no control characters other than '\n' in the vocabulary.
const char* kCorpus = "the quick brown fox jumps over a lay dog.\nTHE END!";

struct Fixture {
  Tokenizer tok = Tokenizer::chars_of(kCorpus);
  Generator init{31}, drop{32};
  GPT model;
  Fixture() : model(config(tok.vocab_size()), init, drop) {
    // Token embeddings (and so the tied head) 10x the GPT-2 init: logits with std ~0.8 instead of
    // 0.08, so next-token distributions are far from uniform and argmax has clear winners.
    mul_(model.wte->weight.data(), 10.0);
    // With a tied head an untrained model's argmax is mostly the input token itself; position
    // embeddings of the same size make the greedy text move on.
    mul_(model.wpe->weight.data(), 10.0);
  }
  static GPTConfig config(int64_t vocab) {
    GPTConfig c;
    c.n_layer = 2;
    c.n_head = 2;
    c.n_embd = 16;
    c.block_size = 16;
    c.vocab_size = vocab;
    return c;
  }
};

SampleOptions options(double temperature, int64_t max_tokens, uint64_t seed = 1337) {
  SampleOptions o;
  o.temperature = temperature;
  o.max_tokens = max_tokens;
  o.seed = seed;
  return o;
}

// Greedy generation written out here: the full forward on the context, argmax of the last
// position; past block_size the context keeps its newest block_size/2 tokens.
std::vector<int64_t> reference_greedy(GPT& model, const Tokenizer& tok, const std::string& prompt,
                                      int64_t n) {
  NoGradGuard no_grad;
  model.eval();
  std::vector<int64_t> all = tok.encode(prompt), out;
  const size_t block = size_t(model.config().block_size);
  size_t start = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (all.size() - start > block) start = all.size() - block / 2;
    std::vector<int64_t> ctx(all.begin() + std::ptrdiff_t(start), all.end());
    Tensor logits = model.forward(from_vector(ctx, Shape{1, int64_t(ctx.size())})).data();
    std::vector<float> last =
        logits.select(1, int64_t(ctx.size()) - 1).reshape({-1}).to_vector<float>();
    int64_t best = 0;
    for (size_t j = 1; j < last.size(); ++j)
      if (last[j] > last[size_t(best)]) best = int64_t(j);
    all.push_back(best);
    out.push_back(best);
  }
  model.train();
  return out;
}

std::vector<double> softmax_of(const std::vector<double>& logits, double temperature) {
  double m = -INFINITY, z = 0;
  for (double l : logits) m = std::max(m, l / temperature);
  std::vector<double> p;
  for (double l : logits) z += p.emplace_back(std::exp(l / temperature - m));
  for (double& x : p) x /= z;
  return p;
}

// Upper 1e-4 tail of the chi-square distribution with k degrees of freedom.
double chi_square_bound(size_t k) {
  const double q[] = {0, 15.137, 18.421, 21.108, 23.513, 25.745, 27.856, 29.878};
  REQUIRE(k >= 1);
  REQUIRE(k < 8);
  return q[k];
}

// Draws n tokens and checks their frequencies against `expected` (0 for tokens that must never
// appear): a chi-square test over the possible tokens at the 1e-4 level, and each bin within
// 5 binomial standard errors.
void check_frequencies(const Tensor& logits, const SampleOptions& o,
                       const std::vector<double>& expected, int n) {
  Generator gen(99);
  std::vector<double> count(expected.size(), 0.0);
  for (int i = 0; i < n; ++i) {
    int64_t t = sample_token(logits, o, gen);
    REQUIRE(t >= 0);
    REQUIRE(t < int64_t(expected.size()));
    count[size_t(t)] += 1;
  }
  double chi2 = 0;
  size_t possible = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    INFO("token " << i << " drawn " << count[i] << " of " << n << ", expected p " << expected[i]);
    if (expected[i] == 0) {
      CHECK(count[i] == 0);
      continue;
    }
    ++possible;
    double e = expected[i] * n;
    chi2 += (count[i] - e) * (count[i] - e) / e;
    CHECK(std::abs(count[i] / n - expected[i]) <=
          5 * std::sqrt(expected[i] * (1 - expected[i]) / n));
  }
  INFO("chi2 " << chi2 << " over " << possible << " tokens");
  if (possible > 1) CHECK(chi2 <= chi_square_bound(possible - 1));
}

std::string joined(const std::vector<std::string>& pieces) {
  std::string s;
  for (const auto& p : pieces) s += p;
  return s;
}

}  // namespace

// ============================================================================================
// Cached and uncached paths

TEST_CASE(
    "generate: greedy tokens are the argmax of the full forward, with the window sliding "
    "past block_size") {
  Fixture f;
  // Prompt 3 + 40 new tokens > block_size 16: the window slides three times.
  std::vector<int64_t> expected = reference_greedy(f.model, f.tok, "the", 40);
  for (bool cache : {true, false}) {
    INFO("use_cache " << cache);
    SampleOptions o = options(0.0, 40);
    o.use_cache = cache;
    Generated g = generate(f.model, f.tok, "the", o);
    CHECK(g.tokens == expected);
    CHECK(g.text == f.tok.decode(expected));
    CHECK_FALSE(g.stopped_by_string);
  }
  // Not a degenerate run: the greedy text uses several distinct tokens.
  std::map<int64_t, int> distinct;
  for (int64_t t : expected) distinct[t]++;
  CHECK(distinct.size() >= 3);
}

TEST_CASE(
    "generate: cached and uncached generation give exactly the same tokens, greedy and "
    "sampled") {
  Fixture f;
  struct Setting {
    double temperature;
    int64_t top_k;
    double top_p;
  };
  const Setting settings[] = {{0.0, 0, 1.0}, {1.0, 0, 1.0}, {0.7, 5, 1.0}, {1.2, 0, 0.8}};
  for (const auto& s : settings) {
    for (uint64_t seed : {1u, 2u}) {
      INFO(fmt::format("temperature {} top_k {} top_p {} seed {}", s.temperature, s.top_k, s.top_p,
                       seed));
      SampleOptions o = options(s.temperature, 45, seed);
      o.top_k = s.top_k;
      o.top_p = s.top_p;
      Generated cached = generate(f.model, f.tok, "fox", o);
      o.use_cache = false;
      Generated uncached = generate(f.model, f.tok, "fox", o);
      REQUIRE(cached.tokens.size() == 45);
      CHECK(cached.tokens == uncached.tokens);
      CHECK(cached.text == uncached.text);
    }
  }
}

TEST_CASE("generate: sampling repeats for a seed, differs across seeds and from greedy") {
  Fixture f;
  Generated a = generate(f.model, f.tok, "a", options(1.0, 30, 5));
  Generated b = generate(f.model, f.tok, "a", options(1.0, 30, 5));
  Generated c = generate(f.model, f.tok, "a", options(1.0, 30, 6));
  Generated greedy = generate(f.model, f.tok, "a", options(0.0, 30));
  CHECK(a.tokens == b.tokens);
  CHECK(a.tokens != c.tokens);
  CHECK(a.tokens != greedy.tokens);
}

TEST_CASE("generate: top_k = 1 and a tiny top_p give the greedy tokens") {
  Fixture f;
  Generated greedy = generate(f.model, f.tok, "over", options(0.0, 30));
  SampleOptions k1 = options(0.9, 30, 3);
  k1.top_k = 1;
  CHECK(generate(f.model, f.tok, "over", k1).tokens == greedy.tokens);
  SampleOptions tiny_p = options(0.9, 30, 4);
  tiny_p.top_p = 1e-9;
  CHECK(generate(f.model, f.tok, "over", tiny_p).tokens == greedy.tokens);
}

TEST_CASE("generate: restores the model's training mode") {
  Fixture f;
  REQUIRE(f.model.is_training());
  generate(f.model, f.tok, "a", options(0.0, 3));
  CHECK(f.model.is_training());
  f.model.eval();
  generate(f.model, f.tok, "a", options(0.0, 3));
  CHECK_FALSE(f.model.is_training());
}

// ============================================================================================
// sample_token

TEST_CASE("sample_token frequencies match softmax(logits / temperature)") {
  const std::vector<double> l = {1.0, 0.5, -0.3, 2.0, 0.0, -1.0};
  Tensor logits = from_vector<float>({1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.0f});
  for (double temperature : {0.7, 1.0, 2.5}) {
    INFO("temperature " << temperature);
    // 20000 draws: each frequency has std <= 0.0036.
    check_frequencies(logits, options(temperature, 1), softmax_of(l, temperature), 20000);
  }
  // A (1, 1, V) tensor, as generate passes, reads the same.
  check_frequencies(logits.reshape({1, 1, 6}), options(1.0, 1), softmax_of(l, 1.0), 20000);
}

TEST_CASE("sample_token with temperature 0 returns the argmax") {
  Tensor logits = from_vector<float>({0.1f, 3.0f, -2.0f, 2.9f});
  Generator gen(1);
  for (int i = 0; i < 10; ++i) CHECK(sample_token(logits, options(0.0, 1), gen) == 1);
}

TEST_CASE(
    "sample_token top_k keeps the k most likely tokens, renormalised, with ties of the k-th") {
  const std::vector<double> l = {1.0, 0.5, -0.3, 2.0, 0.0, -1.0};
  Tensor logits = from_vector<float>({1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.0f});
  SampleOptions o = options(1.3, 1);
  o.top_k = 3;  // tokens 3, 0, 1
  std::vector<double> p = softmax_of(l, 1.3);
  double z = p[3] + p[0] + p[1];
  check_frequencies(logits, o, {p[0] / z, p[1] / z, 0, p[3] / z, 0, 0}, 20000);
  // top_k >= V is no limit.
  o.top_k = 6;
  check_frequencies(logits, o, p, 20000);
  // Ties of the k-th logit stay candidates (nanoGPT masks only logits < the k-th).
  Tensor tied = from_vector<float>({3.0f, 1.0f, 1.0f, 0.0f});
  SampleOptions t = options(1.0, 1);
  t.top_k = 2;
  std::vector<double> q = softmax_of({3.0, 1.0, 1.0, 0.0}, 1.0);
  double zq = q[0] + q[1] + q[2];
  check_frequencies(tied, t, {q[0] / zq, q[1] / zq, q[2] / zq, 0}, 20000);
}

TEST_CASE("sample_token top_p keeps the smallest most-likely set reaching p, renormalised") {
  const std::vector<double> l = {1.0, 0.5, -0.3, 2.0, 0.0, -1.0};
  Tensor logits = from_vector<float>({1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.0f});
  std::vector<double> p = softmax_of(l, 1.0);
  // Sorted: token 3 (0.533), 0 (0.196), 1 (0.119), 4 (0.072), 2 (0.053), 5 (0.027).
  // top_p 0.8: 0.533 + 0.196 = 0.729 < 0.8, + 0.119 = 0.848 >= 0.8, so {3, 0, 1}.
  REQUIRE(p[3] + p[0] < 0.8);
  REQUIRE(p[3] + p[0] + p[1] > 0.8);
  SampleOptions o = options(1.0, 1);
  o.top_p = 0.8;
  double z = p[3] + p[0] + p[1];
  check_frequencies(logits, o, {p[0] / z, p[1] / z, 0, p[3] / z, 0, 0}, 20000);
  // top_p below the largest probability keeps that one token only.
  o.top_p = 0.3;
  check_frequencies(logits, o, {0, 0, 0, 1, 0, 0}, 200);
  // top_k then top_p: top_k 2 leaves {3, 0} with 0.731 and 0.269; top_p 0.75 needs both.
  o.top_k = 2;
  o.top_p = 0.75;
  double z2 = p[3] + p[0];
  REQUIRE(p[3] / z2 < 0.75);
  check_frequencies(logits, o, {p[0] / z2, 0, 0, p[3] / z2, 0, 0}, 20000);
}

// ============================================================================================
// Stop strings and streaming

TEST_CASE("generate: streamed pieces come one token at a time when there is no stop string") {
  Fixture f;
  std::vector<std::string> pieces;
  Generated g = generate(f.model, f.tok, "dog", options(1.0, 25, 8),
                         [&](const std::string& s) { pieces.push_back(s); });
  CHECK(pieces.size() == 25);  // one character per token
  CHECK(joined(pieces) == g.text);
  CHECK(g.text.size() == 25);
}

TEST_CASE("generate: a stop string ends generation and is not in the text or the stream") {
  Fixture f;
  const SampleOptions base = options(1.0, 60, 7);
  const Generated full = generate(f.model, f.tok, "the", base);
  REQUIRE(full.text.size() == 60);
  for (size_t len : {1u, 2u, 3u}) {
    // A stop string taken from the unstopped text: generation (the same draws) must end at its
    // first occurrence, keeping the text before it.
    std::string stop = full.text.substr(20, len);
    size_t first = full.text.find(stop);
    INFO("stop '" << stop << "' first at " << first << " in '" << full.text << "'");
    SampleOptions o = base;
    o.stop = {stop};
    std::vector<std::string> pieces;
    Generated g =
        generate(f.model, f.tok, "the", o, [&](const std::string& s) { pieces.push_back(s); });
    CHECK(g.stopped_by_string);
    CHECK(g.text == full.text.substr(0, first));
    CHECK(g.tokens.size() == first + len);
    CHECK(std::vector<int64_t>(full.tokens.begin(),
                               full.tokens.begin() + std::ptrdiff_t(first + len)) == g.tokens);
    // The stream is exactly the text: no part of the stop string went out before it completed.
    CHECK(joined(pieces) == g.text);
    if (first >= 2) CHECK(pieces.size() >= 2);  // it streamed, not one piece at the end
  }
}

TEST_CASE("generate: the earliest of several stop strings ends generation") {
  Fixture f;
  const SampleOptions base = options(1.0, 60, 11);
  const Generated full = generate(f.model, f.tok, "quick", base);
  std::string late = full.text.substr(40, 2), early = full.text.substr(15, 3);
  size_t end_late = full.text.find(late) + 2, end_early = full.text.find(early) + 3;
  size_t end = std::min(end_late, end_early);
  const std::string& winner = end_late <= end_early ? late : early;
  SampleOptions o = base;
  o.stop = {late, "", early};  // an empty stop string is ignored
  std::vector<std::string> pieces;
  Generated g =
      generate(f.model, f.tok, "quick", o, [&](const std::string& s) { pieces.push_back(s); });
  CHECK(g.stopped_by_string);
  CHECK(g.tokens.size() == end);
  CHECK(g.text == full.text.substr(0, end - winner.size()));
  CHECK(joined(pieces) == g.text);
}

TEST_CASE("generate: a held-back prefix of a stop string that never completes is streamed") {
  Fixture f;
  const SampleOptions base = options(1.0, 40, 12);
  const Generated full = generate(f.model, f.tok, "brown", base);
  // Each occurrence of full.text[10] is held back as a possible start of the stop string, which
  // never completes ('\x01' is not in the vocabulary).
  SampleOptions o = base;
  o.stop = {std::string(1, full.text[10]) + "\x01", std::string(1, full.text.back()) + "\x01"};
  std::vector<std::string> pieces;
  Generated g =
      generate(f.model, f.tok, "brown", o, [&](const std::string& s) { pieces.push_back(s); });
  CHECK_FALSE(g.stopped_by_string);
  CHECK(g.text == full.text);
  CHECK(joined(pieces) == full.text);  // including the last character, held to the end
}

// ============================================================================================
// Edge cases and errors

TEST_CASE("generate: max_tokens 0 gives empty text and streams nothing") {
  Fixture f;
  int calls = 0;
  Generated g =
      generate(f.model, f.tok, "the", options(1.0, 0), [&](const std::string&) { ++calls; });
  CHECK(g.text.empty());
  CHECK(g.tokens.empty());
  CHECK_FALSE(g.stopped_by_string);
  CHECK(calls == 0);
}

TEST_CASE("generate: a prompt character outside the vocabulary errors naming it") {
  Fixture f;
  REQUIRE_THROWS_WITH(generate(f.model, f.tok, "thez", options(1.0, 5)),
                      Contains("prompt") && Contains("'z'") && Contains("position 3"));
  REQUIRE_THROWS_WITH(generate(f.model, f.tok, "a\x01", options(1.0, 5)),
                      Contains("byte 0x01") && Contains("position 1"));
  REQUIRE_THROWS_WITH(generate(f.model, f.tok, "", options(1.0, 5)), Contains("empty"));
  SampleOptions bad = options(1.0, 5);
  bad.top_p = 0.0;
  REQUIRE_THROWS_WITH(generate(f.model, f.tok, "a", bad), Contains("top_p"));
  bad = options(1.0, -1);
  REQUIRE_THROWS_WITH(generate(f.model, f.tok, "a", bad), Contains("max_tokens"));
  bad = options(1.0, 5);
  bad.top_k = -2;
  REQUIRE_THROWS_WITH(generate(f.model, f.tok, "a", bad), Contains("top_k"));
}
