// build/apps/train: trains the project's models. Thin on purpose: it parses options and calls the
// recipes (recipes/), which tests and benchmarks call too.
//
//   build/apps/train gpt --preset cpu --data shakespeare.txt --out out
//   build/apps/train gpt --config run.toml --max-iters 500 --resume out
//   build/apps/train mnist --epochs 5 --threads 2 --metrics run.jsonl
//   build/apps/train mnist --quant qat --metrics run.jsonl      # + test_acc_f32/int8, bytes
//   build/apps/train gpt --eval-only --resume out --quant int8  # val loss of the quantized model
//   build/apps/train reshard --from out --to merged            # shards -> one model (infer reads
//   it) build/apps/train reshard --from merged --to out4 --tp 4    # -> another tensor/pipeline
//   layout
#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <map>
#include <optional>

#include "parallel/communicator.h"
#include "recipes/gpt_train.h"
#include "recipes/mnist.h"
#include "recipes/report.h"
#include "recipes/sharded_checkpoint.h"
#include "tensor/parallel.h"

using namespace forge;

namespace {

std::atomic<bool> g_stop{false};

void on_sigint(int) {
  g_stop = true;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}

int run_mnist(const MnistOptions& o) {
  fmt::print("train mnist: MLP {}-{}-10, batch {}, AdamW lr {}, {} epochs, {} threads, data {}\n",
             784, fmt::join(o.hidden, "-"), o.batch_size, o.lr, o.epochs, get_num_threads(),
             o.data_dir);
  std::fflush(stdout);
  MnistRun run = train_mnist(o, [](const EpochStats& e) {
    fmt::print("epoch {:2d}  train_loss {:.4f}  test_acc {:.4f}  {:.2f}s (+{:.2f}s eval)\n",
               e.epoch, e.train_loss, e.test_acc, e.epoch_s, e.eval_s);
    std::fflush(stdout);
  });
  if (!run.epochs.empty()) fmt::print("test accuracy: {:.4f}\n", run.epochs.back().test_acc);
  if (run.quant)
    fmt::print(
        "quantized ({}): test accuracy f32 {:.4f} -> int8 {:.4f}; {} -> {} bytes ({:.3f}x)\n",
        run.quant->method, run.quant->test_acc_f32, run.quant->test_acc_int8, run.quant->bytes_f32,
        run.quant->bytes_int8, double(run.quant->bytes_int8) / double(run.quant->bytes_f32));
  return 0;
}

// `train gpt --eval-only`: losses of a saved model, quantized or not; with --metrics, one JSON line
// of them at full precision.
int run_gpt_eval(const GptTrainConfig& cfg, const std::string& quant, int64_t group) {
  const std::string checkpoint = cfg.resume.empty() ? cfg.out : cfg.resume;
  GptEvalResult r = evaluate_checkpoint(cfg, checkpoint, quant, group);
  MetricsWriter(cfg.metrics)
      .write({{"eval_only", checkpoint},
              {"step", r.step},
              {"quantization", r.quantization},
              {"train_loss", r.train_loss},
              {"val_loss", r.val_loss},
              {"model_bytes", r.model_bytes},
              {"seconds", r.seconds}});
  fmt::print("eval {} (step {}, {}): train loss {:.4f} | val loss {:.4f} | {:.2f} MB | {:.2f} s\n",
             checkpoint, r.step, r.quantization, r.train_loss, r.val_loss,
             double(r.model_bytes) / 1e6, r.seconds);
  fmt::print("val loss: {:.4f}\n", r.val_loss);
  return 0;
}

// Under mpirun: this process's rank (0 otherwise). Only rank 0 prints.
int world_rank() {
  return launched_by_mpi() ? world_communicator()->rank() : 0;
}

// Rank 0 prints a log line every log_interval steps (and at evaluations, skipped steps and the
// last step); on a terminal a progress line stays below them.
int run_gpt(const GptTrainConfig& cfg) {
  const bool tty = stdout_is_terminal() && !launched_by_mpi();  // mpirun gives ranks a pty
  const bool lead = world_rank() == 0;
  ProgressBar bar(cfg.max_iters, "step", tty && lead);
  auto line = [&bar, lead](const std::string& text) {
    if (lead) bar.print(text);
  };
  GptRunHooks hooks;
  hooks.stop = &g_stop;
  hooks.on_message = line;
  StepStats last;  // the last step's figures (its peak memory is printed at the end)
  std::optional<double> val_loss;
  hooks.on_step = [&](const StepStats& s) {
    last = s;
    if (s.val_loss) val_loss = s.val_loss;
    bar.update(s.step, fmt::format("loss {:.4f} | val {} | {:.1f} ms | {:.0f} tok/s", s.loss,
                                   val_loss ? fmt::format("{:.4f}", *val_loss) : "-", s.ms_per_step,
                                   s.tokens_per_s));
    if (s.step % cfg.log_interval == 0 || s.step == cfg.max_iters || s.skipped) {
      std::string scale = s.loss_scale != 1.0 ? fmt::format(" | scale {:g}", s.loss_scale) : "";
      if (s.skipped) scale += " (step skipped: inf/NaN gradients)";
      line(
          fmt::format("step {:5d} | loss {:.4f} | lr {:.2e} | {:7.1f} ms | {:8.0f} tok/s | {:6.1f} "
                      "GFLOP/s | peak {:.1f} MB{}",
                      s.step, s.loss, s.lr, s.ms_per_step, s.tokens_per_s, s.gflops,
                      double(s.peak_bytes) / (1 << 20), scale));
    }
    if (s.val_loss)
      line(fmt::format("step {:5d} | train loss {:.4f} | val loss {:.4f}", s.step,
                       *s.train_eval_loss, *s.val_loss));
  };
  std::signal(SIGINT, on_sigint);
  GptRun run = train_gpt(cfg, hooks);
  bar.finish(true);  // the last state stays on screen: steps, time taken, last losses
  if (last.step > 0) {
    auto mb = [&](MemoryTag t) { return double(last.peak_by_tag[size_t(t)]) / (1 << 20); };
    line(fmt::format(
        "peak memory of step {} ({}, rank {}) {:.1f} MB: parameters {:.1f}, gradients {:.1f}, "
        "optimizer {:.1f}, activations {:.1f}, other {:.1f}",
        last.step, run.device.str(), last.peak_rank, double(last.peak_bytes) / (1 << 20),
        mb(MemoryTag::parameters), mb(MemoryTag::gradients), mb(MemoryTag::optimizer),
        mb(MemoryTag::activations), mb(MemoryTag::other)));
  }
  if (run.final_val_loss) line(fmt::format("val loss: {:.4f}", *run.final_val_loss));
  if (!run.last_checkpoint.empty()) line(fmt::format("checkpoint: {}", run.last_checkpoint));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"forge: train models from scratch"};
  app.require_subcommand(1);
  int threads = get_num_threads();
  app.add_option("--threads", threads, "CPU threads for all kernels (default: all cores)")
      ->check(CLI::PositiveNumber);

  MnistOptions mnist;
  CLI::App* m = app.add_subcommand("mnist", "MLP classifier on Fashion-MNIST");
  m->add_option("--epochs", mnist.epochs, "epochs")->check(CLI::NonNegativeNumber);
  m->add_option("--batch-size", mnist.batch_size, "batch size")->check(CLI::PositiveNumber);
  m->add_option("--lr", mnist.lr, "AdamW learning rate")->check(CLI::PositiveNumber);
  m->add_option("--seed", mnist.seed, "seed for initialisation and shuffling");
  m->add_option("--data", mnist.data_dir, "directory with the gzip'd IDX files");
  m->add_option("--metrics", mnist.metrics_path, "append one JSON line per epoch to FILE");
  m->add_option("--device", mnist.device, "cpu, or cuda / cuda:N to train on a GPU");
  m->add_option("--threads", threads, "CPU threads (default: all cores)")
      ->check(CLI::PositiveNumber);
  m->add_option("--quant", mnist.quant,
                "after training: dynamic (int8 post-training) or qat (fake-quantized last epochs, "
                "then int8)")
      ->check(CLI::IsMember({"none", "dynamic", "qat"}));
  CLI::Option* qat_epochs = m->add_option("--qat-epochs", mnist.qat_epochs,
                                          "epochs of quantization-aware training (last)")
                                ->check(CLI::PositiveNumber);
  CLI::Option* qat_freeze =
      m->add_option("--qat-freeze-steps", mnist.qat_freeze_steps,
                    "QAT observers freeze after this many steps (default: half of the QAT steps)");
  m->add_option("--save-quantized", mnist.save_quantized, "write the int8 model (safetensors)");

  CLI::App* g = app.add_subcommand("gpt", "GPT language model on a text corpus (Tiny Shakespeare)");
  std::string preset = "cpu", config_file;
  g->add_option("--preset", preset, "starting settings: cpu (nanoGPT's CPU run) or baby");
  g->add_option("--config", config_file, "TOML file of settings (applied after the preset)");
  // One flag per setting (--n-layer, --batch-size, ...), applied after the file.
  std::map<std::string, std::string> flags;
  std::vector<std::pair<std::string, CLI::Option*>> flag_options;
  for (const auto& f : GptTrainConfig::fields())
    flag_options.emplace_back(f.key,
                              g->add_option(f.flag, flags[f.key], f.help)->type_name(f.type));

  bool eval_only = false;
  std::string gpt_quant = "none";
  int64_t gpt_group = 64;
  g->add_flag("--eval-only", eval_only,
              "no training: print the losses of the model in --resume (or --out)");
  g->add_option("--quant", gpt_quant, "with --eval-only: none, int8 (dynamic) or int4")
      ->check(CLI::IsMember({"none", "int8", "int4"}));
  CLI::Option* group_opt =
      g->add_option("--group", gpt_group, "int4 group size")->check(CLI::IsMember({32, 64, 128}));

  CLI::App* rs = app.add_subcommand(
      "reshard", "write a GPT checkpoint (serial or sharded) at another tensor/pipeline layout");
  std::string reshard_from, reshard_to;
  ShardLayout reshard_layout;
  rs->add_option("--from", reshard_from, "checkpoint directory (or the out directory above it)")
      ->required();
  rs->add_option("--to", reshard_to, "out directory for the new checkpoint")->required();
  rs->add_option("--tp", reshard_layout.tp, "tensor-parallel ranks (1 with --pp 1: one model file)")
      ->check(CLI::PositiveNumber);
  rs->add_option("--pp", reshard_layout.pp, "pipeline stages")->check(CLI::PositiveNumber);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    set_num_threads(threads);
    if (m->parsed()) {
      FORGE_CHECK(mnist.quant == "qat" || (qat_epochs->count() == 0 && qat_freeze->count() == 0),
                  "--qat-epochs and --qat-freeze-steps apply to --quant qat");
      mnist.progress = stdout_is_terminal();
      return run_mnist(mnist);
    }
    if (rs->parsed()) {
      CheckpointPaths p = reshard_checkpoint(reshard_from, reshard_to, reshard_layout);
      fmt::print("wrote {} (tp {} x pp {})\n", p.dir, reshard_layout.tp, reshard_layout.pp);
      return 0;
    }
    if (g->parsed()) {
      GptTrainConfig cfg = GptTrainConfig::preset(preset);
      if (!config_file.empty()) cfg.apply_toml_file(config_file);
      for (const auto& [key, opt] : flag_options)
        if (opt->count() > 0) cfg.set(key, flags[key], opt->get_name());
      cfg.validate();
      FORGE_CHECK(group_opt->count() == 0 || gpt_quant == "int4",
                  "--group applies to --quant int4");
      if (eval_only) return run_gpt_eval(cfg, gpt_quant, gpt_group);
      FORGE_CHECK(gpt_quant == "none",
                  "--quant {} applies to --eval-only (training runs in f32/bf16/f16)", gpt_quant);
      return run_gpt(cfg);
    }
  } catch (const std::exception& e) {
    std::fflush(stdout);
    // With several ranks, the failing one ends the job: the others may be waiting for it in a
    // collective and would never return otherwise.
    if (launched_by_mpi() && world_communicator()->size() > 1)
      abort_job(fmt::format("rank {}: error: {}", world_rank(), e.what()));
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
