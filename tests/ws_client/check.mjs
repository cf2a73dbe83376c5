// serve's WebSocket channel (GET /v1/stream) driven by the npm `ws` package, a client nobody here
// wrote. Env: BASE (http://127.0.0.1:PORT), API_KEY, MODEL. Every wait is bounded (10 s).
// Checks: a bad token refused at the upgrade with 401 (header and ?access_token=); two requests
// interleaved on one socket, each equal to the same seeded request over HTTP; logprobs; chat; a
// cancel mid-stream answered "cancelled" with the slot freed; refused messages answered with
// OpenAI's error object and the param while the socket stays open; an unreadable message closing
// the socket with 1007; the metrics counting the ws transport.
import WebSocket from 'ws';

const base = process.env.BASE, key = process.env.API_KEY, model = process.env.MODEL;
const wsBase = base.replace(/^http/, 'ws') + '/v1/stream';
let failures = 0;
function check(what, ok, detail = '') {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${ok || !detail ? '' : ': ' + detail}`);
  if (!ok) failures++;
}
const auth = { Authorization: `Bearer ${key}` };

function withTimeout(promise, what, ms = 10000) {
  let timer;
  return Promise.race([promise, new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms);
  })]).finally(() => clearTimeout(timer));
}

// Opens a socket; resolves to it, or rejects with the HTTP status of a refused upgrade.
function open(url, headers = {}) {
  return withTimeout(new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.on('open', () => resolve(ws));
    ws.on('unexpected-response', (req, res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => reject(Object.assign(new Error(`HTTP ${res.statusCode}`),
        { status: res.statusCode, body })));
    });
    ws.on('error', reject);
  }), `open ${url}`);
}

// Collects the messages of one socket by id; `until(id)` resolves once that id has ended (all its
// choices "done", or an "error").
class Inbox {
  constructor(ws) {
    this.ws = ws;
    this.byId = new Map();
    this.order = [];  // ids in arrival order, one entry per message
    this.waiters = [];
    this.closed = null;
    ws.on('message', (data) => {
      const m = JSON.parse(data.toString());
      const id = m.id === null ? '(null)' : m.id;
      if (!this.byId.has(id)) this.byId.set(id, []);
      this.byId.get(id).push(m);
      this.order.push(id);
      this.wake();
    });
    ws.on('close', (code) => { this.closed = code; this.wake(); });
  }
  wake() { for (const w of this.waiters.splice(0)) w(); }
  wait(pred, what) {
    return withTimeout(new Promise((resolve) => {
      const test = () => (pred() ? resolve() : this.waiters.push(test));
      test();
    }), what);
  }
  messages(id) { return this.byId.get(id) || []; }
  until(id, choices = 1) {
    return this.wait(() => this.messages(id).filter((m) => m.type === 'done').length >= choices ||
      this.messages(id).some((m) => m.type === 'error'), `request ${id}`);
  }
  text(id, index = 0) {
    return this.messages(id).filter((m) => m.type === 'token' && m.index === index)
      .map((m) => m.text).join('');
  }
  done(id, index = 0) {
    return this.messages(id).find((m) => m.type === 'done' && m.index === index);
  }
}

async function http(path, body) {
  const res = await fetch(base + path, {
    method: body ? 'POST' : 'GET',
    headers: { ...auth, 'Content-Type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(10000),
  });
  return { status: res.status, text: await res.text() };
}

async function metric(name) {
  const { text } = await http('/metrics');
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line ? Number(line.split(' ')[1]) : 0;
}

async function main() {
  // ---- Refused at the upgrade ----
  for (const [what, url, headers] of [
    ['no token', wsBase, {}],
    ['a wrong Bearer token', wsBase, { Authorization: 'Bearer sk-wrong' }],
    ['a wrong ?access_token=', wsBase + '?access_token=sk-wrong', {}]]) {
    try {
      const ws = await open(url, headers);
      ws.terminate();
      check(`${what}: refused at the upgrade`, false, 'the socket opened');
    } catch (e) {
      check(`${what}: refused at the upgrade with 401`, e.status === 401, e.message);
      if (e.status === 401) check(`${what}: OpenAI's error object`,
        JSON.parse(e.body).error?.code === 'invalid_api_key' ||
        typeof JSON.parse(e.body).error?.message === 'string', e.body);
    }
  }
  // A plain GET (no upgrade) is 426.
  const plain = await http('/v1/stream');
  check('GET /v1/stream without an upgrade: 426', plain.status === 426, `${plain.status} ${plain.text}`);

  // ---- Two interleaved requests, each the same as over HTTP ----
  const ws = await open(wsBase, auth);
  const inbox = new Inbox(ws);
  const reqA = { model, prompt: 'we', max_tokens: 3000, temperature: 1, seed: 11 };
  const reqB = { model, prompt: 'all', max_tokens: 40, temperature: 1, seed: 12, logprobs: 2 };
  ws.send(JSON.stringify({ type: 'completion', id: 'a', ...reqA }));
  ws.send(JSON.stringify({ type: 'completion', id: 'b', ...reqB }));
  await inbox.until('a');
  await inbox.until('b');
  const wantA = JSON.parse((await http('/v1/completions', reqA)).text).choices[0].text;
  const wantB = JSON.parse((await http('/v1/completions', reqB)).text).choices[0].text;
  check('request a: the HTTP text for the same seed', inbox.text('a') === wantA,
    `${JSON.stringify(inbox.text('a'))} vs ${JSON.stringify(wantA)}`);
  check('request b: the HTTP text for the same seed', inbox.text('b') === wantB,
    `${JSON.stringify(inbox.text('b'))} vs ${JSON.stringify(wantB)}`);
  const doneA = inbox.done('a');
  check('request a: done, "length", usage adding up',
    doneA?.finish_reason === 'length' && doneA.usage.completion_tokens === 3000 &&
    doneA.usage.prompt_tokens === 2 && doneA.usage.total_tokens === 3002, JSON.stringify(doneA));
  const tokensA = inbox.messages('a').filter((m) => m.type === 'token');
  check('request a: one token message per token, with token_id',
    tokensA.length === 3000 && tokensA.every((m) => Number.isInteger(m.token_id)));
  const tokensB = inbox.messages('b').filter((m) => m.type === 'token');
  check('request b: logprob and 2 top_logprobs per token', tokensB.length === 40 &&
    tokensB.every((m) => m.logprob <= 0 && m.top_logprobs?.length === 2 &&
      m.top_logprobs[0].logprob >= m.top_logprobs[1].logprob));
  // Interleaved: b (40 tokens) ran while a (3000) did, so all of b's messages arrived before a's
  // done (the server sends the requests' events in turn, not one request's backlog first). Only
  // a machine so busy that the socket's thread stalled for a's whole generation (thousands of
  // steps) between the two messages could start b after a ended: that is reported, not failed.
  const firstB = inbox.order.indexOf('b'), lastB = inbox.order.lastIndexOf('b');
  const doneAt = inbox.order.lastIndexOf('a');
  if (firstB > doneAt) {
    console.log(`note the server read b only after a ended (b first at ${firstB}, a done at ` +
      `${doneAt}): interleaving not observed`);
  } else {
    check('the two requests were interleaved on the socket: b ended before a', lastB < doneAt,
      `b first at ${firstB}, last at ${lastB}, a done at ${doneAt}`);
  }

  // ---- Chat ----
  ws.send(JSON.stringify({ type: 'chat', id: 'chat', model, max_tokens: 8, temperature: 0,
    messages: [{ role: 'user', content: 'we' }] }));
  await inbox.until('chat');
  check('chat over the socket: done with usage', inbox.done('chat')?.usage?.completion_tokens >= 1,
    JSON.stringify(inbox.messages('chat').slice(-1)));

  // ---- Refused messages: the error object, the socket stays open ----
  const refusals = [
    ['no type', { id: 'x1', prompt: 'we' }, 'type', 400],
    ['an unknown type', { type: 'embed', id: 'x2' }, 'type', 400],
    ['no id', { type: 'completion', model, prompt: 'we' }, 'id', 400],
    ['a bad temperature', { type: 'completion', id: 'x3', model, prompt: 'we', temperature: 9 },
      'temperature', 400],
    ['an unknown model', { type: 'completion', id: 'x4', model: 'nope', prompt: 'we' }, 'model', 404],
    ['cancel of an unknown id', { type: 'cancel', id: 'x5' }, 'id', 404],
  ];
  for (const [what, msg, param] of refusals) {
    ws.send(JSON.stringify(msg));
    const id = msg.id ?? '(null)';
    await inbox.wait(() => inbox.messages(id).some((m) => m.type === 'error'), what);
    const err = inbox.messages(id).find((m) => m.type === 'error');
    check(`${what}: an error naming ${param}`, err?.error?.param === param &&
      typeof err.error.message === 'string' && err.error.type !== undefined, JSON.stringify(err));
    inbox.byId.delete(id);
  }
  // A duplicate id while the first runs.
  ws.send(JSON.stringify({ type: 'completion', id: 'dup', model, prompt: 'we', max_tokens: 100000 }));
  ws.send(JSON.stringify({ type: 'completion', id: 'dup', model, prompt: 'we', max_tokens: 3 }));
  await inbox.wait(() => inbox.messages('dup').some((m) => m.type === 'error'), 'duplicate id');
  check('a duplicate id in flight: refused naming id',
    inbox.messages('dup').find((m) => m.type === 'error')?.error?.param === 'id');
  inbox.byId.set('dup', inbox.messages('dup').filter((m) => m.type !== 'error'));

  // ---- Cancel mid-stream: "cancelled", the slot freed ----
  await inbox.wait(() => inbox.messages('dup').filter((m) => m.type === 'token').length >= 3,
    'tokens of the long request');
  ws.send(JSON.stringify({ type: 'cancel', id: 'dup' }));
  await inbox.until('dup');
  const cancelled = inbox.done('dup');
  check('cancel: done with finish_reason "cancelled"', cancelled?.finish_reason === 'cancelled',
    JSON.stringify(inbox.messages('dup').slice(-2)));
  check('cancel: well before max_tokens', cancelled?.usage?.completion_tokens < 100000);
  let active = -1;
  for (let i = 0; i < 50 && active !== 0; i++) {
    active = await metric('forge_active_slots');
    if (active !== 0) await new Promise((r) => setTimeout(r, 100));
  }
  check('cancel: no active slot left', active === 0, `forge_active_slots ${active}`);
  check('the socket is still open after every refusal', inbox.closed === null);

  // ---- A socket closed mid-generation frees its slot ----
  ws.send(JSON.stringify({ type: 'completion', id: 'left', model, prompt: 'we', max_tokens: 100000 }));
  await inbox.wait(() => inbox.messages('left').filter((m) => m.type === 'token').length >= 2,
    'tokens before closing');
  ws.terminate();
  active = -1;
  for (let i = 0; i < 50 && active !== 0; i++) {
    active = await metric('forge_active_slots');
    if (active !== 0) await new Promise((r) => setTimeout(r, 100));
  }
  check('a socket closed mid-generation: its slot freed', active === 0, `forge_active_slots ${active}`);

  // ---- A client that stops reading: its events wait (the server's queue, then the engine, which
  // pauses the request), and once a write stalls past --write-timeout (2 s in cli_ws.sh) it is
  // closed and its slot freed ----
  {
    const slow = await open(wsBase, auth);
    const slowInbox = new Inbox(slow);
    // With 5 top logprobs a token message is ~600 bytes: 100000 of them outgrow the kernel's
    // buffers and the server's 1 MiB queue (cli_ws.sh's --ws-queue-limit) by far.
    slow.send(JSON.stringify({ type: 'completion', id: 'slow', model, prompt: 'we',
      max_tokens: 100000, logprobs: 5 }));
    await slowInbox.wait(() => slowInbox.messages('slow').length >= 1, 'the first token');
    slow._socket.pause();  // reads nothing more: the kernel's buffers fill, then the server's queue
    let activeNow = -1, paused = 0;
    for (let i = 0; i < 100 && activeNow !== 0; i++) {
      paused = Math.max(paused, await metric('forge_paused_requests'));
      await new Promise((r) => setTimeout(r, 100));
      activeNow = await metric('forge_active_slots');
    }
    check('a client that stops reading: closed, its slot freed', activeNow === 0,
      `forge_active_slots ${activeNow}`);
    console.log(`note the request was seen paused by the engine: ${paused === 1}`);
    slow.terminate();
  }

  // ---- ?access_token= works; an unreadable message closes with 1007 ----
  const ws2 = await open(`${wsBase}?access_token=${encodeURIComponent(key)}`);
  const inbox2 = new Inbox(ws2);
  ws2.send('this is not JSON');
  await inbox2.wait(() => inbox2.closed !== null, 'close after an unreadable message');
  const err = inbox2.messages('(null)').find((m) => m.type === 'error');
  check('?access_token=: accepted; an unreadable message: an error with id null, then close 1007',
    err?.error?.message !== undefined && inbox2.closed === 1007, `close ${inbox2.closed}`);

  // ---- Metrics by transport ----
  const { text } = await http('/metrics');
  const count = (name) => {
    const line = text.split('\n').find((l) => l.startsWith(name + ' '));
    return line ? Number(line.split(' ')[1]) : 0;
  };
  check('metrics: ws requests counted', count(
    'forge_requests_total{endpoint="/v1/stream",status="200",transport="ws"}') >= 4);
  check('metrics: ws refusals counted', count(
    'forge_requests_total{endpoint="/v1/stream",status="400",transport="ws"}') >= 4);
  check('metrics: ws tokens counted', count('forge_generated_tokens_total{transport="ws"}') >= 3040);
}

main().then(() => {
  console.log(failures ? `ws client: ${failures} check(s) failed` : 'ws client: all checks passed');
  process.exit(failures ? 1 : 0);
}, (e) => {
  console.log(`FAIL ${e.stack || e}`);
  process.exit(1);
});
