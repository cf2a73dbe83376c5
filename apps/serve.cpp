// build/apps/serve: an OpenAI-compatible completion server for a GPT checkpoint.
//
//   build/apps/serve --checkpoint out --port 8080 --slots 8
//   curl -s localhost:8080/v1/completions -H 'Content-Type: application/json'
//        -d '{"model": "out", "prompt": "ROMEO:", "max_tokens": 50, "temperature": 0.8}'
//   build/apps/serve --checkpoint out --api-key-file keys.txt     # Authorization: Bearer <key>
//   build/apps/serve --checkpoint out --jwt-secret-file jwt.secret --jwt-audience forge
//   build/apps/serve --checkpoint out --port 0    # any free port; the ready line says which
//
// Routes: /v1/completions, /v1/chat/completions, /v1/models, /tokenize, /detokenize, /metrics
// (Prometheus), /health (serve/http.h), and the WebSocket /v1/stream (serve/websocket.h).
//
// Prints one line on stdout when it listens:
//   serve: listening on http://127.0.0.1:PORT model NAME slots N
// and logs one line per request on stderr. SIGTERM or Ctrl-C: stops taking connections, lets
// running requests finish (cancelling them after --shutdown-timeout), exits 0.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "quant/quantize.h"
#include "recipes/checkpoint.h"
#include "serve/auth.h"
#include "serve/engine.h"
#include "serve/http.h"
#include "tensor/cuda/cuda.h"
#include "tensor/parallel.h"

using namespace forge;

namespace {

// The name requests must give as "model": the checkpoint's directory (out/ -> "out"), or a
// file's stem (gpt-int8.safetensors -> "gpt-int8"; .../model.safetensors -> its directory).
std::string default_model_name(const std::string& checkpoint) {
  std::filesystem::path p = std::filesystem::path(checkpoint).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // "out/" -> "out"
  std::string name = std::filesystem::is_directory(p) ? p.filename().string() : p.stem().string();
  if (name == "model") name = p.parent_path().filename().string();
  if (name.empty() || name == "." || name == "..") name = "forge";
  return name;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FORGE_CHECK(in.good(), "--chat-template {}: cannot open the file", path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"forge serve: an OpenAI-compatible completion server for a GPT checkpoint"};
  std::string checkpoint, quant = "none", device_text = "cpu", log_format = "text", chat_template;
  serve::ServerOptions server;
  serve::EngineOptions engine_options;
  serve::AuthOptions auth_options;
  int64_t max_tokens_limit = 4096, shutdown_timeout = 10, read_timeout = 10, write_timeout = 30;
  int threads = get_num_threads();
  app.add_option("--checkpoint", checkpoint,
                 "model.safetensors, a checkpoint directory, or an out directory (latest)")
      ->required();
  app.add_option("--quant", quant, "quantize the Linear layers: none, int8 or int4")
      ->check(CLI::IsMember({"none", "int8", "int4"}));
  app.add_option("--host", server.host, "address to listen on (0.0.0.0: every interface)");
  app.add_option("--port", server.port, "port to listen on (0: any free port)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--model-name", server.limits.model_name,
                 "the model's id in /v1/models and requests (default: the checkpoint's name)");
  app.add_option("--slots", engine_options.slots, "requests generated together (batch rows)")
      ->check(CLI::Range(1, 1024));
  app.add_option("--max-queue", engine_options.max_queue,
                 "requests waiting for a slot beyond which the server answers 429")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-batch-tokens", engine_options.max_batch_tokens,
                 "tokens one step may run (new prompts + one per running request); more waiting "
                 "requests start in later steps (the first of a step always starts)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-tokens-limit", max_tokens_limit,
                 "largest max_tokens a request may ask for (past the context, generation slides "
                 "its window as infer does)")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "CPU threads")->check(CLI::PositiveNumber);
  app.add_option("--device", device_text, "cpu, or cuda / cuda:N");
  app.add_option("--api-key-file", auth_options.api_key_file,
                 "accept these API keys (one per line; # comments)");
  app.add_option("--jwt-secret-file", auth_options.jwt_secret_file,
                 "accept HS256 JWTs signed with this secret (at least 32 bytes)");
  app.add_option("--jwt-audience", auth_options.jwt_audience, "required 'aud' of a JWT");
  app.add_option("--jwt-issuer", auth_options.jwt_issuer, "required 'iss' of a JWT");
  app.add_option("--chat-template", chat_template,
                 "a JSON file of how /v1/chat/completions turns messages into a prompt: keys "
                 "role_prefix (an object role -> string), message_suffix, generation_prefix, "
                 "default_stop (the stop strings of a request without 'stop'; all optional). "
                 "Default: " +
                     serve::ChatTemplate().to_json().dump() +
                     ", i.e. \"System: ...\\nUser: ...\\nAssistant:\", stopping at \"\\nUser:\"");
  app.add_option("--log-format", log_format, "request log on stderr: text or json")
      ->check(CLI::IsMember({"text", "json"}));
  app.add_option("--ws-queue-limit", server.ws_queue_limit,
                 "bytes waiting to be sent on a WebSocket beyond which its events wait in the "
                 "engine (which pauses a request after --max-pending-events unread events)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-pending-events", engine_options.max_pending_events,
                 "unread events of a request beyond which the engine pauses it until its client "
                 "reads")
      ->check(CLI::PositiveNumber);
  app.add_option("--write-timeout", write_timeout,
                 "seconds one write to a client may take (a client that reads nothing is closed "
                 "and its requests cancelled)")
      ->check(CLI::PositiveNumber);
  app.add_option("--read-timeout", read_timeout,
                 "seconds a client has to send one whole request (header and body); a slower "
                 "one gets 408 and is closed")
      ->check(CLI::PositiveNumber);
  app.add_option("--shutdown-timeout", shutdown_timeout,
                 "seconds running requests get after SIGTERM before they are cancelled")
      ->check(CLI::NonNegativeNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    set_num_threads(threads);
    const Device device = Device::parse(device_text);
    cuda::check_device(device, "--device");
    serve::Auth auth(auth_options);  // before the model: a bad key or template file fails fast
    if (!chat_template.empty())
      server.chat_template =
          serve::ChatTemplate::from_json(read_file(chat_template), chat_template);
    LoadedModel loaded = load_model(resolve_model_path(checkpoint));
    std::shared_ptr<GPT> model = make_model(loaded, quant);
    const std::string quantization = describe_quantization(*model);
    FORGE_CHECK(device.is_cpu() || quantization.find("int4") == std::string::npos,
                "--device {}: int4 layers run on the cpu only (--quant int8 runs on a GPU)",
                device_text);
    model->to(device);
    fmt::print(stderr, "# {} (step {}): {:.2f}M parameters, vocab {}, quantization {}\n",
               loaded.path, loaded.step, double(loaded.config.num_parameters()) / 1e6,
               loaded.config.vocab_size, quantization);

    if (server.limits.model_name.empty()) server.limits.model_name = default_model_name(checkpoint);
    server.limits.block_size = loaded.config.block_size;
    server.limits.max_tokens_limit = max_tokens_limit;
    server.shutdown_timeout = std::chrono::seconds(shutdown_timeout);
    server.read_timeout = std::chrono::seconds(read_timeout);
    server.write_timeout = std::chrono::seconds(write_timeout);
    server.log_json = log_format == "json";
    if (!auth.enabled() && server.host != "127.0.0.1" && server.host != "localhost" &&
        server.host != "::1")
      fmt::print(stderr,
                 "# warning: --host {} without --api-key-file or --jwt-secret-file: "
                 "anyone who can reach it can use it\n",
                 server.host);

    serve::Engine engine(model, loaded.tokenizer, engine_options);
    return serve::run_server(engine, auth, server, [&](const std::string& url) {
      fmt::print("serve: listening on {} model {} slots {}\n", url, server.limits.model_name,
                 engine_options.slots);
      std::fflush(stdout);
    });
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
