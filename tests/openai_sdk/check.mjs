// `serve` through the official OpenAI Node SDK (openai@6), a client written by nobody here: the
// SDK's own request building, SSE parsing, stream accumulation and error classes must all accept
// what the server sends.
// Usage: BASE_URL=http://127.0.0.1:PORT/v1 API_KEY=KEY MODEL=NAME node check.mjs
// (run from a directory whose node_modules holds openai: ESM imports ignore NODE_PATH). The model
// is a tiny character-level GPT, so every prompt uses letters of cli_lib.sh's test corpus, and the
// server runs with cli_openai_sdk.sh's chat template ("T: ", "C: ", "A:"). Prints one line per
// check; exits 1 on any failure.
import OpenAI from "openai";

const { BASE_URL, API_KEY, MODEL } = process.env;
if (!BASE_URL || !API_KEY || !MODEL) {
  console.error("check.mjs: BASE_URL, API_KEY and MODEL must be set");
  process.exit(2);
}
// Every call fails within 30 s instead of hanging, and is made once: a retry would hide a failure.
const options = { baseURL: BASE_URL, timeout: 30_000, maxRetries: 0 };
const client = new OpenAI({ ...options, apiKey: API_KEY });

let failures = 0;
// check NAME FN: runs FN (async); it throws to fail. One line each, with why on a failure.
async function check(name, fn) {
  try {
    const detail = await fn();
    console.log(`ok   ${name}${detail ? `: ${detail}` : ""}`);
  } catch (e) {
    failures++;
    const body = e instanceof OpenAI.APIError ? ` (status ${e.status}, error ${JSON.stringify(e.error)})` : "";
    console.log(`FAIL ${name}: ${e?.constructor?.name}: ${e?.message}${body}`);
  }
}
function expect(ok, why) {
  if (!ok) throw new Error(why);
}
const json = (x) => JSON.stringify(x);

await check("models.list lists the model", async () => {
  const page = await client.models.list();
  const ids = [];
  for await (const m of page) ids.push(m.id);  // the SDK's pager: must end after one page
  expect(ids.includes(MODEL), `ids ${json(ids)} lack ${MODEL}`);
  const m = page.data.find((x) => x.id === MODEL);
  expect(m.object === "model" && Number.isInteger(m.created) && typeof m.owned_by === "string",
    `model entry ${json(m)}`);
  return json(ids);
});

await check("models.retrieve gives the model", async () => {
  const m = await client.models.retrieve(MODEL);
  expect(m.id === MODEL && m.object === "model", `model ${json(m)}`);
  return json(m.id);
});

// Sampled with a seed: the same seed and temperature give the same text, streamed or not.
const sampled = { model: MODEL, prompt: "The", max_tokens: 24, temperature: 0.8, seed: 11 };
let plainText = null;
await check("completions.create: text, usage, finish_reason", async () => {
  const r = await client.completions.create(sampled);
  expect(r.object === "text_completion" && r.id.startsWith("cmpl-") && r.model === MODEL, `header ${json({ ...r, choices: undefined })}`);
  expect(r.choices.length === 1 && r.choices[0].index === 0, `choices ${json(r.choices)}`);
  const c = r.choices[0];
  expect(typeof c.text === "string" && c.text.length === 24, `text ${json(c.text)}: expected 24 characters`);
  expect(c.finish_reason === "length", `finish_reason ${c.finish_reason}`);
  expect(r.usage && r.usage.prompt_tokens === 3 && r.usage.completion_tokens === 24 && r.usage.total_tokens === 27,
    `usage ${json(r.usage)}: expected 3 + 24 = 27`);
  plainText = c.text;
  return json(c.text);
});

await check("completions.create stream: chunks add up to the plain text", async () => {
  expect(plainText !== null, "no plain text to compare (its check failed)");
  const stream = await client.completions.create({ ...sampled, stream: true, stream_options: { include_usage: true } });
  let text = "", chunks = 0, finish = null, usage = null;
  for await (const chunk of stream) {
    chunks++;
    expect(chunk.object === "text_completion" && chunk.model === MODEL, `chunk ${json(chunk)}`);
    for (const c of chunk.choices) {
      expect(c.index === 0, `choice index ${c.index}`);
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  expect(text === plainText, `streamed ${json(text)}, plain ${json(plainText)}`);
  expect(finish === "length", `finish_reason ${finish}`);
  expect(usage && usage.completion_tokens === 24 && usage.total_tokens === 27, `usage ${json(usage)}`);
  return `${chunks} chunks, ${json(text)}`;
});

// Chat: through the server's --chat-template the prompt is "T: we\nC: all\nA:".
const chat = {
  model: MODEL, max_tokens: 12, temperature: 0.8, seed: 7, stop: [],
  messages: [{ role: "system", content: "we" }, { role: "user", content: "all" }],
};
let chatText = null;
await check("chat.completions.create: message, finish_reason, usage", async () => {
  const r = await client.chat.completions.create(chat);
  expect(r.object === "chat.completion" && r.id.startsWith("chatcmpl-"), `header ${json({ ...r, choices: undefined })}`);
  const c = r.choices[0];
  expect(c.message.role === "assistant" && c.message.content.length === 12, `message ${json(c.message)}`);
  expect(c.finish_reason === "length", `finish_reason ${c.finish_reason}`);
  expect(r.usage.completion_tokens === 12, `usage ${json(r.usage)}`);
  chatText = c.message.content;
  return json(chatText);
});

await check("chat.completions.create stream: deltas add up to the plain content", async () => {
  expect(chatText !== null, "no plain content to compare (its check failed)");
  const stream = await client.chat.completions.create({ ...chat, stream: true });
  let content = "", role = null, finish = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    expect(chunk.object === "chat.completion.chunk" && chunk.id.startsWith("chatcmpl-"), `chunk ${json(chunk)}`);
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      content += c.delta.content ?? "";
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  expect(role === "assistant", `role ${role}`);
  expect(finish === "length", `finish_reason ${finish}`);
  expect(content === chatText, `streamed ${json(content)}, plain ${json(chatText)}`);
  return `${chunks} chunks, ${json(content)}`;
});

// The SDK's own accumulator checks each choice has a role and a finish_reason at the end.
await check("chat.completions.stream (the SDK's accumulator): finalChatCompletion, n 2", async () => {
  expect(chatText !== null, "no plain content to compare (its check failed)");
  const stream = client.chat.completions.stream({ ...chat, n: 2, stream_options: { include_usage: true } });
  const r = await stream.finalChatCompletion();
  expect(r.choices.length === 2, `${r.choices.length} choices`);
  expect(r.choices[0].message.content === chatText, `choice 0 ${json(r.choices[0].message.content)}, plain ${json(chatText)}`);
  expect(r.choices.every((c) => c.finish_reason === "length" && c.message.role === "assistant"), `choices ${json(r.choices)}`);
  expect(r.usage && r.usage.completion_tokens === 24, `usage ${json(r.usage)}`);
  return json(r.choices.map((c) => c.message.content));
});

// expectError NAME CLASS STATUS CALL [PARAM]: CALL is refused as CLASS with STATUS (and PARAM).
async function expectError(name, cls, status, call, param) {
  await check(name, async () => {
    let err = null;
    try {
      await call();
    } catch (e) {
      err = e;
    }
    expect(err !== null, "the call succeeded");
    expect(err instanceof cls, `${err.constructor.name} (${err.message}), expected ${cls.name}`);
    expect(err.status === status, `status ${err.status}, expected ${status}`);
    if (param !== undefined) expect(err.param === param, `param ${json(err.param)}, expected ${json(param)}`);
    return `${err.constructor.name} ${err.status}${param ? ` param ${err.param}` : ""}: ${err.message}`;
  });
}
await expectError("temperature 5 -> BadRequestError", OpenAI.BadRequestError, 400,
  () => client.completions.create({ ...sampled, temperature: 5 }), "temperature");
await expectError("chat top_logprobs 9 -> BadRequestError", OpenAI.BadRequestError, 400,
  () => client.chat.completions.create({ ...chat, logprobs: true, top_logprobs: 9 }), "top_logprobs");
await expectError("streamed temperature 5 -> BadRequestError before any chunk", OpenAI.BadRequestError, 400,
  async () => { for await (const _ of await client.completions.create({ ...sampled, temperature: 5, stream: true })); },
  "temperature");
await expectError("an unknown model -> NotFoundError", OpenAI.NotFoundError, 404,
  () => client.completions.create({ ...sampled, model: "no-such-model" }));
await expectError("models.retrieve of an unknown model -> NotFoundError", OpenAI.NotFoundError, 404,
  () => client.models.retrieve("no-such-model"));
const wrong = new OpenAI({ ...options, apiKey: "sk-wrong-key" });
await expectError("a wrong key -> AuthenticationError", OpenAI.AuthenticationError, 401,
  () => wrong.models.list());
await expectError("a wrong key, completions -> AuthenticationError", OpenAI.AuthenticationError, 401,
  () => wrong.completions.create(sampled));

// After the errors the server still answers, and the same.
await check("completions.create after the errors: the same text", async () => {
  const r = await client.completions.create(sampled);
  expect(r.choices[0].text === plainText, `${json(r.choices[0].text)}, before ${json(plainText)}`);
});

console.log(failures === 0 ? "openai sdk: all checks passed" : `openai sdk: ${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
