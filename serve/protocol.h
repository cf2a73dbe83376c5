// OpenAI's completion API as `serve` speaks it: requests parsed and validated into
// GenerationParams, responses and stream chunks built in OpenAI's shapes, errors as OpenAI's
// error object. No HTTP here (serve/http.cpp), so all of it is testable without a socket.
//
//   CompletionRequest r = parse_completion(body, limits, tokenizer);  // throws ApiError (400)
//   nlohmann::json reply = completion_response(id, created, model, choices, usage);
//
// Field by field (https://platform.openai.com/docs/api-reference/completions):
//   model        string, must name the served model
//   prompt       string or array of strings (each one choice group); non-empty, in the vocabulary
//   max_tokens   integer >= 1 (default 16), <= the server's --max-tokens-limit
//   temperature  number in [0, 2] (default 1; 0 = greedy)
//   top_p        number in (0, 1] (default 1)
//   top_k        integer >= 0 (an extension; default 0 = off)
//   stop         string or array of up to 4 non-empty strings (alias: stop_sequence)
//   seed         integer (default: drawn per request; with it, outputs repeat exactly)
//   n            integer in 1..8 (default 1): choices per prompt, seeds seed, seed+1, ...
//   stream       bool; stream_options.include_usage bool
//   logprobs     integer 0..5 or null
//   echo         bool: the prompt is prepended to each choice's text
// Unknown fields are ignored, as OpenAI does.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "serve/engine.h"

namespace forge::serve {

// An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string type = "invalid_request_error",
           std::string param = "", std::string code = "");
  int status;
  std::string type, param, code;
  nlohmann::json body() const;
};

struct Limits {
  std::string model_name;
  int64_t block_size = 0;           // longest prompt, in tokens
  int64_t max_tokens_limit = 4096;  // largest max_tokens accepted
};

struct CompletionRequest {
  std::vector<std::string> prompts;  // one or more
  std::vector<std::vector<int64_t>> prompt_tokens;
  GenerationParams params;  // prompt empty: filled per prompt and choice
  int64_t n = 1;
  bool stream = false, include_usage = false, echo = false;
  bool seeded = false;  // a seed was given
};

// Parses and validates a /v1/completions body. Throws ApiError naming the field in `param`.
CompletionRequest parse_completion(const std::string& body, const Limits& limits,
                                   const Tokenizer& tokenizer);

// How /v1/chat/completions turns `messages` into a prompt, so that any model (a character-level
// one too) can chat. Each message becomes role_prefix[role] + content + message_suffix, in order;
// then generation_prefix starts the reply. A request without `stop` stops at default_stop (the
// next turn's start), so the model does not write the user's lines. The default:
//   System: You are ...\n
//   User: Hello\n
//   Assistant:                          <- the model continues from here, until "\nUser:"
// `serve --chat-template FILE` reads a JSON object with these keys (all optional).
struct ChatTemplate {
  std::map<std::string, std::string> role_prefix = {{"system", "System: "},
                                                    {"developer", "System: "},
                                                    {"user", "User: "},
                                                    {"assistant", "Assistant: "}};
  std::string message_suffix = "\n";
  std::string generation_prefix = "Assistant:";
  std::vector<std::string> default_stop = {"\nUser:"};
  static ChatTemplate from_json(const std::string& text, const std::string& where);
  nlohmann::json to_json() const;
};

// Parses and validates a /v1/chat/completions body: `messages` (an array of {role, content}, the
// content a string or an array of {"type": "text", "text": ...} parts) rendered by the template
// into prompts[0]; `max_completion_tokens` or `max_tokens`; `logprobs` (bool) and `top_logprobs`
// (0..5); the sampling fields as for completions.
CompletionRequest parse_chat(const std::string& body, const Limits& limits,
                             const Tokenizer& tokenizer, const ChatTemplate& chat);

// The text of `tokens` without any incomplete UTF-8 sequence at its end: how much of `text` can be
// sent now (the rest waits for the next token).
size_t complete_utf8_prefix(const std::string& text);
// Text made valid UTF-8 for JSON (invalid bytes become U+FFFD).
std::string valid_utf8(const std::string& text);

// OpenAI's completion logprobs object for a choice's tokens.
nlohmann::json logprobs_json(const Tokenizer& tok, const std::vector<int64_t>& tokens,
                             const std::vector<double>& logprobs,
                             const std::vector<std::vector<TopLogprob>>& top, size_t text_offset);

// OpenAI's chat logprobs object, {"content": [{"token", "logprob", "bytes", "top_logprobs":
// [{"token", "logprob", "bytes"}]}]}: `bytes` are the token's UTF-8 bytes as integers (a token may
// hold part of a character; `token` then shows U+FFFD).
nlohmann::json chat_logprobs_json(const Tokenizer& tok, const std::vector<int64_t>& tokens,
                                  const std::vector<double>& logprobs,
                                  const std::vector<std::vector<TopLogprob>>& top);

// POST /tokenize and /detokenize (llama.cpp's and vLLM's shapes, not OpenAI's):
//   {"model"?: name, "prompt": "text"}  ->  {"tokens": [ids], "count": n}
//   {"model"?: name, "tokens": [ids]}   ->  {"prompt": "text"}
// A model, when given, must be the served one; text outside the vocabulary is a 400 naming
// "prompt", ids outside it (or not integers) a 400 naming "tokens".
nlohmann::json tokenize_response(const std::string& body, const Limits& limits,
                                 const Tokenizer& tokenizer);
nlohmann::json detokenize_response(const std::string& body, const Limits& limits,
                                   const Tokenizer& tokenizer);

}  // namespace forge::serve
