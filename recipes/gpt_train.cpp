#include "recipes/gpt_train.h"

#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "autograd/autocast.h"
#include "optim/grad_scaler.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "parallel/ddp.h"
#include "parallel/grid.h"
#include "parallel/nccl_communicator.h"
#include "parallel/pipeline.h"
#include "parallel/tensor_parallel.h"
#include "quant/quantize.h"
#include "recipes/checkpoint.h"
#include "recipes/report.h"
#include "recipes/sharded_checkpoint.h"
#include "tensor/cuda/cuda.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

namespace forge {

std::string resolve_data_path(const GptTrainConfig& config) {
  if (!config.data.empty()) return config.data;
  std::string env = tinyshakespeare_path();
  if (!env.empty()) return env;
  return "data/tinyshakespeare.txt";
}

double estimate_loss(GPT& model, const Tensor& split, int64_t iters, int64_t batch_size,
                     Generator& gen, const char* split_name) {
  NoGradGuard no_grad;
  MemoryTagScope tag(MemoryTag::activations);
  bool was_training = model.is_training();
  model.eval();
  double total = 0;
  const Device device = model.device();
  for (int64_t i = 0; i < iters; ++i) {
    Batch b = get_batch(split, batch_size, model.config().block_size, gen, split_name);
    total += model.loss(model.forward(b.x.to(device)), b.y.to(device)).item();
  }
  model.train(was_training);
  return total / double(std::max<int64_t>(iters, 1));
}

namespace {

// The generator of the evaluation at `step`: a function of (seed, step) alone.
Generator eval_generator(int64_t seed, int64_t step) {
  return Generator(uint64_t(seed) * 0x9E3779B97F4A7C15ull + uint64_t(step) * 0xBF58476D1CE4E5B9ull +
                   7);
}

// nanoGPT's optimizer groups (gpt_param_group_names): weight decay on tensors of 2+ dims (matmul
// weights, embeddings), none on biases and LayerNorm gains.
std::vector<ParamGroup> param_groups(const Module& model, double weight_decay) {
  std::map<std::string, Variable> by_name;
  for (const auto& [name, p] : model.named_parameters()) by_name.emplace(name, p);
  const auto names = gpt_param_group_names(model);
  std::vector<ParamGroup> groups{{{}, weight_decay}, {{}, 0.0}};
  for (size_t g = 0; g < 2; ++g)
    for (const std::string& n : names[g]) groups[g].params.push_back(by_name.at(n));
  return groups;
}

void check_same_architecture(const GPTConfig& run, const GPTConfig& saved,
                             const std::string& where) {
  auto field = [&](const char* name, auto a, auto b) {
    FORGE_CHECK(a == b, "{}: the checkpoint has {} = {}, this run asks for {}", where, name, b, a);
  };
  field("n_layer", run.n_layer, saved.n_layer);
  field("n_head", run.n_head, saved.n_head);
  field("n_embd", run.n_embd, saved.n_embd);
  field("block_size", run.block_size, saved.block_size);
  field("bias", run.bias, saved.bias);
  field("dropout", run.dropout, saved.dropout);
  field("gelu", std::string(gelu_name(run.gelu)), std::string(gelu_name(saved.gelu)));
}

// The settings every data-parallel rank must share: everything but paths and the thread count.
std::string shared_settings(const GptTrainConfig& c) {
  GptTrainConfig s = c;
  s.data = s.out = s.metrics = s.resume = "";
  s.threads = 0;
  return s.to_json();
}

// The dp setting a checkpoint was trained with (1 when it predates data parallelism).
int64_t saved_dp(const TrainingState& st) {
  if (st.train_config_json.empty()) return 1;
  auto j = nlohmann::json::parse(st.train_config_json, nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("dp") && j["dp"].is_number_integer() ? j["dp"].get<int64_t>()
                                                                          : 1;
}

// The device a rank trains on: `text` as given, except that plain "cuda" under a launcher means
// the rank's own GPU (its rank on the node, modulo the GPUs there).
Device training_device(const std::string& text, const Communicator& world) {
  Device d = Device::parse(text);
  if (d.is_cuda() && text == "cuda" && world.size() > 1) d = Device::cuda(local_cuda_device());
  cuda::check_device(d, "--device");
  return d;
}

}  // namespace

GptRun train_gpt(const GptTrainConfig& config, const GptRunHooks& hooks) {
  GptTrainConfig cfg = config;
  cfg.validate();
  cfg.model.gelu = parse_gelu(cfg.gelu);
  if (cfg.threads > 0) set_num_threads(int(cfg.threads));
  // The ranks form a grid of dp replicas, each split over tp x pp ranks (all 1 without mpirun).
  // Every rank draws the same global batch of dp * batch_size rows and its replica trains on its
  // batch_size of them; rank 0 alone logs and evaluates, the first replica's ranks save.
  // `world` carries the host's messages (settings, the logged loss, stops, checkpoints); the grid's
  // groups carry the tensors of training, on the training device (NCCL between GPUs).
  std::shared_ptr<Communicator> world = world_communicator();
  const Device device = training_device(cfg.device, *world);
  ProcessGrid grid(device.is_cpu() ? world : world_communicator_for(device),
                   {.pp = int(cfg.pp), .dp = int(cfg.dp), .tp = int(cfg.tp)});
  const GridCoord at = grid.coord();
  const bool lead = world->rank() == 0;
  const bool model_parallel = cfg.tp > 1 || cfg.pp > 1;
  const ShardLayout layout{int(cfg.tp), int(cfg.pp)};
  check_same_on_all_ranks(*world, shared_settings(cfg),
                          "the training settings (--dp, --tp, --pp, model, ...)");
  auto say = [&](const std::string& m) {
    if (lead && hooks.on_message) hooks.on_message(m);
  };

  // Data, and the checkpoint to continue from (serial or sharded, at any layout).
  std::optional<FullCheckpoint> resumed;
  std::string data_path = resolve_data_path(cfg);
  TextData data;
  if (!cfg.resume.empty()) {
    auto latest = latest_checkpoint(cfg.resume);
    FORGE_CHECK(latest.has_value(), "--resume {}: no complete checkpoint found there", cfg.resume);
    resumed = load_full_checkpoint(latest->dir);
    check_same_architecture(cfg.model, resumed->config, latest->dir);
    data = load_text(data_path, resumed->tokenizer);
  } else {
    data = load_text(data_path, Tokenizer::parse_kind(cfg.tokenizer));
  }
  cfg.model.vocab_size = data.tokenizer.vocab_size();
  for (auto [split, name] : {std::pair{&data.train, "train"}, std::pair{&data.val, "val"}})
    FORGE_CHECK(split->numel() > cfg.model.block_size,
                "{}: block_size {} is larger than the {} split ({} tokens)", data_path,
                cfg.model.block_size, name, split->numel());

  // Dropout draws differ between replicas and between pipeline stages (replica 0's first stage
  // draws the serial run's first masks) and agree between the tensor-parallel ranks of a stage.
  auto dropout_seed = [&](uint64_t base) {
    return base + uint64_t(at.dp) * 0x9E3779B97F4A7C15ull + uint64_t(at.pp) * 0xD1B54A32D192ED03ull;
  };
  Generator init_gen(uint64_t(cfg.seed)), batch_gen(uint64_t(cfg.seed) + 1),
      dropout_gen(dropout_seed(uint64_t(cfg.seed) + 2));
  GptRun run;
  run.tokenizer = data.tokenizer;
  run.device = device;
  std::shared_ptr<GPT> shard;  // model parallel: this rank's share
  if (model_parallel) {
    shard = std::make_shared<GPT>(cfg.model, init_gen, dropout_gen, gpt_part(grid, cfg.model));
    shard->set_checkpoint_blocks(cfg.checkpoint == "blocks");
  } else {
    run.model = std::make_shared<GPT>(cfg.model, init_gen, dropout_gen);
    run.model->set_checkpoint_blocks(cfg.checkpoint == "blocks");
  }
  Module& model = model_parallel ? static_cast<Module&>(*shard) : *run.model;
  model.train();
  model.to(device);  // before the optimizer, whose state goes where the parameters are
  AdamW opt(param_groups(model, cfg.weight_decay),
            {.lr = cfg.lr, .beta1 = cfg.beta1, .beta2 = cfg.beta2, .eps = 1e-8});
  const bool mixed = cfg.precision != "f32";
  const DType autocast_dtype = mixed ? parse_dtype(cfg.precision) : DType::f32;
  GradScaler scaler(
      {.init_scale = cfg.init_scale,
       .growth_interval = cfg.scale_growth_interval,
       .enabled = cfg.loss_scale == "on" || (cfg.loss_scale == "auto" && cfg.precision == "f16")});
  int64_t start = 0;
  if (resumed) {
    const TrainingState& st = resumed->state;
    CheckpointShard mine = shard_checkpoint(*resumed, layout, at.pp, at.tp);
    model.load_state_dict(mine.weights);
    opt.load_state(optimizer_state_by_index(mine.optimizer, gpt_param_group_names(model)));
    if (scaler.enabled() && !st.scaler.empty()) scaler.load_state(st.scaler);
    FORGE_CHECK(
        saved_dp(st) == cfg.dp,
        "{}: the checkpoint was trained with dp = {} (a global batch of {} x {}); resume it "
        "with --dp {}",
        resumed->dir, saved_dp(st), saved_dp(st), cfg.batch_size, saved_dp(st));
    batch_gen.set_state(st.batch_gen);
    // The saved first shard's generator gives the run's dropout seed, whatever --seed says now;
    // the offset is this shard's (its own stream under the same layout, see shard_checkpoint).
    dropout_gen.set_state(
        {dropout_seed(resumed->dropout_gens[0][0].seed), mine.dropout_gen.offset});
    start = st.step;
    say(fmt::format(
        "resumed from {} at step {}{}", resumed->dir, start,
        resumed->layout == layout
            ? ""
            : fmt::format(" (saved at tp {} x pp {}, now tp {} x pp {})", resumed->layout.tp,
                          resumed->layout.pp, layout.tp, layout.pp)));
    resumed.reset();  // the whole model's weights and moments: not kept for the run
  }
  say(fmt::format(
      "model: {} layers, {} heads, {} wide, block {}, vocab {} ({}), {:.2f}M parameters",
      cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size,
      cfg.model.vocab_size, cfg.tokenizer, double(cfg.model.num_parameters()) / 1e6));
  say(fmt::format("data: {} ({} train / {} val tokens); batch {} x {}; {} threads", data_path,
                  data.train.numel(), data.val.numel(), cfg.batch_size, cfg.model.block_size,
                  get_num_threads()));
  std::optional<DistributedDataParallel> ddp;
  if (cfg.dp > 1) {
    ddp.emplace(
        model.parameters(), grid.dp_group(),
        DdpOptions{.bucket_bytes = std::max<int64_t>(1, int64_t(cfg.bucket_mb * (1 << 20)))});
    say(fmt::format("data parallel: {} ranks ({}), global batch {} x {}, {} gradient buckets",
                    cfg.dp, grid.dp_group()->backend(), cfg.dp * cfg.batch_size,
                    cfg.model.block_size, ddp->num_buckets()));
  }
  std::optional<Pipeline> pipe;
  if (model_parallel) {
    pipe.emplace(*shard, grid.pp_group(),
                 PipelineOptions{parse_pipeline_schedule(cfg.schedule), int(cfg.micro_batches)});
    say(
        fmt::format("model parallel: tp {} x pp {} ({} ranks per replica), {} micro-batches, {} "
                    "schedule; rank 0 holds blocks [{}, {})",
                    cfg.tp, cfg.pp, cfg.tp * cfg.pp, cfg.micro_batches, cfg.schedule,
                    shard->layers().begin, shard->layers().end));
  } else if (cfg.micro_batches > 1) {
    say(fmt::format("gradient accumulation: {} micro-batches of {}", cfg.micro_batches,
                    cfg.batch_size / cfg.micro_batches));
  }
  if (mixed || cfg.checkpoint != "none")
    say(fmt::format("precision {}{}; activation checkpointing {}", cfg.precision,
                    scaler.enabled() ? fmt::format(", loss scale {:g}", scaler.scale_value()) : "",
                    cfg.checkpoint));

  WarmupCosine schedule(cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters);
  MetricsWriter metrics(lead ? cfg.metrics : "");
  const std::vector<Variable> params = model.parameters();
  const int64_t B = cfg.batch_size, T = cfg.model.block_size, M = cfg.micro_batches;
  const double flops_per_step = cfg.model.flops_per_token(T) * double(B * T);
  const int64_t ckpt_every =
      cfg.checkpoint_interval > 0 ? cfg.checkpoint_interval : cfg.eval_interval;

  auto save = [&](int64_t step) {
    if (cfg.out.empty()) return;
    TrainingState st{step,
                     batch_gen.state(),
                     dropout_gen.state(),
                     {},
                     scaler.enabled() ? scaler.state() : NamedTensors{},
                     cfg.to_json()};
    CheckpointPaths p;
    if (model_parallel) {
      // Replica 0's ranks write their shards; every rank takes part (the directory is renamed
      // into place once all are written).
      std::vector<CheckpointShard> mine;
      if (at.dp == 0) {
        mine.push_back({at.pp, at.tp, model.state_dict(),
                        optimizer_state_by_name(opt.state(), gpt_param_group_names(model)),
                        dropout_gen.state()});
      }
      p = save_sharded_checkpoint(*world, cfg.out, step, layout, cfg.model, data.tokenizer, st,
                                  mine, cfg.keep_last);
    } else {
      if (!lead) return;
      st.optimizer = opt.state();
      p = save_checkpoint(cfg.out, step, *run.model, data.tokenizer, st, cfg.to_json(),
                          cfg.keep_last);
    }
    run.last_checkpoint = p.dir;
    say(fmt::format("saved checkpoint {}", p.dir));
  };
  // Mean loss over eval_iters batches of dp * B rows: on rank 0 alone, or through the pipeline of
  // replica 0 (whose ranks all take part).
  auto eval_split = [&](const Tensor& split, Generator& g, const char* name) {
    if (!model_parallel)
      return estimate_loss(*run.model, split, cfg.eval_iters, B * cfg.dp, g, name);
    NoGradGuard no_grad;
    MemoryTagScope tag(MemoryTag::activations);
    const bool was_training = model.is_training();
    model.eval();
    double total = 0;
    for (int64_t i = 0; i < cfg.eval_iters; ++i) {
      Batch b = get_batch(split, B * cfg.dp, T, g, name);
      total += pipe->evaluate(b.x.to(device), b.y.to(device));
    }
    model.train(was_training);
    return total / double(cfg.eval_iters);
  };
  auto evaluate = [&](int64_t step, StepStats& s) {
    if (model_parallel ? at.dp != 0 : !lead) return;  // the others wait at the next collective
    Generator g = eval_generator(cfg.seed, step);
    s.train_eval_loss = eval_split(data.train, g, "train");
    s.val_loss = eval_split(data.val, g, "val");
    run.final_val_loss = s.val_loss;
  };
  // Forward and backward of this replica's rows; gradients accumulate over the micro-batches.
  auto forward_backward = [&](const Batch& b) -> double {
    if (model_parallel)
      return pipe->step(b.x, b.y, scaler.scale_value(), ddp ? &*ddp : nullptr).loss;
    const int64_t mb = B / M;
    double loss_sum = 0;
    for (int64_t m = 0; m < M; ++m) {
      std::optional<DistributedDataParallel::NoSync> local;  // all-reduce in the last one only
      if (ddp && m < M - 1) local.emplace(*ddp);
      Variable loss = run.model->loss(run.model->forward(b.x.narrow(0, m * mb, mb).contiguous()),
                                      b.y.narrow(0, m * mb, mb).contiguous());
      scaler.scale(mul(loss, 1.0 / double(M))).backward();
      loss_sum += loss.item();
    }
    return loss_sum / double(M);
  };

  ProgressBar bar(cfg.max_iters - start, "train", hooks.progress && lead);
  run.steps_done = start;
  for (int64_t step = start + 1; step <= cfg.max_iters; ++step) {
    auto t0 = std::chrono::steady_clock::now();
    StepStats s;
    s.step = step;
    s.lr = schedule.lr(step - 1);  // nanoGPT's get_lr(iter) with iter counted from 0
    opt.set_lr(s.lr);
    {
      MemoryTagScope tag(MemoryTag::activations);
      std::optional<Autocast> scope;
      if (mixed) scope.emplace(autocast_dtype);
      Batch b = get_batch(data.train, B * cfg.dp, T, batch_gen, "train");
      if (cfg.dp > 1)
        b = {b.x.narrow(0, at.dp * B, B).contiguous(), b.y.narrow(0, at.dp * B, B).contiguous()};
      b = {b.x.to(device), b.y.to(device)};
      ddp ? ddp->zero_grad() : opt.zero_grad();
      s.loss = forward_backward(b);
    }
    if (ddp) ddp->finish_grad_sync();
    if (model_parallel) sync_tied_embedding(*shard, grid.embedding_group());
    scaler.unscale(params);  // before clipping; finds inf/NaN
    if (world->size() > 1) {
      // One small all-reduce: the mean loss, and the inf/NaN verdict of any rank (shards see
      // different gradients), so every rank skips alike and rank 0 logs the whole batch's loss.
      Tensor v = from_vector<double>({s.loss, scaler.found_inf() ? 1.0 : 0.0});
      world->all_reduce(v, ReduceOp::sum);
      std::vector<double> r = v.to_vector<double>();
      s.loss = r[0] / double(world->size());  // equal within a replica: the mean over replicas
      scaler.set_found_inf(r[1] > 0);
    }
    if (ddp) {
      s.comm_wait_ms = ddp->last_sync().wait_seconds * 1e3;
      s.allreduce_ms = ddp->last_sync().allreduce_seconds * 1e3;
    }
    if (scaler.found_inf()) {
      s.grad_norm = std::nan("");  // not computed on a skipped step
    } else {
      s.grad_norm = model_parallel ? parallel_grad_norm(*shard, *grid.model_parallel_group())
                                   : grad_norm(params);
      if (cfg.grad_clip > 0) clip_grads_to_norm(params, s.grad_norm, cfg.grad_clip);
    }
    s.skipped = !scaler.step(opt, params);
    s.loss_scale = scaler.scale_value();
    scaler.update();
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s.ms_per_step = secs * 1e3;
    s.tokens_per_s = double(B * T * cfg.dp) / secs;
    s.gflops = flops_per_step * double(cfg.dp) / secs * 1e-9;
    s.peak_bytes = memory_stats(device).peak_bytes;
    run.losses.push_back(s.loss);
    run.steps_done = step;
    if (step % cfg.eval_interval == 0 || step == cfg.max_iters) evaluate(step, s);
    bar.update(step - start, fmt::format("loss {:.4f}", s.loss));
    if (s.val_loss || step % cfg.log_interval == 0) {
      metrics.write({{"step", step},
                     {"loss", s.loss},
                     {"val_loss", s.val_loss ? *s.val_loss : std::nan("")},
                     {"lr", s.lr},
                     {"ms_per_step", s.ms_per_step},
                     {"tokens_per_s", s.tokens_per_s},
                     {"gflops", s.gflops},
                     {"peak_bytes", s.peak_bytes},
                     {"loss_scale", s.loss_scale},
                     {"skipped", int64_t(s.skipped)},
                     {"comm_wait_ms", s.comm_wait_ms},
                     {"allreduce_ms", s.allreduce_ms}});
    }
    if (hooks.on_step && lead) hooks.on_step(s);
    bool stop = hooks.stop && hooks.stop->load();
    if (world->size() > 1)
      stop = any_rank(*world, stop);  // Ctrl-C reaches ranks at different moments
    if (step % ckpt_every == 0 || step == cfg.max_iters || stop) save(step);
    if (stop) {
      run.stopped = true;
      say(fmt::format("stopped at step {}", step));
      break;
    }
  }
  bar.finish();
  if (!run.final_val_loss && start >= cfg.max_iters) {
    StepStats s;
    evaluate(start, s);
  }
  return run;
}

GptEvalResult evaluate_checkpoint(const GptTrainConfig& config, const std::string& checkpoint,
                                  const std::string& quant, int64_t group) {
  if (config.threads > 0) set_num_threads(int(config.threads));
  LoadedModel loaded = load_model(resolve_model_path(checkpoint));
  std::string data_path = resolve_data_path(config);
  TextData data = load_text(data_path, loaded.tokenizer);
  std::shared_ptr<GPT> model = make_model(loaded, quant, group);
  GptEvalResult r;
  r.step = loaded.step;
  r.quantization = describe_quantization(*model);
  r.model_bytes = state_bytes(quantized_state(*model));
  auto t0 = std::chrono::steady_clock::now();
  // The evaluation at this step drew the train batches first, then the val ones, from one
  // generator.
  Generator g = eval_generator(config.seed, loaded.step);
  const int64_t rows = config.batch_size * config.dp;
  r.train_loss = estimate_loss(*model, data.train, config.eval_iters, rows, g, "train");
  r.val_loss = estimate_loss(*model, data.val, config.eval_iters, rows, g, "val");
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace forge
