// Prometheus metrics of `serve`: counters and histograms the transports feed, rendered with the
// engine's gauges in the text exposition format 0.0.4 (GET /metrics). No socket here.
//
//   Metrics metrics;
//   metrics.count_request("/v1/completions", 200, "http");
//   metrics.observe_time_to_first_token(0.012, "http");
//   std::string text = metrics.render(engine.stats(), slots);  // Content-Type: kMetricsContentType
//
// What it exposes:
//   forge_requests_total{endpoint,status,transport}        counter
//   forge_prompt_tokens_total{transport}                    counter (prompt tokens run, per choice)
//   forge_generated_tokens_total{transport}                 counter
//   forge_queue_length, forge_active_slots, forge_slots     gauges (from EngineStats)
//   forge_batch_size                                        histogram of decode steps by rows
//   forge_time_to_first_token_seconds{transport}            histogram: request received -> first
//   token forge_inter_token_latency_seconds{transport}            histogram: between successive
//   token events
// `transport` is "http" today; a WebSocket channel would add its own series beside it.
// Thread-safe: every method may be called from any connection thread.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "serve/engine.h"

namespace forge::serve {

inline constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

// Observations counted into buckets of upper bounds `bounds` (ascending; +Inf is implicit).
// counts[i] is the number of observations in (bounds[i-1], bounds[i]], not cumulative;
// counts.back() those above every bound.
struct Histogram {
  explicit Histogram(std::vector<double> bounds_);
  void observe(double v);
  std::vector<double> bounds;
  std::vector<uint64_t> counts;
  double sum = 0;
  uint64_t count = 0;
};

class Metrics {
 public:
  Metrics();

  void count_request(const std::string& endpoint, int status, const std::string& transport);
  void count_tokens(int64_t prompt, int64_t generated, const std::string& transport);
  void observe_time_to_first_token(double seconds, const std::string& transport);
  void observe_inter_token_latency(double seconds, const std::string& transport);

  // The text exposition: these metrics, then the engine's gauges and batch sizes.
  std::string render(const EngineStats& engine, int64_t slots) const;

 private:
  Histogram& latency(std::map<std::string, Histogram>& family, const std::string& transport);

  mutable std::mutex mu_;
  std::map<std::tuple<std::string, int, std::string>, uint64_t> requests_;
  std::map<std::string, std::pair<int64_t, int64_t>> tokens_;  // transport -> (prompt, generated)
  std::map<std::string, Histogram> ttft_, inter_token_;        // by transport
};

}  // namespace forge::serve
