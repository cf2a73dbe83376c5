// A C++ client of `serve` (and of any OpenAI-compatible server for the HTTP calls): plain and
// streamed (SSE) completions and chats, and the WebSocket channel with cancel. Depends only on
// what serve uses (Boost.Beast, nlohmann-json); Beast stays inside forge_client.cpp.
//
//   forge::client::Client c("http://127.0.0.1:8080", "sk-...");
//   nlohmann::json r = c.complete({{"model", "m"}, {"prompt", "ROMEO:"}, {"max_tokens", 20}});
//   auto done = c.stream({{"model", "m"}, {"prompt", "ROMEO:"}},
//                        [](const std::string& piece) { std::cout << piece << std::flush; });
//   forge::client::Cancel cancel;   // cancel.cancel() from any thread ends a WebSocket stream
//   auto ws = c.stream_ws({{"model", "m"}, {"prompt", "ROMEO:"}}, on_text, &cancel);
//
// Errors: the server's error object as ApiError (status, type, param, code; message in what()).
// 429 and 503 are retried with exponential backoff (options.backoff doubled each time), waiting
// at least the Retry-After the server sent, up to options.max_retries times; other 4xx never.
// Each connect and each read or write has its timeout (a stream's read: per piece of the stream).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace forge::client {

struct ClientOptions {
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds read_timeout{60000};  // for one read or write
  int max_retries = 3;                            // of a 429 or 503
  std::chrono::milliseconds backoff{250};         // the first retry's wait; doubled each time
  // Called before each retry with the status and the wait (for logs and tests).
  std::function<void(int status, std::chrono::milliseconds wait)> on_retry;
};

// An answer other than 2xx: the server's {"error": {...}} (or a made-up one for a body that is
// not JSON).
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, nlohmann::json error);
  int status() const { return status_; }
  const nlohmann::json& error() const { return error_; }  // {"message", "type", "param", "code"}
  std::string type() const;
  std::string param() const;  // "" when null
  std::string code() const;

 private:
  int status_;
  nlohmann::json error_;
};

// The connection failed or timed out (no HTTP answer to show).
class TransportError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Choice 0 of a streamed request, put together.
struct Completion {
  std::string text;
  std::string finish_reason;  // "stop", "length", or "cancelled" (WebSocket)
  nlohmann::json usage;       // null when the server sent none
};

// Ends a WebSocket stream from any thread: the client sends {"type": "cancel"} at its next
// message and the stream ends with finish_reason "cancelled".
class Cancel {
 public:
  void cancel() { flag_ = true; }
  bool cancelled() const { return flag_; }

 private:
  std::atomic<bool> flag_{false};
};

class Client {
 public:
  // base_url: "http://HOST:PORT" (no TLS); api_key: sent as a Bearer token ("" for none).
  explicit Client(std::string base_url, std::string api_key = "", ClientOptions options = {});

  nlohmann::json complete(const nlohmann::json& request);  // POST /v1/completions
  nlohmann::json chat(const nlohmann::json& request);      // POST /v1/chat/completions
  // Server-sent events: a request with "messages" goes to /v1/chat/completions, else to
  // /v1/completions; on_text gets each piece of choice 0's text as it arrives.
  Completion stream(nlohmann::json request, const std::function<void(const std::string&)>& on_text);
  // The same over the WebSocket channel (GET /v1/stream); `cancel` (optional) ends it early.
  Completion stream_ws(nlohmann::json request,
                       const std::function<void(const std::string&)>& on_text,
                       const Cancel* cancel = nullptr);
  nlohmann::json models();  // GET /v1/models
  std::string metrics();    // GET /metrics (Prometheus text)

 private:
  struct Endpoint;
  std::shared_ptr<Endpoint> endpoint_;
  std::string api_key_;
  ClientOptions options_;
};

}  // namespace forge::client
