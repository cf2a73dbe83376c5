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
#include "parallel/zero.h"
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
// weights, embeddings), none on biases and LayerNorm gains. Named, so the optimizer's state is
// keyed by parameter name (adamw.m.transformer.wte.weight) on every layout.
std::vector<ParamGroup> param_groups(const Module& model, double weight_decay) {
  std::map<std::string, Variable> by_name;
  for (const auto& [name, p] : model.named_parameters()) by_name.emplace(name, p);
  const auto names = gpt_param_group_names(model);
  std::vector<ParamGroup> groups{{{}, weight_decay, names[0]}, {{}, 0.0, names[1]}};
  for (ParamGroup& g : groups)
    for (const std::string& n : g.names) g.params.push_back(by_name.at(n));
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

// One rank's training run, in the steps of llm.c's main: build (settings, process grid, data,
// model, optimizer), restore, then per step train_step, evaluate, log and save. Every layout runs
// the same code: the model is this rank's part of the GPT (the whole one on one rank), and its
// steps run through a Pipeline, which on one stage is gradient accumulation over the
// micro-batches. Data parallelism adds DDP's gradient averaging.
//
// The ranks form a grid of dp replicas, each split over tp x pp ranks (all 1 without mpirun).
// Every rank draws the same global batch of dp * batch_size rows and its replica trains on its
// batch_size of them; rank 0 alone logs, replica 0's ranks evaluate and save. `world_` carries the
// host's messages (settings, the logged loss, stops, checkpoints); the grid's groups carry the
// tensors of training, on the training device (NCCL between GPUs).
class GptTrainer {
 public:
  GptTrainer(const GptTrainConfig& config, const GptRunHooks& hooks);
  int64_t restore();  // from --resume: the step to continue after (0 for a fresh run)
  StepStats train_step(int64_t step);
  void evaluate(int64_t step, StepStats& s);
  void log(const StepStats& s);
  void save(int64_t step);
  // The end of the run: ZeRO-3 hands back no model (see the definition).
  void finish();
  bool stop_requested();  // on any rank (Ctrl-C reaches ranks at different moments)
  void say(const std::string& m) const {
    if (lead_ && hooks_.on_message) hooks_.on_message(m);
  }
  const GptTrainConfig& config() const { return cfg_; }
  bool lead() const { return lead_; }
  GptRun run;

 private:
  void load_data();
  void build_model();
  void describe() const;
  void record_peak(StepStats& s) const;
  double eval_split(const Tensor& split, Generator& g, const char* name);

  GptTrainConfig cfg_;
  const GptRunHooks& hooks_;
  std::shared_ptr<Communicator> world_;
  Device device_;
  ProcessGrid grid_;
  GridCoord at_;
  bool lead_;
  ShardLayout layout_;
  std::optional<CheckpointInfo> resumed_;  // --resume: what the checkpoint says (headers)
  std::string data_path_;
  TextData data_;
  Generator init_gen_, batch_gen_, dropout_gen_;
  std::shared_ptr<GPT> model_;
  std::vector<Variable> params_;
  std::unique_ptr<Optimizer> opt_;  // AdamW, or ZeroAdamW (zero_) with --zero 1, 2 or 3
  ZeroAdamW* zero_ = nullptr;
  GradScaler scaler_;
  std::optional<DistributedDataParallel> ddp_;
  std::optional<Pipeline> pipe_;
  WarmupCosine schedule_;
  MetricsWriter metrics_;
};

// Dropout draws differ between replicas and between pipeline stages (replica 0's first stage
// draws the serial run's first masks) and agree between the tensor-parallel ranks of a stage.
uint64_t dropout_seed(uint64_t base, GridCoord at) {
  return base + uint64_t(at.dp) * 0x9E3779B97F4A7C15ull + uint64_t(at.pp) * 0xD1B54A32D192ED03ull;
}

GptTrainConfig validated(const GptTrainConfig& config) {
  config.validate();
  return config;
}

GptTrainer::GptTrainer(const GptTrainConfig& config, const GptRunHooks& hooks)
    : cfg_(validated(config)),
      hooks_(hooks),
      world_(world_communicator()),
      device_(training_device(cfg_.device, *world_)),
      grid_(device_.is_cpu() ? world_ : world_communicator_for(device_),
            {.pp = int(cfg_.pp), .dp = int(cfg_.dp), .tp = int(cfg_.tp)}),
      at_(grid_.coord()),
      lead_(world_->rank() == 0),
      layout_{int(cfg_.tp), int(cfg_.pp)},
      init_gen_(uint64_t(cfg_.seed)),
      batch_gen_(uint64_t(cfg_.seed) + 1),
      dropout_gen_(dropout_seed(uint64_t(cfg_.seed) + 2, at_)),
      scaler_({.init_scale = cfg_.init_scale,
               .growth_interval = cfg_.scale_growth_interval,
               .enabled = cfg_.loss_scaling()}),
      schedule_(cfg_.lr, cfg_.min_lr, cfg_.warmup_iters, cfg_.lr_decay_iters),
      metrics_(lead_ ? cfg_.metrics : "") {
  if (cfg_.threads > 0) set_num_threads(int(cfg_.threads));
  set_memory_cap(device_, int64_t(cfg_.memory_cap_mb * double(1 << 20)));
  check_same_on_all_ranks(*world_, shared_settings(cfg_),
                          "the training settings (--dp, --tp, --pp, model, ...)");
  load_data();
  build_model();
  describe();
}

// The corpus, and the checkpoint to continue from (whose tokenizer it is read with).
void GptTrainer::load_data() {
  data_path_ = resolve_data_path(cfg_);
  if (!cfg_.resume.empty()) {
    auto latest = latest_checkpoint(cfg_.resume);
    FORGE_CHECK(latest.has_value(), "--resume {}: no complete checkpoint found there", cfg_.resume);
    resumed_ = read_checkpoint_info(latest->dir);
    check_same_architecture(cfg_.model, resumed_->config, latest->dir);
    data_ = load_text(data_path_, resumed_->tokenizer);
  } else {
    data_ = load_text(data_path_, cfg_.tokenizer);
  }
  cfg_.model.vocab_size = data_.tokenizer.vocab_size();
  for (auto [split, name] : {std::pair{&data_.train, "train"}, std::pair{&data_.val, "val"}})
    FORGE_CHECK(split->numel() > cfg_.model.block_size,
                "{}: block_size {} is larger than the {} split ({} tokens)", data_path_,
                cfg_.model.block_size, name, split->numel());
  run.tokenizer = data_.tokenizer;
  run.device = device_;
}

// This rank's part of the model on the training device, its optimizer (whose state goes where
// the parameters are), DDP over the replicas and the pipeline over the stages.
void GptTrainer::build_model() {
  {
    // ZeRO-3 builds the model without its parameters' memory and fills each rank's partition
    // from the model's initial values: no rank holds its shard of the model whole.
    std::optional<DeferParameterMemory> defer;
    if (cfg_.zero == 3) defer.emplace();
    model_ =
        std::make_shared<GPT>(cfg_.model, init_gen_, dropout_gen_, gpt_part(grid_, cfg_.model));
  }
  model_->set_checkpoint_blocks(cfg_.checkpoint == ActivationCheckpointing::blocks);
  model_->train();
  model_->to(device_);
  params_ = model_->parameters();
  const AdamWOptions adamw{.lr = cfg_.lr, .beta1 = cfg_.beta1, .beta2 = cfg_.beta2, .eps = 1e-8};
  const int64_t bucket_bytes = std::max<int64_t>(1, int64_t(cfg_.bucket_mb * (1 << 20)));
  if (cfg_.zero > 0) {
    // One unit per embedding, block and ln_f: what stage 3 gathers at once, and the buckets of
    // every stage's collectives.
    ZeroOptions z{.stage = int(cfg_.zero), .units = model_->parameter_units()};
    if (z.stage == 3)
      z.init = [m = model_.get()](const std::string& name, IndexRange e) {
        return m->initial_values(name, e);
      };
    auto zero = std::make_unique<ZeroAdamW>(param_groups(*model_, cfg_.weight_decay), adamw,
                                            grid_.dp_group(), std::move(z));
    zero_ = zero.get();
    opt_ = std::move(zero);
    if (zero_->stage() == 3) model_->set_parameter_gate(zero_);
  } else {
    opt_ = std::make_unique<AdamW>(param_groups(*model_, cfg_.weight_decay), adamw);
    if (cfg_.dp > 1)
      ddp_.emplace(params_, grid_.dp_group(), DdpOptions{.bucket_bytes = bucket_bytes});
  }
  pipe_.emplace(*model_, grid_.pp_group(), PipelineOptions{cfg_.schedule, int(cfg_.micro_batches)});
  run.model = model_;
}

void GptTrainer::describe() const {
  const GPTConfig& m = cfg_.model;
  say(fmt::format(
      "model: {} layers, {} heads, {} wide, block {}, vocab {} ({}), {:.2f}M parameters", m.n_layer,
      m.n_head, m.n_embd, m.block_size, m.vocab_size,
      data_.tokenizer.kind() == Tokenizer::Kind::chars ? "char" : "byte",
      double(m.num_parameters()) / 1e6));
  say(fmt::format("data: {} ({} train / {} val tokens); batch {} x {}; {} threads", data_path_,
                  data_.train.numel(), data_.val.numel(), cfg_.batch_size, m.block_size,
                  get_num_threads()));
  if (zero_)
    say(
        fmt::format("data parallel: {} ranks ({}), global batch {} x {}, ZeRO stage {}: AdamW's "
                    "state{} for {} of this replica shard's {} elements on rank 0",
                    cfg_.dp, grid_.dp_group()->backend(), cfg_.dp * cfg_.batch_size, m.block_size,
                    zero_->stage(),
                    zero_->stage() == 1   ? ""
                    : zero_->stage() == 2 ? " and gradients"
                                          : ", gradients and parameters",
                    zero_->share_numel(), zero_->numel()));
  if (ddp_)
    say(fmt::format("data parallel: {} ranks ({}), global batch {} x {}, {} gradient buckets",
                    cfg_.dp, grid_.dp_group()->backend(), cfg_.dp * cfg_.batch_size, m.block_size,
                    ddp_->num_buckets()));
  if (!layout_.serial())
    say(fmt::format(
        "model parallel: tp {} x pp {} ({} ranks per replica), {} micro-batches, {} "
        "schedule; rank 0 holds blocks [{}, {})",
        cfg_.tp, cfg_.pp, cfg_.tp * cfg_.pp, cfg_.micro_batches,
        pipeline_schedule_name(cfg_.schedule), model_->layers().begin, model_->layers().end));
  else if (cfg_.micro_batches > 1)
    say(fmt::format("gradient accumulation: {} micro-batches of {}", cfg_.micro_batches,
                    cfg_.batch_size / cfg_.micro_batches));
  if (cfg_.mixed_precision() || cfg_.checkpoint != ActivationCheckpointing::none)
    say(fmt::format(
        "precision {}{}; activation checkpointing {}", cfg_.precision,
        scaler_.enabled() ? fmt::format(", loss scale {:g}", scaler_.scale_value()) : "",
        activation_checkpointing_name(cfg_.checkpoint)));
}

int64_t GptTrainer::restore() {
  run.steps_done = 0;
  if (!resumed_) return 0;
  const TrainingState& st = resumed_->state;
  // Only this rank's share is read: its tensors' and slices' bytes, whatever the saved layout.
  // ZeRO reads one piece at a time, its partition's (whole weights at stages 1-2).
  CheckpointShardReader reader(*resumed_, layout_, at_.pp, at_.tp);
  if (zero_) {
    Tensor steps = reader.adamw_step();
    zero_->load_checkpoint([&](const std::string& kind, const std::string& name,
                               IndexRange r) { return reader.elements(kind, name, r); },
                           steps.defined() ? int64_t(steps.item()) : 0);
  } else {
    CheckpointShard mine = reader.read_all();
    model_->load_state_dict(mine.weights);
    opt_->load_state(mine.optimizer);
  }
  if (scaler_.enabled() && !st.scaler.empty()) scaler_.load_state(st.scaler);
  batch_gen_.set_state(st.batch_gen);
  // The saved first shard's generator gives the run's dropout seed, whatever --seed says now;
  // the offset is this shard's (its own stream under the same layout, see shard_checkpoint).
  dropout_gen_.set_state(
      {dropout_seed(resumed_->dropout_gens[0][0].seed, at_), reader.dropout_gen().offset});
  const int64_t start = st.step;
  // Another dp resumes the same run when dp x batch_size is unchanged: the batch generator draws
  // the same global batches, and the state is by name (ZeRO's partitions are cut anew).
  const int64_t dp = saved_dp(st);
  say(fmt::format(
      "resumed from {} at step {}{}{}", resumed_->dir, start,
      resumed_->layout == layout_
          ? ""
          : fmt::format(" (saved at tp {} x pp {}, now tp {} x pp {})", resumed_->layout.tp,
                        resumed_->layout.pp, layout_.tp, layout_.pp),
      dp == cfg_.dp ? "" : fmt::format(" (saved at dp {}, now dp {})", dp, cfg_.dp)));
  resumed_.reset();
  run.steps_done = start;
  return start;
}

StepStats GptTrainer::train_step(int64_t step) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t B = cfg_.batch_size, T = cfg_.model.block_size;
  StepStats s;
  s.step = step;
  reset_peak_memory(device_);
  s.lr = schedule_.lr(step - 1);  // nanoGPT's get_lr(iter) with iter counted from 0
  opt_->set_lr(s.lr);
  {
    // Forward and backward of this replica's rows; gradients accumulate over the micro-batches.
    MemoryTagScope tag(MemoryTag::activations);
    std::optional<Autocast> autocast;
    if (cfg_.mixed_precision()) autocast.emplace(cfg_.precision);
    Batch b = get_batch(data_.train, B * cfg_.dp, T, batch_gen_, "train");
    if (cfg_.dp > 1)
      b = {b.x.narrow(0, at_.dp * B, B).contiguous(), b.y.narrow(0, at_.dp * B, B).contiguous()};
    ddp_ ? ddp_->zero_grad() : opt_->zero_grad();
    s.loss =
        pipe_
            ->step(b.x.to(device_), b.y.to(device_), scaler_.scale_value(), ddp_ ? &*ddp_ : nullptr)
            .loss;
  }
  if (ddp_) ddp_->finish_grad_sync();
  // The gradients the optimizer steps on: the parameters' (DDP), or this rank's share of the
  // average (ZeRO; stages 2-3 reduce-scattered most of it during backward).
  const std::vector<Variable>& grads = zero_ ? zero_->partition_parameters() : params_;
  if (zero_) {
    if (zero_->stage() == 1) sync_tied_embedding(*model_, grid_.embedding_group());
    zero_->reduce_scatter_gradients();
    if (zero_->stage() > 1 && grid_.embedding_group())
      zero_->sum_gradient_over("transformer.wte.weight", *grid_.embedding_group());
  } else {
    sync_tied_embedding(*model_, grid_.embedding_group());
  }
  scaler_.unscale(grads);  // before clipping; finds inf/NaN
  if (world_->size() > 1) {
    // One small all-reduce: the mean loss, and the inf/NaN verdict of any rank (shards see
    // different gradients), so every rank skips alike and rank 0 logs the whole batch's loss.
    Tensor v = from_vector<double>({s.loss, scaler_.found_inf() ? 1.0 : 0.0});
    world_->all_reduce(v, ReduceOp::sum);
    std::vector<double> r = v.to_vector<double>();
    s.loss = r[0] / double(world_->size());  // equal within a replica: the mean over replicas
    scaler_.set_found_inf(r[1] > 0);
  }
  if (ddp_) {
    s.comm_wait_ms = ddp_->last_sync().wait_seconds * 1e3;
    s.allreduce_ms = ddp_->last_sync().allreduce_seconds * 1e3;
  }
  if (scaler_.found_inf()) {
    s.grad_norm = std::nan("");  // not computed on a skipped step
  } else if (zero_) {
    // Each rank's share of its model shard: the squares summed over every rank.
    Tensor sq = full({1}, zero_->grad_norm_sq_local([&](const std::string& name) {
      return grad_norm_counts(*model_, name);
    }),
                     DType::f64);
    world_->all_reduce(sq, ReduceOp::sum);
    s.grad_norm = std::sqrt(sq.item());
    if (cfg_.grad_clip > 0) zero_->clip_to_norm(s.grad_norm, cfg_.grad_clip);
  } else {
    s.grad_norm = parallel_grad_norm(*model_, *grid_.model_parallel_group());
    if (cfg_.grad_clip > 0) clip_grads_to_norm(params_, s.grad_norm, cfg_.grad_clip);
  }
  s.skipped = !scaler_.step(*opt_, grads);
  s.loss_scale = scaler_.scale_value();
  scaler_.update();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  s.ms_per_step = secs * 1e3;
  s.tokens_per_s = double(B * T * cfg_.dp) / secs;
  s.gflops = cfg_.model.flops_per_token(T) * double(B * T * cfg_.dp) / secs * 1e-9;
  record_peak(s);
  run.losses.push_back(s.loss);
  run.steps_done = step;
  return s;
}

// The step's peak memory on the rank where it is highest (the one a memory budget must fit): one
// all-reduce of every rank's figures, each in its own slots.
void GptTrainer::record_peak(StepStats& s) const {
  const MemoryStats m = memory_stats(device_);
  constexpr size_t kTags = size_t(MemoryTag::count);
  std::vector<double> mine(1 + kTags);
  mine[0] = double(m.peak_bytes);
  for (size_t t = 0; t < kTags; ++t) mine[1 + t] = double(m.at_peak_by_tag[t]);
  std::vector<double> all = mine;
  if (world_->size() > 1) {
    Tensor v = zeros({world_->size(), int64_t(mine.size())}, DType::f64);
    v.narrow(0, world_->rank(), 1).copy_(from_vector<double>(mine, {1, int64_t(mine.size())}));
    world_->all_reduce(v, ReduceOp::sum);
    all = v.to_vector<double>();
  }
  const size_t row = mine.size();
  for (size_t r = 0; r < all.size() / row; ++r)
    if (r == 0 || all[r * row] > double(s.peak_bytes)) {
      s.peak_bytes = int64_t(all[r * row]);
      s.peak_rank = int(r);
      for (size_t t = 0; t < kTags; ++t) s.peak_by_tag[t] = int64_t(all[r * row + 1 + t]);
    }
}

// Mean loss over eval_iters batches of dp * B rows through replica 0's pipeline (whose ranks
// all take part; the others wait at the next collective, or under ZeRO-3 do the same).
double GptTrainer::eval_split(const Tensor& split, Generator& g, const char* name) {
  NoGradGuard no_grad;
  MemoryTagScope tag(MemoryTag::activations);
  model_->eval();
  double total = 0;
  for (int64_t i = 0; i < cfg_.eval_iters; ++i) {
    Batch b = get_batch(split, cfg_.batch_size * cfg_.dp, cfg_.model.block_size, g, name);
    total += pipe_->evaluate(b.x.to(device_), b.y.to(device_));
  }
  model_->train();
  return total / double(cfg_.eval_iters);
}

void GptTrainer::evaluate(int64_t step, StepStats& s) {
  // ZeRO-3: every replica gathers the parameters with the others, so all evaluate the same rows
  // (in the time replica 0 alone would take).
  if (at_.dp != 0 && !(zero_ && zero_->stage() == 3)) return;
  Generator g = eval_generator(cfg_.seed, step);
  s.train_eval_loss = eval_split(data_.train, g, "train");
  s.val_loss = eval_split(data_.val, g, "val");
  run.final_val_loss = s.val_loss;
}

void GptTrainer::log(const StepStats& s) {
  metrics_.write({{"step", s.step},
                  {"loss", s.loss},
                  {"val_loss", s.val_loss ? *s.val_loss : std::nan("")},
                  {"lr", s.lr},
                  {"elapsed_s", s.elapsed_s},
                  {"ms_per_step", s.ms_per_step},
                  {"tokens_per_s", s.tokens_per_s},
                  {"gflops", s.gflops},
                  {"peak_bytes", s.peak_bytes},
                  {"peak_rank", int64_t(s.peak_rank)},
                  {"peak_parameters_bytes", s.peak_by_tag[size_t(MemoryTag::parameters)]},
                  {"peak_gradients_bytes", s.peak_by_tag[size_t(MemoryTag::gradients)]},
                  {"peak_optimizer_bytes", s.peak_by_tag[size_t(MemoryTag::optimizer)]},
                  {"peak_activations_bytes", s.peak_by_tag[size_t(MemoryTag::activations)]},
                  {"peak_other_bytes", s.peak_by_tag[size_t(MemoryTag::other)]},
                  {"loss_scale", s.loss_scale},
                  {"skipped", int64_t(s.skipped)},
                  {"comm_wait_ms", s.comm_wait_ms},
                  {"allreduce_ms", s.allreduce_ms}});
  if (hooks_.on_step && lead_) hooks_.on_step(s);
}

// A serial layout writes the one-file checkpoint `infer` reads (rank 0); a split one, one file
// pair per shard from replica 0's ranks, every rank taking part (the directory is renamed into
// place once all are written). Under ZeRO every rank writes its partition, and replica 0's ranks
// the rest of their shard's state.
void GptTrainer::save(int64_t step) {
  if (cfg_.out.empty()) return;
  TrainingState st{step,
                   batch_gen_.state(),
                   dropout_gen_.state(),
                   {},
                   scaler_.enabled() ? scaler_.state() : NamedTensors{},
                   cfg_.to_json()};
  CheckpointPaths p;
  if (zero_) {
    ZeroShare share{zero_->stage(), int(cfg_.dp), at_.dp, at_.pp, at_.tp, zero_->partition_state()};
    std::vector<CheckpointShard> mine;
    if (at_.dp == 0)
      mine.push_back({at_.pp,
                      at_.tp,
                      {},
                      {{"adamw.step", from_vector<int64_t>({zero_->steps()})}},
                      dropout_gen_.state()});
    p = save_sharded_checkpoint(*world_, cfg_.out, step, layout_, cfg_.model, data_.tokenizer, st,
                                mine, cfg_.keep_last, &share);
  } else if (layout_.serial()) {
    if (!lead_) return;
    st.optimizer = opt_->state();
    p = save_checkpoint(cfg_.out, step, *model_, data_.tokenizer, st, cfg_.to_json(),
                        cfg_.keep_last);
  } else {
    std::vector<CheckpointShard> mine;
    if (at_.dp == 0)
      mine.push_back({at_.pp, at_.tp, model_->state_dict(), opt_->state(), dropout_gen_.state()});
    p = save_sharded_checkpoint(*world_, cfg_.out, step, layout_, cfg_.model, data_.tokenizer, st,
                                mine, cfg_.keep_last);
  }
  run.last_checkpoint = p.dir;
  say(fmt::format("saved checkpoint {}", p.dir));
}

// ZeRO-3: the parameters live in the partitions, which go with the optimizer; gathering them
// whole for the caller would take 4P bytes on every rank, more than training needed at dp >= 4,
// so the run returns no model (its last checkpoint has it whole).
void GptTrainer::finish() {
  if (!zero_ || zero_->stage() < 3) return;
  model_->set_parameter_gate(nullptr);
  run.model.reset();
}

bool GptTrainer::stop_requested() {
  const bool stop = hooks_.stop && hooks_.stop->load();
  return world_->size() > 1 ? any_rank(*world_, stop) : stop;
}

}  // namespace

GptRun train_gpt(const GptTrainConfig& config, const GptRunHooks& hooks) {
  GptTrainer trainer(config, hooks);
  const GptTrainConfig& cfg = trainer.config();
  const int64_t start = trainer.restore();
  const int64_t ckpt_every =
      cfg.checkpoint_interval > 0 ? cfg.checkpoint_interval : cfg.eval_interval;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t step = start + 1; step <= cfg.max_iters; ++step) {
    StepStats s = trainer.train_step(step);
    if (step % cfg.eval_interval == 0 || step == cfg.max_iters) trainer.evaluate(step, s);
    s.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    trainer.log(s);
    const bool stop = trainer.stop_requested();
    if (step % ckpt_every == 0 || step == cfg.max_iters || stop) trainer.save(step);
    if (stop) {
      trainer.run.stopped = true;
      // Its loss too: with log lines every few steps, the last one may be steps behind.
      trainer.say(fmt::format("stopped at step {} (loss {:.4f})", step, s.loss));
      break;
    }
  }
  if (!trainer.run.final_val_loss && start >= cfg.max_iters) {
    StepStats s;
    trainer.evaluate(start, s);
  }
  trainer.finish();
  return std::move(trainer.run);
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
