package dev.forge.client;

import java.io.IOException;
import java.io.InterruptedIOException;
import java.io.UncheckedIOException;
import java.net.http.HttpTimeoutException;
import java.net.http.WebSocket;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.Consumer;

/**
 * One completion streaming over serve's WebSocket ({@code GET /v1/stream}), from
 * {@link ForgeClient#streamWs}: its tokens go to the caller's callback as they arrive, and
 * {@link #result()} completes with the {@link Completion} once every choice is done.
 *
 * <pre>{@code
 * StreamHandle h = client.streamWs(Map.of("model", "tiny", "prompt", "we", "max_tokens", 100000),
 *                                  System.out::print);
 * ...
 * h.cancel();                                         // the server answers "cancelled"
 * Completion c = h.await(Duration.ofSeconds(10));     // c.finishReason() is "cancelled"
 * }</pre>
 *
 * <p>Threads: the callback runs on the HTTP client's threads, one message at a time, in order;
 * an exception it throws fails {@link #result()} and drops the socket (the server then cancels
 * the request). The handle's methods may be called from any thread. The socket is closed once
 * the result is in.
 *
 * <p>Failures complete {@link #result()} exceptionally: an {@link ApiException} for the server's
 * error message (a 429 before the first token is retried as {@link ForgeClient} retries HTTP),
 * an {@link UncheckedIOException} for a dropped socket or for no message within the client's read
 * timeout.
 */
public final class StreamHandle implements AutoCloseable {
  private final ForgeClient client;
  private final String id;
  private final String message;
  private final int choices;
  private final Consumer<String> onText;
  private final CompletableFuture<Completion> result = new CompletableFuture<>();
  private final Listener listener = new Listener();

  // Guarded by `this`.
  private WebSocket socket;
  private CompletableFuture<?> sends = CompletableFuture.completedFuture(null);

  // Touched only by the listener (the JDK delivers one message at a time) and read by the
  // watchdog: volatile where the watchdog looks.
  private final StringBuilder partial = new StringBuilder();
  private final StringBuilder text = new StringBuilder();
  private String finishReason;
  private Map<String, Object> usage;
  private int done;
  private boolean sawToken;
  private int retries;
  private volatile long lastActivity = System.nanoTime();
  // A cancel while a 429's retry waits (nothing is running on the server) ends the request here.
  // Guarded by `this`.
  private boolean cancelRequested;
  private boolean waitingToRetry;

  StreamHandle(ForgeClient client, String id, String message, int choices, Consumer<String> onText) {
    this.client = client;
    this.id = id;
    this.message = message;
    this.choices = choices;
    this.onText = onText == null ? t -> { } : onText;
    result.whenComplete((c, failure) -> closeSocket(failure == null));
  }

  /** @return the request's id on the socket (the client's own) */
  public String id() {
    return id;
  }

  /** @return completes with the result, or exceptionally as the class comment says */
  public CompletableFuture<Completion> result() {
    return result;
  }

  /**
   * Asks the server to stop generating: it answers with {@code finish_reason} "cancelled" (with
   * the text so far) unless the request has already ended. Returns at once; does nothing after
   * the result is in.
   */
  public void cancel() {
    synchronized (this) {
      if (result.isDone()) return;
      cancelRequested = true;
      if (!waitingToRetry) {
        send(Json.write(Map.of("type", "cancel", "id", id)));
        return;
      }
    }
    cancelledHere(); // outside the lock: the result's callbacks run here
  }

  /**
   * Waits for the result.
   *
   * @param timeout how long to wait at most
   * @return the completion
   * @throws ApiException the server's error
   * @throws UncheckedIOException the socket failed, or no result within {@code timeout} (the
   *     request goes on: {@link #cancel} or {@link #close} it)
   */
  public Completion await(Duration timeout) {
    try {
      return result.get(timeout.toNanos(), TimeUnit.NANOSECONDS);
    } catch (TimeoutException e) {
      throw new UncheckedIOException(
          new HttpTimeoutException("WebSocket request " + id + ": no result in " + timeout));
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new UncheckedIOException(new InterruptedIOException("interrupted waiting for " + id));
    } catch (ExecutionException e) {
      Throwable cause = e.getCause();
      if (cause instanceof RuntimeException) throw (RuntimeException) cause;
      if (cause instanceof Error) throw (Error) cause;
      throw new UncheckedIOException(new IOException(cause));
    }
  }

  /**
   * Drops the socket without waiting (the server cancels the request); the result fails unless it
   * is already in.
   */
  @Override
  public void close() {
    fail(new UncheckedIOException(new IOException("WebSocket request " + id + ": closed by the client")));
  }

  // ------------------------------------------------------------------ package-private

  WebSocket.Listener listener() {
    return listener;
  }

  /** Called by ForgeClient once the socket is open: sends the request, starts the watchdog. */
  void start(WebSocket ws) {
    synchronized (this) {
      socket = ws;
    }
    lastActivity = System.nanoTime();
    send(message);
    watch();
  }

  // ------------------------------------------------------------------ internals

  private void fail(Throwable t) {
    result.completeExceptionally(t);
  }

  /** Sends one text message after those before it (the JDK allows one send at a time). */
  private synchronized void send(String text) {
    WebSocket ws = socket;
    if (ws == null) return;
    sends = sends.thenCompose(v -> ws.sendText(text, true)).handle((v, t) -> {
      if (t != null) fail(new UncheckedIOException(new IOException("WebSocket send failed", t)));
      return null;
    });
  }

  private void closeSocket(boolean normally) {
    WebSocket ws;
    synchronized (this) {
      ws = socket;
    }
    if (ws == null) return;
    if (!normally) {
      ws.abort();
      return;
    }
    synchronized (this) {
      sends = sends.thenCompose(v -> ws.sendClose(WebSocket.NORMAL_CLOSURE, "done"))
          .handle((v, t) -> null);
    }
    // A server that never answers the close: drop the connection a little later.
    CompletableFuture.delayedExecutor(5, TimeUnit.SECONDS).execute(ws::abort);
  }

  /** Fails the result when nothing arrives for the client's read timeout. */
  private void watch() {
    if (result.isDone()) return;
    long timeout = client.readTimeout().toNanos();
    long left = timeout - (System.nanoTime() - lastActivity);
    if (left <= 0) {
      fail(new UncheckedIOException(new HttpTimeoutException(
          "WebSocket request " + id + ": nothing received in " + client.readTimeout())));
      return;
    }
    CompletableFuture.delayedExecutor(left, TimeUnit.NANOSECONDS).execute(this::watch);
  }

  private void onMessage(String raw) {
    lastActivity = System.nanoTime();
    if (result.isDone()) return;
    Map<String, Object> m;
    try {
      m = Json.asObject(Json.parse(raw));
    } catch (IllegalArgumentException e) {
      fail(new UncheckedIOException(new IOException("unreadable message from the server: " + e.getMessage())));
      return;
    }
    Object messageId = m.get("id");
    if (messageId != null && !id.equals(messageId)) return; // not ours
    Object type = m.get("type");
    boolean first = index(m) == 0;
    if ("token".equals(type)) {
      sawToken = true;
      Object piece = m.get("text");
      if (first && piece instanceof String && !((String) piece).isEmpty()) {
        text.append((String) piece);
        onText.accept((String) piece);
      }
    } else if ("done".equals(type)) {
      if (first) {
        finishReason = m.get("finish_reason") instanceof String ? (String) m.get("finish_reason") : null;
        usage = m.get("usage") instanceof Map ? Json.asObject(m.get("usage")) : null;
      }
      if (++done >= choices) result.complete(new Completion(text.toString(), finishReason, usage));
    } else if ("error".equals(type)) {
      Object error = m.get("error");
      ApiException e = error instanceof Map
          ? ApiException.fromErrorObject((Map<?, ?>) error)
          : new ApiException(500, "error message without an error object: " + raw, null, null, null, null);
      if (e.status() == 429 && !sawToken && done == 0 && retries < client.maxRetries()) {
        retry(e);
      } else {
        fail(e);
      }
    }
  }

  /** Sends the request again after the client's backoff (a 429 before anything was generated). */
  private void retry(ApiException e) {
    Duration delay = client.backoff(retries, e);
    if (delay == null) {
      fail(e);
      return;
    }
    client.notifyRetry(++retries, e, delay);
    lastActivity = System.nanoTime() + delay.toNanos(); // the wait is not the server's silence
    boolean cancelled;
    synchronized (this) { // a cancel() sees either the wait or the request sent
      waitingToRetry = true;
      cancelled = cancelRequested; // the cancel met no request on the server
    }
    if (cancelled) {
      cancelledHere();
      return;
    }
    CompletableFuture.delayedExecutor(delay.toNanos(), TimeUnit.NANOSECONDS).execute(() -> {
      synchronized (this) {
        waitingToRetry = false;
        if (!cancelRequested) {
          if (!result.isDone()) send(message);
          return;
        }
      }
      cancelledHere();
    });
  }

  /** A cancel of a request not running on the server: "cancelled" with nothing generated. */
  private void cancelledHere() {
    result.complete(new Completion("", "cancelled", null));
  }

  private static long index(Map<String, Object> m) {
    Object i = m.get("index");
    return i instanceof Number ? ((Number) i).longValue() : 0;
  }

  /** Receives the socket's messages (text arrives in parts: joined until the last one). */
  private final class Listener implements WebSocket.Listener {
    @Override
    public CompletionStage<?> onText(WebSocket ws, CharSequence data, boolean last) {
      partial.append(data);
      if (last) {
        String whole = partial.toString();
        partial.setLength(0);
        try {
          onMessage(whole);
        } catch (RuntimeException | Error e) { // the caller's callback threw
          fail(e);
        }
      }
      ws.request(1);
      return null;
    }

    @Override
    public CompletionStage<?> onClose(WebSocket ws, int statusCode, String reason) {
      fail(new UncheckedIOException(new IOException(
          "the server closed the WebSocket (" + statusCode + (reason.isEmpty() ? "" : " " + reason)
              + ") before request " + id + " ended")));
      return null;
    }

    @Override
    public void onError(WebSocket ws, Throwable error) {
      fail(new UncheckedIOException(new IOException("WebSocket failed: " + error, error)));
    }
  }
}
