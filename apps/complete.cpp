// build/apps/complete: a terminal client of serve (clients/cpp/forge_client.h) that prints the
// tokens as they arrive.
//
//   build/apps/complete --url http://127.0.0.1:8080 --prompt "ROMEO:" --max-tokens 100 --stream
//   build/apps/complete --prompt "ROMEO:" --ws                  # over the WebSocket channel
//   build/apps/complete --chat --prompt "Who are you?"          # one user message, chat API
//   FORGE_API_KEY=sk-... build/apps/complete --prompt "ROMEO:"  # or --api-key
//
// Without --model, the server's first model (GET /v1/models). Errors: "error: STATUS TYPE (param
// P): MESSAGE" on stderr and exit 1; a connection that fails: exit 2.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "clients/cpp/forge_client.h"

using forge::client::ApiError;
using forge::client::Client;
using forge::client::ClientOptions;
using forge::client::TransportError;
using nlohmann::json;

int main(int argc, char** argv) {
  CLI::App app{"forge complete: ask a serve (or any OpenAI-compatible server) for a completion"};
  std::string url = "http://127.0.0.1:8080", api_key, model, prompt;
  int64_t max_tokens = 64;
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0, seed = -1;
  int retries = 3;
  std::vector<std::string> stop;
  bool stream = false, ws = false, chat = false;
  if (const char* k = std::getenv("FORGE_API_KEY")) api_key = k;
  app.add_option("--url", url, "the server (http://HOST:PORT)");
  app.add_option("--api-key", api_key, "Bearer token (default: $FORGE_API_KEY)");
  app.add_option("--model", model, "model id (default: the server's first)");
  app.add_option("--prompt", prompt, "the prompt (with --chat: the user's message)")->required();
  app.add_option("--max-tokens", max_tokens, "tokens to generate")->check(CLI::PositiveNumber);
  app.add_option("--temperature", temperature, "0: greedy")->check(CLI::Range(0.0, 2.0));
  app.add_option("--top-p", top_p, "nucleus sampling")->check(CLI::Range(0.0, 1.0));
  app.add_option("--top-k", top_k, "sample from the k most likely (0: off)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", seed, "seed for sampling (default: the server draws one)");
  app.add_option("--stop", stop, "stop sequence (repeatable, up to 4)");
  app.add_option("--retries", retries, "retries of a 429 or 503")->check(CLI::NonNegativeNumber);
  app.add_flag("--stream", stream, "print tokens as they arrive (server-sent events)");
  app.add_flag("--ws", ws, "print tokens as they arrive, over the WebSocket channel");
  app.add_flag("--chat", chat, "send the prompt as one user message to the chat API");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    ClientOptions options;
    options.max_retries = retries;
    Client client(url, api_key, options);
    if (model.empty()) {
      const json models = client.models();
      if (!models.contains("data") || models["data"].empty())
        throw std::runtime_error(url + " lists no models");
      model = models["data"][0].value("id", "");
    }
    json request = {{"model", model},
                    {"max_tokens", max_tokens},
                    {"temperature", temperature},
                    {"top_p", top_p}};
    if (top_k > 0) request["top_k"] = top_k;
    if (seed >= 0) request["seed"] = seed;
    if (!stop.empty()) request["stop"] = stop;
    if (chat)
      request["messages"] = json::array({{{"role", "user"}, {"content", prompt}}});
    else
      request["prompt"] = prompt;
    auto print = [](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
    std::string finish;
    if (stream || ws) {
      // The prompt goes out with the first piece, so that a refused request prints only the error.
      bool started = false;
      auto piece = [&](const std::string& text) {
        if (!started && !chat) print(prompt);
        started = true;
        print(text);
      };
      const forge::client::Completion c =
          ws ? client.stream_ws(request, piece) : client.stream(request, piece);
      if (!started && !chat) print(prompt);
      finish = c.finish_reason;
    } else {
      const json r = chat ? client.chat(request) : client.complete(request);
      const json& choice = r["choices"][0];
      print(chat ? choice["message"]["content"].get<std::string>()
                 : prompt + choice["text"].get<std::string>());
      finish = choice.value("finish_reason", "");
    }
    std::printf("\n");
    std::fprintf(stderr, "# finish_reason %s\n", finish.c_str());
    return 0;
  } catch (const ApiError& e) {
    std::fflush(stdout);
    const std::string param = e.param().empty() ? "" : " (param " + e.param() + ")";
    std::fprintf(stderr, "error: %d %s%s: %s\n", e.status(), e.type().c_str(), param.c_str(),
                 e.error().value("message", std::string(e.what())).c_str());
    return 1;
  } catch (const TransportError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
