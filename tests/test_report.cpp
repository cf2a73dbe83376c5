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

TEST_CASE("MetricsWriter names the path it cannot open") {
  REQUIRE_THROWS_WITH(MetricsWriter("/nonexistent-dir/x.jsonl"),
                      Catch::Matchers::Contains("/nonexistent-dir/x.jsonl"));
}
