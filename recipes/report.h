// What the training loops print: a progress bar on a terminal, and JSON-lines metrics files.
//
//   ProgressBar bar(469, "epoch 1/5");          // draws only when stdout is a terminal
//   bar.update(i + 1, fmt::format("loss {:.4f}", loss));
//   bar.finish();
//   MetricsWriter m("run.jsonl");               // appends; no file when the path is empty
//   m.write({{"epoch", 1}, {"train_loss", 0.51}});
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace forge {

bool stdout_is_terminal();

class ProgressBar {
 public:
  ProgressBar(int64_t total, std::string label, bool enabled = stdout_is_terminal());
  // Redraws at most ~10 times a second; shows count, rate-based ETA and `status`.
  void update(int64_t done, const std::string& status = "");
  void finish();  // clears the bar line

 private:
  int64_t total_;
  std::string label_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

using MetricValue = std::variant<int64_t, double, std::string>;
using MetricRecord = std::vector<std::pair<std::string, MetricValue>>;

// Serialises one record as a single-line JSON object (keys in the given order).
std::string to_json_line(const MetricRecord& record);

class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path);  // "" -> writes nothing
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const MetricRecord& record);  // appends one line and flushes
  bool enabled() const { return file_ != nullptr; }

 private:
  std::FILE* file_ = nullptr;
};

}  // namespace forge
