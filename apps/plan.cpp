// build/apps/plan: before a run, every parallel layout of a GPT on N ranks, the ones the runtime
// refuses (and why), and each one's predicted peak memory per rank (recipes/plan.h).
//
//   build/apps/plan --preset cpu --world 4 --global-batch 12 --memory-per-rank 40MiB
//   build/apps/plan --preset cpu --n-layer 12 --n-embd 256 --world 8 --format csv
//   build/apps/plan --preset cpu --world 2 --dp 2 --format json    # one dimension fixed
//   mpirun -np 2 build/apps/plan calibrate --out here.json --threads 1   # this machine's profile
//   build/apps/plan --preset cpu --world 2 --profile here.json         # + predicted step time
//
// Every `train gpt` setting is a flag here too. The layout settings (--dp, --tp, --pp,
// --micro-batches, --schedule, --zero, --checkpoint), when given, keep only the layouts with that
// value. The vocabulary and the corpus's size come from the data as `train` reads it, unless
// --vocab-size is given (then the corpus is not counted).
#include "recipes/plan.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "io/text_data.h"
#include "parallel/communicator.h"
#include "recipes/gpt_train.h"
#include "tensor/cpu/cpu_features.h"
#include "tensor/parallel.h"

using namespace forge;

namespace {

// "40MiB", "1.5GB", "123456": bytes (binary suffixes KiB/MiB/GiB, decimal KB/MB/GB).
int64_t parse_bytes(const std::string& text) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::logic_error&) {
    throw_error(fmt::format("--memory-per-rank: '{}' is not a size (e.g. 40MiB, 2GB)", text));
  }
  static const std::map<std::string, double> units{
      {"", 1},          {"B", 1},    {"K", 1024},    {"KiB", 1024},    {"KB", 1e3}, {"M", 1 << 20},
      {"MiB", 1 << 20}, {"MB", 1e6}, {"G", 1 << 30}, {"GiB", 1 << 30}, {"GB", 1e9}};
  auto it = units.find(text.substr(used));
  FORGE_CHECK(it != units.end() && v >= 0,
              "--memory-per-rank: '{}' is not a size (a number, then B, KiB, MiB, GiB, KB, MB or "
              "GB)",
              text);
  return int64_t(v * it->second);
}

double mib(int64_t bytes) {
  return double(bytes) / double(1 << 20);
}

struct Row {
  PlanCandidate candidate;
  MemoryPrediction memory;
  std::optional<TimePrediction> time;
};

nlohmann::ordered_json to_json(const Row& r) {
  const PlanLayout& l = r.candidate.layout;
  nlohmann::ordered_json j{{"layout", l.str()},
                           {"dp", l.dp},
                           {"tp", l.tp},
                           {"pp", l.pp},
                           {"micro_batches", l.micro_batches},
                           {"schedule", pipeline_schedule_name(l.schedule)},
                           {"zero", l.zero},
                           {"checkpoint", activation_checkpointing_name(l.checkpoint)},
                           {"batch_size", r.candidate.config.batch_size}};
  if (!r.candidate.refused.empty()) {
    j["refused"] = r.candidate.refused;
    return j;
  }
  const MemoryPrediction& m = r.memory;
  j["peak_bytes"] = m.peak_bytes;
  j["peak_rank"] = m.rank;
  for (size_t t = 0; t < size_t(MemoryTag::count); ++t)
    j[fmt::format("peak_{}_bytes", memory_tag_name(MemoryTag(t)))] = m.by_tag[t];
  j["peak_at"] = m.where;
  j["fits"] = m.fits;
  if (!m.fits) {
    j["overflow_tag"] = memory_tag_name(m.overflow);
    j["overflow_at"] = m.overflow_where;
  }
  if (r.time) {
    const TimePrediction& t = *r.time;
    j["ms_per_step"] = t.ms_per_step;
    j["tokens_per_s"] = t.tokens_per_s;
    j["mfu"] = t.mfu;
    j["pipeline_ms"] = t.pipeline_ms;
    j["bubble_ms"] = t.bubble_ms;
    j["tp_comm_ms"] = t.tp_comm_ms;
    j["pp_comm_ms"] = t.pp_comm_ms;
    j["dp_exposed_ms"] = t.dp_exposed_ms;
    j["optimizer_ms"] = t.optimizer_ms;
  }
  j["flags"] = l.flags();
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"forge plan: the parallel layouts of a GPT run, and each one's memory per rank"};
  std::string preset = "cpu", config_file, format = "table", memory = "0";
  int64_t world = 0, global_batch = 0, top = 0, vocab_size = 0;
  bool show_refused = false;
  app.add_option("--preset", preset, "starting settings: cpu or baby (as train gpt)");
  app.add_option("--config", config_file, "TOML file of settings (as train gpt)");
  std::map<std::string, std::string> flags;
  for (const auto& f : GptTrainConfig::fields())
    app.add_option(f.flag, flags[f.key], f.help)->type_name(f.type);
  app.add_option("--world", world, "ranks (default: dp x tp x pp as given, else 1)")
      ->check(CLI::PositiveNumber);
  app.add_option("--global-batch", global_batch,
                 "sequences per step over all replicas (default: batch_size x dp)")
      ->check(CLI::PositiveNumber);
  app.add_option("--memory-per-rank", memory,
                 "memory each rank has (e.g. 40MiB, 80GB); layouts past it are marked, with the "
                 "tag that overflows");
  app.add_option(
         "--vocab-size", vocab_size,
         "vocabulary size, instead of reading the corpus (whose tokens are then not counted)")
      ->check(CLI::PositiveNumber);
  app.add_option("--top", top, "print only the first K layouts")->check(CLI::NonNegativeNumber);
  app.add_option("--format", format, "table, json (one object per line) or csv")
      ->check(CLI::IsMember({"table", "json", "csv"}));
  app.add_flag("--show-refused", show_refused,
               "also list the layouts the runtime refuses, and why");
  std::string profile_path, calibrate_out;
  app.add_option(
      "--profile", profile_path,
      "a machine profile (plan calibrate's, or bench/profiles/): adds the predicted step "
      "time, tokens/s and MFU, and ranks by step time");
  CLI::App* cal = app.add_subcommand(
      "calibrate", "measure this machine's profile (under mpirun -np N: the collectives over N)");
  cal->add_option("--out", calibrate_out, "the profile to write (JSON)")->required();
  cal->fallthrough();  // the model settings, --world and --global-batch are the planner's
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    GptTrainConfig base = GptTrainConfig::preset(preset);
    if (!config_file.empty()) base.apply_toml_file(config_file);
    std::set<std::string> fixed;
    for (const auto& [key, value] : flags)
      if (!value.empty()) {
        base.set(key, value, fmt::format("--{}", key));
        fixed.insert(key);
      }
    // The model itself (heads dividing the width, ...), before any layout; the micro-batch count
    // divides each layout's own per-replica batch, checked per layout.
    GptTrainConfig model_only = base;
    model_only.micro_batches = 1;
    model_only.validate();
    const int64_t cap = parse_bytes(memory);
    if (world == 0) world = base.dp * base.tp * base.pp;
    if (global_batch == 0) global_batch = base.batch_size * base.dp;
    std::optional<MachineProfile> profile;
    if (!profile_path.empty()) profile = MachineProfile::load(profile_path);

    CorpusSize corpus;
    std::string data_note;
    if (vocab_size > 0) {
      base.model.vocab_size = vocab_size;
      data_note = "corpus not counted (--vocab-size)";
    } else {
      const std::string path = resolve_data_path(base);
      TextData data = load_text(path, base.tokenizer);
      base.model.vocab_size = data.tokenizer.vocab_size();
      corpus = {data.train.numel(), data.val.numel()};
      data_note = fmt::format("{} ({} train / {} val tokens, kept by every rank)", path,
                              corpus.train_tokens, corpus.val_tokens);
    }

    // The run's thread count: products split across threads keep a packed A block per thread
    // (cpu::gemm_workspace_bytes), so the predicted scratch depends on it too.
    if (base.threads > 0) set_num_threads(int(base.threads));
    if (cal->parsed()) {
      // The products of every layout of 1, 2, 4, ... up to --world ranks (default 8).
      auto comm = world_communicator();
      std::set<std::array<int64_t, 4>> shapes;
      const int64_t up_to = world > 1 ? world : 8;
      for (int64_t w = 1; w <= up_to; w *= 2)
        for (const PlanCandidate& c : enumerate_layouts(base, w, global_batch))
          if (c.refused.empty())
            for (const auto& sh : gemm_shapes(c.config)) shapes.insert(sh);
      MachineProfile p = calibrate_machine(base, {shapes.begin(), shapes.end()}, *comm);
      p.name = fmt::format("this machine ({} kernels), {} thread(s) per rank",
                           cpu::isa_name(cpu::cpu_isa()), get_num_threads());
      p.source = fmt::format(
          "plan calibrate on {} rank(s), {} products of the {}-layer {}-wide "
          "GPT's layouts",
          comm->size(), shapes.size(), base.model.n_layer, base.model.n_embd);
      if (comm->rank() == 0) {
        std::ofstream f(calibrate_out);
        f << p.to_json() << "\n";
        FORGE_CHECK(f.good(), "plan calibrate: cannot write {}", calibrate_out);
        fmt::print(
            "plan calibrate: {} -> {}\n  best product {:.1f} GFLOP/s, attention {:.1f} "
            "GFLOP/s, bandwidth {:.1f} GB/s, one small op {:.2f} us, weights past {:.0f} MiB "
            "stream at {:.1f} GB/s, {} collectives (+{:.1f} us each inside compute), ranks in "
            "step at {:.3f}x a lone one's time\n",
            p.name, calibrate_out, p.peak_gflops, p.attention_gflops, p.bandwidth_gbs,
            p.op_overhead_us, double(p.cache_bytes) / double(1 << 20), p.cold_gbs,
            p.collectives.size(), p.inline_sync_us, p.busy_pace);
      }
      return 0;
    }

    // The layouts with the fixed settings' values.
    auto wanted = [&](const PlanCandidate& c) {
      const GptTrainConfig& k = c.config;
      return (!fixed.count("dp") || k.dp == base.dp) && (!fixed.count("tp") || k.tp == base.tp) &&
             (!fixed.count("pp") || k.pp == base.pp) &&
             (!fixed.count("micro_batches") || k.micro_batches == base.micro_batches) &&
             (!fixed.count("schedule") || k.schedule == base.schedule) &&
             (!fixed.count("zero") || k.zero == base.zero) &&
             (!fixed.count("checkpoint") || k.checkpoint == base.checkpoint);
    };
    std::vector<Row> runs, refused;
    for (PlanCandidate& c : enumerate_layouts(base, world, global_batch)) {
      if (!wanted(c)) continue;
      if (!c.refused.empty()) {
        refused.push_back({std::move(c), {}, std::nullopt});
        continue;
      }
      PlanPrediction p = predict(c.config, corpus, cap, profile ? &*profile : nullptr);
      std::optional<TimePrediction> t;
      if (profile) t = p.time;
      runs.push_back({std::move(c), std::move(p.memory), t});
    }
    if (runs.empty()) {
      for (const Row& r : refused)
        fmt::print(stderr, "  {}: {}\n", r.candidate.layout.str(), r.candidate.refused);
      throw_error(fmt::format("no layout of {} ranks runs with these settings ({} refused{})",
                              world, refused.size(), refused.empty() ? "" : ", above"));
    }
    // Those that fit first, then by step time (with a profile) or peak memory.
    std::stable_sort(runs.begin(), runs.end(), [](const Row& a, const Row& b) {
      if (a.memory.fits != b.memory.fits) return a.memory.fits;
      if (a.time && b.time) return a.time->ms_per_step < b.time->ms_per_step;
      return a.memory.peak_bytes < b.memory.peak_bytes;
    });
    const size_t shown = top > 0 ? std::min(runs.size(), size_t(top)) : runs.size();

    if (format == "json") {
      for (size_t i = 0; i < shown; ++i) fmt::print("{}\n", to_json(runs[i]).dump());
      if (show_refused)
        for (const Row& r : refused) fmt::print("{}\n", to_json(r).dump());
      return 0;
    }
    if (format == "csv") {
      fmt::print(
          "layout,dp,tp,pp,micro_batches,schedule,zero,checkpoint,peak_bytes,peak_rank,"
          "parameters,gradients,optimizer,activations,other,fits,overflow_tag,ms_per_step,"
          "tokens_per_s,mfu,refused\n");
      auto line = [](const Row& r) {
        const PlanLayout& l = r.candidate.layout;
        const MemoryPrediction& m = r.memory;
        const bool ok = r.candidate.refused.empty();
        const std::string time = r.time ? fmt::format("{:.4f},{:.1f},{:.4f}", r.time->ms_per_step,
                                                      r.time->tokens_per_s, r.time->mfu)
                                        : ",,";
        fmt::print("{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\"\n", l.str(), l.dp,
                   l.tp, l.pp, l.micro_batches, pipeline_schedule_name(l.schedule), l.zero,
                   activation_checkpointing_name(l.checkpoint), ok ? m.peak_bytes : 0,
                   ok ? m.rank : 0, m.tag(MemoryTag::parameters), m.tag(MemoryTag::gradients),
                   m.tag(MemoryTag::optimizer), m.tag(MemoryTag::activations),
                   m.tag(MemoryTag::other), ok && m.fits ? 1 : 0,
                   ok && !m.fits ? memory_tag_name(m.overflow) : "", time, r.candidate.refused);
      };
      for (size_t i = 0; i < shown; ++i) line(runs[i]);
      if (show_refused)
        for (const Row& r : refused) line(r);
      return 0;
    }
    const GPTConfig& mc = base.model;
    fmt::print(
        "plan: GPT {} layers, {} heads, {} wide, block {}, vocab {}; {} ranks, global batch {}; "
        "precision {}\n",
        mc.n_layer, mc.n_head, mc.n_embd, mc.block_size, mc.vocab_size, world, global_batch,
        base.precision);
    fmt::print("data: {}\n", data_note);
    fmt::print("memory per rank: {}\n", cap > 0 ? fmt::format("{:.1f} MiB", mib(cap)) : "no cap");
    if (profile) fmt::print("machine: {} ({})\n", profile->name, profile->source);
    fmt::print(
        "{} layouts run, {} refused{}; ranked by predicted {} (memory in MiB, on the rank where "
        "it is highest)\n\n",
        runs.size(), refused.size(), show_refused ? "" : " (--show-refused lists them)",
        profile ? "step time" : "peak memory");
    if (profile) fmt::print("{:>9} {:>9} {:>6} ", "ms/step", "tok/s", "MFU");
    fmt::print("{:<38} {:>9} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}  {}\n", "layout", "peak", "rank",
               "params", "grads", "optim", "acts", "other", "fits");
    for (size_t i = 0; i < shown; ++i) {
      const Row& r = runs[i];
      const MemoryPrediction& m = r.memory;
      if (r.time)
        fmt::print("{:>9.2f} {:>9.0f} {:>5.1f}% ", r.time->ms_per_step, r.time->tokens_per_s,
                   100 * r.time->mfu);
      fmt::print("{:<38} {:>9.2f} {:>5} {:>8.2f} {:>8.2f} {:>8.2f} {:>8.2f} {:>8.2f}  {}\n",
                 r.candidate.layout.str(), mib(m.peak_bytes), m.rank,
                 mib(m.tag(MemoryTag::parameters)), mib(m.tag(MemoryTag::gradients)),
                 mib(m.tag(MemoryTag::optimizer)), mib(m.tag(MemoryTag::activations)),
                 mib(m.tag(MemoryTag::other)),
                 m.fits ? (cap > 0 ? "yes" : "-")
                        : fmt::format("no: {} overflows ({})", memory_tag_name(m.overflow),
                                      m.overflow_where));
    }
    if (show_refused) {
      fmt::print("\nrefused:\n");
      for (const Row& r : refused)
        fmt::print("{:<38} {}\n", r.candidate.layout.str(), r.candidate.refused);
    }
    if (!runs.empty() && !runs.front().memory.caveats.empty())
      fmt::print("\nnot modelled: {}\n", fmt::join(runs.front().memory.caveats, "; "));
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "plan: {}\n", e.what());
    return 1;
  }
}
