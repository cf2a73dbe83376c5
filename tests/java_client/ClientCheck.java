import dev.forge.client.ApiException;
import dev.forge.client.AuthenticationException;
import dev.forge.client.BadRequestException;
import dev.forge.client.Completion;
import dev.forge.client.ForgeClient;
import dev.forge.client.Json;
import dev.forge.client.NotFoundException;
import dev.forge.client.RateLimitException;
import dev.forge.client.StreamHandle;
import java.io.UncheckedIOException;
import java.net.http.HttpTimeoutException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The checks of the Java client (clients/java) against a live serve, run by
 * tests/cli_java_client.sh:
 *
 * <pre>
 * java -cp CLASSES ClientCheck json                          the JSON reader and writer alone
 * java -cp CLASSES ClientCheck main  BASE_URL API_KEY MODEL  a server with --slots >= 2 and
 *                                                            --max-tokens-limit 100000
 * java -cp CLASSES ClientCheck retry BASE_URL API_KEY MODEL  a server with --slots 1
 *                                                            --max-queue 0 --max-tokens-limit 1000000
 * </pre>
 *
 * Prints "ok  WHAT" or "FAIL WHAT: DETAIL" per check; exits 1 on any failure. Every wait is
 * bounded (by count and by time); nothing asserts on how long anything took.
 */
public final class ClientCheck {
  private static int failures;
  private static String base;
  private static String key;
  private static String model;

  private ClientCheck() {}

  public static void main(String[] args) {
    String phase = args.length > 0 ? args[0] : "";
    if (phase.equals("json")) {
      section("json", ClientCheck::json);
    } else if ((phase.equals("main") || phase.equals("retry")) && args.length == 4) {
      base = args[1];
      key = args[2];
      model = args[3];
      if (phase.equals("main")) mainChecks();
      else section("429 retries", ClientCheck::retryChecks);
    } else {
      System.err.println("usage: ClientCheck json | {main|retry} BASE_URL API_KEY MODEL");
      System.exit(2);
    }
    System.out.println("ClientCheck " + phase + ": " + (failures == 0 ? "all checks passed" : failures + " check(s) failed"));
    System.exit(failures == 0 ? 0 : 1);
  }

  // ------------------------------------------------------------------ helpers

  private static void check(String what, boolean ok, Object detail) {
    System.out.println((ok ? "ok   " : "FAIL ") + what + (ok || detail == null ? "" : ": " + detail));
    if (!ok) failures++;
  }

  private interface Body {
    void run() throws Exception;
  }

  /** Runs a group of checks; an unexpected exception is one failure, and the next group runs. */
  private static void section(String name, Body body) {
    try {
      body.run();
    } catch (Throwable t) {
      check(name, false, "unexpected " + t);
      t.printStackTrace(System.out);
    }
  }

  private static ForgeClient client() {
    return ForgeClient.builder(base).apiKey(key).readTimeout(Duration.ofSeconds(30)).build();
  }

  private static Map<String, Object> request(Object... kv) {
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("model", model);
    for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
    return m;
  }

  private static String quoted(String s) {
    return s == null ? "null" : Json.write(s);
  }

  /** The value of one series of the Prometheus text ("name{labels} value"), 0 when absent. */
  private static double metric(String text, String series) {
    for (String line : text.split("\n"))
      if (line.startsWith(series + " ")) return Double.parseDouble(line.substring(series.length() + 1).trim());
    return 0;
  }

  private static String requests(String endpoint, int status, String transport) {
    return "forge_requests_total{endpoint=\"" + endpoint + "\",status=\"" + status + "\",transport=\"" + transport + "\"}";
  }

  /** Polls /metrics until forge_active_slots is 0 (10 s at most); returns the last value. */
  private static double activeSlotsSettled(ForgeClient c) throws InterruptedException {
    double active = -1;
    for (int i = 0; i < 100; i++) {
      active = metric(c.metrics(), "forge_active_slots");
      if (active == 0) break;
      Thread.sleep(100);
    }
    return active;
  }

  private static <T extends Throwable> T expect(Class<T> type, Body body) {
    try {
      body.run();
    } catch (Throwable t) {
      if (type.isInstance(t)) return type.cast(t);
      throw new AssertionError("expected " + type.getSimpleName() + ", got " + t, t);
    }
    throw new AssertionError("expected " + type.getSimpleName() + ", got no exception");
  }

  // ------------------------------------------------------------------ JSON alone

  private static void json() {
    Object v = Json.parse(" {\"a\": [1, -2.5, 3e2, \"x\\n\\u00e9\\ud83d\\ude00\", true, false, null], \"b\": {}} ");
    check("json: parse an object", Json.asObject(v).keySet().equals(java.util.Set.of("a", "b")), v);
    List<Object> a = Json.asArray(Json.get(v, "a"));
    check("json: integers are Long, others Double", a.get(0).equals(1L) && a.get(1).equals(-2.5) && a.get(2).equals(300.0), a);
    check("json: escapes, surrogate pairs", "x\n\u00e9\ud83d\ude00".equals(a.get(3)), a.get(3));
    check("json: literals", a.get(4) == Boolean.TRUE && a.get(5) == Boolean.FALSE && a.get(6) == null && a.size() == 7, a);
    check("json: a number past long is a Double", Json.parse("123456789012345678901234").equals(1.2345678901234568e23), null);
    check("json: Json.get by path", Json.get(v, "a", 3) == a.get(3) && Json.get(v, "a", 9) == null && Json.get(v, "b", "c") == null, null);
    for (String bad : new String[] {"", "{", "[1,]", "{\"a\":1,}", "01", "1.", "-", "tru", "\"a", "\"\\x\"", "\"\\u12\"",
        "\"a\tb\"", "{a:1}", "[1] 2", "nul", "{\"a\" 1}", "1e", "+1"}) {
      boolean refused;
      try {
        Json.parse(bad);
        refused = false;
      } catch (IllegalArgumentException e) {
        refused = true;
      }
      check("json: refuses " + quoted(bad), refused, null);
    }
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("s", "q\"b\\c\n\t\u0001\u2028");
    m.put("n", List.of(1, 2L, 2.5, -0.0, 1e300));
    m.put("z", null);
    m.put("t", true);
    String w = Json.write(m);
    check("json: write escapes", w.equals("{\"s\":\"q\\\"b\\\\c\\n\\t\\u0001\\u2028\",\"n\":[1,2,2.5,0,1.0E300],\"z\":null,\"t\":true}"), w);
    check("json: write then parse is the same", Json.parse(w).toString().equals(Json.parse(Json.write(Json.parse(w))).toString())
        && "q\"b\\c\n\t\u0001\u2028".equals(Json.get(Json.parse(w), "s")), null);
    boolean nanRefused;
    try {
      Json.write(Double.NaN);
      nanRefused = false;
    } catch (IllegalArgumentException e) {
      nanRefused = true;
    }
    check("json: write refuses NaN", nanRefused, null);
    StringBuilder deep = new StringBuilder();
    for (int i = 0; i < 100000; i++) deep.append('[');
    boolean deepRefused;
    try {
      Json.parse(deep.toString());
      deepRefused = false;
    } catch (IllegalArgumentException e) {
      deepRefused = true;
    }
    check("json: refuses nesting past MAX_DEPTH (no stack overflow)", deepRefused, null);
  }

  // ------------------------------------------------------------------ the main server

  private static void mainChecks() {
    ForgeClient c = client();

    section("models", () -> {
      List<Map<String, Object>> models = c.models();
      check("models: lists " + model, models.stream().anyMatch(x -> model.equals(x.get("id"))), models);
    });

    String[] plain = new String[1];
    Map<String, Object> req = request("prompt", "we", "max_tokens", 24, "temperature", 1, "seed", 5);
    section("complete", () -> {
      Map<String, Object> r1 = c.complete(req);
      Map<String, Object> r2 = c.complete(req);
      plain[0] = (String) Json.get(r1, "choices", 0, "text");
      Object t2 = Json.get(r2, "choices", 0, "text");
      check("complete: text_completion with text", "text_completion".equals(r1.get("object")) && plain[0] != null
          && !plain[0].isEmpty(), r1);
      check("complete: the same seed twice gives the same text", plain[0] != null && plain[0].equals(t2),
          quoted(plain[0]) + " vs " + t2);
      check("complete: finish_reason length, usage 2 + 24", "length".equals(Json.get(r1, "choices", 0, "finish_reason"))
          && Long.valueOf(24).equals(Json.get(r1, "usage", "completion_tokens"))
          && Long.valueOf(2).equals(Json.get(r1, "usage", "prompt_tokens")), r1);
    });

    section("SSE stream", () -> {
      List<String> pieces = Collections.synchronizedList(new ArrayList<>());
      Completion s = c.stream(req, pieces::add);
      check("stream (SSE): the plain text for the same seed", s.text().equals(plain[0]), quoted(s.text()) + " vs " + quoted(plain[0]));
      check("stream (SSE): the callback's pieces add up to it, more than one", String.join("", pieces).equals(s.text())
          && pieces.size() > 1, pieces);
      check("stream (SSE): finish_reason length, usage", "length".equals(s.finishReason()) && s.tokens("completion_tokens") == 24
          && s.tokens("total_tokens") == 26, s);
    });

    section("WebSocket stream", () -> {
      List<String> pieces = Collections.synchronizedList(new ArrayList<>());
      StreamHandle h = c.streamWs(req, pieces::add);
      Completion w = h.await(Duration.ofSeconds(30));
      check("stream (WebSocket): the plain text for the same seed", w.text().equals(plain[0]), quoted(w.text()) + " vs " + quoted(plain[0]));
      check("stream (WebSocket): the callback's pieces add up to it", String.join("", pieces).equals(w.text()), pieces);
      check("stream (WebSocket): finish_reason length, usage", "length".equals(w.finishReason())
          && w.tokens("completion_tokens") == 24, w);
      // Two streams at once, each on its own socket, each equal to its seed's text.
      Map<String, Object> other = request("prompt", "all", "max_tokens", 40, "temperature", 1, "seed", 6);
      String want = (String) Json.get(c.complete(other), "choices", 0, "text");
      StreamHandle h1 = c.streamWs(other, null);
      StreamHandle h2 = c.streamWs(req, null);
      String got1 = h1.await(Duration.ofSeconds(30)).text(), got2 = h2.await(Duration.ofSeconds(30)).text();
      check("stream (WebSocket): two at once, each its own text", got1.equals(want) && got2.equals(plain[0]),
          quoted(got1) + " / " + quoted(got2));
    });

    section("chat", () -> {
      List<Map<String, String>> messages = List.of(Map.of("role", "user", "content", "we"));
      Map<String, Object> chatReq = request("max_tokens", 12, "temperature", 1, "seed", 8);
      Map<String, Object> r = c.chat(messages, chatReq);
      Object content = Json.get(r, "choices", 0, "message", "content");
      check("chat: an assistant message with content", "chat.completion".equals(r.get("object"))
          && "assistant".equals(Json.get(r, "choices", 0, "message", "role")) && content instanceof String, r);
      Map<String, Object> streamed = new LinkedHashMap<>(chatReq);
      streamed.put("messages", messages);
      Completion s = c.stream(streamed, null);
      check("chat (SSE): the same content for the same seed", s.text().equals(content), quoted(s.text()) + " vs " + content);
      Completion w = c.streamWs(streamed, null).await(Duration.ofSeconds(30));
      check("chat (WebSocket): the same content for the same seed", w.text().equals(content), quoted(w.text()) + " vs " + content);
    });

    section("WebSocket cancel", () -> {
      AtomicInteger tokens = new AtomicInteger();
      CountDownLatch some = new CountDownLatch(3);
      StreamHandle h = c.streamWs(request("prompt", "we", "max_tokens", 100000), t -> {
        tokens.incrementAndGet();
        some.countDown();
      });
      boolean started = some.await(10, TimeUnit.SECONDS);
      check("cancel: tokens arrive before the cancel", started, tokens.get() + " token(s) in 10 s");
      h.cancel();
      Completion r = h.await(Duration.ofSeconds(10));
      check("cancel: finish_reason cancelled", "cancelled".equals(r.finishReason()), r.finishReason());
      check("cancel: well before max_tokens", r.tokens("completion_tokens") >= 3 && r.tokens("completion_tokens") < 100000,
          r.usage());
      double active = activeSlotsSettled(c);
      check("cancel: forge_active_slots back to 0", active == 0, "forge_active_slots " + active);
    });

    section("errors", () -> {
      AtomicInteger retries = new AtomicInteger();
      ForgeClient wrong = ForgeClient.builder(base).apiKey("sk-wrong").maxRetries(5)
          .retryListener((n, e, d) -> retries.incrementAndGet()).build();
      AuthenticationException a = expect(AuthenticationException.class, () -> wrong.complete(req));
      check("wrong key: AuthenticationException 401 invalid_api_key", a.status() == 401
          && "invalid_api_key".equals(a.code()), a);
      expect(AuthenticationException.class, () -> wrong.stream(req, null));
      check("wrong key (SSE): AuthenticationException", true, null);
      AuthenticationException ws = expect(AuthenticationException.class, () -> wrong.streamWs(req, null));
      check("wrong key (WebSocket handshake): AuthenticationException 401", ws.status() == 401, ws);
      check("wrong key: never retried", retries.get() == 0, retries.get() + " retries");

      ForgeClient retrying = ForgeClient.builder(base).apiKey(key).maxRetries(5)
          .retryListener((n, e, d) -> retries.incrementAndGet()).build();
      String series = requests("/v1/completions", 400, "http");
      double before = metric(c.metrics(), series);
      Map<String, Object> hot = new LinkedHashMap<>(req);
      hot.put("temperature", 9);
      BadRequestException b = expect(BadRequestException.class, () -> retrying.complete(hot));
      check("temperature 9: BadRequestException 400 param temperature", b.status() == 400
          && "temperature".equals(b.param()) && "invalid_request_error".equals(b.type()), b);
      double after = metric(c.metrics(), series);
      check("temperature 9: sent once, not retried", after - before == 1 && retries.get() == 0,
          "400s counted " + (after - before) + ", retries " + retries.get());
      BadRequestException bs = expect(BadRequestException.class, () -> retrying.stream(hot, null));
      check("temperature 9 (SSE): BadRequestException param temperature", "temperature".equals(bs.param()), bs);
      StreamHandle h = retrying.streamWs(hot, null);
      BadRequestException bw = expect(BadRequestException.class, () -> h.await(Duration.ofSeconds(10)));
      check("temperature 9 (WebSocket): BadRequestException param temperature", "temperature".equals(bw.param()), bw);

      Map<String, Object> nope = new LinkedHashMap<>(req);
      nope.put("model", "no-such-model");
      NotFoundException nf = expect(NotFoundException.class, () -> retrying.complete(nope));
      check("unknown model: NotFoundException 404 param model", nf.status() == 404 && "model".equals(nf.param()), nf);
      check("4xx: never retried", retries.get() == 0, retries.get() + " retries");
      IllegalArgumentException ia = expect(IllegalArgumentException.class,
          () -> c.complete(request("prompt", "we", "stream", true)));
      check("complete with stream true: refused in the client", ia.getMessage().contains("stream"), ia);
    });

    section("hang-ups", () -> {
      // A read timeout: the client gives up and hangs up, and the server frees the slot. (Should a
      // machine generate 100000 tokens within the timeout, that is noted, not failed.)
      ForgeClient impatient = ForgeClient.builder(base).apiKey(key).readTimeout(Duration.ofMillis(300)).build();
      try {
        impatient.complete(request("prompt", "we", "max_tokens", 100000));
        System.out.println("note the server generated 100000 tokens within the 300 ms read timeout");
      } catch (UncheckedIOException e) {
        check("read timeout: UncheckedIOException of an HttpTimeoutException", e.getCause() instanceof HttpTimeoutException, e);
      }
      double active = activeSlotsSettled(c);
      check("read timeout: the server freed the slot", active == 0, "forge_active_slots " + active);

      // A stream whose callback throws: the exception comes out, the server frees the slot.
      AtomicInteger n = new AtomicInteger();
      IllegalStateException stop = expect(IllegalStateException.class, () -> c.stream(request("prompt", "we", "max_tokens", 100000), t -> {
        if (n.incrementAndGet() == 5) throw new IllegalStateException("enough");
      }));
      check("SSE callback throws: its exception propagates", "enough".equals(stop.getMessage()), stop);
      active = activeSlotsSettled(c);
      check("SSE callback throws: the server freed the slot", active == 0, "forge_active_slots " + active);

      // A WebSocket stream dropped with close(): the result fails, the server frees the slot.
      CountDownLatch first = new CountDownLatch(1);
      StreamHandle h = c.streamWs(request("prompt", "we", "max_tokens", 100000), t -> first.countDown());
      check("WebSocket close(): tokens first", first.await(10, TimeUnit.SECONDS), null);
      h.close();
      expect(UncheckedIOException.class, () -> h.await(Duration.ofSeconds(10)));
      active = activeSlotsSettled(c);
      check("WebSocket close(): the result fails, the server frees the slot", active == 0, "forge_active_slots " + active);
    });

    section("metrics", () -> {
      String text = c.metrics();
      check("metrics: forge_active_slots and the ws transport counted", text.contains("\nforge_active_slots ")
          && metric(text, requests("/v1/stream", 200, "ws")) >= 3, text.length() + " bytes");
    });
  }

  // ------------------------------------------------------------------ 429, then success

  /**
   * The server has one slot and no queue. A WebSocket request holds the slot; a client with
   * maxRetries 0 gets RateLimitException at once; then a retrying HTTP client and a retrying
   * WebSocket stream each get 429s, and once both have been refused (seen in the server's
   * metrics, or after 20 s at most) another thread cancels the holder, and both succeed.
   */
  private static void retryChecks() throws Exception {
    ForgeClient c = client();
    CountDownLatch holding = new CountDownLatch(1);
    StreamHandle holder = c.streamWs(request("prompt", "we", "max_tokens", 1000000), t -> holding.countDown());
    check("429: a long request holds the only slot", holding.await(10, TimeUnit.SECONDS), null);

    ForgeClient once = ForgeClient.builder(base).apiKey(key).maxRetries(0).build();
    RateLimitException r = expect(RateLimitException.class, () -> once.complete(request("prompt", "all", "max_tokens", 4)));
    check("429 with maxRetries 0: RateLimitException, Retry-After 1 s", r.status() == 429
        && r.retryAfter().equals(java.util.Optional.of(Duration.ofSeconds(1))), r + " retryAfter " + r.retryAfter());
    RateLimitException rw = expect(RateLimitException.class,
        () -> once.streamWs(request("prompt", "all", "max_tokens", 4), null).await(Duration.ofSeconds(10)));
    check("429 with maxRetries 0 (WebSocket): RateLimitException", rw.status() == 429, rw);

    String httpSeries = requests("/v1/completions", 429, "http"), wsSeries = requests("/v1/stream", 429, "ws");
    String m0 = c.metrics();
    double http0 = metric(m0, httpSeries), ws0 = metric(m0, wsSeries);
    Thread canceller = new Thread(() -> {
      try {
        for (int i = 0; i < 400; i++) { // 20 s at most
          String m = c.metrics();
          if (metric(m, httpSeries) > http0 && metric(m, wsSeries) > ws0) break;
          Thread.sleep(50);
        }
      } catch (Exception e) {
        System.out.println("note the canceller's metrics failed: " + e);
      }
      holder.cancel();
    });
    canceller.setDaemon(true);
    canceller.start();

    // Each retry as "CLASS STATUS retry-after R wait D": R from the server (HTTP only), D the wait.
    List<String> seen = Collections.synchronizedList(new ArrayList<>());
    List<String> early = Collections.synchronizedList(new ArrayList<>());
    ForgeClient patient = ForgeClient.builder(base).apiKey(key).maxRetries(8)
        .backoff(Duration.ofMillis(200), Duration.ofSeconds(4))
        .retryListener((n, e, d) -> {
          seen.add(e.getClass().getSimpleName() + " " + e.status() + " retry-after "
              + e.retryAfter().map(Duration::toMillis).map(ms -> ms + " ms").orElse("none") + " wait " + d.toMillis() + " ms");
          if (e.retryAfter().isPresent() && d.compareTo(e.retryAfter().get()) < 0) early.add(seen.get(seen.size() - 1));
        })
        .build();
    StreamHandle wsRetry = patient.streamWs(request("prompt", "all", "max_tokens", 8), null);
    Map<String, Object> done = patient.complete(request("prompt", "all", "max_tokens", 8));
    Completion wsDone = wsRetry.await(Duration.ofSeconds(60));
    canceller.join(30000);

    check("429: the retrying HTTP client succeeds", Json.get(done, "choices", 0, "text") instanceof String
        && Long.valueOf(8).equals(Json.get(done, "usage", "completion_tokens")), done);
    check("429: the retrying WebSocket stream succeeds", "length".equals(wsDone.finishReason())
        && wsDone.tokens("completion_tokens") == 8, wsDone);
    List<String> retries = new ArrayList<>(seen);
    System.out.println("note the retries: " + retries);
    check("429: retried (HTTP and WebSocket), each a RateLimitException",
        retries.size() >= 2 && retries.stream().allMatch(s -> s.startsWith("RateLimitException 429"))
            && retries.stream().anyMatch(s -> s.contains("retry-after 1000 ms"))
            && retries.stream().anyMatch(s -> s.contains("retry-after none")), retries);
    check("429: no retry sooner than the server's Retry-After", early.isEmpty(), early);
    String m1 = c.metrics();
    check("429: the server counted refusals: HTTP " + (metric(m1, httpSeries) - http0) + ", ws " + (metric(m1, wsSeries) - ws0),
        metric(m1, httpSeries) - http0 >= 1 && metric(m1, wsSeries) - ws0 >= 1, null);
    Completion held = holder.await(Duration.ofSeconds(30));
    check("429: the holder was cancelled", "cancelled".equals(held.finishReason()), held.finishReason());
    double active = activeSlotsSettled(c);
    check("429: forge_active_slots back to 0", active == 0, "forge_active_slots " + active);
  }
}
