package dev.forge.client;

/** HTTP 401: the API key (or token) was missing or refused. */
public class AuthenticationException extends ApiException {
  private static final long serialVersionUID = 1L;

  /**
   * @param message the error's message
   * @param type its type, or null
   * @param param its param, or null
   * @param code its code, or null
   */
  public AuthenticationException(String message, String type, String param, String code) {
    super(401, message, type, param, code, null);
  }
}
