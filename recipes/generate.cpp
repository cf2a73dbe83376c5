#include "recipes/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "tensor/ops.h"

namespace forge {

int64_t sample_token(const Tensor& logits_in, const SampleOptions& o, Generator& gen) {
  std::vector<float> l = logits_in.reshape({-1}).to_vector<float>();
  const int64_t V = int64_t(l.size());
  if (o.temperature <= 0) return int64_t(std::max_element(l.begin(), l.end()) - l.begin());
  for (float& x : l) x = float(double(x) / o.temperature);
  std::vector<int64_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return l[a] > l[b]; });
  // Candidates: the top-k (with ties of the k-th, as nanoGPT's `logits < v[-1]` masking keeps).
  int64_t keep = V;
  if (o.top_k > 0 && o.top_k < V) {
    float kth = l[order[size_t(o.top_k - 1)]];
    keep = o.top_k;
    while (keep < V && l[order[size_t(keep)]] == kth) ++keep;
  }
  double m = l[order[0]], z = 0;
  std::vector<double> p(static_cast<size_t>(keep));
  for (int64_t i = 0; i < keep; ++i) z += (p[i] = std::exp(double(l[order[i]]) - m));
  for (double& x : p) x /= z;
  // Nucleus: the smallest prefix whose probability reaches top_p (at least one token).
  if (o.top_p < 1.0) {
    double cum = 0;
    int64_t n = 0;
    while (n < keep && cum < o.top_p) cum += p[n++];
    keep = std::max<int64_t>(n, 1);
    z = std::accumulate(p.begin(), p.begin() + keep, 0.0);
    for (int64_t i = 0; i < keep; ++i) p[i] /= z;
  }
  double u = gen.uniform(), acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (u < acc) return order[i];
  }
  return order[size_t(keep - 1)];
}

std::vector<int64_t> encode_prompt(const Tokenizer& tok, const std::string& prompt,
                                   const SampleOptions& o) {
  FORGE_CHECK(!prompt.empty(), "generate: the prompt is empty (give at least one character)");
  FORGE_CHECK(o.max_tokens >= 0, "generate: max_tokens must be >= 0, got {}", o.max_tokens);
  FORGE_CHECK(o.top_p > 0 && o.top_p <= 1, "generate: top_p must be in (0, 1], got {}", o.top_p);
  FORGE_CHECK(o.top_k >= 0, "generate: top_k must be >= 0, got {}", o.top_k);
  try {
    return tok.encode(prompt);
  } catch (const Error& e) {
    throw_error(fmt::format("prompt: {}", e.what()));
  }
}

Generated generate(GPT& model, const Tokenizer& tok, const std::string& prompt,
                   const SampleOptions& o, const std::function<void(const std::string&)>& on_text) {
  std::vector<int64_t> all = encode_prompt(tok, prompt, o);
  NoGradGuard no_grad;
  MemoryTagScope tag(MemoryTag::activations);
  bool was_training = model.is_training();
  model.eval();
  const int64_t block = model.config().block_size, keep = std::max<int64_t>(1, block / 2);
  Generator gen(o.seed);
  Generated out;
  size_t start = 0;    // the context is all[start:]
  size_t emitted = 0;  // characters of out.text passed to on_text
  KVCache cache = model.make_cache(1);
  const Device device = model.device();  // tokens go where the model is; logits come back
  auto context = [&]() {
    return from_vector(std::vector<int64_t>(all.begin() + std::ptrdiff_t(start), all.end()),
                       Shape{1, int64_t(all.size() - start)})
        .to(device);
  };
  auto t0 = std::chrono::steady_clock::now();
  Tensor logits;
  for (int64_t produced = 0; produced < o.max_tokens; ++produced) {
    // The same window rule for both paths: past block_size, keep the newest block/2 tokens.
    bool slid = false;
    if (int64_t(all.size() - start) > block) {
      start = all.size() - size_t(keep);
      slid = true;
    }
    if (o.use_cache) {
      if (produced == 0 || slid) {
        cache.length = 0;
        logits = model.forward_cached(context(), cache).data();
      } else {
        logits = model.forward_cached(from_vector<int64_t>({all.back()}, {1, 1}).to(device), cache)
                     .data();
      }
    } else {
      Tensor full = model.forward(context()).data();
      logits = full.narrow(1, full.size(1) - 1, 1);
    }
    int64_t next = sample_token(logits, o, gen);
    all.push_back(next);
    out.tokens.push_back(next);
    out.text += tok.decode_one(next);
    for (const std::string& s : o.stop)
      if (!s.empty() && out.text.size() >= s.size() &&
          out.text.compare(out.text.size() - s.size(), s.size(), s) == 0) {
        out.text.resize(out.text.size() - s.size());
        out.stopped_by_string = true;
        break;
      }
    if (out.stopped_by_string) break;
    // Stream what can no longer turn out to be the start of a stop string.
    size_t hold = 0;
    for (const std::string& s : o.stop) {
      if (s.empty()) continue;
      for (size_t n = std::min(s.size() - 1, out.text.size()); n > hold; --n)
        if (out.text.compare(out.text.size() - n, n, s, 0, n) == 0) {
          hold = n;
          break;
        }
    }
    if (on_text && out.text.size() - hold > emitted) {
      on_text(out.text.substr(emitted, out.text.size() - hold - emitted));
      emitted = out.text.size() - hold;
    }
  }
  if (on_text && out.text.size() > emitted) on_text(out.text.substr(emitted));
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.tokens_per_s = out.seconds > 0 ? double(out.tokens.size()) / out.seconds : 0.0;
  model.train(was_training);
  return out;
}

}  // namespace forge
