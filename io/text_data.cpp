#include "io/text_data.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tensor/ops.h"

namespace forge {

std::string tinyshakespeare_path() {
  const char* env = std::getenv("TINYSHAKESPEARE");
  return env ? env : "";
}

std::string read_text_file(const std::string& path) {
  FORGE_CHECK(!path.empty(), "no corpus given: pass --data PATH (or set TINYSHAKESPEARE)");
  FORGE_CHECK(std::filesystem::exists(path), "{}: file not found", path);
  FORGE_CHECK(!std::filesystem::is_directory(path), "{}: is a directory, expected a text file",
              path);
  std::ifstream in(path, std::ios::binary);
  FORGE_CHECK(in.good(), "{}: cannot open: {}", path, std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

namespace {
TextData split_tokens(const std::string& path, const std::string& text, const Tokenizer& tok,
                      double train_fraction) {
  FORGE_CHECK(!text.empty(), "{}: the corpus is empty", path);
  FORGE_CHECK(train_fraction > 0 && train_fraction < 1, "train fraction {} not in (0, 1)",
              train_fraction);
  std::vector<int64_t> ids;
  try {
    ids = tok.encode(text);
  } catch (const Error& e) {
    throw_error(fmt::format("{}: {}", path, e.what()));
  }
  TextData d;
  d.path = path;
  d.tokenizer = tok;
  Tensor all = from_vector(ids);
  int64_t n = all.numel(), n_train = int64_t(double(n) * train_fraction);
  d.train = all.narrow(0, 0, n_train).contiguous();
  d.val = all.narrow(0, n_train, n - n_train).contiguous();
  return d;
}
}  // namespace

TextData load_text(const std::string& path, Tokenizer::Kind kind, double train_fraction) {
  std::string text = read_text_file(path);
  FORGE_CHECK(!text.empty(), "{}: the corpus is empty", path);
  Tokenizer tok = kind == Tokenizer::Kind::chars ? Tokenizer::chars_of(text) : Tokenizer::bytes();
  return split_tokens(path, text, tok, train_fraction);
}

TextData load_text(const std::string& path, const Tokenizer& tokenizer, double train_fraction) {
  return split_tokens(path, read_text_file(path), tokenizer, train_fraction);
}

Batch get_batch(const Tensor& data, int64_t B, int64_t T, Generator& gen, const char* split) {
  int64_t n = data.numel();
  FORGE_CHECK(
      n > T,
      "the {} split has {} tokens, not more than block_size {}: use a smaller block size or "
      "a larger corpus",
      split, n, T);
  FORGE_CHECK(data.dtype() == DType::i64 && data.is_contiguous(), "get_batch: expected i64 tokens");
  Batch b{Tensor::empty({B, T}, DType::i64), Tensor::empty({B, T}, DType::i64)};
  const int64_t* src = data.data<int64_t>();
  int64_t* x = b.x.data<int64_t>();
  int64_t* y = b.y.data<int64_t>();
  for (int64_t r = 0; r < B; ++r) {
    int64_t at = int64_t(gen.randint(uint64_t(n - T)));
    std::memcpy(x + r * T, src + at, size_t(T) * sizeof(int64_t));
    std::memcpy(y + r * T, src + at + 1, size_t(T) * sizeof(int64_t));
  }
  return b;
}

}  // namespace forge
