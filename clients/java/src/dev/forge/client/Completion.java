package dev.forge.client;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The outcome of a streamed completion (server-sent events or WebSocket): the text of choice 0
 * as its tokens arrived, why it ended, and the token counts.
 */
public final class Completion {
  private final String text;
  private final String finishReason;
  private final Map<String, Object> usage;

  /**
   * @param text the generated text
   * @param finishReason {@code stop}, {@code length}, {@code cancelled}, ...
   * @param usage {@code prompt_tokens}, {@code completion_tokens}, {@code total_tokens}, or null
   *     when the server sent none
   */
  public Completion(String text, String finishReason, Map<String, Object> usage) {
    this.text = text;
    this.finishReason = finishReason;
    this.usage = usage == null ? null : Collections.unmodifiableMap(new LinkedHashMap<>(usage));
  }

  /** @return the generated text of choice 0 */
  public String text() {
    return text;
  }

  /** @return why choice 0 ended: {@code stop}, {@code length}, {@code cancelled}, ... */
  public String finishReason() {
    return finishReason;
  }

  /** @return the usage object (token counts), or null when the server sent none */
  public Map<String, Object> usage() {
    return usage;
  }

  /**
   * @param field {@code prompt_tokens}, {@code completion_tokens} or {@code total_tokens}
   * @return that count, or -1 without usage
   */
  public long tokens(String field) {
    Object v = usage == null ? null : usage.get(field);
    return v instanceof Number ? ((Number) v).longValue() : -1;
  }

  @Override
  public String toString() {
    return "Completion{finishReason=" + finishReason + ", usage=" + usage + ", text="
        + Json.write(text) + "}";
  }
}
