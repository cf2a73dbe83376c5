// Text corpora for language models: a file, tokenized, split 90/10 into train and val, and random
// (B, T) batches drawn the way nanoGPT draws them.
//
//   TextData d = load_text("shakespeare.txt", Tokenizer::Kind::chars);
//   Generator g(1337);
//   Batch b = get_batch(d.train, 12, 64, g);   // b.x (12, 64) i64, b.y = b.x shifted by one
//
// Errors name the file: missing, unreadable, empty, or too short for the block size.
#pragma once

#include <string>

#include "io/tokenizer.h"
#include "tensor/random.h"

namespace forge {

// Where the Tiny Shakespeare corpus lives for tests and benchmarks: $TINYSHAKESPEARE, else "".
std::string tinyshakespeare_path();

std::string read_text_file(const std::string& path);

struct TextData {
  std::string path;
  Tokenizer tokenizer;
  Tensor train, val;  // 1-d i64 token ids: the first 90% of the corpus and the last 10%
};

// Tokenizes the whole file (char: the corpus's own alphabet; byte: all 256) and splits it.
TextData load_text(const std::string& path, Tokenizer::Kind kind, double train_fraction = 0.9);
// The same with a given tokenizer (resuming or evaluating a model trained on another corpus); a
// character outside its vocabulary is an error naming the file and position.
TextData load_text(const std::string& path, const Tokenizer& tokenizer,
                   double train_fraction = 0.9);

struct Batch {
  Tensor x, y;  // (B, T) i64: y[b, t] = x[b, t + 1] in the corpus
};

// B random windows of T + 1 tokens: start offsets uniform in [0, len - T), one generator draw
// each. Throws when the split has no more than T tokens.
Batch get_batch(const Tensor& data, int64_t batch_size, int64_t block_size, Generator& gen,
                const char* split_name = "train");

}  // namespace forge
