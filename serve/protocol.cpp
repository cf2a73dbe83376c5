#include "serve/protocol.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "tensor/error.h"

namespace forge::serve {

using nlohmann::json;

ApiError::ApiError(int status_, std::string message, std::string type_, std::string param_,
                   std::string code_)
    : std::runtime_error(std::move(message)),
      status(status_),
      type(std::move(type_)),
      param(std::move(param_)),
      code(std::move(code_)) {}

json ApiError::body() const {
  return {{"error",
           {{"message", valid_utf8(what())},  // it may quote the request's bytes
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param);
}

const char* type_name(const json& v) {
  return v.type_name();
}

// Field readers: absent or null gives the default; a wrong type or range names the field.
int64_t get_int(const json& body, const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_number_integer() &&
      !(it->is_number_float() && std::floor(it->get<double>()) == it->get<double>()))
    bad(name, fmt::format("'{}' must be an integer, got {}", name, type_name(*it)));
  double d = it->get<double>();
  if (d < double(lo) || d > double(hi))
    bad(name, fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, it->dump()));
  return it->is_number_integer() ? it->get<int64_t>() : int64_t(d);
}

double get_number(const json& body, const char* name, double fallback) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_number())
    bad(name, fmt::format("'{}' must be a number, got {}", name, type_name(*it)));
  double d = it->get<double>();
  if (!std::isfinite(d)) bad(name, fmt::format("'{}' must be finite", name));
  return d;
}

bool get_bool(const json& body, const char* name, bool fallback) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_boolean())
    bad(name, fmt::format("'{}' must be a boolean, got {}", name, type_name(*it)));
  return it->get<bool>();
}

// A string or an array of strings.
std::vector<std::string> get_strings(const json& v, const char* name) {
  std::vector<std::string> out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    for (const json& e : v) {
      if (!e.is_string())
        bad(name, fmt::format("'{}' must be a string or an array of strings, found {} in the array",
                              name, type_name(e)));
      out.push_back(e.get<std::string>());
    }
  } else {
    bad(name,
        fmt::format("'{}' must be a string or an array of strings, got {}", name, type_name(v)));
  }
  return out;
}

bool is_valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t j = 1; j < len; ++j)
      if ((static_cast<unsigned char>(s[i + j]) >> 6) != 2) return false;
    i += len;
  }
  return true;
}

// A prompt's tokens, refused (naming `param`) when empty, not UTF-8, outside the vocabulary or
// longer than the context.
std::vector<int64_t> encode_prompt(const std::string& p, const char* param,
                                   const std::string& where, const Limits& limits,
                                   const Tokenizer& tokenizer) {
  if (p.empty()) bad(param, fmt::format("'{}' must not be empty{}", param, where));
  if (!is_valid_utf8(p)) bad(param, fmt::format("'{}' is not valid UTF-8{}", param, where));
  std::vector<int64_t> ids;
  try {
    ids = tokenizer.encode(p);
  } catch (const Error& e) {
    bad(param, fmt::format("'{}'{}: {}", param, where, e.what()));
  }
  if (int64_t(ids.size()) > limits.block_size)
    bad(param, fmt::format("'{}'{} is {} tokens; this model's context is {} tokens", param, where,
                           ids.size(), limits.block_size));
  return ids;
}

json parse_body(const std::string& text) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number past double
    bad("", fmt::format("the body is not valid JSON: {}", e.what()));
  }
  if (!body.is_object())
    bad("", fmt::format("the body must be a JSON object, got {}", type_name(body)));
  return body;
}

void check_model(const json& body, const Limits& limits) {
  auto model = body.find("model");
  if (model == body.end() || model->is_null()) bad("model", "'model' is required");
  if (!model->is_string())
    bad("model", fmt::format("'model' must be a string, got {}", type_name(*model)));
  if (model->get<std::string>() != limits.model_name)
    throw ApiError(404,
                   fmt::format("The model '{}' does not exist; this server serves '{}'",
                               model->get<std::string>(), limits.model_name),
                   "invalid_request_error", "model", "model_not_found");
}

void read_sampling(const json& body, const Limits& limits, CompletionRequest& r);

}  // namespace

CompletionRequest parse_completion(const std::string& text, const Limits& limits,
                                   const Tokenizer& tokenizer) {
  json body = parse_body(text);
  check_model(body, limits);
  CompletionRequest r;
  auto prompt = body.find("prompt");
  if (prompt == body.end() || prompt->is_null()) bad("prompt", "'prompt' is required");
  r.prompts = get_strings(*prompt, "prompt");
  if (r.prompts.empty()) bad("prompt", "'prompt' must not be an empty array");
  for (size_t i = 0; i < r.prompts.size(); ++i)
    r.prompt_tokens.push_back(encode_prompt(
        r.prompts[i], "prompt", r.prompts.size() > 1 ? fmt::format(" (prompt {})", i) : "", limits,
        tokenizer));
  read_sampling(body, limits, r);
  auto logprobs = body.find("logprobs");
  if (logprobs != body.end() && !logprobs->is_null()) {
    if (logprobs->is_boolean())
      bad("logprobs", "'logprobs' must be an integer in [0, 5] for completions, got a boolean");
    r.params.logprobs = int(get_int(body, "logprobs", -1, 0, 5));
  }
  r.echo = get_bool(body, "echo", false);
  return r;
}

namespace {
// The fields completions and chat completions share: max_tokens, temperature, top_p, top_k, n,
// seed, stop (or stop_sequence), stream and stream_options.
void read_sampling(const json& body, const Limits& limits, CompletionRequest& r) {
  GenerationParams& g = r.params;
  const char* max_name =
      body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  g.max_tokens = get_int(body, max_name, 16, std::numeric_limits<int64_t>::min(),
                         std::numeric_limits<int64_t>::max());
  if (g.max_tokens <= 0)
    bad(max_name, fmt::format("'{}' must be at least 1, got {}", max_name, g.max_tokens));
  if (g.max_tokens > limits.max_tokens_limit)
    bad(max_name, fmt::format("'{}' is {}; this server allows at most {}", max_name, g.max_tokens,
                              limits.max_tokens_limit));
  g.temperature = get_number(body, "temperature", 1.0);
  if (g.temperature < 0 || g.temperature > 2)
    bad("temperature", fmt::format("'temperature' must be in [0, 2], got {}", g.temperature));
  g.top_p = get_number(body, "top_p", 1.0);
  if (!(g.top_p > 0 && g.top_p <= 1))
    bad("top_p", fmt::format("'top_p' must be in (0, 1], got {}", g.top_p));
  g.top_k = get_int(body, "top_k", 0, 0, std::numeric_limits<int32_t>::max());
  r.n = get_int(body, "n", 1, 1, 8);
  auto seed = body.find("seed");
  if (seed != body.end() && !seed->is_null()) {
    if (!seed->is_number_integer())
      bad("seed", fmt::format("'seed' must be an integer, got {}", type_name(*seed)));
    g.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : uint64_t(seed->get<int64_t>());
    r.seeded = true;
  }
  // stop (alias stop_sequence)
  const char* stop_name = body.contains("stop") ? "stop" : "stop_sequence";
  auto stop = body.find(stop_name);
  if (stop != body.end() && !stop->is_null()) {
    g.stop = get_strings(*stop, stop_name);
    if (g.stop.size() > 4)
      bad(stop_name,
          fmt::format("'{}' may hold at most 4 sequences, got {}", stop_name, g.stop.size()));
    for (const std::string& s : g.stop)
      if (s.empty()) bad(stop_name, fmt::format("'{}' sequences must not be empty", stop_name));
  }
  r.stream = get_bool(body, "stream", false);
  auto options = body.find("stream_options");
  if (options != body.end() && !options->is_null()) {
    if (!options->is_object())
      bad("stream_options",
          fmt::format("'stream_options' must be an object, got {}", type_name(*options)));
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    r.include_usage = get_bool(*options, "include_usage", false);
  }
}
}  // namespace

ChatTemplate ChatTemplate::from_json(const std::string& text, const std::string& where) {
  ChatTemplate t;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number past double
    throw_error(fmt::format("{}: not valid JSON: {}", where, e.what()));
  }
  FORGE_CHECK(j.is_object(), "{}: a chat template is a JSON object, got {}", where, j.type_name());
  for (auto& [key, value] : j.items()) {
    auto string = [&](const json& v, const std::string& what) {
      FORGE_CHECK(v.is_string(), "{}: '{}' must be a string, got {}", where, what, v.type_name());
      return v.get<std::string>();
    };
    if (key == "role_prefix") {
      FORGE_CHECK(value.is_object(), "{}: 'role_prefix' must be an object of strings", where);
      t.role_prefix.clear();
      for (auto& [role, prefix] : value.items())
        t.role_prefix[role] = string(prefix, "role_prefix." + role);
    } else if (key == "message_suffix") {
      t.message_suffix = string(value, key);
    } else if (key == "generation_prefix") {
      t.generation_prefix = string(value, key);
    } else if (key == "default_stop") {
      FORGE_CHECK(value.is_array() && value.size() <= 4,
                  "{}: 'default_stop' must be an array of at "
                  "most 4 strings",
                  where);
      t.default_stop.clear();
      for (const json& v : value) t.default_stop.push_back(string(v, key));
    } else {
      throw_error(
          fmt::format("{}: unknown key '{}' (role_prefix, message_suffix, generation_prefix, "
                      "default_stop)",
                      where, key));
    }
  }
  return t;
}

json ChatTemplate::to_json() const {
  return {{"role_prefix", role_prefix},
          {"message_suffix", message_suffix},
          {"generation_prefix", generation_prefix},
          {"default_stop", default_stop}};
}

CompletionRequest parse_chat(const std::string& text, const Limits& limits,
                             const Tokenizer& tokenizer, const ChatTemplate& chat) {
  json body = parse_body(text);
  check_model(body, limits);
  auto messages = body.find("messages");
  if (messages == body.end() || messages->is_null()) bad("messages", "'messages' is required");
  if (!messages->is_array() || messages->empty())
    bad("messages", "'messages' must be a non-empty array of {role, content} objects");
  std::string prompt;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad("messages", where + " must be an object with 'role' and 'content'");
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) bad("messages", where + ".role must be a string");
    auto prefix = chat.role_prefix.find(role->get<std::string>());
    if (prefix == chat.role_prefix.end())
      bad("messages", fmt::format("{}.role '{}' is not one this server's chat template knows",
                                  where, role->get<std::string>()));
    auto content = m.find("content");
    std::string text_of;
    if (content == m.end() || content->is_null()) {
      bad("messages", where + ".content is required");
    } else if (content->is_string()) {
      text_of = content->get<std::string>();
    } else if (content->is_array()) {
      for (const json& part : *content) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string())
          bad("messages", where + ".content parts must be {\"type\": \"text\", \"text\": ...}");
        text_of += part["text"].get<std::string>();
      }
    } else {
      bad("messages", where + ".content must be a string or an array of text parts");
    }
    prompt += prefix->second + text_of + chat.message_suffix;
  }
  prompt += chat.generation_prefix;
  CompletionRequest r;
  r.prompts = {prompt};
  r.prompt_tokens.push_back(
      encode_prompt(prompt, "messages", " (as the chat template renders them)", limits, tokenizer));
  read_sampling(body, limits, r);
  if (!body.contains("stop") && !body.contains("stop_sequence")) r.params.stop = chat.default_stop;
  if (get_bool(body, "logprobs", false))
    r.params.logprobs = int(get_int(body, "top_logprobs", 0, 0, 5));
  else if (body.contains("top_logprobs") && !body["top_logprobs"].is_null())
    bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  return r;
}

size_t complete_utf8_prefix(const std::string& text) {
  // Look back at most 3 bytes for the lead byte of a sequence that has not ended.
  const size_t n = text.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    unsigned char c = static_cast<unsigned char>(text[n - back]);
    if ((c >> 6) == 2) continue;  // a continuation byte: keep looking for the lead
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    return len > back ? n - back : n;
  }
  return n;
}

std::string valid_utf8(const std::string& s) {
  if (is_valid_utf8(s)) return s;
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    for (size_t j = 1; ok && j < len; ++j) ok = (static_cast<unsigned char>(s[i + j]) >> 6) == 2;
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++i;
    }
  }
  return out;
}

json logprobs_json(const Tokenizer& tok, const std::vector<int64_t>& tokens,
                   const std::vector<double>& logprobs,
                   const std::vector<std::vector<TopLogprob>>& top, size_t text_offset) {
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::string piece = tok.decode_one(tokens[i]);
    out["tokens"].push_back(valid_utf8(piece));
    out["token_logprobs"].push_back(i < logprobs.size() ? json(logprobs[i]) : json(nullptr));
    json t = json::object();
    if (i < top.size())
      for (const TopLogprob& e : top[i]) t[valid_utf8(tok.decode_one(e.token))] = e.logprob;
    out["top_logprobs"].push_back(t);
    out["text_offset"].push_back(text_offset);
    text_offset += piece.size();
  }
  return out;
}

}  // namespace forge::serve

namespace forge::serve {

json chat_logprobs_json(const Tokenizer& tok, const std::vector<int64_t>& tokens,
                        const std::vector<double>& logprobs,
                        const std::vector<std::vector<TopLogprob>>& top) {
  auto entry = [&](int64_t token, double logprob) {
    const std::string piece = tok.decode_one(token);
    json bytes = json::array();
    for (char c : piece) bytes.push_back(int(static_cast<unsigned char>(c)));
    return json{{"token", valid_utf8(piece)}, {"logprob", logprob}, {"bytes", std::move(bytes)}};
  };
  json content = json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    json e = entry(tokens[i], i < logprobs.size() ? logprobs[i] : 0.0);
    e["top_logprobs"] = json::array();
    if (i < top.size())
      for (const TopLogprob& t : top[i]) e["top_logprobs"].push_back(entry(t.token, t.logprob));
    content.push_back(std::move(e));
  }
  return {{"content", std::move(content)}};
}

namespace {
// "model" may be left out of /tokenize and /detokenize; given, it must name the served model.
json parse_tokenizer_body(const std::string& text, const Limits& limits) {
  json body = parse_body(text);
  if (body.contains("model") && !body["model"].is_null()) check_model(body, limits);
  return body;
}
}  // namespace

json tokenize_response(const std::string& text, const Limits& limits, const Tokenizer& tokenizer) {
  const json body = parse_tokenizer_body(text, limits);
  auto prompt = body.find("prompt");
  if (prompt == body.end() || prompt->is_null()) bad("prompt", "'prompt' is required");
  if (!prompt->is_string())
    bad("prompt", fmt::format("'prompt' must be a string, got {}", type_name(*prompt)));
  const std::string p = prompt->get<std::string>();
  if (!is_valid_utf8(p)) bad("prompt", "'prompt' is not valid UTF-8");
  std::vector<int64_t> ids;
  try {
    ids = tokenizer.encode(p);
  } catch (const Error& e) {
    bad("prompt", fmt::format("'prompt': {}", e.what()));
  }
  return {{"tokens", ids}, {"count", ids.size()}};
}

json detokenize_response(const std::string& text, const Limits& limits,
                         const Tokenizer& tokenizer) {
  const json body = parse_tokenizer_body(text, limits);
  auto tokens = body.find("tokens");
  if (tokens == body.end() || tokens->is_null()) bad("tokens", "'tokens' is required");
  if (!tokens->is_array())
    bad("tokens",
        fmt::format("'tokens' must be an array of token ids, got {}", type_name(*tokens)));
  std::vector<int64_t> ids;
  for (size_t i = 0; i < tokens->size(); ++i) {
    const json& t = (*tokens)[i];
    if (!t.is_number_integer())
      bad("tokens", fmt::format("tokens[{}] must be an integer token id, got {}", i, type_name(t)));
    const int64_t id =
        t.is_number_unsigned() && t.get<uint64_t>() > uint64_t(INT64_MAX) ? -1 : t.get<int64_t>();
    if (id < 0 || id >= tokenizer.vocab_size())
      bad("tokens", fmt::format("tokens[{}] = {} is outside the vocabulary [0, {})", i, t.dump(),
                                tokenizer.vocab_size()));
    ids.push_back(id);
  }
  return {{"prompt", valid_utf8(tokenizer.decode(ids))}};
}

}  // namespace forge::serve
