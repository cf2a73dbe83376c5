// HTTP/1.1 for `serve` (serve/http.h): synchronous Beast, one thread per connection.
//
// Layout: a socket wrapper whose every read and write ends at a deadline (TimedSocket), the
// per-connection request loop and routes (Connection; a completion itself runs in
// serve/completion.cpp, which this file feeds a ClientChannel: SSE data lines and hang-up checks),
// and run_server: accept, signals, orderly shutdown.
#include "serve/http.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket/rfc6455.hpp>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>

#include "serve/completion.h"
#include "serve/metrics.h"
#include "serve/websocket.h"

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

// JSON text for the wire: invalid UTF-8 (which valid_utf8 should have removed) becomes U+FFFD.
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
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

// ---- One connection: read requests, route, answer ----
class Connection {
 public:
  Connection(tcp::socket socket, uint64_t id, Engine& engine, const Auth& auth,
             const ServerOptions& options, Registry& registry, Metrics& metrics, int64_t started)
      : socket_(std::move(socket)),
        stream_(socket_),
        id_(id),
        engine_(engine),
        auth_(auth),
        options_(options),
        registry_(registry),
        metrics_(metrics),
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
      received_ = start;
      {
        std::lock_guard lock(registry_.mu);
        registry_.connections.at(id_).busy = true;
        keep_alive_ = req.keep_alive() && !registry_.stopping;
      }
      const int status = respond(req);
      record(std::string(req.method_string()), path_of(req), status, start);
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
    record(method, path, status, start);
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

  // Logs a request and counts it in the metrics.
  void record(const std::string& method, const std::string& path, int status,
              Clock::time_point start) {
    metrics_.count_request(endpoint_of(path), status, "http");
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

  // The endpoint label of the metrics: a route's path, or "other" (an unknown path must not make
  // a series of its own).
  static std::string endpoint_of(const std::string& path) {
    static const char* routes[] = {
        "/health",   "/v1/models",  "/v1/completions", "/v1/chat/completions",
        "/tokenize", "/detokenize", "/metrics",        "/v1/stream"};
    for (const char* r : routes)
      if (path == r) return path;
    if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{model}";
    return "other";
  }

  // Answers `req` (unless the client went away); returns the status for the log.
  int respond(const Request& req) {
    const unsigned version = req.version();
    headers_sent_ = false;
    try {
      const std::string path = path_of(req);
      const auto method = req.method();
      auto only = [&](http::verb allowed) {
        allowed_ = std::string(http::to_string(allowed));
        if (method != allowed)
          throw ApiError(405, fmt::format("{} {}: use {}", req.method_string(), path, allowed_),
                         "invalid_request_error", "", "method_not_allowed");
      };
      auto authorized = [&](http::verb allowed) {
        only(allowed);
        auth_.check(req[http::field::authorization]);
      };
      const Limits& limits = options_.limits;
      const Tokenizer& tokenizer = engine_.tokenizer();
      if (path == "/health") {
        only(http::verb::get);
        send_json(200, {{"status", "ok"}}, version);
        return 200;
      }
      const std::string models = "/v1/models";
      if (path == models || path.rfind(models + "/", 0) == 0) {  // the list, or one model
        authorized(http::verb::get);
        json model = {{"id", limits.model_name},
                      {"object", "model"},
                      {"created", started_},
                      {"owned_by", "forge"}};
        if (path == models) {
          send_json(200, {{"object", "list"}, {"data", json::array({model})}}, version);
        } else if (path.substr(models.size() + 1) == limits.model_name) {
          send_json(200, model, version);
        } else {
          throw ApiError(404,
                         fmt::format("The model '{}' does not exist; this server serves '{}'",
                                     path.substr(models.size() + 1), limits.model_name),
                         "invalid_request_error", "model", "model_not_found");
        }
        return 200;
      }
      if (path == "/v1/completions") {
        authorized(http::verb::post);
        return complete(req, parse_completion(req.body(), limits, tokenizer), Api::completions);
      }
      if (path == "/v1/chat/completions") {
        authorized(http::verb::post);
        return complete(req, parse_chat(req.body(), limits, tokenizer, options_.chat_template),
                        Api::chat);
      }
      if (path == "/tokenize" || path == "/detokenize") {
        authorized(http::verb::post);
        const auto answer = path == "/tokenize" ? tokenize_response : detokenize_response;
        send_json(200, answer(req.body(), limits, tokenizer), version);
        return 200;
      }
      if (path == "/v1/stream") {
        only(http::verb::get);
        // Browsers cannot set headers on a WebSocket: the token may come as ?access_token=.
        std::string authorization(req[http::field::authorization]);
        if (authorization.empty()) {
          const std::string token = query_value(req.target(), "access_token");
          if (!token.empty()) authorization = "Bearer " + token;
        }
        auth_.check(authorization);  // before the upgrade: a bad token gets an HTTP 401
        if (!beast::websocket::is_upgrade(req))
          throw ApiError(426,
                         "GET /v1/stream is a WebSocket: send Connection: Upgrade and Upgrade: "
                         "websocket",
                         "invalid_request_error", "", "upgrade_required");
        return websocket(req);
      }
      if (path == "/metrics") {
        authorized(http::verb::get);
        const EngineStats stats = engine_.stats();
        const int64_t slots = engine_.slots();
        http::response<http::string_body> res{http::status::ok, version};
        res.set(http::field::content_type, kMetricsContentType);
        res.body() = metrics_.render(stats, slots);
        write(res);
        return 200;
      }
      throw ApiError(404,
                     fmt::format("no route {} {}; this server answers GET /health, GET /v1/models, "
                                 "POST /v1/completions, POST /v1/chat/completions, GET /v1/stream "
                                 "(WebSocket), POST /tokenize, POST /detokenize and GET /metrics",
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

  // The value of `key` in the target's query string ("" when absent); not percent-decoded
  // (API keys and JWTs need no escaping).
  static std::string query_value(std::string_view target, std::string_view key) {
    const size_t q = target.find('?');
    if (q == std::string_view::npos) return "";
    std::string_view query = target.substr(q + 1);
    while (!query.empty()) {
      const size_t amp = query.find('&');
      const std::string_view pair = query.substr(0, amp);
      if (pair.size() > key.size() && pair.substr(0, key.size()) == key && pair[key.size()] == '=')
        return std::string(pair.substr(key.size() + 1));
      if (amp == std::string_view::npos) break;
      query.remove_prefix(amp + 1);
    }
    return "";
  }

  // ---- GET /v1/stream: the WebSocket channel (serve/websocket.h) ----

  // Runs the session on a duplicate of the socket's descriptor (this connection keeps and closes
  // the original under the registry's lock, as for any connection); returns 101 for the log.
  int websocket(const Request& req) {
    keep_alive_ = false;
    const int fd = ::dup(socket_.native_handle());
    if (fd < 0) throw std::runtime_error("cannot duplicate the socket for the WebSocket");
    WebSocketOptions ws{.limits = options_.limits,
                        .chat_template = options_.chat_template,
                        .max_message = size_t(options_.max_body),
                        .max_queued_bytes = size_t(options_.ws_queue_limit),
                        .send_timeout = options_.write_timeout};
    const std::function<bool()> stopping = [this] {
      std::lock_guard lock(registry_.mu);
      return registry_.stopping;
    };
    const tcp protocol = socket_.local_endpoint().protocol();
    run_websocket(fd, protocol, req, engine_, metrics_, ws, stopping);
    return 101;
  }

  // ---- POST /v1/completions and /v1/chat/completions ----

  // What a completion sees of this connection: chunked SSE data lines, and whether the client
  // hung up.
  class Channel final : public ClientChannel {
   public:
    explicit Channel(Connection& c) : c_(c) {}
    void send_data(const std::string& data) override {
      const std::string event = "data: " + data + "\n\n";
      c_.stream_.expires_after(c_.options_.write_timeout);
      error_code ec;
      net::write(c_.stream_, http::make_chunk(net::buffer(event)), ec);
      if (ec) throw ClientGone{};
    }
    bool client_gone() override { return c_.stream_.peer_gone(); }

   private:
    Connection& c_;
  };

  int complete(const Request& req, CompletionRequest r, Api api) {
    Completion completion(engine_, std::move(r),
                          {.api = api,
                           .model_name = options_.limits.model_name,
                           .metrics = &metrics_,
                           .transport = "http",
                           .received = received_,
                           .notify = {}});
    Channel channel(*this);
    if (!completion.streaming()) {
      send_json(200, completion.reply(channel), req.version());
      return 200;
    }
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
    completion.stream(channel);
    stream_.expires_after(options_.write_timeout);
    net::write(stream_, http::make_chunk_last(), ec);
    if (ec) throw ClientGone{};
    return 200;
  }

  tcp::socket socket_;
  TimedSocket stream_;
  const uint64_t id_;
  Engine& engine_;
  const Auth& auth_;
  const ServerOptions& options_;
  Registry& registry_;
  Metrics& metrics_;
  const int64_t started_;
  std::string remote_;
  bool keep_alive_ = false;
  bool headers_sent_ = false;   // of a streamed response: no other status can be sent now
  std::string allowed_;         // the method of the route (for 405's Allow)
  Clock::time_point received_;  // when the current request had been read
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
  Metrics metrics;
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
        Connection connection(std::move(socket), id, engine, auth, options, registry, metrics,
                              started);
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
