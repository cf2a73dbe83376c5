#include "io/tokenizer.h"

#include <nlohmann/json.hpp>

#include "tensor/error.h"

namespace forge {

namespace {
std::string printable(unsigned char c) {
  if (c >= 0x20 && c < 0x7f) return fmt::format("'{}'", char(c));
  return fmt::format("byte 0x{:02x}", c);
}
}  // namespace

Tokenizer::Tokenizer(Kind kind, std::string symbols) : kind_(kind), symbols_(std::move(symbols)) {
  ids_.fill(-1);
  for (size_t i = 0; i < symbols_.size(); ++i) ids_[uint8_t(symbols_[i])] = int16_t(i);
}

Tokenizer Tokenizer::chars_of(std::string_view corpus) {
  std::array<bool, 256> seen{};
  for (char c : corpus) seen[uint8_t(c)] = true;
  std::string symbols;
  for (int b = 0; b < 256; ++b)
    if (seen[size_t(b)]) symbols.push_back(char(b));
  return Tokenizer(Kind::chars, symbols);
}

Tokenizer Tokenizer::bytes() {
  std::string symbols(256, '\0');
  for (int b = 0; b < 256; ++b) symbols[size_t(b)] = char(b);
  return Tokenizer(Kind::bytes, symbols);
}

std::vector<int64_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int64_t> out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    int16_t id = ids_[uint8_t(text[i])];
    FORGE_CHECK(id >= 0, "unknown character {} at position {}: not in the model's vocabulary of {}",
                printable(uint8_t(text[i])), i, symbols_.size());
    out.push_back(id);
  }
  return out;
}

std::string Tokenizer::decode_one(int64_t id) const {
  FORGE_CHECK(id >= 0 && id < vocab_size(), "token id {} is outside the vocabulary of {}", id,
              vocab_size());
  return std::string(1, symbols_[size_t(id)]);
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (int64_t id : ids) out += decode_one(id);
  return out;
}

Tokenizer::Kind Tokenizer::parse_kind(std::string_view name) {
  if (name == "char") return Kind::chars;
  if (name == "byte") return Kind::bytes;
  throw_error(fmt::format("unknown tokenizer '{}' (expected char or byte)", name));
}

std::string Tokenizer::to_json() const {
  nlohmann::json j;
  j["kind"] = kind_ == Kind::chars ? "char" : "byte";
  if (kind_ == Kind::chars) {
    std::vector<int> codes(symbols_.begin(), symbols_.end());
    for (int& c : codes) c = uint8_t(c);
    j["symbols"] = codes;  // byte values: JSON strings must be UTF-8, the symbols need not be
  }
  return j.dump();
}

Tokenizer Tokenizer::from_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw_error(fmt::format("tokenizer: malformed JSON: {}", e.what()));
  }
  FORGE_CHECK(j.is_object() && j.contains("kind") && j["kind"].is_string(),
              "tokenizer: expected an object with a 'kind'");
  Kind kind = parse_kind(j["kind"].get<std::string>());
  if (kind == Kind::bytes) return bytes();
  FORGE_CHECK(j.contains("symbols") && j["symbols"].is_array(), "tokenizer: 'symbols' missing");
  std::string symbols;
  for (const auto& v : j["symbols"]) {
    FORGE_CHECK(v.is_number_integer() && v.get<int>() >= 0 && v.get<int>() < 256,
                "tokenizer: symbol {} is not a byte value", v.dump());
    symbols.push_back(char(v.get<int>()));
  }
  std::array<bool, 256> seen{};
  for (char c : symbols) {
    FORGE_CHECK(!seen[uint8_t(c)], "tokenizer: symbol {} repeated", int(uint8_t(c)));
    seen[uint8_t(c)] = true;
  }
  return Tokenizer(Kind::chars, symbols);
}

}  // namespace forge
