#include <cstdio>
#include <filesystem>
#include <fstream>

#include "recipes/report.h"
#include "testing.h"

using namespace forge;

TEST_CASE("to_json_line writes one JSON object with keys in order and escapes strings") {
  std::string s = to_json_line(
      {{"epoch", int64_t(3)}, {"train_loss", 0.25}, {"note", std::string("a \"quoted\"\nline")}});
  CHECK(s == R"({"epoch": 3, "train_loss": 0.25, "note": "a \"quoted\"\nline"})");
}

TEST_CASE("to_json_line writes non-finite numbers as null") {
  CHECK(to_json_line({{"x", std::numeric_limits<double>::infinity()}}) == R"({"x": null})");
}

TEST_CASE("MetricsWriter appends one line per record and keeps earlier lines") {
  auto path = std::filesystem::temp_directory_path() / "forge_metrics_test.jsonl";
  std::filesystem::remove(path);
  {
    MetricsWriter w(path.string());
    w.write({{"step", int64_t(1)}});
  }
  {
    MetricsWriter w(path.string());
    w.write({{"step", int64_t(2)}});
  }
  std::ifstream in(path);
  std::string a, b, c;
  std::getline(in, a);
  std::getline(in, b);
  CHECK(a == R"({"step": 1})");
  CHECK(b == R"({"step": 2})");
  CHECK_FALSE(std::getline(in, c));
  std::filesystem::remove(path);
}

TEST_CASE("MetricsWriter makes the file's directory, and names the path it cannot open") {
  const auto dir = std::filesystem::temp_directory_path() / "forge_metrics_dir_test";
  std::filesystem::remove_all(dir);
  {
    MetricsWriter w((dir / "out" / "m.jsonl").string());  // as `--out out --metrics out/m.jsonl`
    w.write({{"step", int64_t(1)}});
  }
  CHECK(std::filesystem::file_size(dir / "out" / "m.jsonl") == 12);
  // A directory that cannot be made: its would-be parent is a file.
  const std::string under_file = (dir / "out" / "m.jsonl" / "x.jsonl").string();
  REQUIRE_THROWS_WITH(MetricsWriter(under_file), Catch::Matchers::Contains(under_file));
  std::filesystem::remove_all(dir);
}

TEST_CASE("format_duration writes seconds, minutes and hours as a progress line shows them") {
  CHECK(format_duration(0) == "0s");
  CHECK(format_duration(-3) == "0s");
  CHECK(format_duration(42.4) == "42s");
  CHECK(format_duration(59.6) == "1m00s");
  CHECK(format_duration(125) == "2m05s");
  CHECK(format_duration(3599) == "59m59s");
  CHECK(format_duration(3720) == "1h02m");
  CHECK(format_duration(90000) == "25h00m");
}
