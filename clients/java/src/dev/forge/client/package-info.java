/**
 * A Java client of forge's {@code serve} (the OpenAI-compatible inference server) on the JDK
 * alone: {@link dev.forge.client.ForgeClient} for completions and chat over HTTP, server-sent
 * events and serve's WebSocket, {@link dev.forge.client.Json} for the JSON, the
 * {@link dev.forge.client.ApiException} family for the server's errors, and
 * {@link dev.forge.client.Main}, a small command line.
 *
 * <p>Build and run without a build tool:
 *
 * <pre>
 * javac -d classes clients/java/src/dev/forge/client/*.java
 * java -cp classes dev.forge.client.Main --url http://127.0.0.1:8080 --prompt "we" --stream
 * </pre>
 *
 * <p>tests/cli_java_client.sh checks it against a live server.
 */
package dev.forge.client;
