// The C++ client of serve (clients/cpp/forge_client.h): asynchronous Beast operations, each run to
// completion on the call's own io_context, so that every connect, read and write has a deadline
// (Beast's tcp_stream enforces its expiry on asynchronous operations only).
#include "clients/cpp/forge_client.h"

#include <fmt/format.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <optional>
#include <thread>

namespace forge::client {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;
using error_code = boost::system::error_code;

// ---------------------------------------------------------------------------------------------
// Errors

ApiError::ApiError(int status, json error)
    : std::runtime_error(fmt::format("{} {}: {}", status, error.value("type", std::string("error")),
                                     error.contains("message") && error["message"].is_string()
                                         ? error["message"].get<std::string>()
                                         : error.dump())),
      status_(status),
      error_(std::move(error)) {}

namespace {
std::string string_field(const json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}
}  // namespace

std::string ApiError::type() const {
  return string_field(error_, "type");
}
std::string ApiError::param() const {
  return string_field(error_, "param");
}
std::string ApiError::code() const {
  return string_field(error_, "code");
}

// ---------------------------------------------------------------------------------------------
// Plumbing

struct Client::Endpoint {
  std::string host, port, prefix;  // prefix: a path before /v1/... ("" or "/base")
};

namespace {

// Runs one asynchronous operation to its end: `start(handler)` begins it.
template <class Start>
error_code run(net::io_context& ioc, Start start) {
  std::optional<error_code> result;
  start([&](error_code ec, auto&&...) { result = ec; });
  ioc.restart();
  while (!result && ioc.run_one()) {
  }
  return result.value_or(net::error::operation_aborted);
}

// The server's error object from an error answer's body (or one describing a body that is not).
json error_object(int status, const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("error") && j["error"].is_object()) return j["error"];
  return {{"message", fmt::format("HTTP {} with a body that is not an error object: {}", status,
                                  body.substr(0, 200))},
          {"type", "server_error"},
          {"param", nullptr},
          {"code", nullptr}};
}

bool retryable(int status) {
  return status == 429 || status == 503;
}

// How long to wait before retry `attempt` (0-based): the doubled backoff, or the server's
// Retry-After if longer.
std::chrono::milliseconds retry_wait(const ClientOptions& o, int attempt,
                                     const std::string& retry_after) {
  auto wait = o.backoff * (int64_t(1) << std::min(attempt, 20));
  char* end = nullptr;
  const double seconds = std::strtod(retry_after.c_str(), &end);
  if (!retry_after.empty() && end && *end == '\0' && seconds > 0)
    wait = std::max(wait, std::chrono::milliseconds(int64_t(seconds * 1000)));
  return wait;
}

// A connected TCP stream to the endpoint.
void connect(net::io_context& ioc, beast::tcp_stream& stream, const std::string& host,
             const std::string& port, std::chrono::milliseconds timeout) {
  tcp::resolver resolver(ioc);
  error_code ec;
  auto endpoints = resolver.resolve(host, port, ec);
  if (ec) throw TransportError(fmt::format("cannot resolve {}:{}: {}", host, port, ec.message()));
  stream.expires_after(timeout);
  ec = run(ioc, [&](auto handler) { stream.async_connect(endpoints, handler); });
  if (ec)
    throw TransportError(fmt::format("cannot connect to {}:{}: {}", host, port, ec.message()));
}

// Choice 0's text and end from one streamed chunk (completions: choices[0].text; chat:
// choices[0].delta.content); the usage when the chunk carries it.
void take_chunk(const json& chunk, Completion& out,
                const std::function<void(const std::string&)>& on_text) {
  if (chunk.contains("usage") && chunk["usage"].is_object()) out.usage = chunk["usage"];
  if (!chunk.contains("choices") || !chunk["choices"].is_array()) return;
  for (const json& choice : chunk["choices"]) {
    if (choice.value("index", 0) != 0) continue;
    std::string piece;
    if (choice.contains("text") && choice["text"].is_string()) piece = choice["text"];
    if (choice.contains("delta") && choice["delta"].contains("content") &&
        choice["delta"]["content"].is_string())
      piece = choice["delta"]["content"];
    if (!piece.empty()) {
      out.text += piece;
      if (on_text) on_text(piece);
    }
    if (choice.contains("finish_reason") && choice["finish_reason"].is_string())
      out.finish_reason = choice["finish_reason"];
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Client

Client::Client(std::string base_url, std::string api_key, ClientOptions options)
    : endpoint_(std::make_shared<Endpoint>()),
      api_key_(std::move(api_key)),
      options_(std::move(options)) {
  const std::string scheme = "http://";
  if (base_url.rfind(scheme, 0) != 0)
    throw std::invalid_argument(fmt::format(
        "forge client: base URL '{}' must start with http:// (TLS is not supported)", base_url));
  std::string rest = base_url.substr(scheme.size());
  const size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  endpoint_->prefix = slash == std::string::npos ? "" : rest.substr(slash);
  while (!endpoint_->prefix.empty() && endpoint_->prefix.back() == '/')
    endpoint_->prefix.pop_back();
  if (endpoint_->prefix.size() >= 3 &&
      endpoint_->prefix.compare(endpoint_->prefix.size() - 3, 3, "/v1") == 0)
    endpoint_->prefix.resize(endpoint_->prefix.size() - 3);  // "http://h:p/v1" as the SDKs take it
  const size_t colon = authority.rfind(':');
  endpoint_->host = colon == std::string::npos ? authority : authority.substr(0, colon);
  endpoint_->port = colon == std::string::npos ? "80" : authority.substr(colon + 1);
  if (endpoint_->host.empty())
    throw std::invalid_argument(fmt::format("forge client: no host in '{}'", base_url));
}

namespace {

struct Answer {
  int status = 0;
  std::string body;         // a plain answer's body (a stream's is handed to on_data instead)
  std::string retry_after;  // the header, if any
};

// One HTTP exchange. With on_data, a 2xx answer's body is handed over piece by piece as it
// arrives (each piece read within the read timeout); an error answer is always read whole.
Answer exchange(const std::string& host, const std::string& port, http::verb method,
                const std::string& target, const std::string& api_key, const std::string& body,
                const ClientOptions& o, const std::function<void(std::string_view)>& on_data) {
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  connect(ioc, stream, host, port, o.connect_timeout);
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, host + ":" + port);
  req.set(http::field::user_agent, "forge-client-cpp");
  if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
  if (method == http::verb::post) {
    req.set(http::field::content_type, "application/json");
    req.body() = body;
  }
  req.prepare_payload();
  stream.expires_after(o.read_timeout);
  error_code ec = run(ioc, [&](auto handler) { http::async_write(stream, req, handler); });
  if (ec)
    throw TransportError(
        fmt::format("{} {}: sending: {}", req.method_string(), target, ec.message()));

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(boost::none);
  stream.expires_after(o.read_timeout);
  ec = run(ioc, [&](auto handler) { http::async_read_header(stream, buffer, parser, handler); });
  if (ec)
    throw TransportError(
        fmt::format("{} {}: reading the answer: {}", req.method_string(), target, ec.message()));
  Answer answer;
  answer.status = int(parser.get().result_int());
  answer.retry_after = std::string(parser.get()[http::field::retry_after]);
  const bool streaming = on_data && answer.status / 100 == 2;
  auto on_chunk = [&](uint64_t, beast::string_view data, error_code&) {
    on_data(std::string_view(data.data(), data.size()));
    return data.size();
  };
  if (streaming) parser.on_chunk_body(on_chunk);
  while (!parser.is_done()) {  // each piece within the read timeout
    stream.expires_after(o.read_timeout);
    ec = run(ioc, [&](auto handler) { http::async_read_some(stream, buffer, parser, handler); });
    if (ec)
      throw TransportError(
          fmt::format("{} {}: reading the answer: {}", req.method_string(), target, ec.message()));
  }
  answer.body = std::move(parser.get().body());
  if (streaming && !answer.body.empty()) on_data(answer.body);  // not chunked: all at the end
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  return answer;
}

}  // namespace

namespace {
// Retries `attempt()` on 429 and 503 as the options say; throws ApiError for any other error.
template <class Attempt>
Answer with_retries(const ClientOptions& o, Attempt attempt) {
  for (int i = 0;; ++i) {
    Answer a = attempt();
    if (a.status / 100 == 2) return a;
    if (retryable(a.status) && i < o.max_retries) {
      const auto wait = retry_wait(o, i, a.retry_after);
      if (o.on_retry) o.on_retry(a.status, wait);
      std::this_thread::sleep_for(wait);
      continue;
    }
    throw ApiError(a.status, error_object(a.status, a.body));
  }
}
}  // namespace

json Client::complete(const json& request) {
  const Endpoint& e = *endpoint_;
  Answer a = with_retries(options_, [&] {
    return exchange(e.host, e.port, http::verb::post, e.prefix + "/v1/completions", api_key_,
                    request.dump(), options_, {});
  });
  return json::parse(a.body);
}

json Client::chat(const json& request) {
  const Endpoint& e = *endpoint_;
  Answer a = with_retries(options_, [&] {
    return exchange(e.host, e.port, http::verb::post, e.prefix + "/v1/chat/completions", api_key_,
                    request.dump(), options_, {});
  });
  return json::parse(a.body);
}

json Client::models() {
  const Endpoint& e = *endpoint_;
  Answer a = with_retries(options_, [&] {
    return exchange(e.host, e.port, http::verb::get, e.prefix + "/v1/models", api_key_, "",
                    options_, {});
  });
  return json::parse(a.body);
}

std::string Client::metrics() {
  const Endpoint& e = *endpoint_;
  return with_retries(options_,
                      [&] {
                        return exchange(e.host, e.port, http::verb::get, e.prefix + "/metrics",
                                        api_key_, "", options_, {});
                      })
      .body;
}

Completion Client::stream(json request, const std::function<void(const std::string&)>& on_text) {
  const Endpoint& e = *endpoint_;
  const bool chat = request.contains("messages");
  request["stream"] = true;
  const std::string path = e.prefix + (chat ? "/v1/chat/completions" : "/v1/completions");
  const std::string body = request.dump();
  Completion out;
  with_retries(options_, [&] {
    out = Completion{};
    std::string pending;  // bytes of an event not complete yet
    bool done = false;
    return exchange(e.host, e.port, http::verb::post, path, api_key_, body, options_,
                    [&](std::string_view data) {
                      pending.append(data);
                      for (size_t end;
                           !done && (end = pending.find("\n\n")) != std::string::npos;) {
                        const std::string event = pending.substr(0, end);
                        pending.erase(0, end + 2);
                        if (event.rfind("data: ", 0) != 0) continue;  // comments, other fields
                        const std::string payload = event.substr(6);
                        if (payload == "[DONE]") {
                          done = true;
                          break;
                        }
                        const json chunk = json::parse(payload, nullptr, false);
                        if (chunk.is_object() && chunk.contains("error"))  // failed mid-stream
                          throw ApiError(500, chunk["error"]);
                        take_chunk(chunk, out, on_text);
                      }
                    });
  });
  return out;
}

Completion Client::stream_ws(json request, const std::function<void(const std::string&)>& on_text,
                             const Cancel* cancel) {
  const Endpoint& e = *endpoint_;
  const std::string id = "cpp-1";
  request["type"] = request.contains("messages") ? "chat" : "completion";
  request["id"] = id;
  request.erase("stream");

  net::io_context ioc;
  websocket::stream<beast::tcp_stream> ws(ioc);
  connect(ioc, beast::get_lowest_layer(ws), e.host, e.port, options_.connect_timeout);
  beast::get_lowest_layer(ws).expires_never();  // the websocket's own timeouts from here on
  websocket::stream_base::timeout timeout{};
  timeout.handshake_timeout = options_.connect_timeout;
  timeout.idle_timeout = options_.read_timeout;  // nothing received for this long: give up
  timeout.keep_alive_pings = false;
  ws.set_option(timeout);
  const std::string key = api_key_;
  ws.set_option(websocket::stream_base::decorator([key](websocket::request_type& req) {
    req.set(http::field::user_agent, "forge-client-cpp");
    if (!key.empty()) req.set(http::field::authorization, "Bearer " + key);
  }));
  websocket::response_type upgrade;
  error_code ec = run(ioc, [&](auto handler) {
    ws.async_handshake(upgrade, e.host + ":" + e.port, e.prefix + "/v1/stream", handler);
  });
  if (ec == websocket::error::upgrade_declined)
    throw ApiError(int(upgrade.result_int()),
                   error_object(int(upgrade.result_int()), upgrade.body()));
  if (ec) throw TransportError(fmt::format("WebSocket /v1/stream: {}", ec.message()));

  auto send = [&](const json& message) {
    const std::string text = message.dump();
    ws.text(true);
    const error_code wec =
        run(ioc, [&](auto handler) { ws.async_write(net::buffer(text), handler); });
    if (wec) throw TransportError(fmt::format("WebSocket /v1/stream: sending: {}", wec.message()));
  };
  send(request);

  Completion out;
  bool cancel_sent = false;
  beast::flat_buffer buffer;
  auto send_cancel = [&] {  // once; a write may run beside a pending read
    cancel_sent = true;
    const std::string text = json{{"type", "cancel"}, {"id", id}}.dump();
    std::optional<error_code> wrote;
    ws.text(true);
    ws.async_write(net::buffer(text), [&](error_code wec, size_t) { wrote = wec; });
    while (!wrote) {
      ioc.restart();
      ioc.run_one();
    }
  };
  for (int attempt = 0;;) {
    // Read one message, checking `cancel` before and every 20 ms meanwhile.
    std::optional<error_code> read;
    ws.async_read(buffer, [&](error_code rec, size_t) { read = rec; });
    for (;;) {
      if (cancel && cancel->cancelled() && !cancel_sent) send_cancel();
      if (read) break;
      ioc.restart();
      // One handler at a time: run_for would spend the whole 20 ms each time (the websocket's
      // idle timer keeps the io_context busy), 20 ms per message.
      ioc.run_one_for(std::chrono::milliseconds(20));
    }
    if (*read) throw TransportError(fmt::format("WebSocket /v1/stream: {}", read->message()));
    const json m = json::parse(beast::buffers_to_string(buffer.data()), nullptr, false);
    buffer.consume(buffer.size());
    if (!m.is_object() || m.value("id", json()) != id) continue;
    const std::string type = m.value("type", "");
    if (type == "token" && m.value("index", 0) == 0) {
      const std::string piece = m.value("text", "");
      out.text += piece;
      if (on_text && !piece.empty()) on_text(piece);
    } else if (type == "done" && m.value("index", 0) == 0) {
      out.finish_reason = m.value("finish_reason", "");
      out.usage = m.value("usage", json());
      break;
    } else if (type == "error") {
      const json error = m.value("error", json::object());
      const int status = m.value("status", 0);
      if (retryable(status) && attempt < options_.max_retries) {  // nothing ran: ask again
        const auto wait = retry_wait(options_, attempt++, "");
        if (options_.on_retry) options_.on_retry(status, wait);
        std::this_thread::sleep_for(wait);
        send(request);
        continue;
      }
      throw ApiError(status, error);
    }
  }
  ec = run(ioc, [&](auto handler) { ws.async_close(websocket::close_code::normal, handler); });
  return out;
}

}  // namespace forge::client
