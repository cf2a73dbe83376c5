#include "recipes/report.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "tensor/error.h"

namespace forge {

bool stdout_is_terminal() {
  return isatty(fileno(stdout)) != 0;
}

ProgressBar::ProgressBar(int64_t total, std::string label, bool enabled)
    : total_(total), label_(std::move(label)), enabled_(enabled) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

void ProgressBar::update(int64_t done, const std::string& status) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  double elapsed = std::chrono::duration<double>(now - start_).count();
  double eta = done > 0 ? elapsed * double(total_ - done) / double(done) : 0.0;
  constexpr int kWidth = 30;
  int filled = total_ > 0 ? int(kWidth * done / total_) : kWidth;
  std::string bar(size_t(filled), '#');
  bar.resize(kWidth, '.');
  std::printf("\r%s [%s] %lld/%lld eta %.0fs %s\033[K", label_.c_str(), bar.c_str(),
              (long long)done, (long long)total_, eta, status.c_str());
  std::fflush(stdout);
}

void ProgressBar::finish() {
  if (!enabled_) return;
  std::printf("\r\033[K");
  std::fflush(stdout);
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
