package dev.forge.client;

import java.io.IOException;
import java.io.InterruptedIOException;
import java.io.UncheckedIOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.net.http.HttpTimeoutException;
import java.net.http.WebSocket;
import java.net.http.WebSocketHandshakeException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Flow;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Consumer;
import java.util.function.Supplier;

/**
 * A client of forge's {@code serve}, the OpenAI-compatible inference server, on the JDK alone.
 *
 * <pre>{@code
 * ForgeClient client = ForgeClient.builder("http://127.0.0.1:8080")
 *     .apiKey("sk-...").maxRetries(5).readTimeout(Duration.ofSeconds(30)).build();
 * Map<String, Object> r = client.complete(Map.of("model", "tiny", "prompt", "we", "max_tokens", 16));
 * String text = (String) Json.get(r, "choices", 0, "text");
 * Completion c = client.stream(Map.of("model", "tiny", "prompt", "we"), System.out::print);
 * }</pre>
 *
 * <p>Requests are maps of OpenAI's fields ({@code model}, {@code prompt} or {@code messages},
 * {@code max_tokens}, {@code temperature}, {@code seed}, ...), written with {@link Json}; replies
 * are {@link Json#parse parsed} maps.
 *
 * <p>Errors: the server's errors throw {@link ApiException} (of the subclass for the status);
 * transport failures (refused connection, timeouts, a dropped stream) throw
 * {@link UncheckedIOException}, whose cause is the {@link IOException} (an
 * {@link HttpTimeoutException} for timeouts).
 *
 * <p>Retries: a 429 (queue full) or 503 (unavailable) answer is retried up to
 * {@code maxRetries} times, after an exponential backoff ({@code initialBackoff} doubling per
 * retry, with jitter, at most {@code maxBackoff}), and never sooner than the server's
 * {@code Retry-After} seconds (a {@code Retry-After} beyond {@code maxBackoff} is not waited for:
 * the error is thrown). Nothing else is retried: not other statuses, not transport failures, and
 * not a stream that has begun.
 *
 * <p>Timeouts: {@code connectTimeout} bounds connecting (and the WebSocket handshake);
 * {@code readTimeout} bounds the wait for a response, and for streams the wait for each next
 * event. Instances are thread-safe; share one.
 */
public final class ForgeClient {
  /** Told of each retry before its wait, e.g. to log it. */
  @FunctionalInterface
  public interface RetryListener {
    /**
     * @param attempt the retry's number, from 1
     * @param cause the error being retried (a 429 or 503)
     * @param delay how long the client waits before the retry
     */
    void onRetry(int attempt, ApiException cause, Duration delay);
  }

  /** Settings of a {@link ForgeClient}; from {@link ForgeClient#builder}. */
  public static final class Builder {
    private final String baseUrl;
    private String apiKey;
    private Duration connectTimeout = Duration.ofSeconds(10);
    private Duration readTimeout = Duration.ofSeconds(60);
    private int maxRetries = 2;
    private Duration initialBackoff = Duration.ofMillis(500);
    private Duration maxBackoff = Duration.ofSeconds(30);
    private RetryListener retryListener;

    private Builder(String baseUrl) {
      this.baseUrl = Objects.requireNonNull(baseUrl, "baseUrl");
    }

    /**
     * @param apiKey sent as {@code Authorization: Bearer KEY}; null or empty: none
     * @return this
     */
    public Builder apiKey(String apiKey) {
      this.apiKey = apiKey;
      return this;
    }

    /**
     * @param timeout bound on connecting and on the WebSocket handshake (default 10 s)
     * @return this
     */
    public Builder connectTimeout(Duration timeout) {
      this.connectTimeout = positive(timeout, "connectTimeout");
      return this;
    }

    /**
     * @param timeout bound on the wait for a response, and on a stream's wait for each next event
     *     (default 60 s)
     * @return this
     */
    public Builder readTimeout(Duration timeout) {
      this.readTimeout = positive(timeout, "readTimeout");
      return this;
    }

    /**
     * @param retries how many times a 429 or 503 is retried (default 2; 0: never)
     * @return this
     */
    public Builder maxRetries(int retries) {
      if (retries < 0) throw new IllegalArgumentException("maxRetries must be >= 0, got " + retries);
      this.maxRetries = retries;
      return this;
    }

    /**
     * @param initial the first retry's backoff, doubling per retry (default 500 ms)
     * @param max the longest backoff, and the longest Retry-After honoured (default 30 s)
     * @return this
     */
    public Builder backoff(Duration initial, Duration max) {
      this.initialBackoff = positive(initial, "initial backoff");
      this.maxBackoff = positive(max, "max backoff");
      return this;
    }

    /**
     * @param listener told of each retry (default: none)
     * @return this
     */
    public Builder retryListener(RetryListener listener) {
      this.retryListener = listener;
      return this;
    }

    /** @return the client */
    public ForgeClient build() {
      return new ForgeClient(this);
    }

    private static Duration positive(Duration d, String what) {
      if (d == null || d.isNegative() || d.isZero())
        throw new IllegalArgumentException(what + " must be positive, got " + d);
      return d;
    }
  }

  private static final Object END = new Object();

  private final String base; // scheme://host:port[/prefix], without a trailing "/" or "/v1"
  private final String apiKey;
  private final Duration connectTimeout;
  private final Duration readTimeout;
  private final int maxRetries;
  private final Duration initialBackoff;
  private final Duration maxBackoff;
  private final RetryListener retryListener;
  private final HttpClient http;
  private final AtomicLong nextId = new AtomicLong();

  /**
   * A client with the default settings.
   *
   * @param baseUrl the server, e.g. {@code http://127.0.0.1:8080} (a trailing {@code /v1} is
   *     accepted too)
   * @param apiKey the API key, or null for a server without auth
   */
  public ForgeClient(String baseUrl, String apiKey) {
    this(builder(baseUrl).apiKey(apiKey));
  }

  private ForgeClient(Builder b) {
    String url = b.baseUrl.strip();
    while (url.endsWith("/")) url = url.substring(0, url.length() - 1);
    if (url.endsWith("/v1")) url = url.substring(0, url.length() - 3);
    URI uri = URI.create(url);
    if (!"http".equals(uri.getScheme()) && !"https".equals(uri.getScheme()) || uri.getHost() == null)
      throw new IllegalArgumentException("baseUrl must be http://HOST[:PORT] or https://..., got " + b.baseUrl);
    this.base = url;
    this.apiKey = b.apiKey == null || b.apiKey.isEmpty() ? null : b.apiKey;
    this.connectTimeout = b.connectTimeout;
    this.readTimeout = b.readTimeout;
    this.maxRetries = b.maxRetries;
    this.initialBackoff = b.initialBackoff;
    this.maxBackoff = b.maxBackoff;
    this.retryListener = b.retryListener;
    // HTTP/1.1: serve speaks nothing else (no h2c upgrade attempt on every request).
    this.http = HttpClient.newBuilder()
        .version(HttpClient.Version.HTTP_1_1)
        .connectTimeout(connectTimeout)
        .followRedirects(HttpClient.Redirect.NEVER)
        .build();
  }

  /**
   * @param baseUrl the server, e.g. {@code http://127.0.0.1:8080}
   * @return a builder of a client for it
   */
  public static Builder builder(String baseUrl) {
    return new Builder(baseUrl);
  }

  // ------------------------------------------------------------------ the API

  /**
   * {@code POST /v1/completions}, waiting for the whole answer.
   *
   * @param request the completion's fields ({@code "stream": true} is refused: use
   *     {@link #stream} or {@link #streamWs})
   * @return the completion object: {@code choices[i].text}, {@code finish_reason}, {@code usage}
   * @throws ApiException the server's error (after the retries of a 429 or 503)
   * @throws UncheckedIOException a transport failure or timeout
   */
  public Map<String, Object> complete(Map<String, ?> request) {
    return Json.asObject(Json.parse(post("/v1/completions", nonStreaming(request))));
  }

  /**
   * {@code POST /v1/chat/completions}, waiting for the whole answer.
   *
   * @param messages the conversation: maps of {@code role} and {@code content}
   * @param request the other fields ({@code model}, {@code max_tokens}, ...); may be null
   * @return the chat completion: {@code choices[i].message.content}, {@code finish_reason},
   *     {@code usage}
   * @throws ApiException the server's error
   * @throws UncheckedIOException a transport failure or timeout
   */
  public Map<String, Object> chat(List<? extends Map<String, ?>> messages, Map<String, ?> request) {
    Map<String, Object> body = new LinkedHashMap<>();
    if (request != null) body.putAll(request);
    body.put("messages", Objects.requireNonNull(messages, "messages"));
    return Json.asObject(Json.parse(post("/v1/chat/completions", nonStreaming(body))));
  }

  /**
   * Streams a completion over server-sent events, {@code POST /v1/completions} (or
   * {@code /v1/chat/completions} when the request has {@code messages}) with
   * {@code "stream": true}, asking for usage ({@code stream_options.include_usage}) unless the
   * request says otherwise.
   *
   * @param request the completion's or chat's fields
   * @param onText called on this thread with each piece of choice 0's text as it arrives; an
   *     exception it throws ends the stream (the server cancels the request) and propagates
   * @return the text, finish reason and usage of choice 0
   * @throws ApiException the server's error, before the stream or in it
   * @throws UncheckedIOException a transport failure, no event within the read timeout, or a
   *     stream that ended without {@code [DONE]}
   */
  public Completion stream(Map<String, ?> request, Consumer<String> onText) {
    boolean chat = request.containsKey("messages");
    Map<String, Object> body = new LinkedHashMap<>(request);
    body.put("stream", true);
    body.putIfAbsent("stream_options", Map.of("include_usage", true));
    String json = Json.write(body);
    String path = chat ? "/v1/chat/completions" : "/v1/completions";
    Consumer<String> sink = onText == null ? t -> { } : onText;
    try {
      return withRetries(() -> streamOnce(path, json, chat, sink));
    } catch (InStream e) {
      throw e.error;
    }
  }

  /**
   * Streams a completion (or a chat, when the request has {@code messages}) over serve's
   * WebSocket, {@code GET /v1/stream}: opens a socket (waiting for the handshake, retried on 429
   * and 503 like HTTP), sends the request, and returns while the tokens arrive.
   *
   * @param request the completion's or chat's fields ({@code stream} and {@code stream_options}
   *     are dropped: the socket always streams)
   * @param onText called with each piece of choice 0's text as it arrives, on the HTTP client's
   *     threads (see {@link StreamHandle})
   * @return the handle: {@link StreamHandle#cancel}, {@link StreamHandle#result},
   *     {@link StreamHandle#await}
   * @throws ApiException the handshake was refused (401 for a bad key)
   * @throws UncheckedIOException the connection or handshake failed or timed out
   */
  public StreamHandle streamWs(Map<String, ?> request, Consumer<String> onText) {
    boolean chat = request.containsKey("messages");
    String id = "java-" + nextId.incrementAndGet();
    Map<String, Object> message = new LinkedHashMap<>();
    message.put("type", chat ? "chat" : "completion");
    message.put("id", id);
    message.putAll(request);
    message.put("type", chat ? "chat" : "completion"); // the request's own keys do not override
    message.put("id", id);
    message.remove("stream");
    message.remove("stream_options");
    StreamHandle handle = new StreamHandle(this, id, Json.write(message), choices(request), onText);
    WebSocket ws = withRetries(() -> openWebSocket(handle.listener()));
    handle.start(ws);
    return handle;
  }

  /**
   * {@code GET /v1/models}.
   *
   * @return the model objects ({@code id}, {@code object}, {@code created}, {@code owned_by})
   */
  public List<Map<String, Object>> models() {
    Object data = Json.get(Json.parse(get("/v1/models")), "data");
    List<Map<String, Object>> out = new ArrayList<>();
    for (Object m : Json.asArray(data)) out.add(Json.asObject(m));
    return out;
  }

  /**
   * {@code GET /metrics}.
   *
   * @return the Prometheus text (e.g. a line {@code forge_active_slots N})
   */
  public String metrics() {
    return get("/metrics");
  }

  /** @return the server's base URL as this client uses it (no trailing {@code /v1}) */
  public String baseUrl() {
    return base;
  }

  // ------------------------------------------------------------------ for StreamHandle

  Duration readTimeout() {
    return readTimeout;
  }

  int maxRetries() {
    return maxRetries;
  }

  /**
   * The wait before retry number {@code retry + 1} of {@code e}: the exponential backoff with
   * jitter, at least the server's Retry-After; null when the Retry-After exceeds maxBackoff.
   */
  Duration backoff(int retry, ApiException e) {
    long cap = maxBackoff.toMillis();
    long exponential = Math.min(cap, initialBackoff.toMillis() << Math.min(retry, 30));
    // "Equal jitter": half fixed, half random, so that clients refused together spread out.
    long ms = exponential / 2 + ThreadLocalRandom.current().nextLong(exponential / 2 + 1);
    Optional<Duration> after = e.retryAfter();
    if (after.isPresent()) {
      if (after.get().compareTo(maxBackoff) > 0) return null;
      ms = Math.max(ms, after.get().toMillis());
    }
    return Duration.ofMillis(ms);
  }

  void notifyRetry(int attempt, ApiException cause, Duration delay) {
    if (retryListener != null) retryListener.onRetry(attempt, cause, delay);
  }

  // ------------------------------------------------------------------ HTTP

  /** An error from inside a begun stream: never retried (its text was already delivered). */
  private static final class InStream extends RuntimeException {
    private static final long serialVersionUID = 1L;
    final transient ApiException error;

    InStream(ApiException error) {
      super(error.getMessage(), null, false, false);
      this.error = error;
    }
  }

  private <T> T withRetries(Supplier<T> attempt) {
    for (int retry = 0; ; retry++) {
      try {
        return attempt.get();
      } catch (ApiException e) {
        if (!e.isRetryable() || retry >= maxRetries) throw e;
        Duration delay = backoff(retry, e);
        if (delay == null) throw e;
        notifyRetry(retry + 1, e, delay);
        try {
          Thread.sleep(delay.toMillis());
        } catch (InterruptedException interrupted) {
          Thread.currentThread().interrupt();
          throw new UncheckedIOException(new InterruptedIOException("interrupted waiting to retry: " + e));
        }
      }
    }
  }

  private static Map<String, ?> nonStreaming(Map<String, ?> request) {
    if (Boolean.TRUE.equals(request.get("stream")))
      throw new IllegalArgumentException("\"stream\": true: use stream() or streamWs()");
    return request;
  }

  /** How many choices a request makes: prompts times n (the WebSocket ends after each's "done"). */
  private static int choices(Map<String, ?> request) {
    Object n = request.get("n");
    int perPrompt = n instanceof Number ? Math.max(1, ((Number) n).intValue()) : 1;
    Object prompt = request.get("prompt");
    int prompts = 1;
    if (prompt instanceof List && !((List<?>) prompt).isEmpty()) {
      Object first = ((List<?>) prompt).get(0);
      if (first instanceof String || first instanceof List) prompts = ((List<?>) prompt).size();
    }
    return prompts * perPrompt;
  }

  private HttpRequest.Builder request(String path, String accept) {
    HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(base + path))
        .timeout(readTimeout)
        .header("Accept", accept)
        .header("User-Agent", "forge-java-client/1.0");
    if (apiKey != null) b.header("Authorization", "Bearer " + apiKey);
    return b;
  }

  private String get(String path) {
    return withRetries(() -> exchange(request(path, "*/*").GET().build()));
  }

  private String post(String path, Map<String, ?> body) {
    String json = Json.write(body);
    return withRetries(() -> exchange(request(path, "application/json")
        .header("Content-Type", "application/json")
        .POST(HttpRequest.BodyPublishers.ofString(json, StandardCharsets.UTF_8))
        .build()));
  }

  /** One request: the body of a 2xx answer, else the ApiException of the error. */
  private String exchange(HttpRequest request) {
    HttpResponse<String> r;
    try {
      r = http.send(request, HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
    } catch (IOException e) {
      throw transportError(request, e);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw transportError(request, new InterruptedIOException("interrupted"));
    }
    if (r.statusCode() / 100 == 2) return r.body();
    throw ApiException.fromResponse(
        r.statusCode(), r.body(), r.headers().firstValue("Retry-After").orElse(null));
  }

  private static UncheckedIOException transportError(HttpRequest request, Throwable t) {
    return transportError(request.method() + " " + request.uri(), t);
  }

  /** A transport failure of `what` ("METHOD URI"), unwrapped to its IOException. */
  private static UncheckedIOException transportError(String what, Throwable t) {
    while ((t instanceof ExecutionException || t instanceof java.util.concurrent.CompletionException)
        && t.getCause() != null)
      t = t.getCause();
    IOException io = t instanceof IOException ? (IOException) t : new IOException(t);
    return new UncheckedIOException(what + ": " + io, io);
  }

  /** One streamed request: lines of the body come through a queue, each wait bounded. */
  private Completion streamOnce(String path, String json, boolean chat, Consumer<String> onText) {
    HttpRequest request = request(path, "text/event-stream")
        .header("Content-Type", "application/json")
        .POST(HttpRequest.BodyPublishers.ofString(json, StandardCharsets.UTF_8))
        .build();
    BlockingQueue<Object> events = new LinkedBlockingQueue<>();
    AtomicReference<Flow.Subscription> subscription = new AtomicReference<>();
    Flow.Subscriber<String> lines = new Flow.Subscriber<>() {
      @Override
      public void onSubscribe(Flow.Subscription s) {
        subscription.set(s);
        s.request(Long.MAX_VALUE);
      }

      @Override
      public void onNext(String line) {
        events.add(line);
      }

      @Override
      public void onError(Throwable t) {
        events.add(new Failure(t));
      }

      @Override
      public void onComplete() {
        events.add(END);
      }
    };
    CompletableFuture<HttpResponse<Void>> exchange = http.sendAsync(request, info -> {
      events.add(info);
      return HttpResponse.BodySubscribers.fromLineSubscriber(lines);
    });
    exchange.whenComplete((r, t) -> {
      if (t != null) events.add(new Failure(t));
    });
    boolean complete = false;
    try {
      Object first = next(events, request);
      if (first instanceof Failure) throw transportError(request, ((Failure) first).cause);
      HttpResponse.ResponseInfo info = (HttpResponse.ResponseInfo) first;
      if (info.statusCode() != 200) {
        StringBuilder body = new StringBuilder();
        for (Object e = next(events, request); e instanceof String; e = next(events, request))
          body.append((String) e).append('\n');
        complete = true;
        throw ApiException.fromResponse(info.statusCode(), body.toString(),
            info.headers().firstValue("Retry-After").orElse(null));
      }
      EventStream stream = new EventStream(chat, onText);
      while (true) {
        Object e = next(events, request);
        if (e instanceof Failure) throw transportError(request, ((Failure) e).cause);
        if (e == END) {
          if (stream.finishReason != null) break; // ended without [DONE]: what came is whole
          throw transportError(request, new IOException("the event stream ended before [DONE]"));
        }
        if (stream.line((String) e)) break;
      }
      complete = true;
      return new Completion(stream.text.toString(), stream.finishReason, stream.usage);
    } finally {
      if (!complete) { // hang up: the server cancels the generation
        Flow.Subscription s = subscription.get();
        if (s != null) s.cancel();
        exchange.cancel(true);
      }
    }
  }

  private Object next(BlockingQueue<Object> events, HttpRequest request) {
    try {
      Object e = events.poll(readTimeout.toNanos(), TimeUnit.NANOSECONDS);
      if (e == null)
        throw transportError(request, new HttpTimeoutException("nothing received in " + readTimeout));
      return e;
    } catch (InterruptedException ie) {
      Thread.currentThread().interrupt();
      throw transportError(request, new InterruptedIOException("interrupted"));
    }
  }

  private static final class Failure {
    final Throwable cause;

    Failure(Throwable cause) {
      this.cause = cause;
    }
  }

  /** The server-sent event parser: {@code data:} lines, an event per blank line. */
  private static final class EventStream {
    final boolean chat;
    final Consumer<String> onText;
    final StringBuilder text = new StringBuilder();
    String finishReason;
    Map<String, Object> usage;
    private StringBuilder data;

    EventStream(boolean chat, Consumer<String> onText) {
      this.chat = chat;
      this.onText = onText;
    }

    /** Takes one line; true at {@code data: [DONE]}. */
    boolean line(String line) {
      if (line.isEmpty()) {
        if (data == null) return false;
        String event = data.toString();
        data = null;
        return event(event);
      }
      if (line.startsWith(":")) return false; // a comment (keep-alive)
      int colon = line.indexOf(':');
      String field = colon < 0 ? line : line.substring(0, colon);
      String value = colon < 0 ? "" : line.substring(colon + 1);
      if (value.startsWith(" ")) value = value.substring(1);
      if (field.equals("data")) {
        if (data == null) data = new StringBuilder(value);
        else data.append('\n').append(value);
      }
      return false; // event:, id:, retry: mean nothing here
    }

    private boolean event(String event) {
      if (event.equals("[DONE]")) return true;
      Map<String, Object> chunk;
      try {
        chunk = Json.asObject(Json.parse(event));
      } catch (IllegalArgumentException e) {
        throw new UncheckedIOException(new IOException("unreadable event: " + e.getMessage()));
      }
      if (chunk.get("error") instanceof Map)
        throw new InStream(ApiException.fromErrorObject((Map<?, ?>) chunk.get("error")));
      if (chunk.get("usage") instanceof Map) usage = Json.asObject(chunk.get("usage"));
      Object choices = chunk.get("choices");
      if (!(choices instanceof List)) return false;
      for (Object c : (List<?>) choices) {
        Object index = Json.get(c, "index");
        if (index instanceof Number && ((Number) index).longValue() != 0) continue;
        Object piece = chat ? Json.get(c, "delta", "content") : Json.get(c, "text");
        if (piece instanceof String && !((String) piece).isEmpty()) {
          text.append((String) piece);
          onText.accept((String) piece);
        }
        if (Json.get(c, "finish_reason") instanceof String)
          finishReason = (String) Json.get(c, "finish_reason");
      }
      return false;
    }
  }

  // ------------------------------------------------------------------ WebSocket

  private WebSocket openWebSocket(WebSocket.Listener listener) {
    URI uri = URI.create(base.replaceFirst("^http", "ws") + "/v1/stream");
    WebSocket.Builder b = http.newWebSocketBuilder().connectTimeout(connectTimeout);
    if (apiKey != null) b.header("Authorization", "Bearer " + apiKey);
    String what = "WebSocket " + uri;
    CompletableFuture<WebSocket> open = b.buildAsync(uri, listener);
    try {
      // The builder's timeout bounds connect and handshake; this bound is a backstop.
      return open.get(connectTimeout.toMillis() + 5000, TimeUnit.MILLISECONDS);
    } catch (ExecutionException e) {
      Throwable cause = e.getCause();
      while (cause instanceof java.util.concurrent.CompletionException && cause.getCause() != null)
        cause = cause.getCause();
      if (cause instanceof WebSocketHandshakeException) {
        HttpResponse<?> r = ((WebSocketHandshakeException) cause).getResponse();
        Object body = r.body();
        throw ApiException.fromResponse(r.statusCode(), body instanceof String ? (String) body : null,
            r.headers().firstValue("Retry-After").orElse(null));
      }
      throw transportError(what, cause);
    } catch (TimeoutException e) {
      open.cancel(true);
      throw transportError(what, new HttpTimeoutException("WebSocket handshake: no answer"));
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      open.cancel(true);
      throw transportError(what, new InterruptedIOException("interrupted"));
    }
  }
}
