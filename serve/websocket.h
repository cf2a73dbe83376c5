// The WebSocket channel of `serve` (GET /v1/stream): several completions in flight on one socket,
// tokens pushed as they are made, cancel by id. Used by serve/http.cpp after it has read the
// upgrade request and checked its token; like http.cpp, this header's users compile Beast.
//
// Client -> server, one JSON object per text message:
//   {"type": "completion", "id": "a", ...a /v1/completions body}    ("stream" is implied)
//   {"type": "chat", "id": "b", ...a /v1/chat/completions body}
//   {"type": "cancel", "id": "a"}
// Server -> client:
//   {"type": "token", "id", "index", "text", "token_id", "logprob"?, "top_logprobs"?}  per token
//   {"type": "done", "id", "index", "finish_reason", "usage"}   per choice ("cancelled" after a
//                                                               cancel)
//   {"type": "error", "id", "status", "error": {OpenAI's error object}}   a refused message or
//                                     a failed choice (status: what HTTP would have answered,
//                                     e.g. 400, 429); the socket stays open
// A message that is not a JSON object gets an error with "id": null and the socket is closed
// (1007). Ids are the client's: an id already in flight is refused.
//
// Threads: the session runs on the connection's thread, on an io_context of its own; the engine
// wakes it through an eventfd after each event. Keep-alive: Beast's pings when idle, and a peer
// silent past the idle timeout is dropped. Flow control: past max_queued_bytes waiting to be sent,
// events stay in the engine's streams, and the engine pauses a request whose unread events pile
// up (EngineOptions::max_pending_events), so a slow reader costs memory bounded by both; a client
// that takes nothing for send_timeout is closed and its requests cancelled. On
// server shutdown the session takes no new requests (503), lets those in flight end, then closes
// with "going away".
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http.hpp>
#include <cstddef>
#include <functional>
#include <string>

#include "serve/engine.h"
#include "serve/metrics.h"
#include "serve/protocol.h"

namespace forge::serve {

struct WebSocketOptions {
  Limits limits;
  ChatTemplate chat_template;
  size_t max_message = 1 << 20;           // bytes of one client message
  size_t max_queued_bytes = 4 << 20;      // waiting to be sent; beyond, events wait in the engine
  std::chrono::seconds send_timeout{30};  // one message not taken by the client: close
  std::chrono::seconds idle_timeout{60};  // nothing received (pongs included) for this long: close
};

// Accepts the upgrade `request` on `socket` (a blocking-mode socket whose ownership passes here)
// and serves messages until either side closes. `stopping` is polled (every 100 ms) for server
// shutdown. Returns the number of requests served (for the log).
int64_t run_websocket(int fd, const boost::asio::ip::tcp& protocol,
                      const boost::beast::http::request<boost::beast::http::string_body>& request,
                      Engine& engine, Metrics& metrics, const WebSocketOptions& options,
                      const std::function<bool()>& stopping);

}  // namespace forge::serve
