package dev.forge.client;

import java.time.Duration;
import java.util.Map;
import java.util.Optional;

/**
 * An error answered by the server: its HTTP status and OpenAI's error object
 * ({@code {"error": {"message", "type", "param", "code"}}}).
 *
 * <p>{@link #of} picks the subclass for the status: {@link BadRequestException} (400),
 * {@link AuthenticationException} (401), {@link NotFoundException} (404),
 * {@link RateLimitException} (429), {@link ServerException} (5xx); other statuses are a plain
 * {@code ApiException}. Errors that arrive without a status (inside a server-sent event stream or
 * on the WebSocket) get the status their {@code code} and {@code type} imply (see
 * {@link #statusOf}).
 */
public class ApiException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  /** The HTTP status. */
  private final int status;
  /** The error's type, or null. */
  private final String type;
  /** The request field at fault, or null. */
  private final String param;
  /** The error's code, or null. */
  private final String code;
  private final transient Duration retryAfter;

  /**
   * Creates an error; most callers want {@link #of}, which picks the subclass.
   *
   * @param status the HTTP status
   * @param message the error's message
   * @param type the error's type (e.g. {@code invalid_request_error}), or null
   * @param param the request field at fault, or null
   * @param code the error's code (e.g. {@code invalid_api_key}), or null
   * @param retryAfter the server's Retry-After, or null
   */
  public ApiException(
      int status, String message, String type, String param, String code, Duration retryAfter) {
    super(message == null || message.isEmpty() ? "HTTP " + status : message);
    this.status = status;
    this.type = type;
    this.param = param;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** @return the HTTP status (for an error without one, the status its code implies) */
  public int status() {
    return status;
  }

  /** @return the error's type, e.g. {@code invalid_request_error}, or null */
  public String type() {
    return type;
  }

  /** @return the request field the error names, e.g. {@code temperature}, or null */
  public String param() {
    return param;
  }

  /** @return the error's code, e.g. {@code invalid_api_key}, or null */
  public String code() {
    return code;
  }

  /** @return how long the server asked to wait before retrying (Retry-After), if it said */
  public Optional<Duration> retryAfter() {
    return Optional.ofNullable(retryAfter);
  }

  /** @return whether retrying later may succeed: 429 (busy) and 503 (unavailable) */
  public boolean isRetryable() {
    return status == 429 || status == 503;
  }

  @Override
  public String toString() {
    return getClass().getSimpleName() + " " + status + (code != null ? " " + code : "")
        + (param != null ? " (param " + param + ")" : "") + ": " + getMessage();
  }

  /**
   * The exception for an error, of the subclass its status calls for.
   *
   * @param status the HTTP status
   * @param message the message
   * @param type the type, or null
   * @param param the param, or null
   * @param code the code, or null
   * @param retryAfter Retry-After, or null
   * @return the exception (not thrown)
   */
  public static ApiException of(
      int status, String message, String type, String param, String code, Duration retryAfter) {
    switch (status) {
      case 400: return new BadRequestException(message, type, param, code);
      case 401: return new AuthenticationException(message, type, param, code);
      case 404: return new NotFoundException(message, type, param, code);
      case 429: return new RateLimitException(message, type, param, code, retryAfter);
      default:
        if (status >= 500 && status <= 599)
          return new ServerException(status, message, type, param, code, retryAfter);
        return new ApiException(status, message, type, param, code, retryAfter);
    }
  }

  /**
   * The exception for an HTTP error response.
   *
   * @param status the response's status
   * @param body its body: OpenAI's error object, or anything else (then the message is the body)
   * @param retryAfterHeader the Retry-After header's value, or null; a number of seconds counts,
   *     an HTTP date is ignored
   * @return the exception (not thrown)
   */
  public static ApiException fromResponse(int status, String body, String retryAfterHeader) {
    Duration retryAfter = null;
    if (retryAfterHeader != null) {
      try {
        long seconds = Long.parseLong(retryAfterHeader.trim());
        if (seconds >= 0) retryAfter = Duration.ofSeconds(seconds);
      } catch (NumberFormatException notSeconds) {
        // an HTTP date: the client's own backoff applies
      }
    }
    Object error = null;
    try {
      error = Json.get(Json.parse(body == null ? "" : body), "error");
    } catch (IllegalArgumentException notJson) {
      // a proxy's page or an empty body
    }
    if (error instanceof Map) {
      Map<?, ?> e = (Map<?, ?>) error;
      return of(status, string(e.get("message")), string(e.get("type")), string(e.get("param")),
          string(e.get("code")), retryAfter);
    }
    String text = body == null ? "" : body.strip();
    if (text.length() > 500) text = text.substring(0, 500) + "...";
    return of(status, text.isEmpty() ? "HTTP " + status : "HTTP " + status + ": " + text, null,
        null, null, retryAfter);
  }

  /**
   * The exception for an error object that came without an HTTP status (in an event stream or on
   * the WebSocket).
   *
   * @param error the {@code "error"} object's fields
   * @return the exception (not thrown)
   */
  public static ApiException fromErrorObject(Map<?, ?> error) {
    return of(statusOf(error), string(error.get("message")), string(error.get("type")),
        string(error.get("param")), string(error.get("code")), null);
  }

  /**
   * The HTTP status an error object implies: by its code ({@code invalid_api_key} 401,
   * {@code model_not_found} and {@code not_found} 404, {@code rate_limit_exceeded} 429,
   * {@code shutting_down} and {@code too_many_connections} 503), else by its type
   * ({@code invalid_request_error} 400, {@code authentication_error} 401,
   * {@code rate_limit_error} 429, {@code server_error} 500).
   *
   * @param error the error object's fields
   * @return the status (500 when nothing says)
   */
  public static int statusOf(Map<?, ?> error) {
    String code = string(error.get("code"));
    if (code != null) {
      switch (code) {
        case "invalid_api_key": return 401;
        case "model_not_found":
        case "not_found": return 404;
        case "rate_limit_exceeded": return 429;
        case "shutting_down":
        case "too_many_connections": return 503;
        default: break;
      }
    }
    String type = string(error.get("type"));
    if ("invalid_request_error".equals(type)) return 400;
    if ("authentication_error".equals(type)) return 401;
    if ("rate_limit_error".equals(type)) return 429;
    return 500;
  }

  private static String string(Object v) {
    return v == null ? null : v.toString();
  }
}
