package dev.forge.client;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small, strict JSON (RFC 8259) reader and writer, so that the client needs nothing beyond the
 * JDK.
 *
 * <p>{@link #parse} maps JSON values to Java as follows: object to {@code Map<String, Object>}
 * (a {@link LinkedHashMap}, keeping the document's order; a repeated key keeps its last value),
 * array to {@code List<Object>}, string to {@link String}, a number without fraction or exponent
 * that fits a {@code long} to {@link Long}, any other number to {@link Double}, {@code true} and
 * {@code false} to {@link Boolean}, and {@code null} to {@code null}. Anything that is not exactly
 * one JSON value (with surrounding whitespace) is refused with an {@link IllegalArgumentException}
 * naming the offset.
 *
 * <p>{@link #write} accepts those types back, plus any {@link Number} (finite), any
 * {@link Collection}, arrays of objects, and maps whose keys are strings. It writes compact JSON
 * and escapes what JSON requires (quotes, backslashes, control characters).
 *
 * <pre>{@code
 * Map<String, Object> m = Json.asObject(Json.parse("{\"a\": [1, 2.5, \"x\"]}"));
 * String s = Json.write(Map.of("prompt", "we", "max_tokens", 8));
 * }</pre>
 */
public final class Json {
  /** Objects and arrays nested deeper than this are refused (no stack overflow on hostile input). */
  public static final int MAX_DEPTH = 512;

  private final String in;
  private int pos;

  private Json(String in) {
    this.in = in;
  }

  // ---------------------------------------------------------------- reading

  /**
   * Parses one JSON document.
   *
   * @param text the document
   * @return the value, mapped as the class comment says
   * @throws IllegalArgumentException if {@code text} is not exactly one valid JSON value
   */
  public static Object parse(String text) {
    if (text == null) throw new IllegalArgumentException("JSON text is null");
    Json p = new Json(text);
    p.skipWhitespace();
    Object value = p.readValue(0);
    p.skipWhitespace();
    if (p.pos != text.length()) throw p.error("unexpected data after the value");
    return value;
  }

  /**
   * Returns {@code value} as a JSON object.
   *
   * @param value a parsed value
   * @return the map
   * @throws IllegalArgumentException if it is not an object
   */
  @SuppressWarnings("unchecked")
  public static Map<String, Object> asObject(Object value) {
    if (value instanceof Map) return (Map<String, Object>) value;
    throw new IllegalArgumentException("expected a JSON object, got " + typeName(value));
  }

  /**
   * Returns {@code value} as a JSON array.
   *
   * @param value a parsed value
   * @return the list
   * @throws IllegalArgumentException if it is not an array
   */
  @SuppressWarnings("unchecked")
  public static List<Object> asArray(Object value) {
    if (value instanceof List) return (List<Object>) value;
    throw new IllegalArgumentException("expected a JSON array, got " + typeName(value));
  }

  /**
   * Follows a path of object keys (strings) and array indices (integers) from {@code value}.
   *
   * @param value a parsed value
   * @param path keys and indices, e.g. {@code "choices", 0, "text"}
   * @return what is there, or {@code null} where the path leads nowhere (a missing key, an index
   *     out of range, or a step into something that is not an object or array)
   */
  public static Object get(Object value, Object... path) {
    Object at = value;
    for (Object step : path) {
      if (step instanceof String && at instanceof Map) {
        at = ((Map<?, ?>) at).get(step);
      } else if (step instanceof Integer && at instanceof List) {
        List<?> list = (List<?>) at;
        int i = (Integer) step;
        at = i >= 0 && i < list.size() ? list.get(i) : null;
      } else {
        return null;
      }
    }
    return at;
  }

  private static String typeName(Object value) {
    if (value == null) return "null";
    if (value instanceof Map) return "an object";
    if (value instanceof List) return "an array";
    if (value instanceof String) return "a string";
    if (value instanceof Boolean) return "a boolean";
    if (value instanceof Number) return "a number";
    return value.getClass().getName();
  }

  private IllegalArgumentException error(String what) {
    return new IllegalArgumentException("invalid JSON at offset " + pos + ": " + what);
  }

  private void skipWhitespace() {
    while (pos < in.length()) {
      char c = in.charAt(pos);
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
      pos++;
    }
  }

  private Object readValue(int depth) {
    if (pos >= in.length()) throw error("unexpected end of input");
    char c = in.charAt(pos);
    switch (c) {
      case '{':
        return readObject(depth + 1);
      case '[':
        return readArray(depth + 1);
      case '"':
        return readString();
      case 't':
        return readLiteral("true", Boolean.TRUE);
      case 'f':
        return readLiteral("false", Boolean.FALSE);
      case 'n':
        return readLiteral("null", null);
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return readNumber();
        throw error("unexpected character '" + c + "'");
    }
  }

  private Object readLiteral(String word, Object value) {
    if (!in.startsWith(word, pos)) throw error("expected '" + word + "'");
    pos += word.length();
    return value;
  }

  private Map<String, Object> readObject(int depth) {
    if (depth > MAX_DEPTH) throw error("nested deeper than " + MAX_DEPTH);
    pos++; // '{'
    Map<String, Object> map = new LinkedHashMap<>();
    skipWhitespace();
    if (peek() == '}') {
      pos++;
      return map;
    }
    while (true) {
      skipWhitespace();
      if (peek() != '"') throw error("expected a string key");
      String key = readString();
      skipWhitespace();
      if (peek() != ':') throw error("expected ':'");
      pos++;
      skipWhitespace();
      map.put(key, readValue(depth));
      skipWhitespace();
      char c = peek();
      pos++;
      if (c == '}') return map;
      if (c != ',') {
        pos--;
        throw error("expected ',' or '}'");
      }
    }
  }

  private List<Object> readArray(int depth) {
    if (depth > MAX_DEPTH) throw error("nested deeper than " + MAX_DEPTH);
    pos++; // '['
    List<Object> list = new ArrayList<>();
    skipWhitespace();
    if (peek() == ']') {
      pos++;
      return list;
    }
    while (true) {
      skipWhitespace();
      list.add(readValue(depth));
      skipWhitespace();
      char c = peek();
      pos++;
      if (c == ']') return list;
      if (c != ',') {
        pos--;
        throw error("expected ',' or ']'");
      }
    }
  }

  /** The next character, or '\0' at the end (never a valid token start, so errors follow). */
  private char peek() {
    return pos < in.length() ? in.charAt(pos) : '\0';
  }

  private String readString() {
    pos++; // opening quote
    StringBuilder out = null; // only when an escape is met
    int start = pos;
    while (true) {
      if (pos >= in.length()) throw error("unterminated string");
      char c = in.charAt(pos);
      if (c == '"') {
        String s = out == null ? in.substring(start, pos) : out.append(in, start, pos).toString();
        pos++;
        return s;
      }
      if (c < 0x20) throw error("unescaped control character in a string");
      if (c != '\\') {
        pos++;
        continue;
      }
      if (out == null) out = new StringBuilder();
      out.append(in, start, pos);
      pos++; // backslash
      if (pos >= in.length()) throw error("unterminated escape");
      char e = in.charAt(pos++);
      switch (e) {
        case '"': out.append('"'); break;
        case '\\': out.append('\\'); break;
        case '/': out.append('/'); break;
        case 'b': out.append('\b'); break;
        case 'f': out.append('\f'); break;
        case 'n': out.append('\n'); break;
        case 'r': out.append('\r'); break;
        case 't': out.append('\t'); break;
        case 'u': out.append(readHex4()); break;
        default:
          pos--;
          throw error("invalid escape '\\" + e + "'");
      }
      start = pos;
    }
  }

  /** Four hex digits after "\\u" (surrogate pairs come out right: Java strings are UTF-16). */
  private char readHex4() {
    if (pos + 4 > in.length()) throw error("truncated \\u escape");
    int v = 0;
    for (int i = 0; i < 4; i++) {
      int d = Character.digit(in.charAt(pos + i), 16);
      if (d < 0) throw error("invalid \\u escape");
      v = v * 16 + d;
    }
    pos += 4;
    return (char) v;
  }

  private Object readNumber() {
    int start = pos;
    if (peek() == '-') pos++;
    if (peek() == '0') {
      pos++;
    } else if (peek() >= '1' && peek() <= '9') {
      while (isDigit(peek())) pos++;
    } else {
      throw error("expected a digit");
    }
    boolean integral = true;
    if (peek() == '.') {
      integral = false;
      pos++;
      if (!isDigit(peek())) throw error("expected a digit after '.'");
      while (isDigit(peek())) pos++;
    }
    if (peek() == 'e' || peek() == 'E') {
      integral = false;
      pos++;
      if (peek() == '+' || peek() == '-') pos++;
      if (!isDigit(peek())) throw error("expected a digit in the exponent");
      while (isDigit(peek())) pos++;
    }
    String text = in.substring(start, pos);
    if (integral) {
      try {
        return Long.parseLong(text);
      } catch (NumberFormatException tooBig) {
        // falls through to a double
      }
    }
    return Double.parseDouble(text);
  }

  private static boolean isDigit(char c) {
    return c >= '0' && c <= '9';
  }

  // ---------------------------------------------------------------- writing

  /**
   * Writes {@code value} as compact JSON.
   *
   * @param value a map (string keys), collection, object array, string, number, boolean or null
   * @return the JSON text
   * @throws IllegalArgumentException for a value JSON cannot hold (NaN, infinity, a non-string
   *     key, another type)
   */
  public static String write(Object value) {
    StringBuilder out = new StringBuilder();
    write(value, out, 0);
    return out.toString();
  }

  private static void write(Object value, StringBuilder out, int depth) {
    if (depth > MAX_DEPTH) throw new IllegalArgumentException("nested deeper than " + MAX_DEPTH);
    if (value == null) {
      out.append("null");
    } else if (value instanceof String || value instanceof Character) {
      quote(value.toString(), out);
    } else if (value instanceof Boolean) {
      out.append(value);
    } else if (value instanceof Double || value instanceof Float) {
      double d = ((Number) value).doubleValue();
      if (Double.isNaN(d) || Double.isInfinite(d))
        throw new IllegalArgumentException("JSON has no " + d);
      // An integral double prints as one ("2", not "2.0"): the same number to any reader.
      if (d == Math.rint(d) && Math.abs(d) < 1e15) out.append((long) d);
      else out.append(d);
    } else if (value instanceof Number) {
      // Integer, Long, Short, Byte, BigInteger, BigDecimal: their toString is valid JSON.
      String s = value.toString();
      if (s.equals("NaN") || s.contains("Infinity"))
        throw new IllegalArgumentException("JSON has no " + s);
      out.append(s);
    } else if (value instanceof Map) {
      out.append('{');
      boolean first = true;
      for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
        if (!(e.getKey() instanceof String))
          throw new IllegalArgumentException("JSON object keys must be strings, got " + e.getKey());
        if (!first) out.append(',');
        first = false;
        quote((String) e.getKey(), out);
        out.append(':');
        write(e.getValue(), out, depth + 1);
      }
      out.append('}');
    } else if (value instanceof Collection || value instanceof Object[]) {
      Collection<?> items =
          value instanceof Object[] ? Arrays.asList((Object[]) value) : (Collection<?>) value;
      out.append('[');
      boolean first = true;
      for (Object item : items) {
        if (!first) out.append(',');
        first = false;
        write(item, out, depth + 1);
      }
      out.append(']');
    } else {
      throw new IllegalArgumentException("cannot write " + value.getClass().getName() + " as JSON");
    }
  }

  private static void quote(String s, StringBuilder out) {
    out.append('"');
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"': out.append("\\\""); break;
        case '\\': out.append("\\\\"); break;
        case '\n': out.append("\\n"); break;
        case '\r': out.append("\\r"); break;
        case '\t': out.append("\\t"); break;
        case '\b': out.append("\\b"); break;
        case '\f': out.append("\\f"); break;
        default:
          // Control characters must be escaped; U+2028/2029 are, for JavaScript readers' sake,
          // and so is a lone surrogate (no UTF-8 encoding exists for it).
          if (c < 0x20 || c == '\u2028' || c == '\u2029' || loneSurrogate(s, i))
            out.append(String.format("\\u%04x", (int) c));
          else out.append(c);
      }
    }
    out.append('"');
  }

  private static boolean loneSurrogate(String s, int i) {
    char c = s.charAt(i);
    if (Character.isHighSurrogate(c))
      return i + 1 >= s.length() || !Character.isLowSurrogate(s.charAt(i + 1));
    if (Character.isLowSurrogate(c)) return i == 0 || !Character.isHighSurrogate(s.charAt(i - 1));
    return false;
  }
}
