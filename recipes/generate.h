// Text generation from a trained GPT: temperature, top-k, top-p, stop strings, a KV cache.
//
//   SampleOptions o;  o.max_tokens = 200;  o.temperature = 0.8;  o.top_k = 40;
//   Generated g = generate(model, tokenizer, "ROMEO:", o, [](const std::string& piece) {
//     std::fputs(piece.c_str(), stdout);   // streamed as tokens come
//   });
//   g.tokens_per_s;
//
// With the cache (the default) each new token runs the model on that token alone and attends to
// the cached keys and values: O(context) per token. When the context fills block_size, it keeps the
// newest block_size/2 tokens and refills the cache from them; the uncached path (use_cache = false,
// the full context re-run for every token) applies the same rule, so both produce the same tokens.
// Temperature 0 is greedy (argmax).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "models/gpt.h"

namespace forge {

struct SampleOptions {
  int64_t max_tokens = 500;
  double temperature = 0.8;       // 0: greedy
  int64_t top_k = 0;              // 0: off
  double top_p = 1.0;             // 1: off
  std::vector<std::string> stop;  // end when the text ends with one of these (it is not emitted)
  uint64_t seed = 1337;
  bool use_cache = true;
};

struct Generated {
  std::string text;             // the generated continuation, without the prompt
  std::vector<int64_t> tokens;  // its token ids
  double seconds = 0;
  double tokens_per_s = 0;
  bool stopped_by_string = false;
};

// The prompt's tokens, after checking it and the options; throws naming what is wrong. generate()
// calls it first; a program that prints the prompt calls it before printing anything.
std::vector<int64_t> encode_prompt(const Tokenizer& tokenizer, const std::string& prompt,
                                   const SampleOptions& options);

Generated generate(GPT& model, const Tokenizer& tokenizer, const std::string& prompt,
                   const SampleOptions& options,
                   const std::function<void(const std::string&)>& on_text = {});

// One draw from logits (V) under the options (exposed for tests).
int64_t sample_token(const Tensor& logits, const SampleOptions& options, Generator& gen);

}  // namespace forge
