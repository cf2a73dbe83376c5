package dev.forge.client;

/** HTTP 404: something named does not exist, e.g. an unknown model ({@link #param()} {@code model}). */
public class NotFoundException extends ApiException {
  private static final long serialVersionUID = 1L;

  /**
   * @param message the error's message
   * @param type its type, or null
   * @param param its param, or null
   * @param code its code, or null
   */
  public NotFoundException(String message, String type, String param, String code) {
    super(404, message, type, param, code, null);
  }
}
