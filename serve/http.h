// The HTTP transport of `serve`: OpenAI's routes over HTTP/1.1, on Boost.Beast (this header does
// not include it; serve/http.cpp is the one translation unit that does).
//
//   ServerOptions o{.port = 0, .limits = {.model_name = "tiny", .block_size = 64}};
//   int rc = run_server(engine, auth, o, [](const std::string& url) {
//     fmt::print("serve: listening on {}\n", url);   // url holds the actual port
//   });                                               // returns 0 after SIGTERM or SIGINT
//
// Routes: GET /health (no auth), GET /v1/models, POST /v1/completions and
// /v1/chat/completions (JSON, or server-sent events with "stream": true; serve/completion.h),
// POST /tokenize and /detokenize (serve/protocol.h), GET /metrics (Prometheus text, with the
// engine's gauges; serve/metrics.h). Every route but /health needs auth when auth is on. Errors are
// OpenAI's error object with the status of the ApiError (401 with WWW-Authenticate: Bearer, 429
// with Retry-After: 1), 404 for an unknown path, 405 for a wrong method, 413 for a body over
// max_body, 500 for anything unexpected (the server keeps going).
//
// Threads: the calling thread accepts connections and waits for signals; each connection gets a
// thread that reads requests synchronously (keep-alive), each read bounded by read_timeout from the
// start of a request, each write by write_timeout, so a slow or half-sent request cannot hold a
// thread. While a completion runs, the connection is polled: a client that hangs up has its
// requests cancelled in the engine. SIGTERM/SIGINT: stop accepting, close idle connections, let
// running requests end (engine.shutdown(shutdown_timeout) cancels what is left), return 0.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "serve/auth.h"
#include "serve/engine.h"
#include "serve/protocol.h"

namespace forge::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (the ready callback gets the one chosen)
  Limits limits;    // model_name (what /v1/models lists and requests must name), block size, ...
  ChatTemplate chat_template;                 // how /v1/chat/completions renders messages
  int64_t max_body = 1 << 20;                 // bytes of a request body; more -> 413
  std::chrono::seconds read_timeout{10};      // to read one whole request (header and body)
  std::chrono::seconds write_timeout{30};     // for one write to a client that does not read
  std::chrono::seconds shutdown_timeout{10};  // running requests get this long after a signal
  int64_t max_connections = 512;              // beyond: 503 and close
  int64_t ws_queue_limit = 4 << 20;  // bytes a WebSocket may have waiting to be sent; beyond,
                                     // its events wait in the engine (serve/websocket.h)
  bool log_json = false;  // request log on stderr: text lines, or one JSON object per line
};

// Serves until SIGTERM or SIGINT, then returns 0. Throws std::runtime_error when it cannot listen
// (naming host and port). `on_ready` is called once, listening, with "http://HOST:PORT".
int run_server(Engine& engine, const Auth& auth, const ServerOptions& options,
               const std::function<void(const std::string& url)>& on_ready);

}  // namespace forge::serve
