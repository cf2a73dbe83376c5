#include "serve/completion.h"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>
#include <random>

namespace forge::serve {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string random_hex(size_t digits) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string out;
  while (out.size() < digits) out += fmt::format("{:016x}", rng());
  return out.substr(0, digits);
}

uint64_t random_seed() {
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

// JSON text for the wire: invalid UTF-8 (which valid_utf8 should have removed) becomes U+FFFD.
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Why a choice ended without its answer: the engine failed, or shutdown cancelled it.
ApiError finish_error(const std::string& finish, const std::string& error) {
  if (finish == "error") return ApiError(500, "generation failed: " + error, "server_error");
  return ApiError(503, "the request was cancelled: the server is shutting down", "server_error", "",
                  "shutting_down");
}

bool failed(const std::string& finish) {
  return finish == "error" || finish == "cancelled";
}

}  // namespace

Completion::Completion(Engine& engine, CompletionRequest request, CompletionContext context)
    : engine_(engine), request_(std::move(request)), context_(std::move(context)) {
  const CompletionRequest& r = request_;
  const uint64_t base = r.seeded ? r.params.seed : random_seed();
  choices_.reserve(r.prompts.size() * size_t(r.n));
  for (size_t p = 0; p < r.prompts.size(); ++p) {
    for (int64_t k = 0; k < r.n; ++k) {
      GenerationParams g = r.params;
      g.prompt = r.prompt_tokens[p];
      g.seed = base + uint64_t(k);
      Choice choice;
      choice.prompt = p;
      try {
        choice.stream = engine_.submit(std::move(g), context_.notify);
      } catch (const QueueFull& e) {  // the destructor does not run: cancel those queued here
        for (Choice& c : choices_) c.stream->cancel();
        throw ApiError(429, e.what(), "rate_limit_error", "", "rate_limit_exceeded");
      } catch (const ShuttingDown& e) {
        for (Choice& c : choices_) c.stream->cancel();
        throw ApiError(503, e.what(), "server_error", "", "shutting_down");
      }
      choices_.push_back(std::move(choice));
    }
  }
  id_ = (context_.api == Api::chat ? "chatcmpl-" : "cmpl-") + random_hex(24);
  created_ = int64_t(std::time(nullptr));
}

Completion::~Completion() {
  for (Choice& c : choices_)
    if (c.stream && !c.finish) c.stream->cancel();
}

// Records an event's tokens and end in its choice, and times it for the metrics.
void Completion::take(Choice& c, StreamEvent& e) {
  c.tokens.insert(c.tokens.end(), e.tokens.begin(), e.tokens.end());
  c.logprobs.insert(c.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
  c.top.insert(c.top.end(), e.top_logprobs.begin(), e.top_logprobs.end());
  Metrics* m = context_.metrics;
  if (m && !e.tokens.empty()) {
    const auto now = Clock::now();
    const auto since = c.last_token ? *c.last_token : context_.received;
    const double seconds = std::chrono::duration<double>(now - since).count();
    if (c.last_token)
      m->observe_inter_token_latency(seconds, context_.transport);
    else
      m->observe_time_to_first_token(seconds, context_.transport);
    c.last_token = now;
  }
  if (e.finish) {
    c.finish = e.finish;
    c.error = e.error;
    c.completion_tokens = e.completion_tokens;
    if (m) m->count_tokens(e.prompt_tokens, e.completion_tokens, context_.transport);
  }
}

// Pulls events from every unfinished choice until all have finished, handing each to `on_event`
// (after `take`). Between events, a client that hung up ends it all.
template <class OnEvent>
void Completion::pump(ClientChannel& client, OnEvent on_event) {
  for (;;) {
    Choice* waiting = nullptr;
    bool progressed = false;
    for (Choice& c : choices_) {
      while (!c.finish) {
        std::optional<StreamEvent> e = c.stream->next(std::chrono::milliseconds(0));
        if (!e) break;
        take(c, *e);
        on_event(c, *e);
        progressed = true;
      }
      if (!c.finish && !waiting) waiting = &c;
    }
    if (!waiting) return;
    if (progressed) continue;
    if (client.client_gone()) throw ClientGone{};
    if (std::optional<StreamEvent> e = waiting->stream->next(std::chrono::milliseconds(50))) {
      take(*waiting, *e);
      on_event(*waiting, *e);
    }
  }
}

// A streamed choice's text that can be shown after event `e`: an incomplete UTF-8 sequence at the
// end is held back in c.text until the next event completes it (or the choice ends).
std::string Completion::ready_text(Choice& c, const StreamEvent& e) {
  c.text += e.text;
  const size_t ready = e.finish ? c.text.size() : complete_utf8_prefix(c.text);
  std::string text = c.text.substr(0, ready);
  c.text.erase(0, ready);
  return text;
}

json Completion::usage(int64_t completion_tokens) const {
  int64_t prompt_tokens = 0;  // each prompt once, however many choices it has (as OpenAI)
  for (const auto& p : request_.prompt_tokens) prompt_tokens += int64_t(p.size());
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json Completion::reply(ClientChannel& client) {
  const CompletionRequest& r = request_;
  const bool chat = context_.api == Api::chat;
  pump(client, [](Choice& c, StreamEvent& e) { c.text += e.text; });
  json out = json::array();
  int64_t completion_tokens = 0;
  for (const Choice& c : choices_) {
    if (failed(*c.finish)) throw finish_error(*c.finish, c.error);
    completion_tokens += c.completion_tokens;
    if (chat) {
      json logprobs = nullptr;
      if (r.params.logprobs >= 0)
        logprobs = chat_logprobs_json(engine_.tokenizer(), c.tokens, c.logprobs, c.top);
      out.push_back({{"index", index_of(c)},
                     {"message", {{"role", "assistant"}, {"content", valid_utf8(c.text)}}},
                     {"logprobs", logprobs},
                     {"finish_reason", *c.finish}});
      continue;
    }
    const std::string& prompt = r.prompts[c.prompt];
    json logprobs = nullptr;
    if (r.params.logprobs >= 0)
      logprobs = logprobs_json(engine_.tokenizer(), c.tokens, c.logprobs, c.top,
                               r.echo ? prompt.size() : 0);
    out.push_back({{"text", valid_utf8((r.echo ? prompt : std::string()) + c.text)},
                   {"index", index_of(c)},
                   {"logprobs", logprobs},
                   {"finish_reason", *c.finish}});
  }
  return {{"id", id_},           {"object", chat ? "chat.completion" : "text_completion"},
          {"created", created_}, {"model", context_.model_name},
          {"choices", out},      {"usage", usage(completion_tokens)}};
}

// One stream chunk around `choices`. Chat chunks carry "usage": null when the last chunk will
// carry the usage (as OpenAI sends them).
json Completion::chunk(json choices) const {
  const bool chat = context_.api == Api::chat;
  json out = {{"id", id_},
              {"object", chat ? "chat.completion.chunk" : "text_completion"},
              {"created", created_},
              {"model", context_.model_name},
              {"choices", std::move(choices)}};
  if (chat && request_.include_usage) out["usage"] = nullptr;
  return out;
}

// A chunk's one choice: completions {"text", ...}; chat {"delta": {"content"}} ({"role",
// "content": ""} first, {} with the finish_reason).
json Completion::chunk_choice(const Choice& c, const std::string& text, json logprobs, json finish,
                              bool first) const {
  if (context_.api == Api::completions)
    return {{"text", valid_utf8(text)},
            {"index", index_of(c)},
            {"logprobs", std::move(logprobs)},
            {"finish_reason", std::move(finish)}};
  json delta = json::object();
  if (first)
    delta = {{"role", "assistant"}, {"content", ""}};
  else if (finish.is_null())
    delta = {{"content", valid_utf8(text)}};
  return {{"index", index_of(c)},
          {"delta", std::move(delta)},
          {"logprobs", std::move(logprobs)},
          {"finish_reason", std::move(finish)}};
}

// Server-sent events: a first chunk per choice (chat: the role; completions with echo: the
// prompt), `data: {chunk}` per piece of text, a last chunk per choice with its finish_reason, the
// usage chunk if asked, then `data: [DONE]`.
void Completion::stream(ClientChannel& client) {
  const CompletionRequest& r = request_;
  const bool chat = context_.api == Api::chat;
  auto send = [&](const json& j) { client.send_data(dump(j)); };
  for (Choice& c : choices_) {
    if (chat) {
      send(chunk(json::array({chunk_choice(c, "", nullptr, nullptr, /*first=*/true)})));
    } else if (r.echo) {
      const std::string& prompt = r.prompts[c.prompt];
      c.token_bytes = prompt.size();
      send(chunk(json::array({chunk_choice(c, prompt, nullptr, nullptr)})));
    }
  }
  int64_t completion_tokens = 0;
  pump(client, [&](Choice& c, StreamEvent& e) {
    const std::string text = ready_text(c, e);
    json logprobs = nullptr;
    if (r.params.logprobs >= 0 && !e.tokens.empty()) {
      const Tokenizer& tok = engine_.tokenizer();
      if (chat) {
        logprobs = chat_logprobs_json(tok, e.tokens, e.logprobs, e.top_logprobs);
      } else {
        logprobs = logprobs_json(tok, e.tokens, e.logprobs, e.top_logprobs, c.token_bytes);
        for (int64_t t : e.tokens) c.token_bytes += tok.decode_one(t).size();
      }
    }
    if (!text.empty() || !logprobs.is_null())
      send(chunk(json::array({chunk_choice(c, text, std::move(logprobs), nullptr)})));
    if (!e.finish) return;
    if (failed(*e.finish)) {
      send(finish_error(*e.finish, e.error).body());
      return;
    }
    completion_tokens += e.completion_tokens;
    send(chunk(json::array({chunk_choice(c, "", nullptr, *e.finish)})));
  });
  if (r.include_usage) {
    json last = chunk(json::array());
    last["usage"] = usage(completion_tokens);
    send(last);
  }
  client.send_data("[DONE]");
}

bool Completion::poll(const std::function<void(const ChoiceEvent&)>& on_event, size_t max_events) {
  for (bool progressed = true; progressed && max_events > 0;) {
    progressed = false;
    for (Choice& c : choices_) {
      if (c.finish || max_events == 0) continue;
      std::optional<StreamEvent> e = c.stream->next(std::chrono::milliseconds(0));
      if (!e) continue;
      progressed = true;
      --max_events;
      take(c, *e);
      ChoiceEvent out;
      out.index = index_of(c);
      out.text = valid_utf8(ready_text(c, *e));
      out.tokens = std::move(e->tokens);
      out.logprobs = std::move(e->logprobs);
      out.top_logprobs = std::move(e->top_logprobs);
      out.finish = e->finish;
      if (e->finish) {
        if (*e->finish == "error") out.error = finish_error(*e->finish, e->error);
        const int64_t prompt = int64_t(request_.prompt_tokens[c.prompt].size());
        out.usage = {{"prompt_tokens", prompt},
                     {"completion_tokens", e->completion_tokens},
                     {"total_tokens", prompt + e->completion_tokens}};
      }
      on_event(out);
    }
  }
  return std::all_of(choices_.begin(), choices_.end(),
                     [](const Choice& c) { return c.finish.has_value(); });
}

void Completion::cancel() {
  for (Choice& c : choices_)
    if (c.stream && !c.finish) c.stream->cancel();
}

}  // namespace forge::serve
