package dev.forge.client;

import java.io.PrintStream;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A command-line completion against {@code serve}, printing the text (as its tokens arrive with
 * {@code --stream} or {@code --ws}) and a newline:
 *
 * <pre>
 * java -cp classes dev.forge.client.Main --url http://127.0.0.1:8080 --api-key KEY \
 *     --model tiny --prompt "we" --max-tokens 32 --temperature 1 --seed 7 --stream
 * </pre>
 *
 * <p>Options: {@code --url} (default http://127.0.0.1:8080), {@code --api-key} (default
 * {@code $FORGE_API_KEY}), {@code --model} (default: the server's first model), {@code --prompt}
 * (required), {@code --max-tokens} (default 64), {@code --temperature}, {@code --seed},
 * {@code --stream} (server-sent events), {@code --ws} (WebSocket). Exit status: 0, 1 on an error
 * (printed on stderr), 2 on a usage error.
 */
public final class Main {
  private Main() {}

  /**
   * Runs the command line and exits with its status.
   *
   * @param args the options
   */
  public static void main(String[] args) {
    System.exit(run(args, System.out, System.err));
  }

  /**
   * Runs the command line.
   *
   * @param args the options
   * @param out where the text goes
   * @param err where errors and usage go
   * @return the exit status: 0, 1 on an error, 2 on a usage error
   */
  public static int run(String[] args, PrintStream out, PrintStream err) {
    String url = "http://127.0.0.1:8080";
    String apiKey = System.getenv("FORGE_API_KEY");
    String model = null;
    String prompt = null;
    long maxTokens = 64;
    Double temperature = null;
    Long seed = null;
    boolean stream = false;
    boolean ws = false;
    try {
      for (int i = 0; i < args.length; i++) {
        String a = args[i];
        switch (a) {
          case "--url": url = value(args, ++i, a); break;
          case "--api-key": apiKey = value(args, ++i, a); break;
          case "--model": model = value(args, ++i, a); break;
          case "--prompt": prompt = value(args, ++i, a); break;
          case "--max-tokens": maxTokens = Long.parseLong(value(args, ++i, a)); break;
          case "--temperature": temperature = Double.parseDouble(value(args, ++i, a)); break;
          case "--seed": seed = Long.parseLong(value(args, ++i, a)); break;
          case "--stream": stream = true; break;
          case "--ws": ws = true; break;
          case "-h":
          case "--help":
            usage(out);
            return 0;
          default:
            throw new IllegalArgumentException("unknown option " + a);
        }
      }
      if (prompt == null) throw new IllegalArgumentException("--prompt is required");
      if (stream && ws) throw new IllegalArgumentException("--stream and --ws exclude each other");
    } catch (IllegalArgumentException e) { // NumberFormatException included
      err.println("error: " + e.getMessage());
      usage(err);
      return 2;
    }

    try {
      ForgeClient client = ForgeClient.builder(url).apiKey(apiKey).maxRetries(3).build();
      if (model == null) {
        List<Map<String, Object>> models = client.models();
        if (models.isEmpty()) throw new IllegalStateException("the server lists no model");
        model = String.valueOf(models.get(0).get("id"));
      }
      Map<String, Object> request = new LinkedHashMap<>();
      request.put("model", model);
      request.put("prompt", prompt);
      request.put("max_tokens", maxTokens);
      if (temperature != null) request.put("temperature", temperature);
      if (seed != null) request.put("seed", seed);
      String finish;
      if (stream || ws) {
        Completion c;
        if (stream) {
          c = client.stream(request, t -> printFlushed(out, t));
        } else {
          StreamHandle h = client.streamWs(request, t -> printFlushed(out, t));
          // The socket's read timeout bounds each wait; this bounds the whole (an hour).
          c = h.await(Duration.ofHours(1));
        }
        finish = c.finishReason();
      } else {
        Map<String, Object> r = client.complete(request);
        Object text = Json.get(r, "choices", 0, "text");
        out.print(text == null ? "" : text);
        finish = String.valueOf(Json.get(r, "choices", 0, "finish_reason"));
      }
      out.println();
      out.flush();
      err.println("finish_reason: " + finish);
      return 0;
    } catch (ApiException e) {
      err.println("error: " + e);
      return 1;
    } catch (RuntimeException e) {
      err.println("error: " + e.getMessage());
      return 1;
    }
  }

  private static synchronized void printFlushed(PrintStream out, String text) {
    out.print(text);
    out.flush();
  }

  private static String value(String[] args, int i, String option) {
    if (i >= args.length) throw new IllegalArgumentException(option + " needs a value");
    return args[i];
  }

  private static void usage(PrintStream s) {
    s.println("usage: java dev.forge.client.Main --prompt TEXT [--url URL] [--api-key KEY]"
        + " [--model NAME] [--max-tokens N] [--temperature T] [--seed S] [--stream | --ws]");
  }
}
