// HTTP/1.1 for `serve` (serve/http.h): synchronous Beast, one thread per connection.
//
// Layout: a socket wrapper whose every read and write ends at a deadline (TimedSocket), the
// per-connection request loop and routes (Connection), the completion handler in its two forms
// (one JSON reply, or server-sent events), and run_server: accept, signals, orderly shutdown.
#include "serve/http.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>
#include <random>

namespace forge::serve {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
using error_code = boost::system::error_code;
using Request = http::request<http::string_body>;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::string random_hex(size_t digits) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string out;
  while (out.size() < digits) out += fmt::format("{:016x}", rng());
  return out.substr(0, digits);
}

// JSON text for the wire: invalid UTF-8 (which valid_utf8 should have removed) becomes U+FFFD.
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

uint64_t random_seed() {
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

// ---- A socket whose reads and writes end at a deadline ----
//
// The socket is non-blocking; an operation that would block waits in poll() for at most the time
// left, then fails with beast::error::timeout. Beast's synchronous read/write take it as a stream.
class TimedSocket {
 public:
  explicit TimedSocket(tcp::socket& socket) : socket_(socket) { socket_.non_blocking(true); }
  void expires_after(std::chrono::seconds s) { deadline_ = Clock::now() + s; }
  int fd() { return socket_.native_handle(); }

  template <class Buffers>
  size_t read_some(const Buffers& b, error_code& ec) {
    return io(POLLIN, ec, [&] { return socket_.read_some(b, ec); });
  }
  template <class Buffers>
  size_t write_some(const Buffers& b, error_code& ec) {
    return io(POLLOUT, ec, [&] { return socket_.write_some(b, ec); });
  }
  template <class Buffers>
  size_t read_some(const Buffers& b) {
    error_code ec;
    size_t n = read_some(b, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }
  template <class Buffers>
  size_t write_some(const Buffers& b) {
    error_code ec;
    size_t n = write_some(b, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

  // Whether the client has hung up (EOF or error), without consuming anything it sent.
  bool peer_gone() {
    pollfd p{fd(), short(POLLIN | POLLRDHUP), 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
    char c;
    return ::recv(fd(), &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
  }

 private:
  template <class Op>
  size_t io(short events, error_code& ec, Op op) {
    for (;;) {
      size_t n = op();
      if (ec != net::error::would_block && ec != net::error::try_again) return n;
      ec = {};
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline_ - Clock::now());
      if (left.count() <= 0) {
        ec = beast::error::timeout;
        return 0;
      }
      pollfd p{fd(), events, 0};
      // Ready, hung up or failed: the next try reports which. EINTR: try again.
      ::poll(&p, 1, int(std::min<int64_t>(left.count(), 1 << 30)));
    }
  }

  tcp::socket& socket_;
  Clock::time_point deadline_ = Clock::now();
};

// ---- What the accepting thread knows of the connections (for shutdown) ----
struct Registry {
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  struct Entry {
    int fd;
    bool busy;  // handling a request (else waiting for one, and closed at once on shutdown)
  };
  std::map<uint64_t, Entry> connections;
  uint64_t next_id = 0;
  std::mutex log_mu;
};

struct ClientGone {};  // the client hung up or a write to it failed: nothing more can be sent

// One choice of a completion: its stream and what it has produced.
struct Choice {
  std::shared_ptr<Stream> stream;
  size_t prompt = 0;  // index into CompletionRequest::prompts
  std::string text;   // non-stream: everything; stream: bytes held back (incomplete UTF-8)
  std::vector<int64_t> tokens;
  std::vector<double> logprobs;
  std::vector<std::vector<TopLogprob>> top;
  size_t token_bytes = 0;  // stream: text offset of the next token (for logprobs)
  std::optional<std::string> finish;
  std::string error;
  int64_t completion_tokens = 0;
};

// Cancels every unfinished choice when the handler leaves early (client gone, write failed, ...).
struct CancelUnfinished {
  std::vector<Choice>& choices;
  ~CancelUnfinished() {
    for (Choice& c : choices)
      if (c.stream && !c.finish) c.stream->cancel();
  }
};

// ---- One connection: read requests, route, answer ----
class Connection {
 public:
  Connection(tcp::socket socket, uint64_t id, Engine& engine, const Auth& auth,
             const ServerOptions& options, Registry& registry, int64_t started)
      : socket_(std::move(socket)),
        stream_(socket_),
        id_(id),
        engine_(engine),
        auth_(auth),
        options_(options),
        registry_(registry),
        started_(started) {
    error_code ec;
    auto remote = socket_.remote_endpoint(ec);
    remote_ = ec ? "?" : fmt::format("{}:{}", remote.address().to_string(), remote.port());
  }

  void run() {
    beast::flat_buffer buffer;
    for (;;) {
      {
        std::lock_guard lock(registry_.mu);
        if (registry_.stopping) break;
        registry_.connections.at(id_).busy = false;
      }
      Request req;
      if (!read_request(buffer, req)) break;
      const auto start = Clock::now();
      {
        std::lock_guard lock(registry_.mu);
        registry_.connections.at(id_).busy = true;
        keep_alive_ = req.keep_alive() && !registry_.stopping;
      }
      const int status = respond(req);
      log(std::string(req.method_string()), path_of(req), status, start);
      if (!keep_alive_) break;
    }
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
  }

  // Closes the socket under the registry's lock, so that shutdown never touches a reused fd.
  void close() {
    std::lock_guard lock(registry_.mu);
    registry_.connections.erase(id_);
    error_code ec;
    socket_.close(ec);
    registry_.cv.notify_all();
  }

 private:
  static std::string path_of(const Request& req) {
    std::string_view target = req.target();
    return std::string(target.substr(0, target.find('?')));  // the query may hold secrets
  }

  // ---- Reading ----

  // A whole request into `req`; false (after answering, when there is someone to answer) when
  // the connection should close.
  bool read_request(beast::flat_buffer& buffer, Request& req) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(16 * 1024);
    parser.body_limit(uint64_t(options_.max_body));
    stream_.expires_after(options_.read_timeout);
    const auto start = Clock::now();
    error_code ec;
    http::read_header(stream_, buffer, parser, ec);
    if (!ec && !parser.is_done()) {
      // Expect: 100-continue (curl sends it for large bodies): refuse early or invite the body.
      auto expect = parser.get()[http::field::expect];
      if (beast::iequals(expect, "100-continue")) {
        auto length = parser.content_length();
        if (length && *length > uint64_t(options_.max_body)) {
          ec = http::error::body_limit;
        } else {
          http::response<http::empty_body> cont{http::status::continue_, parser.get().version()};
          http::write(stream_, cont, ec);
        }
      }
      if (!ec) http::read(stream_, buffer, parser, ec);
    }
    if (!ec) {
      req = parser.release();
      return true;
    }
    const bool got_header = parser.is_header_done();
    const std::string method = got_header ? std::string(parser.get().method_string()) : "-";
    const std::string path = got_header ? path_of(parser.get()) : "-";
    int status = 0;
    std::string message;
    if (ec == http::error::body_limit) {
      status = 413;
      message =
          fmt::format("the request body is over the server's limit of {} bytes", options_.max_body);
    } else if (ec == http::error::header_limit) {
      status = 431;
      message = "the request header is over 16 KiB";
    } else if (ec == beast::error::timeout) {
      if (parser.got_some() || buffer.size() > 0) {  // else an idle keep-alive connection
        status = 408;
        message =
            fmt::format("the request was not received within {} s", options_.read_timeout.count());
      }
    } else if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
               ec != http::error::end_of_stream && ec != http::error::partial_message) {
      status = 400;
      message = fmt::format("malformed HTTP request: {}", ec.message());
    }
    if (status == 0) return false;  // the client left, or stayed silent: nothing to answer
    keep_alive_ = false;
    const ApiError error(status, message, "invalid_request_error", "",
                         status == 413 ? "request_too_large" : "");
    send_json(status, error.body(), got_header ? parser.get().version() : 11);
    log(method, path, status, start);
    linger();
    return false;
  }

  // After an error answered before the whole request was read: stop sending and read what the
  // client still sends for a moment, so that closing does not reset the connection before it has
  // read our answer.
  void linger() {
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    stream_.expires_after(std::chrono::seconds(1));
    std::array<char, 16384> sink;
    size_t drained = 0;
    while (!ec && drained < 2 * size_t(options_.max_body) + (1 << 20))
      drained += stream_.read_some(net::buffer(sink), ec);
  }

  // ---- Writing ----

  template <class Response>
  void write(Response& res) {
    {
      std::lock_guard lock(registry_.mu);
      if (registry_.stopping) keep_alive_ = false;  // tell the client this connection ends
    }
    res.keep_alive(keep_alive_);
    res.prepare_payload();
    stream_.expires_after(options_.write_timeout);
    error_code ec;
    http::write(stream_, res, ec);
    if (ec) keep_alive_ = false;
  }

  void send_json(int status, const json& body, unsigned version = 11,
                 const std::vector<std::pair<http::field, std::string>>& headers = {}) {
    http::response<http::string_body> res{http::status(status), version};
    res.set(http::field::content_type, "application/json");
    for (const auto& [field, value] : headers) res.set(field, value);
    res.body() = dump(body) + "\n";
    write(res);
  }

  int send_error(const ApiError& e, unsigned version) {
    std::vector<std::pair<http::field, std::string>> headers;
    if (e.status == 401) headers.emplace_back(http::field::www_authenticate, "Bearer");
    if (e.status == 429) headers.emplace_back(http::field::retry_after, "1");
    if (e.status == 405) headers.emplace_back(http::field::allow, allowed_);
    send_json(e.status, e.body(), version, headers);
    return e.status;
  }

  void log(const std::string& method, const std::string& path, int status,
           Clock::time_point start) {
    const double ms = ms_since(start);
    std::string line;
    if (options_.log_json) {
      json j = {
          {"time",
           double(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
                      .count())},
          {"remote", remote_},
          {"method", method},
          {"path", path},
          {"status", status},
          {"ms", std::round(ms * 10) / 10}};
      line = dump(j) + "\n";
    } else {
      line = fmt::format("serve: {} {} {} {} {:.1f} ms\n", remote_, method, path, status, ms);
    }
    std::lock_guard lock(registry_.log_mu);
    std::fputs(line.c_str(), stderr);
    std::fflush(stderr);
  }

  // ---- Routes ----

  // Answers `req` (unless the client went away); returns the status for the log.
  int respond(const Request& req) {
    const unsigned version = req.version();
    try {
      const std::string path = path_of(req);
      const auto method = req.method();
      auto only = [&](http::verb allowed) {
        allowed_ = std::string(http::to_string(allowed));
        if (method != allowed)
          throw ApiError(405, fmt::format("{} {}: use {}", req.method_string(), path, allowed_),
                         "invalid_request_error", "", "method_not_allowed");
      };
      if (path == "/health") {
        only(http::verb::get);
        send_json(200, {{"status", "ok"}}, version);
        return 200;
      }
      if (path == "/v1/models") {
        only(http::verb::get);
        auth_.check(req[http::field::authorization]);
        json model = {{"id", options_.limits.model_name},
                      {"object", "model"},
                      {"created", started_},
                      {"owned_by", "forge"}};
        send_json(200, {{"object", "list"}, {"data", json::array({model})}}, version);
        return 200;
      }
      if (path == "/v1/completions") {
        only(http::verb::post);
        auth_.check(req[http::field::authorization]);
        return completions(req);
      }
      throw ApiError(404,
                     fmt::format("no route {} {}; this server answers GET /health, GET /v1/models "
                                 "and POST /v1/completions",
                                 req.method_string(), path),
                     "invalid_request_error", "", "not_found");
    } catch (const ApiError& e) {
      if (headers_sent_) return 200;
      return send_error(e, version);
    } catch (const ClientGone&) {
      keep_alive_ = false;
      return 499;  // nginx's "client closed request"
    } catch (const std::exception& e) {
      if (headers_sent_) {  // mid-stream: the status line has gone; close to signal the failure
        keep_alive_ = false;
        return 200;
      }
      return send_error(
          ApiError(500, fmt::format("internal server error: {}", e.what()), "server_error"),
          version);
    }
  }

  // ---- POST /v1/completions ----

  int completions(const Request& req) {
    const CompletionRequest r = parse_completion(req.body(), options_.limits, engine_.tokenizer());
    std::vector<Choice> choices;
    CancelUnfinished cancel{choices};
    submit_all(r, choices);
    id_text_ = "cmpl-" + random_hex(24);
    created_ = int64_t(std::time(nullptr));
    if (r.stream) return stream_completion(req, r, choices);

    pump(choices, [](Choice& c, StreamEvent& e) { c.text += e.text; });
    json out = json::array();
    int64_t completion_tokens = 0;
    for (size_t i = 0; i < choices.size(); ++i) {
      Choice& c = choices[i];
      check_finish(c);
      const std::string& prompt = r.prompts[c.prompt];
      json logprobs = nullptr;
      if (r.params.logprobs >= 0)
        logprobs = logprobs_json(engine_.tokenizer(), c.tokens, c.logprobs, c.top,
                                 r.echo ? prompt.size() : 0);
      out.push_back({{"text", valid_utf8((r.echo ? prompt : std::string()) + c.text)},
                     {"index", i},
                     {"logprobs", logprobs},
                     {"finish_reason", *c.finish}});
      completion_tokens += c.completion_tokens;
    }
    send_json(200,
              {{"id", id_text_},
               {"object", "text_completion"},
               {"created", created_},
               {"model", options_.limits.model_name},
               {"choices", out},
               {"usage", usage(r, completion_tokens)}},
              req.version());
    return 200;
  }

  // Queues every (prompt, choice) pair: choice index p * n + c, seed base + c.
  void submit_all(const CompletionRequest& r, std::vector<Choice>& choices) {
    const uint64_t base = r.seeded ? r.params.seed : random_seed();
    choices.reserve(r.prompts.size() * size_t(r.n));
    for (size_t p = 0; p < r.prompts.size(); ++p) {
      for (int64_t c = 0; c < r.n; ++c) {
        GenerationParams g = r.params;
        g.prompt = r.prompt_tokens[p];
        g.seed = base + uint64_t(c);
        Choice choice;
        choice.prompt = p;
        try {
          choice.stream = engine_.submit(std::move(g));
        } catch (const QueueFull& e) {  // CancelUnfinished cancels those already queued
          throw ApiError(429, e.what(), "rate_limit_error", "", "rate_limit_exceeded");
        } catch (const ShuttingDown& e) {
          throw ApiError(503, e.what(), "server_error", "", "shutting_down");
        }
        choices.push_back(std::move(choice));
      }
    }
  }

  // Pulls events from every unfinished choice until all have finished, handing each to `on_event`
  // (after recording its tokens and end). Between events, a client that hung up ends it all.
  template <class OnEvent>
  void pump(std::vector<Choice>& choices, OnEvent on_event) {
    auto take = [&](Choice& c, StreamEvent& e) {
      c.tokens.insert(c.tokens.end(), e.tokens.begin(), e.tokens.end());
      c.logprobs.insert(c.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
      c.top.insert(c.top.end(), e.top_logprobs.begin(), e.top_logprobs.end());
      if (e.finish) {
        c.finish = e.finish;
        c.error = e.error;
        c.completion_tokens = e.completion_tokens;
      }
      on_event(c, e);
    };
    for (;;) {
      Choice* waiting = nullptr;
      bool progressed = false;
      for (Choice& c : choices) {
        while (!c.finish) {
          std::optional<StreamEvent> e = c.stream->next(std::chrono::milliseconds(0));
          if (!e) break;
          take(c, *e);
          progressed = true;
        }
        if (!c.finish && !waiting) waiting = &c;
      }
      if (!waiting) return;
      if (progressed) continue;
      if (stream_.peer_gone()) throw ClientGone{};
      if (std::optional<StreamEvent> e = waiting->stream->next(std::chrono::milliseconds(50)))
        take(*waiting, *e);
    }
  }

  // A choice that ended without its answer: the engine failed or was shut down.
  static void check_finish(const Choice& c) {
    if (*c.finish == "error") throw ApiError(500, "generation failed: " + c.error, "server_error");
    if (*c.finish == "cancelled")
      throw ApiError(503, "the request was cancelled: the server is shutting down", "server_error",
                     "", "shutting_down");
  }

  json usage(const CompletionRequest& r, int64_t completion_tokens) const {
    int64_t prompt_tokens = 0;  // each prompt once, however many choices it has (as OpenAI)
    for (const auto& p : r.prompt_tokens) prompt_tokens += int64_t(p.size());
    return {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}};
  }

  json chunk(json choices) const {
    return {{"id", id_text_},
            {"object", "text_completion"},
            {"created", created_},
            {"model", options_.limits.model_name},
            {"choices", std::move(choices)}};
  }

  // Server-sent events: `data: {chunk}` per piece of text, a last chunk per choice with its
  // finish_reason, the usage chunk if asked, then `data: [DONE]`.
  int stream_completion(const Request& req, const CompletionRequest& r,
                        std::vector<Choice>& choices) {
    http::response<http::empty_body> res{http::status::ok, req.version()};
    res.set(http::field::content_type, "text/event-stream");
    res.set(http::field::cache_control, "no-cache");
    res.chunked(true);
    res.keep_alive(keep_alive_);
    http::response_serializer<http::empty_body> serializer{res};
    stream_.expires_after(options_.write_timeout);
    error_code ec;
    http::write_header(stream_, serializer, ec);
    if (ec) throw ClientGone{};
    headers_sent_ = true;

    auto index_of = [&](const Choice& c) { return size_t(&c - choices.data()); };
    auto text_chunk = [&](const Choice& c, const std::string& text, json logprobs, json finish) {
      return chunk(json::array({{{"text", valid_utf8(text)},
                                 {"index", index_of(c)},
                                 {"logprobs", std::move(logprobs)},
                                 {"finish_reason", std::move(finish)}}}));
    };
    for (Choice& c : choices) {
      if (!r.echo) continue;
      const std::string& prompt = r.prompts[c.prompt];
      c.token_bytes = prompt.size();
      send_event(text_chunk(c, prompt, nullptr, nullptr));
    }
    int64_t completion_tokens = 0;
    pump(choices, [&](Choice& c, StreamEvent& e) {
      c.text += e.text;  // held back: an incomplete UTF-8 sequence at the end waits for more
      const size_t ready = e.finish ? c.text.size() : complete_utf8_prefix(c.text);
      const std::string text = c.text.substr(0, ready);
      c.text.erase(0, ready);
      json logprobs = nullptr;
      if (r.params.logprobs >= 0 && !e.tokens.empty()) {
        logprobs =
            logprobs_json(engine_.tokenizer(), e.tokens, e.logprobs, e.top_logprobs, c.token_bytes);
        for (int64_t t : e.tokens) c.token_bytes += engine_.tokenizer().decode_one(t).size();
      }
      if (!text.empty() || !logprobs.is_null())
        send_event(text_chunk(c, text, std::move(logprobs), nullptr));
      if (!e.finish) return;
      if (*e.finish == "error" || *e.finish == "cancelled") {
        const ApiError error = *e.finish == "error"
                                   ? ApiError(500, "generation failed: " + e.error, "server_error")
                                   : ApiError(503,
                                              "the request was cancelled: the server is "
                                              "shutting down",
                                              "server_error", "", "shutting_down");
        send_event(error.body());
        return;
      }
      completion_tokens += e.completion_tokens;
      send_event(text_chunk(c, "", nullptr, *e.finish));
    });
    if (r.include_usage) {
      json last = chunk(json::array());
      last["usage"] = usage(r, completion_tokens);
      send_event(last);
    }
    send_data("[DONE]");
    stream_.expires_after(options_.write_timeout);
    net::write(stream_, http::make_chunk_last(), ec);
    if (ec) throw ClientGone{};
    return 200;
  }

  void send_event(const json& j) { send_data(dump(j)); }

  void send_data(const std::string& data) {
    const std::string event = "data: " + data + "\n\n";
    stream_.expires_after(options_.write_timeout);
    error_code ec;
    net::write(stream_, http::make_chunk(net::buffer(event)), ec);
    if (ec) throw ClientGone{};
  }

  tcp::socket socket_;
  TimedSocket stream_;
  const uint64_t id_;
  Engine& engine_;
  const Auth& auth_;
  const ServerOptions& options_;
  Registry& registry_;
  const int64_t started_;
  std::string remote_;
  bool keep_alive_ = false;
  bool headers_sent_ = false;  // of a streamed response: no other status can be sent now
  std::string allowed_;        // the method of the route (for 405's Allow)
  std::string id_text_;        // "cmpl-..." of the current completion
  int64_t created_ = 0;
};

tcp::endpoint resolve(const std::string& host, int port) {
  net::io_context ioc;
  tcp::resolver resolver(ioc);
  error_code ec;
  auto results = resolver.resolve(host, std::to_string(port), ec);
  if (ec || results.empty())
    throw std::runtime_error(fmt::format("--host {}: cannot resolve ({})", host, ec.message()));
  return results.begin()->endpoint();
}

}  // namespace

int run_server(Engine& engine, const Auth& auth, const ServerOptions& options,
               const std::function<void(const std::string& url)>& on_ready) {
  std::signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an error code, not a signal
  net::io_context ioc;
  const tcp::endpoint endpoint = resolve(options.host, options.port);
  tcp::acceptor acceptor(ioc);
  error_code ec;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error(
        fmt::format("cannot listen on {} port {}: {}", options.host, options.port, ec.message()));

  Registry registry;
  const int64_t started = int64_t(std::time(nullptr));
  net::signal_set signals(ioc, SIGINT, SIGTERM);
  signals.async_wait([&](const error_code& e, int signal) {
    if (e) return;
    fmt::print(stderr, "serve: {}: stopping\n", signal == SIGINT ? "SIGINT" : "SIGTERM");
    error_code ignored;
    acceptor.close(ignored);
  });

  std::function<void()> accept = [&] {
    acceptor.async_accept([&](const error_code& e, tcp::socket socket) {
      if (!acceptor.is_open()) return;
      if (e) {  // e.g. out of file descriptors: back off a little rather than spin
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        return accept();
      }
      uint64_t id;
      {
        std::lock_guard lock(registry.mu);
        if (int64_t(registry.connections.size()) >= options.max_connections) {
          const std::string body = ApiError(503, "too many connections; retry later",
                                            "server_error", "", "too_many_connections")
                                       .body()
                                       .dump() +
                                   "\n";
          const std::string busy = fmt::format(
              "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
              "Retry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
              body.size(), body);
          error_code ignored;
          socket.non_blocking(true, ignored);
          socket.write_some(net::buffer(busy), ignored);
          return accept();
        }
        id = registry.next_id++;
        registry.connections[id] = {socket.native_handle(), false};
      }
      std::thread([&, id, socket = std::move(socket)]() mutable {
        Connection connection(std::move(socket), id, engine, auth, options, registry, started);
        try {
          connection.run();
        } catch (const std::exception& x) {
          fmt::print(stderr, "serve: connection {}: {}\n", id, x.what());
        }
        connection.close();
      }).detach();
      accept();
    });
  };
  accept();

  const tcp::endpoint local = acceptor.local_endpoint();
  const std::string address = local.address().is_v6() ? "[" + local.address().to_string() + "]"
                                                      : local.address().to_string();
  if (on_ready) on_ready(fmt::format("http://{}:{}", address, local.port()));
  ioc.run();  // until a signal closes the acceptor

  // Shutdown: close connections waiting for a request, let running requests end (the engine
  // cancels what is left after shutdown_timeout), then close the rest.
  auto close_connections = [&](bool idle_only) {
    std::lock_guard lock(registry.mu);
    registry.stopping = true;
    for (auto& [id, entry] : registry.connections)
      if (!idle_only || !entry.busy) ::shutdown(entry.fd, SHUT_RDWR);
  };
  close_connections(/*idle_only=*/true);
  engine.shutdown(std::chrono::duration_cast<std::chrono::milliseconds>(options.shutdown_timeout));
  auto wait_closed = [&](std::chrono::seconds limit) {
    std::unique_lock lock(registry.mu);
    return registry.cv.wait_for(lock, limit, [&] { return registry.connections.empty(); });
  };
  if (!wait_closed(std::chrono::seconds(2))) {
    close_connections(/*idle_only=*/false);
    if (!wait_closed(std::chrono::seconds(5))) {
      // A connection thread still uses the engine: leaving run_server would destroy it under them.
      fmt::print(stderr, "serve: connections still open 5 s after closing them; exiting\n");
      std::fflush(stdout);
      std::fflush(stderr);
      std::_Exit(0);
    }
  }
  return 0;
}

}  // namespace forge::serve
