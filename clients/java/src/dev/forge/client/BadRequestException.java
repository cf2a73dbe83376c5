package dev.forge.client;

/** HTTP 400: the request was refused as malformed; {@link #param()} names the field at fault. */
public class BadRequestException extends ApiException {
  private static final long serialVersionUID = 1L;

  /**
   * @param message the error's message
   * @param type its type, or null
   * @param param its param, or null
   * @param code its code, or null
   */
  public BadRequestException(String message, String type, String param, String code) {
    super(400, message, type, param, code, null);
  }
}
