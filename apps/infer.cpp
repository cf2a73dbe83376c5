// build/apps/infer: samples text from a trained GPT checkpoint.
//
//   build/apps/infer --checkpoint out --prompt "ROMEO:" --max-tokens 300 --temperature 0.8 --top-k 40
//   build/apps/infer --checkpoint out/ckpt-002000/model.safetensors --temperature 0 --stop $'\n\n'
#include <CLI/CLI.hpp>
#include <cstdio>

#include "recipes/checkpoint.h"
#include "recipes/generate.h"
#include "tensor/parallel.h"

using namespace forge;

int main(int argc, char** argv) {
  CLI::App app{"forge infer: generate text from a GPT checkpoint"};
  std::string checkpoint, prompt = "\n";
  SampleOptions o;
  int threads = get_num_threads();
  bool no_cache = false;
  app.add_option("--checkpoint", checkpoint,
                 "model.safetensors, a checkpoint directory, or an out directory (latest)")
      ->required();
  app.add_option("--prompt", prompt, "text to continue (default: a newline)");
  app.add_option("--max-tokens", o.max_tokens, "tokens to generate")->check(CLI::NonNegativeNumber);
  app.add_option("--temperature", o.temperature, "0: greedy")->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", o.top_k, "sample among the k most likely (0: all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", o.top_p, "sample within the top probability mass p (1: all)");
  app.add_option("--stop", o.stop, "stop when this text appears (repeatable)");
  app.add_option("--seed", o.seed, "sampling seed");
  app.add_option("--threads", threads, "CPU threads")->check(CLI::PositiveNumber);
  app.add_flag("--no-cache", no_cache, "re-run the whole context for every token (slow; for checks)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    set_num_threads(threads);
    o.use_cache = !no_cache;
    LoadedModel loaded = load_model(resolve_model_path(checkpoint));
    Generator g0(0), g1(0);
    GPT model(loaded.config, g0, g1);
    load_weights(model, loaded);
    fmt::print(stderr, "# {} (step {}): {:.2f}M parameters, vocab {}\n", loaded.path, loaded.step,
               double(model.num_parameters()) / 1e6, loaded.config.vocab_size);
    std::fputs(prompt.c_str(), stdout);
    Generated out = generate(model, loaded.tokenizer, prompt, o, [](const std::string& piece) {
      std::fputs(piece.c_str(), stdout);
      std::fflush(stdout);
    });
    std::fputs("\n", stdout);
    std::fflush(stdout);
    fmt::print(stderr, "# {} tokens in {:.2f} s: {:.1f} tokens/s ({})\n", out.tokens.size(),
               out.seconds, out.tokens_per_s, o.use_cache ? "kv cache" : "no cache");
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
