package dev.forge.client;

import java.time.Duration;

/**
 * HTTP 5xx: the server failed, or (503) is unavailable, e.g. shutting down. Only 503 is retried.
 */
public class ServerException extends ApiException {
  private static final long serialVersionUID = 1L;

  /**
   * @param status the status, 500 to 599
   * @param message the error's message
   * @param type its type, or null
   * @param param its param, or null
   * @param code its code, or null
   * @param retryAfter the server's Retry-After, or null
   */
  public ServerException(
      int status, String message, String type, String param, String code, Duration retryAfter) {
    super(status, message, type, param, code, retryAfter);
  }
}
