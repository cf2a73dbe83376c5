// serve/metrics: the Prometheus text exposition (HELP and TYPE lines, cumulative buckets ending in
// +Inf, _sum and _count, label escaping, the engine's gauges and batch-size histogram), and
// serve/protocol's tokenizer and chat-logprobs responses, all without a socket.
#include <sstream>

#include "serve/metrics.h"
#include "serve/protocol.h"
#include "testing.h"

using namespace forge;
using namespace forge::serve;
using forge::testing::Contains;
using json = nlohmann::json;

namespace {

// The rendered lines that start with `prefix`, in order.
std::vector<std::string> lines_with(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix, 0) == 0) out.push_back(line);
  return out;
}

}  // namespace

TEST_CASE("serve metrics: histograms render cumulative buckets, +Inf, _sum and _count") {
  Histogram h({0.01, 0.1, 1});
  for (double v : {0.005, 0.01, 0.05, 0.5, 3.0}) h.observe(v);  // 0.01 falls in le="0.01"
  CHECK(h.counts == std::vector<uint64_t>{2, 1, 1, 1});
  CHECK(h.count == 5);
  CHECK(h.sum == Approx(3.565).epsilon(1e-12));

  Metrics m;
  for (double v : {0.0005, 0.003, 0.003, 0.2, 12.0}) m.observe_time_to_first_token(v, "http");
  m.observe_inter_token_latency(0.002, "http");
  EngineStats stats;
  const std::string text = m.render(stats, 4);
  CHECK(lines_with(text, "forge_time_to_first_token_seconds") ==
        std::vector<std::string>{
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="0.001"} 1)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="0.0025"} 1)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="0.005"} 3)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="0.01"} 3)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="0.025"} 3)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="0.05"} 3)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="0.1"} 3)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="0.25"} 4)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="0.5"} 4)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="1"} 4)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="2.5"} 4)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="5"} 4)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="10"} 4)",
            R"(forge_time_to_first_token_seconds_bucket{transport="http",le="+Inf"} 5)",
            R"(forge_time_to_first_token_seconds_sum{transport="http"} 12.2065)",
            R"(forge_time_to_first_token_seconds_count{transport="http"} 5)"});
  CHECK(lines_with(text, "forge_inter_token_latency_seconds_count") ==
        std::vector<std::string>{R"(forge_inter_token_latency_seconds_count{transport="http"} 1)"});
  CHECK_THAT(text, Contains("# HELP forge_time_to_first_token_seconds ") &&
                       Contains("# TYPE forge_time_to_first_token_seconds histogram\n") &&
                       Contains("# TYPE forge_inter_token_latency_seconds histogram\n"));
}

TEST_CASE("serve metrics: counters by label, the engine's gauges and batch sizes") {
  Metrics m;
  m.count_request("/v1/completions", 200, "http");
  m.count_request("/v1/completions", 200, "http");
  m.count_request("/v1/completions", 400, "http");
  m.count_request("a\"b\\c\nd", 404, "websocket");  // escaped as the format asks
  m.count_tokens(3, 20, "http");
  m.count_tokens(5, 7, "http");
  EngineStats stats;
  stats.active = 2;
  stats.waiting = 5;
  // Steps by rows: 1 row x3, 2 rows x1, 3 rows x2, 8 rows x1 (slots 8).
  stats.batch_sizes = {0, 3, 1, 2, 0, 0, 0, 0, 1};
  const std::string text = m.render(stats, 8);

  CHECK_THAT(text, Contains("# HELP forge_requests_total ") &&
                       Contains("# TYPE forge_requests_total counter\n") &&
                       Contains("# TYPE forge_prompt_tokens_total counter\n") &&
                       Contains("# TYPE forge_generated_tokens_total counter\n") &&
                       Contains("# TYPE forge_queue_length gauge\n") &&
                       Contains("# TYPE forge_active_slots gauge\n") &&
                       Contains("# TYPE forge_slots gauge\n") &&
                       Contains("# TYPE forge_batch_size histogram\n"));
  CHECK(lines_with(text, "forge_requests_total") ==
        std::vector<std::string>{
            R"(forge_requests_total{endpoint="/v1/completions",status="200",transport="http"} 2)",
            R"(forge_requests_total{endpoint="/v1/completions",status="400",transport="http"} 1)",
            R"(forge_requests_total{endpoint="a\"b\\c\nd",status="404",transport="websocket"} 1)"});
  CHECK(lines_with(text, "forge_prompt_tokens_total") ==
        std::vector<std::string>{R"(forge_prompt_tokens_total{transport="http"} 8)"});
  CHECK(lines_with(text, "forge_generated_tokens_total") ==
        std::vector<std::string>{R"(forge_generated_tokens_total{transport="http"} 27)"});
  CHECK(lines_with(text, "forge_queue_length") == std::vector<std::string>{"forge_queue_length 5"});
  CHECK(lines_with(text, "forge_active_slots") == std::vector<std::string>{"forge_active_slots 2"});
  CHECK(lines_with(text, "forge_slots") == std::vector<std::string>{"forge_slots 8"});
  CHECK(lines_with(text, "forge_batch_size") ==
        std::vector<std::string>{
            R"(forge_batch_size_bucket{le="1"} 3)", R"(forge_batch_size_bucket{le="2"} 4)",
            R"(forge_batch_size_bucket{le="4"} 6)", R"(forge_batch_size_bucket{le="8"} 7)",
            R"(forge_batch_size_bucket{le="16"} 7)", R"(forge_batch_size_bucket{le="32"} 7)",
            R"(forge_batch_size_bucket{le="64"} 7)", R"(forge_batch_size_bucket{le="+Inf"} 7)",
            "forge_batch_size_sum 19",  // 3 + 2 + 6 + 8
            "forge_batch_size_count 7"});
  // Every sample line belongs to a family announced before it, and the text ends in a newline.
  CHECK(text.back() == '\n');
  std::string family;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# TYPE ", 0) == 0)
      family = line.substr(7, line.find(' ', 7) - 7);
    else if (line[0] != '#')
      CHECK(line.rfind(family, 0) == 0);
  }
}

TEST_CASE("serve protocol: /tokenize and /detokenize round-trip and name the bad field") {
  const Tokenizer tok = Tokenizer::chars_of(" abcdefgh");
  const Limits limits{.model_name = "tiny", .block_size = 16};
  json t = tokenize_response(R"({"prompt": "bad cafe"})", limits, tok);
  CHECK(t["tokens"] == json(tok.encode("bad cafe")));
  CHECK(t["count"] == 8);
  json d =
      detokenize_response(json{{"model", "tiny"}, {"tokens", t["tokens"]}}.dump(), limits, tok);
  CHECK(d == json{{"prompt", "bad cafe"}});
  auto param_of = [&](auto f, const std::string& body) {
    try {
      f(body, limits, tok);
    } catch (const ApiError& e) {
      return std::to_string(e.status) + " " + e.param;
    }
    return std::string("accepted");
  };
  CHECK(param_of(tokenize_response, R"({"prompt": "xyz"})") == "400 prompt");
  CHECK(param_of(tokenize_response, R"({"prompt": 5})") == "400 prompt");
  CHECK(param_of(tokenize_response, R"({})") == "400 prompt");
  CHECK(param_of(tokenize_response, R"({"model": "other", "prompt": "a"})") == "404 model");
  CHECK(param_of(detokenize_response, R"({"tokens": [0, 9]})") == "400 tokens");  // vocab is 9
  CHECK(param_of(detokenize_response, R"({"tokens": [-1]})") == "400 tokens");
  CHECK(param_of(detokenize_response, R"({"tokens": ["a"]})") == "400 tokens");
  CHECK(param_of(detokenize_response, R"({"tokens": 3})") == "400 tokens");
  CHECK(param_of(detokenize_response, R"({"tokens": [18446744073709551615]})") == "400 tokens");
  CHECK(param_of(detokenize_response, R"({"tokens": []})") == "accepted");
}

TEST_CASE("serve protocol: chat logprobs in OpenAI's shape, with each token's bytes") {
  const Tokenizer tok = Tokenizer::chars_of(" ab");
  const std::vector<int64_t> ids = tok.encode("ab");
  json lp = chat_logprobs_json(tok, ids, {-0.5, -1.25}, {{{ids[0], -0.5}, {ids[1], -2.0}}, {}});
  CHECK(lp == json::parse(R"({"content": [
      {"token": "a", "logprob": -0.5, "bytes": [97],
       "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]},
                        {"token": "b", "logprob": -2.0, "bytes": [98]}]},
      {"token": "b", "logprob": -1.25, "bytes": [98], "top_logprobs": []}]})"));
}
