// The serving engine: one thread owns the model and runs continuous batching over N slots.
//
//   Engine engine(model, tokenizer, {.slots = 8, .max_queue = 64});
//   std::shared_ptr<Stream> s = engine.submit(request);     // throws QueueFull past max_queue
//   while (auto event = s->next(std::chrono::milliseconds(50)))   // tokens as they are made
//     ...;                                                   // then one event with `finish` set
//   s->cancel();                                             // frees the slot within one step
//
// Each iteration of the engine thread (a step) starts waiting requests in free slots (as many as
// fit in max_batch_tokens), then gives every active slot one token in one batched forward
// (GPT::forward_slots): the new requests' whole prompts and the running ones' last tokens side by
// side, so a new prompt costs the others one slightly larger step instead of a step of its own.
// Each slot samples with its own generator (seeded per request); finished slots are freed at once.
//
// Batch invariance: a request's tokens and logprobs are bit for bit the same whether it runs alone
// or batched with any others, because every slot's rows in forward_slots are computed exactly as
// that sequence alone (see GPT::forward_slots) and each request samples from its own generator.
// Dynamic int8 layers are switched to one activation grid per row (Int8Linear::set_per_row) for the
// same reason.
//
// Context: a prompt longer than block_size is refused (CompletionRequest validation); generation
// past block_size follows `infer`'s window rule: keep the newest block_size / 2 tokens and rerun
// them as the slot's prompt.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "io/tokenizer.h"
#include "models/gpt.h"

namespace forge::serve {

// What to generate: the prompt's tokens and the sampling settings (validated by the caller).
struct GenerationParams {
  std::vector<int64_t> prompt;
  int64_t max_tokens = 16;
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  uint64_t seed = 0;
  std::vector<std::string> stop;  // generation ends before any of these (not emitted)
  int logprobs = -1;              // -1: none; 0..5: the chosen token's and this many top ones
};

struct TopLogprob {
  int64_t token;
  double logprob;
};

// One event of a request's stream: text that can no longer become part of a stop string (may be
// empty when a token is held back), or the end.
struct StreamEvent {
  std::string text;
  // The tokens made since the last event (usually one), each with its log probability under the
  // model (log softmax of the raw logits, before temperature and truncation) and the top ones.
  std::vector<int64_t> tokens;
  std::vector<double> logprobs;
  std::vector<std::vector<TopLogprob>> top_logprobs;
  // Set on the last event: "stop", "length", "cancelled" or "error" (with `error`).
  std::optional<std::string> finish;
  std::string error;
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

// A request's handle: the engine pushes events, the connection pulls them.
class Stream {
 public:
  // The next event, or nullopt after `wait` without one (the stream is not over until an event
  // with `finish` set has been returned).
  std::optional<StreamEvent> next(std::chrono::milliseconds wait);
  void cancel();  // the engine ends the request at its next step with finish "cancelled"
  bool cancelled() const;
  double ttft_seconds() const;  // time from submit to the first token (0 before it)
  size_t pending() const;       // events pushed and not yet read

 private:
  friend class Engine;
  void push(StreamEvent e);
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StreamEvent> events_;
  bool cancelled_ = false;
  std::chrono::steady_clock::time_point submitted_;
  double ttft_ = 0;
  std::function<void()> notify_;
};

struct EngineOptions {
  int64_t slots = 8;
  int64_t max_queue = 64;  // requests that may wait for a slot (beyond the free slots)
  // Tokens of one step (prompts of the requests it starts plus one per running request) beyond
  // which a waiting request waits for the next step, so that new prompts do not stall the
  // others' next tokens for long. A step always starts at least one waiting request.
  int64_t max_batch_tokens = 512;
  // Unread events of a request beyond which it is paused (keeps its slot, skips steps) until its
  // client reads: a slow reader holds back only itself, and its backlog stays bounded.
  int64_t max_pending_events = 4096;
};

struct QueueFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct ShuttingDown : std::runtime_error {  // submit after shutdown began
  using std::runtime_error::runtime_error;
};

struct EngineStats {
  int64_t active = 0, waiting = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;  // totals
  int64_t steps = 0;                                // batched decode steps run
  int64_t paused = 0;                // requests paused now because their clients do not read
  std::vector<int64_t> batch_sizes;  // histogram: [m] = decode steps with m rows
};

class Engine {
 public:
  Engine(std::shared_ptr<GPT> model, Tokenizer tokenizer, EngineOptions options);
  ~Engine();  // cancels everything and joins the thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; throws QueueFull when max_queue requests already wait for a slot (all
  // slots busy), ShuttingDown once shutdown has begun. `notify`, if given, is called (on the
  // engine's thread, without its locks) after each event is pushed to the stream.
  std::shared_ptr<Stream> submit(GenerationParams params, std::function<void()> notify = {});
  // Stops taking requests; in-flight ones finish, or are cancelled after `timeout`.
  void shutdown(std::chrono::milliseconds timeout);
  EngineStats stats() const;
  const Tokenizer& tokenizer() const { return tokenizer_; }
  const GPTConfig& config() const { return model_->config(); }
  int64_t slots() const { return options_.slots; }

 private:
  struct Slot;
  void run();
  void start(Slot& slot);
  void step(std::vector<Slot*>& active);
  void emit(Slot& slot, int64_t token, const Tensor& logits_row);
  void finish(Slot& slot, const std::string& reason, const std::string& error = "");
  void end(Slot& slot, StreamEvent last, const std::string& reason);

  std::shared_ptr<GPT> model_;
  Tokenizer tokenizer_;
  EngineOptions options_;
  SlotCache cache_;
  std::vector<std::unique_ptr<Slot>> slots_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<GenerationParams, std::shared_ptr<Stream>>> queue_;
  bool stopping_ = false;
  std::chrono::steady_clock::time_point cancel_at_ = std::chrono::steady_clock::time_point::max();
  EngineStats stats_;
  std::thread thread_;
};

}  // namespace forge::serve
