#include "serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

namespace forge::serve {

namespace {

// Seconds, 1 ms to 10 s: a token of a small model on a CPU is about a millisecond, a first token
// behind a full queue many seconds.
const std::vector<double> kLatencyBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                            0.25,  0.5,    1,     2.5,  5,     10};
const std::vector<double> kBatchBounds = {1, 2, 4, 8, 16, 32, 64};

// A label value with \, " and newline escaped, as the format asks.
std::string escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

// {a="x",b="y"} from `labels` (already escaped), empty for none.
std::string braces(const std::string& labels) {
  return labels.empty() ? "" : "{" + labels + "}";
}

// A number as Prometheus parses it: shortest round-trip form, +Inf for infinity.
std::string number(double v) {
  if (v == std::numeric_limits<double>::infinity()) return "+Inf";
  return fmt::format("{}", v);
}

void header(std::string& out, const std::string& name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

// One histogram's series: cumulative _bucket lines (le="+Inf" equal to _count), _sum, _count.
void histogram_lines(std::string& out, const std::string& name, const std::string& labels,
                     const Histogram& h) {
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= h.bounds.size(); ++i) {
    cumulative += h.counts[i];
    const std::string le = i < h.bounds.size() ? number(h.bounds[i]) : "+Inf";
    out += fmt::format("{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, le, cumulative);
  }
  out += fmt::format("{}_sum{} {}\n", name, braces(labels), number(h.sum));
  out += fmt::format("{}_count{} {}\n", name, braces(labels), h.count);
}

std::string transport_label(const std::string& transport) {
  return fmt::format("transport=\"{}\"", escape(transport));
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds_)
    : bounds(std::move(bounds_)), counts(bounds.size() + 1, 0) {}

void Histogram::observe(double v) {
  // The first bucket whose upper bound holds v (le: less than or equal).
  const size_t i = size_t(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
  ++counts[i];
  sum += v;
  ++count;
}

Metrics::Metrics() {
  // The http series exist from the start, so that rates over them have a first sample at 0.
  tokens_["http"] = {0, 0};
  ttft_.emplace("http", Histogram(kLatencyBounds));
  inter_token_.emplace("http", Histogram(kLatencyBounds));
}

void Metrics::count_request(const std::string& endpoint, int status, const std::string& transport) {
  std::lock_guard lock(mu_);
  ++requests_[{endpoint, status, transport}];
}

void Metrics::count_tokens(int64_t prompt, int64_t generated, const std::string& transport) {
  std::lock_guard lock(mu_);
  auto& [p, g] = tokens_[transport];
  p += prompt;
  g += generated;
}

Histogram& Metrics::latency(std::map<std::string, Histogram>& family,
                            const std::string& transport) {
  return family.try_emplace(transport, kLatencyBounds).first->second;
}

void Metrics::observe_time_to_first_token(double seconds, const std::string& transport) {
  std::lock_guard lock(mu_);
  latency(ttft_, transport).observe(seconds);
}

void Metrics::observe_inter_token_latency(double seconds, const std::string& transport) {
  std::lock_guard lock(mu_);
  latency(inter_token_, transport).observe(seconds);
}

std::string Metrics::render(const EngineStats& engine, int64_t slots) const {
  std::lock_guard lock(mu_);
  std::string out;
  header(out, "forge_requests_total", "counter", "Requests answered, by endpoint and HTTP status.");
  for (const auto& [key, n] : requests_) {
    const auto& [endpoint, status, transport] = key;
    out += fmt::format("forge_requests_total{{endpoint=\"{}\",status=\"{}\",{}}} {}\n",
                       escape(endpoint), status, transport_label(transport), n);
  }
  header(out, "forge_prompt_tokens_total", "counter",
         "Prompt tokens submitted to the engine (each choice's prompt once).");
  for (const auto& [transport, n] : tokens_)
    out += fmt::format("forge_prompt_tokens_total{{{}}} {}\n", transport_label(transport), n.first);
  header(out, "forge_generated_tokens_total", "counter", "Tokens generated.");
  for (const auto& [transport, n] : tokens_)
    out += fmt::format("forge_generated_tokens_total{{{}}} {}\n", transport_label(transport),
                       n.second);

  header(out, "forge_queue_length", "gauge", "Requests waiting for a slot.");
  out += fmt::format("forge_queue_length {}\n", engine.waiting);
  header(out, "forge_active_slots", "gauge", "Slots generating a request now.");
  out += fmt::format("forge_active_slots {}\n", engine.active);
  header(out, "forge_paused_requests", "gauge",
         "Requests paused because their clients have not read their tokens.");
  out += fmt::format("forge_paused_requests {}\n", engine.paused);
  header(out, "forge_slots", "gauge", "Slots of the engine (requests generated together).");
  out += fmt::format("forge_slots {}\n", slots);

  // EngineStats::batch_sizes[m] counts the decode steps that ran m rows.
  Histogram batch(kBatchBounds);
  for (size_t m = 1; m < engine.batch_sizes.size(); ++m) {
    const uint64_t steps = uint64_t(engine.batch_sizes[m]);
    const size_t i = size_t(std::lower_bound(kBatchBounds.begin(), kBatchBounds.end(), double(m)) -
                            kBatchBounds.begin());
    batch.counts[i] += steps;
    batch.sum += double(m) * double(steps);
    batch.count += steps;
  }
  header(out, "forge_batch_size", "histogram", "Rows (active slots) of each batched decode step.");
  histogram_lines(out, "forge_batch_size", "", batch);

  header(out, "forge_time_to_first_token_seconds", "histogram",
         "Seconds from a request's arrival to its first token, per choice.");
  for (const auto& [transport, h] : ttft_)
    histogram_lines(out, "forge_time_to_first_token_seconds", transport_label(transport), h);
  header(out, "forge_inter_token_latency_seconds", "histogram",
         "Seconds between successive token events of a choice.");
  for (const auto& [transport, h] : inter_token_)
    histogram_lines(out, "forge_inter_token_latency_seconds", transport_label(transport), h);
  return out;
}

}  // namespace forge::serve
