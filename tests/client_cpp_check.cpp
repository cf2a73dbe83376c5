// The C++ client (clients/cpp) against a live serve, run by tests/cli_cpp_client.sh:
//   client_cpp_check BASE_URL API_KEY BUSY_URL
// BASE_URL serves with API_KEY and --max-tokens-limit 100000; BUSY_URL has one slot and no queue
// (for the 429 retries). Plain, SSE and WebSocket texts agree for a seed; chat; a WebSocket
// cancel ends "cancelled" and frees the slot; a wrong key and a bad field surface as ApiError
// with the status and param; 429s are retried until the slot frees; a closed port is a
// TransportError. Every wait is bounded.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "clients/cpp/forge_client.h"

using namespace forge::client;
using nlohmann::json;

namespace {

int failures = 0;
void check(const std::string& what, bool ok, const std::string& detail = "") {
  std::printf("%s %s%s\n", ok ? "ok  " : "FAIL", what.c_str(),
              ok || detail.empty() ? "" : (": " + detail).c_str());
  if (!ok) ++failures;
}

// The value of a metrics line "NAME VALUE" (-1 when absent).
double metric(Client& c, const std::string& name) {
  const std::string text = c.metrics();
  const size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + name.size() + 2));
}

// Polls until forge_active_slots reads `want` (bounded: 10 s).
double wait_active(Client& c, double want) {
  double active = -1;
  for (int i = 0; i < 100 && active != want; ++i) {
    active = metric(c, "forge_active_slots");
    if (active != want) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return active;
}

template <class F>
void expect_api_error(const std::string& what, int status, const std::string& param, F f) {
  try {
    f();
    check(what, false, "no error");
  } catch (const ApiError& e) {
    check(what + ": ApiError " + std::to_string(status) + (param.empty() ? "" : " naming " + param),
          e.status() == status && e.param() == param && !e.type().empty(),
          std::to_string(e.status()) + " " + e.error().dump());
  } catch (const std::exception& e) {
    check(what, false, std::string("another exception: ") + e.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: client_cpp_check BASE_URL API_KEY BUSY_URL\n");
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each check's line at once (the test may time out)
  const std::string base = argv[1], key = argv[2], busy_url = argv[3];
  try {
    Client c(base + "/v1", key);  // the SDKs' form of the URL works too
    const json req = {
        {"model", "tiny"}, {"prompt", "we"}, {"max_tokens", 24}, {"temperature", 1.0}, {"seed", 5}};
    const json a = c.complete(req), b = c.complete(req);
    const std::string text = a["choices"][0]["text"];
    check("complete: the same text for the same seed", text == b["choices"][0]["text"] &&
                                                           text.size() == 24 &&
                                                           a["usage"]["completion_tokens"] == 24);
    std::string pieces;
    const Completion sse = c.stream(req, [&](const std::string& p) { pieces += p; });
    check("stream (SSE): the plain text, piece by piece", sse.text == text && pieces == text,
          sse.text + " vs " + text);
    check("stream (SSE): finish_reason length", sse.finish_reason == "length", sse.finish_reason);
    pieces.clear();
    const Completion ws = c.stream_ws(req, [&](const std::string& p) { pieces += p; });
    check("stream_ws: the plain text, piece by piece", ws.text == text && pieces == text,
          ws.text + " vs " + text);
    check("stream_ws: usage", ws.usage.value("completion_tokens", 0) == 24, ws.usage.dump());

    const json chat_req = {{"model", "tiny"},
                           {"max_tokens", 8},
                           {"seed", 2},
                           {"messages", json::array({{{"role", "user"}, {"content", "we"}}})}};
    const json chat = c.chat(chat_req);
    const std::string content = chat["choices"][0]["message"]["content"];
    const Completion chat_sse = c.stream(chat_req, {});
    const Completion chat_ws = c.stream_ws(chat_req, {});
    check("chat: plain, SSE and WebSocket agree",
          chat_sse.text == content && chat_ws.text == content,
          content + " | " + chat_sse.text + " | " + chat_ws.text);

    // Cancel mid-stream over the WebSocket.
    Cancel cancel;
    int seen = 0;
    json long_req = req;
    long_req["max_tokens"] = 100000;
    const Completion cancelled = c.stream_ws(
        long_req,
        [&](const std::string&) {
          if (++seen == 3) cancel.cancel();
        },
        &cancel);
    check("stream_ws cancel: finish_reason cancelled", cancelled.finish_reason == "cancelled",
          cancelled.finish_reason);
    check("stream_ws cancel: well before max_tokens",
          cancelled.usage.value("completion_tokens", 100000) < 100000, cancelled.usage.dump());
    check("stream_ws cancel: the slot freed", wait_active(c, 0) == 0);

    // Errors.
    Client wrong(base, "sk-wrong");
    expect_api_error("complete with a wrong key", 401, "", [&] { wrong.complete(req); });
    expect_api_error("stream_ws with a wrong key (refused at the upgrade)", 401, "",
                     [&] { wrong.stream_ws(req, {}); });
    json bad = req;
    bad["temperature"] = 9;
    expect_api_error("complete with temperature 9", 400, "temperature", [&] { c.complete(bad); });
    expect_api_error("stream with temperature 9", 400, "temperature", [&] { c.stream(bad, {}); });
    expect_api_error("stream_ws with temperature 9", 400, "temperature",
                     [&] { c.stream_ws(bad, {}); });
    // A 400 is not retried.
    int retried = 0;
    Client counting(base, key,
                    ClientOptions{.on_retry = [&](int, std::chrono::milliseconds) { ++retried; }});
    expect_api_error("a 400 with retries allowed", 400, "temperature",
                     [&] { counting.complete(bad); });
    check("a 400 is not retried", retried == 0, std::to_string(retried));

    // 429 retried until the only slot frees: a holder occupies it (10^7 tokens: hours), and is
    // cancelled 1.5 s later.
    Client busy(busy_url, key);
    Cancel release;
    json holder_req = req;
    holder_req["max_tokens"] = 10000000;
    std::thread holder([&] {
      try {
        const Completion held_done = busy.stream_ws(holder_req, {}, &release);
        std::printf("note the holder ended: %s\n", held_done.finish_reason.c_str());
      } catch (const std::exception& e) {
        std::printf("note the holder ended with %s\n", e.what());
      }
    });
    const double held = wait_active(busy, 1);
    check("busy server: the holder has the only slot", held == 1);
    std::thread releaser([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      release.cancel();
      std::printf("note the holder is cancelled\n");
    });
    std::vector<int> statuses;
    Client patient(busy_url, key,
                   ClientOptions{.max_retries = 8,
                                 .backoff = std::chrono::milliseconds(100),
                                 .on_retry = [&](int s, std::chrono::milliseconds wait) {
                                   std::printf("note retry after %d, waiting %lld ms\n", s,
                                               (long long)wait.count());
                                   statuses.push_back(s);
                                 }});
    bool served = false;
    try {
      served = patient.complete(req)["choices"][0]["text"] == text;
    } catch (const std::exception& e) {
      check("429 retried until served", false, e.what());
    }
    releaser.join();
    holder.join();
    check("429 retried until served (same text)", served);
    check("429: at least one retry, each after a 429",
          !statuses.empty() &&
              std::all_of(statuses.begin(), statuses.end(), [](int s) { return s == 429; }),
          std::to_string(statuses.size()) + " retries");

    // Nothing listening: a TransportError.
    try {
      ClientOptions quick;
      quick.connect_timeout = std::chrono::milliseconds(2000);
      Client closed("http://127.0.0.1:1", key, quick);
      closed.complete(req);
      check("a closed port: TransportError", false, "no error");
    } catch (const TransportError&) {
      check("a closed port: TransportError", true);
    }
  } catch (const std::exception& e) {
    check("unexpected exception", false, e.what());
  }
  std::printf("%s\n", failures ? "cpp client: checks failed" : "cpp client: all checks passed");
  return failures ? 1 : 0;
}
