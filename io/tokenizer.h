// Tokenizers for text models: character-level (the corpus's own alphabet) and byte-level.
//
//   Tokenizer tok = Tokenizer::chars_of(corpus);   // Tiny Shakespeare: 65 symbols
//   std::vector<int64_t> ids = tok.encode("ROMEO:");
//   std::string text = tok.decode(ids);
//   std::string saved = tok.to_json();             // goes into the checkpoint's metadata
//   Tokenizer again = Tokenizer::from_json(saved);
//
// "Characters" are bytes: a UTF-8 corpus gets one symbol per byte value that occurs in it, so any
// text round-trips; the byte-level tokenizer has all 256.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace forge {

class Tokenizer {
 public:
  enum class Kind { chars, bytes };

  Tokenizer() : Tokenizer(bytes()) {}
  static Tokenizer chars_of(std::string_view corpus);  // sorted distinct bytes of the corpus
  static Tokenizer bytes();

  Kind kind() const { return kind_; }
  int64_t vocab_size() const { return int64_t(symbols_.size()); }
  const std::string& symbols() const { return symbols_; }

  // Throws naming the character and its position when the text has one outside the vocabulary.
  std::vector<int64_t> encode(std::string_view text) const;
  // Throws naming the id when it is outside the vocabulary.
  std::string decode(const std::vector<int64_t>& ids) const;
  std::string decode_one(int64_t id) const;

  std::string to_json() const;
  static Tokenizer from_json(const std::string& json);  // throws on anything malformed
  static Kind parse_kind(std::string_view name);        // "char" or "byte"
  friend bool operator==(const Tokenizer& a, const Tokenizer& b) {
    return a.kind_ == b.kind_ && a.symbols_ == b.symbols_;
  }

 private:
  Tokenizer(Kind kind, std::string symbols);
  Kind kind_;
  std::string symbols_;             // id -> byte
  std::array<int16_t, 256> ids_{};  // byte -> id, -1 if absent
};

}  // namespace forge
