#include "serve/engine.h"

#include <algorithm>
#include <cmath>

#include "quant/quantize.h"
#include "recipes/generate.h"
#include "tensor/allocator.h"
#include "tensor/ops.h"

namespace forge::serve {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------
// Stream

std::optional<StreamEvent> Stream::next(std::chrono::milliseconds wait) {
  std::unique_lock lock(mu_);
  if (!cv_.wait_for(lock, wait, [&] { return !events_.empty(); })) return std::nullopt;
  StreamEvent e = std::move(events_.front());
  events_.pop_front();
  return e;
}

void Stream::cancel() {
  std::lock_guard lock(mu_);
  cancelled_ = true;
}

bool Stream::cancelled() const {
  std::lock_guard lock(mu_);
  return cancelled_;
}

double Stream::ttft_seconds() const {
  std::lock_guard lock(mu_);
  return ttft_;
}

size_t Stream::pending() const {
  std::lock_guard lock(mu_);
  return events_.size();
}

void Stream::push(StreamEvent e) {
  {
    std::lock_guard lock(mu_);
    if (ttft_ == 0 && !e.tokens.empty())
      ttft_ = std::chrono::duration<double>(Clock::now() - submitted_).count();
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
  if (notify_) notify_();
}

// ---------------------------------------------------------------------------------------------
// Engine

struct Engine::Slot {
  int64_t index = 0;
  bool active = false;
  GenerationParams params;
  SampleOptions sampling;  // the same sampler as `infer` (recipes/generate.h)
  std::shared_ptr<Stream> stream;
  Generator gen;
  std::vector<int64_t> context;  // prompt and generated tokens; the model sees context[start:]
  size_t start = 0;
  int64_t produced = 0;
  std::string text;    // generated text (a stop string cut off)
  size_t emitted = 0;  // bytes of `text` already sent
};

Engine::Engine(std::shared_ptr<GPT> model, Tokenizer tokenizer, EngineOptions options)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)), options_(options) {
  FORGE_CHECK(options_.slots >= 1, "serve: --slots must be at least 1, got {}", options_.slots);
  FORGE_CHECK(options_.max_queue >= 0, "serve: --max-queue must be >= 0, got {}",
              options_.max_queue);
  FORGE_CHECK(options_.max_batch_tokens >= 1,
              "serve: --max-batch-tokens must be at least 1, got {}", options_.max_batch_tokens);
  FORGE_CHECK(options_.max_pending_events >= 1,
              "serve: --max-pending-events must be at least 1, got {}",
              options_.max_pending_events);
  FORGE_CHECK(tokenizer_.vocab_size() <= model_->config().vocab_size,
              "serve: the tokenizer's {} symbols exceed the model's vocabulary of {}",
              tokenizer_.vocab_size(), model_->config().vocab_size);
  model_->eval();
  set_int8_per_row(*model_, true);  // dynamic int8: one grid per token, not per batch
  model_->set_prepacked(true);      // f32 weights packed for the products once, not every step
  cache_ = model_->make_slot_cache(options_.slots);
  for (int64_t i = 0; i < options_.slots; ++i) {
    slots_.push_back(std::make_unique<Slot>());
    slots_.back()->index = i;
  }
  stats_.batch_sizes.assign(size_t(options_.slots + 1), 0);
  thread_ = std::thread([this] { run(); });
}

Engine::~Engine() {
  shutdown(std::chrono::milliseconds(0));
}

std::shared_ptr<Stream> Engine::submit(GenerationParams params, std::function<void()> notify) {
  FORGE_CHECK(!params.prompt.empty(), "serve: empty prompt");
  auto stream = std::make_shared<Stream>();
  stream->submitted_ = Clock::now();
  stream->notify_ = std::move(notify);
  {
    std::lock_guard lock(mu_);
    if (stopping_) throw ShuttingDown("the server is shutting down");
    // Free slots take requests at once: only those beyond them wait in the queue.
    const int64_t free_slots = options_.slots - stats_.active;
    if (int64_t(queue_.size()) >= options_.max_queue + free_slots)
      throw QueueFull("the queue is full (" + std::to_string(options_.max_queue) +
                      " requests waiting); retry later");
    queue_.emplace_back(std::move(params), stream);
    stats_.waiting = int64_t(queue_.size());
  }
  cv_.notify_all();
  return stream;
}

void Engine::shutdown(std::chrono::milliseconds timeout) {
  {
    std::lock_guard lock(mu_);
    if (!stopping_) {
      stopping_ = true;
      cancel_at_ = Clock::now() + timeout;
    } else {
      cancel_at_ = std::min(cancel_at_, Clock::now() + timeout);
    }
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

EngineStats Engine::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void Engine::run() {
  NoGradGuard no_grad;
  MemoryTagScope tag(MemoryTag::activations);
  std::vector<Slot*> fresh, active;
  for (;;) {
    fresh.clear();
    {
      std::unique_lock lock(mu_);
      auto busy = [&] {
        return std::any_of(slots_.begin(), slots_.end(), [](auto& s) { return s->active; });
      };
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty() || busy(); });
      if (stopping_ && Clock::now() >= cancel_at_) {  // out of time: cancel everything left
        for (auto& q : queue_) q.second->cancel();
        for (auto& s : slots_)
          if (s->active) s->stream->cancel();
      }
      if (stopping_ && queue_.empty() && !busy()) break;
      // Waiting requests take free slots while the step's prompt tokens stay within the budget
      // (the first always goes, however long its prompt).
      int64_t step_tokens = stats_.active;
      for (auto& s : slots_) {
        if (queue_.empty()) break;
        if (s->active) continue;
        const int64_t prompt = int64_t(queue_.front().first.prompt.size());
        if (!fresh.empty() && step_tokens + prompt > options_.max_batch_tokens) break;
        step_tokens += prompt;
        Slot& slot = *s;
        slot.params = std::move(queue_.front().first);
        slot.stream = std::move(queue_.front().second);
        queue_.pop_front();
        slot.active = true;
        ++stats_.active;
        stats_.prompt_tokens += int64_t(slot.params.prompt.size());
        fresh.push_back(&slot);
      }
      stats_.waiting = int64_t(queue_.size());
    }
    for (Slot* s : fresh) start(*s);
    active.clear();
    int64_t paused = 0;
    for (auto& s : slots_)
      if (s->active) {
        if (s->stream->cancelled())
          finish(*s, "cancelled");
        else if (int64_t(s->stream->pending()) >= options_.max_pending_events)
          ++paused;  // its client is not reading: no more tokens for now
        else
          active.push_back(s.get());
      }
    {
      std::lock_guard lock(mu_);
      stats_.paused = paused;
    }
    if (!active.empty())
      step(active);
    else if (paused > 0)  // only paused requests: look again shortly (their readers wake no one)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// A slot's request starts: its sampler and generator; its prompt runs in the next step.
void Engine::start(Slot& slot) {
  const GenerationParams& p = slot.params;
  slot.sampling = SampleOptions{.max_tokens = p.max_tokens,
                                .temperature = p.temperature,
                                .top_k = p.top_k,
                                .top_p = p.top_p,
                                .stop = p.stop,
                                .seed = p.seed};
  slot.gen = Generator(p.seed);
  slot.context = p.prompt;
  slot.start = 0;
  slot.produced = 0;
  slot.text.clear();
  slot.emitted = 0;
  cache_.length[size_t(slot.index)] = 0;
}

// One token for every active slot, in one batched forward: a new request's whole prompt, the
// newest block_size / 2 tokens of a slot whose context filled block_size (infer's window rule), or
// else the one token drawn last.
void Engine::step(std::vector<Slot*>& active) {
  const int64_t block = model_->config().block_size, keep = std::max<int64_t>(1, block / 2);
  std::vector<int64_t> tokens, slots, counts;
  for (Slot* s : active) {
    const size_t at = size_t(cache_.length[size_t(s->index)]);
    size_t from = s->context.size() - 1;  // the last token drawn
    if (at == 0) {                        // a new request: its prompt
      from = 0;
    } else if (int64_t(at) >= block) {  // full: rerun the newest `keep` tokens
      s->start = s->context.size() - size_t(keep);
      from = s->start;
      cache_.length[size_t(s->index)] = 0;
    }
    tokens.insert(tokens.end(), s->context.begin() + std::ptrdiff_t(from), s->context.end());
    slots.push_back(s->index);
    counts.push_back(int64_t(s->context.size() - from));
  }
  const int64_t B = int64_t(active.size()), N = int64_t(tokens.size());
  Tensor logits;
  try {
    logits = model_
                 ->forward_slots(from_vector(tokens, Shape{1, N}).to(model_->device()), slots,
                                 counts, cache_)
                 .data()
                 .to(Device::cpu());
  } catch (const std::exception& e) {
    for (Slot* s : active) finish(*s, "error", e.what());
    return;
  }
  {
    std::lock_guard lock(mu_);
    ++stats_.steps;
    ++stats_.batch_sizes[size_t(B)];
  }
  for (int64_t b = 0; b < B; ++b) {
    Slot& s = *active[size_t(b)];
    Tensor row = logits.narrow(0, b, 1);
    emit(s, sample_token(row, s.sampling, s.gen), row);
  }
}

// Records a drawn token: its log probabilities, the text it releases, and whether it ends the
// request (a stop string, max_tokens). Mirrors recipes/generate.cpp's loop.
void Engine::emit(Slot& slot, int64_t token, const Tensor& logits_row) {
  StreamEvent e;
  e.tokens.push_back(token);
  if (slot.params.logprobs >= 0) {
    std::vector<float> l = logits_row.to(Device::cpu()).reshape({-1}).to_vector<float>();
    double m = *std::max_element(l.begin(), l.end()), z = 0;
    for (float x : l) z += std::exp(double(x) - m);
    const double lse = m + std::log(z);
    e.logprobs.push_back(double(l[size_t(token)]) - lse);
    std::vector<int64_t> order(l.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = int64_t(i);
    const size_t k = std::min(order.size(), size_t(slot.params.logprobs));
    std::partial_sort(
        order.begin(), order.begin() + std::ptrdiff_t(k), order.end(), [&](int64_t a, int64_t b) {
          return l[size_t(a)] > l[size_t(b)] || (l[size_t(a)] == l[size_t(b)] && a < b);
        });
    std::vector<TopLogprob> top;
    for (size_t i = 0; i < k; ++i) top.push_back({order[i], double(l[size_t(order[i])]) - lse});
    e.top_logprobs.push_back(std::move(top));
  }
  slot.context.push_back(token);
  ++slot.produced;
  {
    std::lock_guard lock(mu_);
    ++stats_.generated_tokens;
  }
  slot.text += tokenizer_.decode_one(token);
  bool stopped = false;
  for (const std::string& s : slot.params.stop)
    if (slot.text.size() >= s.size() &&
        slot.text.compare(slot.text.size() - s.size(), s.size(), s) == 0) {
      slot.text.resize(slot.text.size() - s.size());
      stopped = true;
      break;
    }
  const bool done = stopped || slot.produced >= slot.params.max_tokens;
  // Text that can no longer turn out to be the start of a stop string.
  size_t hold = 0;
  if (!done)
    for (const std::string& s : slot.params.stop)
      for (size_t n = std::min(s.size() - 1, slot.text.size()); n > hold; --n)
        if (slot.text.compare(slot.text.size() - n, n, s, 0, n) == 0) {
          hold = n;
          break;
        }
  const size_t release = slot.text.size() - hold;
  if (release > slot.emitted) {
    e.text = slot.text.substr(slot.emitted, release - slot.emitted);
    slot.emitted = release;
  }
  if (done)
    end(slot, std::move(e), stopped ? "stop" : "length");
  else
    slot.stream->push(std::move(e));
}

void Engine::finish(Slot& slot, const std::string& reason, const std::string& error) {
  StreamEvent e;
  e.error = error;
  end(slot, std::move(e), reason);
}

// The request's last event (with the counts), and its slot free for the next one.
void Engine::end(Slot& slot, StreamEvent last, const std::string& reason) {
  last.finish = reason;
  last.prompt_tokens = int64_t(slot.params.prompt.size());
  last.completion_tokens = slot.produced;
  slot.active = false;
  {
    std::lock_guard lock(mu_);
    --stats_.active;
  }
  slot.stream->push(std::move(last));
  slot.stream.reset();
}

}  // namespace forge::serve
