// The WebSocket session of `serve` (serve/websocket.h): asynchronous Beast on an io_context of the
// connection's own thread, so reading the client, writing tokens and waking on the engine's
// events never race (one thread runs every handler).
#include "serve/websocket.h"

#include <fmt/format.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <deque>
#include <map>
#include <memory>
#include <mutex>

#include "serve/completion.h"

namespace forge::serve {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;
using error_code = boost::system::error_code;
using Clock = std::chrono::steady_clock;

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// The engine's thread writes to the eventfd after each event; the session may end first, so the
// engine holds this (not the session) and the session disarms it before closing the fd.
struct Waker {
  std::mutex mu;
  int fd = -1;
  void wake() {
    std::lock_guard lock(mu);
    if (fd < 0) return;
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
  }
  void disarm() {
    std::lock_guard lock(mu);
    fd = -1;
  }
};

class Session {
 public:
  Session(int fd, const tcp& protocol, Engine& engine, Metrics& metrics,
          const WebSocketOptions& options, const std::function<bool()>& stopping)
      : ws_(ioc_),
        wake_(ioc_),
        tick_(ioc_),
        write_timer_(ioc_),
        engine_(engine),
        metrics_(metrics),
        options_(options),
        stopping_(stopping),
        waker_(std::make_shared<Waker>()) {
    ws_.next_layer().assign(protocol, fd);
    const int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) throw std::runtime_error("serve: websocket: cannot create an eventfd");
    wake_.assign(efd);
    waker_->fd = efd;
  }

  int64_t run(const http::request<http::string_body>& request) {
    websocket::stream_base::timeout timeout{};
    timeout.handshake_timeout = std::chrono::seconds(10);
    timeout.idle_timeout = options_.idle_timeout;
    timeout.keep_alive_pings = true;
    ws_.set_option(timeout);
    ws_.set_option(websocket::stream_base::decorator(
        [](websocket::response_type& res) { res.set(http::field::server, "forge-serve"); }));
    ws_.read_message_max(options_.max_message);
    ws_.async_accept(request, [this](error_code ec) {
      if (ec) return stop();
      read();
      wait_for_events();
      tick();
    });
    ioc_.run();
    return served_;
  }

 private:
  struct Live {
    std::unique_ptr<Completion> completion;
    int logprobs = -1;
  };

  // ---- The client's messages ----

  void read() {
    ws_.async_read(in_, [this](error_code ec, size_t) {
      if (ec) return stop();  // closed by the client, idle past the timeout, or too large
      std::string text = beast::buffers_to_string(in_.data());
      in_.consume(in_.size());
      handle(text);
      if (!closing_ && !stopped_) read();
    });
  }

  void handle(const std::string& text) {
    json msg = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!msg.is_object()) {
      metrics_.count_request("/v1/stream", 400, "ws");
      send_error(nullptr, ApiError(400,
                                   "a message must be one JSON object, e.g. {\"type\": "
                                   "\"completion\", \"id\": \"1\", \"prompt\": \"...\"}"));
      return close(websocket::close_code::bad_payload);
    }
    const json id = msg.contains("id") ? msg["id"] : json(nullptr);
    try {
      if (!msg.contains("type") || !msg["type"].is_string())
        throw ApiError(400, "'type' is required: completion, chat or cancel",
                       "invalid_request_error", "type");
      if (!id.is_string() || id.get<std::string>().empty())
        throw ApiError(400, "'id' is required: a non-empty string naming the request",
                       "invalid_request_error", "id");
      const std::string type = msg["type"], key = id;
      if (type == "cancel") {
        auto it = live_.find(key);
        if (it == live_.end())
          throw ApiError(404, fmt::format("no request '{}' is in flight on this socket", key),
                         "invalid_request_error", "id");
        it->second.completion->cancel();
        return;
      }
      if (type != "completion" && type != "chat")
        throw ApiError(
            400,
            fmt::format("unknown message type '{}'; expected completion, chat or cancel", type),
            "invalid_request_error", "type");
      if (live_.count(key))
        throw ApiError(400, fmt::format("request '{}' is already in flight on this socket", key),
                       "invalid_request_error", "id");
      if (stopping_())
        throw ApiError(503, "the server is shutting down", "server_error", "", "shutting_down");
      for (const char* k : {"type", "id", "stream", "stream_options"}) msg.erase(k);
      const Api api = type == "chat" ? Api::chat : Api::completions;
      const Limits& limits = options_.limits;
      const std::string body = msg.dump();
      CompletionRequest r =
          api == Api::chat ? parse_chat(body, limits, engine_.tokenizer(), options_.chat_template)
                           : parse_completion(body, limits, engine_.tokenizer());
      const int logprobs = r.params.logprobs;
      std::shared_ptr<Waker> waker = waker_;
      CompletionContext context{.api = api,
                                .model_name = limits.model_name,
                                .metrics = &metrics_,
                                .transport = "ws",
                                .received = Clock::now(),
                                .notify = [waker] { waker->wake(); }};
      auto completion = std::make_unique<Completion>(engine_, std::move(r), std::move(context));
      live_.emplace(key, Live{std::move(completion), logprobs});
      metrics_.count_request("/v1/stream", 200, "ws");
      ++served_;
    } catch (const ApiError& e) {
      metrics_.count_request("/v1/stream", e.status, "ws");
      send_error(id, e);
    }
  }

  // ---- The engine's events ----

  void wait_for_events() {
    wake_.async_wait(net::posix::stream_descriptor::wait_read, [this](error_code ec) {
      if (ec || stopped_) return;
      uint64_t count;
      [[maybe_unused]] ssize_t n = ::read(wake_.native_handle(), &count, sizeof count);
      pump();  // after the read: an event pushed from here on wakes us again
      wait_for_events();
    });
  }

  // Sends what the engine has made, the requests in turn (one event each per round), so that one
  // request's backlog does not hold back the others'.
  // While more than max_queued_bytes wait to be sent, the events stay in the engine's streams
  // (which pauses a request whose unread events pile up): the client reads at its own pace.
  void pump() {
    auto room = [&] { return !stopped_ && queued_ < options_.max_queued_bytes; };
    for (bool progressed = true; progressed && room();) {
      progressed = false;
      for (auto it = live_.begin(); it != live_.end() && room();) {
        const std::string& id = it->first;
        const Live& live = it->second;
        const bool done = live.completion->poll(
            [&](const ChoiceEvent& e) {
              progressed = true;
              send_event(id, live, e);
            },
            1);
        it = done ? live_.erase(it) : std::next(it);
      }
    }
    close_if_stopping();
  }

  void send_event(const std::string& id, const Live& live, const ChoiceEvent& e) {
    if (!e.tokens.empty() || !e.text.empty()) {
      json m = {{"type", "token"}, {"id", id}, {"index", e.index}, {"text", e.text}};
      if (!e.tokens.empty()) m["token_id"] = e.tokens[0];
      if (live.logprobs >= 0 && !e.logprobs.empty()) {
        m["logprob"] = e.logprobs[0];
        json top = json::array();
        for (const TopLogprob& t : e.top_logprobs[0])
          top.push_back({{"token", valid_utf8(engine_.tokenizer().decode_one(t.token))},
                         {"token_id", t.token},
                         {"logprob", t.logprob}});
        if (live.logprobs > 0) m["top_logprobs"] = std::move(top);
      }
      send(m);
    }
    if (!e.finish) return;
    if (e.error) return send_error(id, *e.error);
    send({{"type", "done"},
          {"id", id},
          {"index", e.index},
          {"finish_reason", *e.finish},
          {"usage", e.usage}});
  }

  // ---- Writing: one message at a time, the rest queued (bounded) ----

  void send_error(const json& id, const ApiError& e) {
    send({{"type", "error"}, {"id", id}, {"status", e.status}, {"error", e.body()["error"]}});
  }

  void send(const json& m) {
    if (stopped_) return;
    out_.push_back(dump(m));
    queued_ += out_.back().size();
    if (!writing_) write_next();
  }

  // Each write must finish within send_timeout, else the client is not reading: it is closed
  // and its requests cancelled.
  void write_next() {
    writing_ = true;
    write_timer_.expires_after(options_.send_timeout);
    write_timer_.async_wait([this](error_code ec) {
      if (!ec) stop();
    });
    ws_.text(true);
    ws_.async_write(net::buffer(out_.front()), [this](error_code ec, size_t) {
      writing_ = false;
      write_timer_.cancel();
      if (ec || stopped_) return stop();
      queued_ -= out_.front().size();
      out_.pop_front();
      if (!out_.empty())
        write_next();
      else if (closing_)
        close(close_code_);
      pump();  // events held back while the queue was full
    });
  }

  // ---- Ending ----

  // A close frame once the queued messages have gone.
  void close(websocket::close_code code) {
    closing_ = true;
    close_code_ = code;
    if (writing_ || !out_.empty() || close_sent_ || stopped_) return;
    close_sent_ = true;
    ws_.async_close(code, [this](error_code) { stop(); });
  }

  // Server shutdown: no new requests (handle refuses them); close once none is in flight.
  void close_if_stopping() {
    if (!closing_ && !stopped_ && live_.empty() && stopping_())
      close(websocket::close_code::going_away);
  }

  void tick() {
    tick_.expires_after(std::chrono::milliseconds(100));
    tick_.async_wait([this](error_code ec) {
      if (ec || stopped_) return;
      close_if_stopping();
      tick();
    });
  }

  // Everything ends: requests in flight are cancelled (their slots free within one step).
  void stop() {
    if (stopped_) return;
    stopped_ = true;
    for (auto& [id, live] : live_) live.completion->cancel();
    live_.clear();
    waker_->disarm();
    error_code ec;
    wake_.close(ec);
    tick_.cancel();
    write_timer_.cancel();
    ws_.next_layer().close(ec);
  }

  net::io_context ioc_;
  websocket::stream<tcp::socket> ws_;
  net::posix::stream_descriptor wake_;
  net::steady_timer tick_, write_timer_;
  Engine& engine_;
  Metrics& metrics_;
  const WebSocketOptions& options_;
  const std::function<bool()>& stopping_;
  std::shared_ptr<Waker> waker_;
  beast::flat_buffer in_;
  std::map<std::string, Live> live_;
  std::deque<std::string> out_;
  size_t queued_ = 0;
  bool writing_ = false, closing_ = false, close_sent_ = false, stopped_ = false;
  websocket::close_code close_code_ = websocket::close_code::normal;
  int64_t served_ = 0;
};

}  // namespace

int64_t run_websocket(int fd, const tcp& protocol, const http::request<http::string_body>& request,
                      Engine& engine, Metrics& metrics, const WebSocketOptions& options,
                      const std::function<bool()>& stopping) {
  Session session(fd, protocol, engine, metrics, options, stopping);
  return session.run(request);
}

}  // namespace forge::serve
