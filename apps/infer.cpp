// build/apps/infer: samples text from a trained GPT checkpoint.
//
//   build/apps/infer --checkpoint out --prompt "ROMEO:" --max-tokens 300 --temperature 0.8 --top-k
//   40 build/apps/infer --checkpoint out/ckpt-002000/model.safetensors --temperature 0 --stop
//   $'\n\n' build/apps/infer --checkpoint out --quant int8 --save-quantized gpt-int8.safetensors
//   build/apps/infer --checkpoint gpt-int8.safetensors        # a quantized file runs as saved
//   build/apps/infer --checkpoint out --device cuda            # on the first GPU
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>

#include "quant/quantize.h"
#include "recipes/checkpoint.h"
#include "recipes/generate.h"
#include "tensor/cuda/cuda.h"
#include "tensor/parallel.h"

using namespace forge;

int main(int argc, char** argv) {
  CLI::App app{"forge infer: generate text from a GPT checkpoint"};
  std::string checkpoint, prompt = "\n";
  SampleOptions o;
  int threads = get_num_threads();
  bool no_cache = false;
  std::string quant = "none", save_quantized_path, device_text = "cpu";
  int64_t group = 64;
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
  app.add_option("--device", device_text, "cpu, or cuda / cuda:N to generate on a GPU");
  app.add_flag("--no-cache", no_cache,
               "re-run the whole context for every token (slow; for checks)");
  app.add_option("--quant", quant,
                 "quantize the Linear layers first: none, int8 (dynamic) or int4 (weight-only)")
      ->check(CLI::IsMember({"none", "int8", "int4"}));
  CLI::Option* group_opt =
      app.add_option("--group", group, "int4 group size")->check(CLI::IsMember({32, 64, 128}));
  app.add_option("--save-quantized", save_quantized_path,
                 "write the quantized model to this safetensors file (infer can load it)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    set_num_threads(threads);
    o.use_cache = !no_cache;
    FORGE_CHECK(group_opt->count() == 0 || quant == "int4", "--group applies to --quant int4");
    const Device device = Device::parse(device_text);
    cuda::check_device(device, "--device");
    LoadedModel loaded = load_model(resolve_model_path(checkpoint));
    encode_prompt(loaded.tokenizer, prompt, o);  // a refused prompt prints nothing but the error
    FORGE_CHECK(save_quantized_path.empty() || !std::filesystem::exists(save_quantized_path) ||
                    !std::filesystem::equivalent(save_quantized_path, loaded.path),
                "--save-quantized {} is the model being read; write the quantized model elsewhere",
                save_quantized_path);
    std::shared_ptr<GPT> model_ptr = make_model(loaded, quant, group);
    GPT& model = *model_ptr;
    const std::string quantization = describe_quantization(model);
    FORGE_CHECK(device.is_cpu() || quantization.find("int4") == std::string::npos,
                "--device {}: int4 layers run on the cpu only (--quant int8 runs on a GPU)",
                device_text);
    model.to(device);
    fmt::print(stderr, "# {} (step {}): {:.2f}M parameters, vocab {}, quantization {}\n",
               loaded.path, loaded.step, double(loaded.config.num_parameters()) / 1e6,
               loaded.config.vocab_size, quantization);
    if (!save_quantized_path.empty()) {
      FORGE_CHECK(quantization != "none",
                  "--save-quantized: the model is not quantized (give --quant int8 or int4)");
      save_quantized_model(save_quantized_path, model, loaded);
      fmt::print(stderr, "# wrote {} ({:.2f} MB)\n", save_quantized_path,
                 double(state_bytes(quantized_state(model))) / 1e6);
    }
    model.set_prepacked(true);  // the weights' product panels packed once, not at every token
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
