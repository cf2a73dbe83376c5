// What the training loops print: a progress bar on a terminal, and JSON-lines metrics files.
//
//   ProgressBar bar(469, "epoch 1/5");          // draws only when stdout is a terminal
//   bar.update(i + 1, fmt::format("loss {:.4f}", loss));
//   bar.print("step 10 | loss 2.31");           // a log line above the bar (plain off a terminal)
//   bar.finish();                               // clears it; finish(true) keeps its last state
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

// "42s", "2m05s", "1h02m": a duration as a progress line shows it.
std::string format_duration(double seconds);

// One line kept at the bottom of a terminal: "label done/total [####....] status | eta 1m31s |
// 1m32s elapsed". Log lines go above it through print(). The line fits the terminal's width, so
// that a carriage return always goes back to its start: the bar narrows, then goes, then the end
// is cut (put what matters first in the status).
class ProgressBar {
 public:
  ProgressBar(int64_t total, std::string label, bool enabled = stdout_is_terminal());
  ~ProgressBar();  // finish(true) if still shown (an exception unwinding past it, say)
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  // Redraws at most ~10 times a second (always at the last step); the ETA is the rate so far.
  void update(int64_t done, const std::string& status = "");
  // Prints `line` and a newline: on a terminal above the bar, which is drawn again below it.
  void print(const std::string& line);
  void finish(bool keep = false);  // clears the bar line, or leaves its last state on its own line

 private:
  std::string render() const;  // the line of the latest update, fitted to the terminal
  void draw();

  int64_t total_;
  std::string label_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_draw_, first_time_, updated_;
  int64_t first_done_ = -1;  // `done` at the first update, when first_time_ was taken
  int64_t done_ = 0;         // the latest update (at updated_), drawn or not
  std::string status_;
  bool shown_ = false;  // the bar is on screen (drawn, not finished)
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
