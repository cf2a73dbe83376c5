#include "recipes/report.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "tensor/error.h"

namespace forge {

bool stdout_is_terminal() {
  return isatty(fileno(stdout)) != 0;
}

std::string format_duration(double seconds) {
  const int64_t s = std::llround(std::max(0.0, seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}h{:02d}m", s / 3600, s % 3600 / 60);
}

namespace {
// Columns of the terminal on stdout; 0 when unknown (then lines are not cut).
int terminal_columns() {
  winsize w{};
  return ioctl(STDOUT_FILENO, TIOCGWINSZ, &w) == 0 ? int(w.ws_col) : 0;
}
}  // namespace

ProgressBar::ProgressBar(int64_t total, std::string label, bool enabled)
    : total_(total), label_(std::move(label)), enabled_(enabled) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

void ProgressBar::update(int64_t done, const std::string& status) {
  if (!enabled_) return;
  updated_ = std::chrono::steady_clock::now();
  if (first_done_ < 0) {
    first_done_ = done;
    first_time_ = updated_;
  }
  done_ = done;
  status_ = status;
  if (done < total_ && shown_ && updated_ - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = updated_;
  draw();
}

std::string ProgressBar::render() const {
  const double elapsed = std::chrono::duration<double>(updated_ - start_).count();
  // The rate of the updates seen so far (a resumed run starts at its step, and setup is not a
  // step).
  const double since_first = std::chrono::duration<double>(updated_ - first_time_).count();
  const std::string eta =
      done_ >= total_ ? "0s"
      : done_ > first_done_
          ? format_duration(since_first * double(total_ - done_) / double(done_ - first_done_))
          : "--";
  const std::string head = fmt::format("{} {}/{} ", label_, done_, total_);
  const std::string tail = fmt::format("{}{}eta {} | {} elapsed", status_,
                                       status_.empty() ? "" : " | ", eta, format_duration(elapsed));
  // The bar takes up to 20 columns of what the terminal has left (none under 5).
  constexpr int kMaxBar = 20;
  const int columns = terminal_columns();
  const int room = columns > 0 ? columns - 1 - int(head.size() + tail.size()) - 3 : kMaxBar;
  const int width = std::min(kMaxBar, room);
  std::string bar;
  if (width >= 5) {
    const int64_t filled =
        total_ > 0 ? width * std::clamp<int64_t>(done_, 0, total_) / total_ : width;
    bar = "[" + std::string(size_t(filled), '#') + std::string(size_t(width - filled), '.') + "] ";
  }
  std::string line = head + bar + tail;
  if (columns > 1 && line.size() >= size_t(columns)) line.resize(size_t(columns - 1));
  return line;
}

ProgressBar::~ProgressBar() {
  finish(true);
}

void ProgressBar::draw() {
  std::fputs("\r", stdout);
  std::fputs(render().c_str(), stdout);
  std::fputs("\033[K", stdout);
  std::fflush(stdout);
  shown_ = true;
}

void ProgressBar::print(const std::string& line) {
  if (enabled_) std::fputs("\r\033[K", stdout);
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  if (enabled_ && shown_)
    draw();
  else
    std::fflush(stdout);
}

void ProgressBar::finish(bool keep) {
  if (!enabled_ || !shown_) return;
  if (keep) {
    draw();  // the latest state, which the ~10 draws a second may have skipped
    std::fputc('\n', stdout);
  } else {
    std::fputs("\r\033[K", stdout);
  }
  std::fflush(stdout);
  shown_ = false;
}

namespace {
std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (uint8_t(c) < 0x20)
          out += fmt::format("\\u{:04x}", int(c));
        else
          out += c;
    }
  }
  return out;
}
}  // namespace

std::string to_json_line(const MetricRecord& record) {
  std::string s = "{";
  for (size_t i = 0; i < record.size(); ++i) {
    const auto& [key, value] = record[i];
    if (i) s += ", ";
    s += fmt::format("\"{}\": ", json_escape(key));
    if (auto* iv = std::get_if<int64_t>(&value))
      s += std::to_string(*iv);
    else if (auto* dv = std::get_if<double>(&value))
      s += std::isfinite(*dv) ? fmt::format("{:.9g}", *dv) : std::string("null");
    else
      s += fmt::format("\"{}\"", json_escape(std::get<std::string>(value)));
  }
  s += '}';
  return s;
}

MetricsWriter::MetricsWriter(const std::string& path) {
  if (path.empty()) return;
  // The file's directory is made as --out's is (`--out out --metrics out/metrics.jsonl` works).
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  FORGE_CHECK(!ec, "--metrics {}: cannot make its directory {}: {}", path, parent.string(),
              ec.message());
  file_ = std::fopen(path.c_str(), "a");
  FORGE_CHECK(file_ != nullptr, "--metrics {}: cannot open for appending: {}", path,
              std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  if (file_) std::fclose(file_);
}

void MetricsWriter::write(const MetricRecord& record) {
  if (!file_) return;
  std::string line = to_json_line(record);
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), file_);
  std::fflush(file_);
}

}  // namespace forge
