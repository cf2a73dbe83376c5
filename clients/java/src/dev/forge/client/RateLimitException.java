package dev.forge.client;

import java.time.Duration;

/**
 * HTTP 429: the server's queue is full. Retryable: the client retries it (up to its
 * {@code maxRetries}), waiting {@link #retryAfter()} when the server says.
 */
public class RateLimitException extends ApiException {
  private static final long serialVersionUID = 1L;

  /**
   * @param message the error's message
   * @param type its type, or null
   * @param param its param, or null
   * @param code its code, or null
   * @param retryAfter the server's Retry-After, or null
   */
  public RateLimitException(
      String message, String type, String param, String code, Duration retryAfter) {
    super(429, message, type, param, code, retryAfter);
  }
}
