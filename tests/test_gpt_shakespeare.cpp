// The GPT recipe end to end (slow suite): the `cpu` preset (nanoGPT's "I only have a macbook" run:
// 4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iterations, no dropout) on Tiny
// Shakespeare reaches the validation loss of the same run in PyTorch, and its samples are made of
// Shakespeare's words.
//
// nanoGPT's README quotes "a loss of only 1.88" for this run: one estimate over 20 batches. Over
// 200 batches (this preset's eval_iters), PyTorch with exactly these settings
// (bench/gpt_torch_train.py) ends at 1.920 with seed 1337 and 1.911 with seed 1, and forge at 1.901
// (seed 1337) and 1.895 (seed 1): see bench/RESULTS.md. The test asks for what the reference
// reaches with this seed, not for the lucky draw.
//
// The corpus comes from $TINYSHAKESPEARE (tools/fetch-data downloads it; tools/run-tests points it
// at ../shared/data/tinyshakespeare.txt when that exists). Unset, the test prints SKIPPED and exits
// 77, which meson reports as a skip: offline machines cannot download the file. Set to a path that
// does not hold the corpus, it fails: that is a broken setting, not an opt-out.
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "io/text_data.h"
#include "recipes/generate.h"
#include "recipes/gpt_train.h"
#include "testing.h"

using namespace forge;

namespace {

constexpr size_t kTinyShakespeareBytes = 1115394;
// nanoGPT's README for this setting: "a loss of only 1.88" after 2000 iterations (20-batch
// estimate).
constexpr double kPublishedValLoss = 1.88;
// PyTorch, the same settings and seed, 200-batch estimate (bench/gpt_torch_train.py --seed 1337).
constexpr double kReferenceValLoss = 1.92;
// Share of a sample's words that must be words of the corpus. Measured on 500-character samples:
// the corpus's own text ~0.99; a model at val loss ~1.88 above kWordShare (see the test output);
// a character-bigram model of the corpus ~0.2-0.3 and an untrained model ~0.05 (both asserted
// below), so the criterion needs real words, not letter statistics.
constexpr double kWordShare = 0.6;

// Whitespace-separated words with surrounding punctuation removed ("ROMEO:" -> "ROMEO"); case is
// kept, so a made-up capitalisation does not count as a word.
std::vector<std::string> words_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) {
    auto is_letter = [](char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; };
    size_t b = 0, e = w.size();
    while (b < e && !is_letter(w[b])) ++b;
    while (e > b && !is_letter(w[e - 1])) --e;
    if (e > b) out.push_back(w.substr(b, e - b));
  }
  return out;
}

double word_share(const std::string& sample, const std::set<std::string>& vocabulary,
                  size_t& count) {
  std::vector<std::string> words = words_of(sample);
  count = words.size();
  size_t known = 0;
  for (const std::string& w : words) known += vocabulary.count(w);
  return words.empty() ? 0.0 : double(known) / double(words.size());
}

// `n` characters from the corpus's character-bigram distribution, starting after a newline.
std::string bigram_sample(const std::string& corpus, size_t n, Generator& gen) {
  std::vector<std::vector<double>> counts(256, std::vector<double>(256, 0.0));
  for (size_t i = 0; i + 1 < corpus.size(); ++i)
    counts[uint8_t(corpus[i])][uint8_t(corpus[i + 1])] += 1;
  std::string out;
  uint8_t prev = '\n';
  for (size_t i = 0; i < n; ++i) {
    const std::vector<double>& row = counts[prev];
    double total = 0;
    for (double c : row) total += c;
    double u = gen.uniform() * total, acc = 0;
    int next = 0;
    for (int c = 0; c < 256; ++c) {
      acc += row[size_t(c)];
      if (row[size_t(c)] > 0 && u < acc) {
        next = c;
        break;
      }
    }
    out += char(next);
    prev = uint8_t(next);
  }
  return out;
}

}  // namespace

TEST_CASE("gpt cpu preset reaches PyTorch's val loss on Tiny Shakespeare and samples its words") {
  const std::string corpus_path = tinyshakespeare_path();
  if (corpus_path.empty()) {
    testing::skip_optional("TINYSHAKESPEARE is not set (tools/fetch-data downloads the corpus)");
    std::exit(77);  // meson's exit status for a skipped test
  }
  INFO("TINYSHAKESPEARE=" << corpus_path);
  REQUIRE(std::filesystem::is_regular_file(corpus_path));
  const std::string corpus = read_text_file(corpus_path);
  // The 1.88 figure is for this file (karpathy/char-rnn's input.txt), nothing else.
  REQUIRE(corpus.size() == kTinyShakespeareBytes);

  auto out = std::filesystem::temp_directory_path() /
             ("forge_gpt_shakespeare_" + std::to_string(::getpid()));
  std::filesystem::remove_all(out);
  GptTrainConfig c = GptTrainConfig::preset("cpu");
  c.data = corpus_path;
  c.out = out.string();
  REQUIRE(c.max_iters == 2000);
  REQUIRE(c.model.n_layer == 4);
  REQUIRE(c.model.n_embd == 128);
  REQUIRE(c.model.block_size == 64);
  REQUIRE(c.batch_size == 12);

  GptRunHooks hooks;
  hooks.on_step = [](const StepStats& s) {
    if (s.val_loss) {
      std::printf("step %4lld: train loss %.4f, val loss %.4f, %.0f tok/s\n", (long long)s.step,
                  *s.train_eval_loss, *s.val_loss, s.tokens_per_s);
      std::fflush(stdout);
    }
  };
  GptRun run = train_gpt(c, hooks);
  std::filesystem::path last = run.last_checkpoint;

  REQUIRE(run.steps_done == 2000);
  REQUIRE(run.losses.size() == 2000);
  REQUIRE(run.final_val_loss.has_value());
  REQUIRE(run.tokenizer.vocab_size() == 65);
  // GPT-2 initialisation starts at chance, ln 65 = 4.174.
  CHECK(run.losses.front() == Approx(std::log(65.0)).margin(0.1));
  std::printf(
      "val loss after 2000 iterations: %.4f (PyTorch at this seed %.2f; nanoGPT's README %.2f)\n",
      *run.final_val_loss, kReferenceValLoss, kPublishedValLoss);
  CHECK(*run.final_val_loss <= kReferenceValLoss);
  CHECK(last.filename() == "ckpt-002000");
  CHECK(std::filesystem::is_regular_file(last / "model.safetensors"));

  // 500 sampled characters, nanoGPT's sample.py settings.
  std::set<std::string> vocabulary;
  for (std::string& w : words_of(corpus)) vocabulary.insert(std::move(w));
  SampleOptions o;
  o.max_tokens = 500;
  o.temperature = 0.8;
  o.top_k = 40;
  std::string sample = generate(*run.model, run.tokenizer, "\n", o).text;
  size_t n_words = 0;
  double share = word_share(sample, vocabulary, n_words);
  std::printf("sample (temperature 0.8, top_k 40):\n%s\n", sample.c_str());
  std::printf("%.3f of its %zu words are words of the corpus (need >= %.2f)\n", share, n_words,
              kWordShare);
  INFO("sample:\n" << sample);
  CHECK(sample.size() == 500);
  CHECK(n_words >= 50);
  CHECK(share >= kWordShare);

  // The criterion rejects what is not Shakespeare: an untrained model's sample and one from the
  // corpus's character-bigram statistics.
  Generator init(7), dropout_gen(8);
  GPTConfig untrained_cfg = run.model->config();
  GPT untrained(untrained_cfg, init, dropout_gen);
  std::string noise = generate(untrained, run.tokenizer, "\n", o).text;
  size_t noise_words = 0;
  double noise_share = word_share(noise, vocabulary, noise_words);
  Generator bigram_gen(9);
  size_t bigram_words = 0;
  double bigram_share =
      word_share(bigram_sample(corpus, 500, bigram_gen), vocabulary, bigram_words);
  std::printf("untrained model: %.3f of %zu words; character bigrams: %.3f of %zu words\n",
              noise_share, noise_words, bigram_share, bigram_words);
  CHECK(noise_share < kWordShare);
  CHECK(bigram_share < kWordShare);

  std::filesystem::remove_all(out);
}
