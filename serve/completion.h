// A completion in flight, between the protocol and the transport: it queues every choice of a
// parsed request on the engine, pulls their events, and answers in OpenAI's shapes, either one
// JSON object or the chunks of a server-sent event stream, for /v1/completions and
// /v1/chat/completions alike. No socket here: the transport hands in a ClientChannel.
//
//   Completion c(engine, parse_chat(body, limits, tok, chat), {.api = Api::chat,
//                .model_name = limits.model_name, .metrics = &metrics, .received = start});
//   if (!c.streaming()) send_json(200, c.reply(channel));   // waits for every choice
//   else { send the SSE headers; c.stream(channel); end the body; }
//
// Choices: prompt p's choice k is choice p * n + k, seeded seed + k (or a drawn seed + k).
// Metrics: time to first token (from `received` to a choice's first token event), the time between
// its successive token events, and its prompt and generated tokens at its end.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "serve/engine.h"
#include "serve/metrics.h"
#include "serve/protocol.h"

namespace forge::serve {

enum class Api { completions, chat };

// Thrown by a channel (or by Completion when the channel says so): the client hung up or a write
// to it failed; nothing more can be sent.
struct ClientGone {};

// What a completion needs of the connection.
class ClientChannel {
 public:
  // Sends one server-sent event, `data: <data>\n\n`; throws ClientGone when it cannot.
  virtual void send_data(const std::string& data) = 0;
  // Whether the client has hung up (polled while waiting for tokens).
  virtual bool client_gone() = 0;

 protected:
  ~ClientChannel() = default;
};

struct CompletionContext {
  Api api = Api::completions;
  std::string model_name;
  Metrics* metrics = nullptr;  // none: nothing recorded
  std::string transport = "http";
  std::chrono::steady_clock::time_point received = std::chrono::steady_clock::now();
  // Called from the engine's thread after each event of any choice (a transport that waits on
  // several requests at once wakes on it; it must not block).
  std::function<void()> notify;
};

// One event of one choice, for transports that multiplex requests (poll).
struct ChoiceEvent {
  size_t index = 0;  // the choice
  std::string text;  // text ready to show (an incomplete UTF-8 sequence waits for the next)
  std::vector<int64_t> tokens;  // usually one; none in an end without a token
  std::vector<double> logprobs;
  std::vector<std::vector<TopLogprob>> top_logprobs;
  std::optional<std::string> finish;  // "stop", "length", "cancelled" or "error"
  std::optional<ApiError> error;      // finish "error": what to tell the client
  nlohmann::json usage;               // with `finish`: this choice's prompt and completion tokens
};

class Completion {
 public:
  // Submits every choice; throws ApiError 429 (queue full) or 503 (shutting down), cancelling those
  // already queued.
  Completion(Engine& engine, CompletionRequest request, CompletionContext context);
  ~Completion();  // cancels the choices that have not finished (the client left early, ...)
  Completion(const Completion&) = delete;
  Completion& operator=(const Completion&) = delete;

  bool streaming() const { return request_.stream; }
  // Waits for every choice and returns the reply ("text_completion" or "chat.completion"); throws
  // ApiError 500/503 when a choice failed or was cancelled, ClientGone when the client left.
  nlohmann::json reply(ClientChannel& client);
  // Sends the stream's events, ending with `data: [DONE]`; a choice that fails mid-stream sends an
  // error object as its event.
  void stream(ClientChannel& client);
  // Without waiting: hands up to `max_events` of the events made so far to `on_event` (the
  // choices in turn); true once every choice has ended (its last event handed over).
  bool poll(const std::function<void(const ChoiceEvent&)>& on_event,
            size_t max_events = size_t(-1));
  // Asks the engine to end every unfinished choice ("cancelled" within one step).
  void cancel();
  size_t choices() const { return choices_.size(); }

 private:
  struct Choice {
    std::shared_ptr<Stream> stream;
    size_t prompt = 0;  // index into CompletionRequest::prompts
    std::string text;   // reply: everything; stream: bytes held back (incomplete UTF-8)
    std::vector<int64_t> tokens;
    std::vector<double> logprobs;
    std::vector<std::vector<TopLogprob>> top;
    size_t token_bytes = 0;  // stream: text offset of the next token (completion logprobs)
    std::optional<std::string> finish;
    std::string error;
    int64_t completion_tokens = 0;
    std::optional<std::chrono::steady_clock::time_point> last_token;  // for the metrics
  };

  template <class OnEvent>
  void pump(ClientChannel& client, OnEvent on_event);
  void take(Choice& c, StreamEvent& e);
  std::string ready_text(Choice& c, const StreamEvent& e);
  nlohmann::json usage(int64_t completion_tokens) const;
  nlohmann::json chunk(nlohmann::json choices) const;
  nlohmann::json chunk_choice(const Choice& c, const std::string& text, nlohmann::json logprobs,
                              nlohmann::json finish, bool first = false) const;
  size_t index_of(const Choice& c) const { return size_t(&c - choices_.data()); }

  Engine& engine_;
  const CompletionRequest request_;
  const CompletionContext context_;
  std::vector<Choice> choices_;
  std::string id_;  // "cmpl-..." or "chatcmpl-..."
  int64_t created_ = 0;
};

}  // namespace forge::serve
