// The client against a real `wspresence serve` (WSPRESENCE_BIN), over Node's WebSocket.
// Run: WSPRESENCE_BIN=/path/to/wspresence node --experimental-websocket --test test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AuthError, Client, TokenExpiredError, TooManyConnectionsError } from '../dist/index.js';
import { post, record, skip, sleep, startServer, streamProblems, token, waitFor } from './helpers.mjs';

// probeRecover opens a raw wspresence.v1 connection, asks to recover from `from` and
// resolves with the server's recovered frame.
function probeRecover(url, tok, from) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?Authorization=${tok}`, ['wspresence.v1']);
    ws.onopen = () => ws.send(JSON.stringify({ action: 'recover', ...from }));
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.type === 'recovered') {
        ws.close();
        resolve(f);
      }
    };
    ws.onclose = (e) => reject(new Error(`probe closed (${e.code} ${e.reason}) before the answer`));
  });
}

const fast = { backoff: { initialMs: 50, maxMs: 400 }, stableAfterMs: 2000 };

// sendWhile posts numbered messages to user one after the other (each acknowledged before
// the next) until stop() is true; it returns the acknowledged bodies and those whose
// answer was lost (the server may or may not have taken them), in order.
async function sendWhile(server, user, stop, prefix = 'm') {
  const acked = [];
  const unsure = [];
  for (let i = 1; !stop(); i++) {
    const body = `${prefix}-${i}`;
    try {
      await post(server, user, body);
      acked.push(body);
    } catch {
      unsure.push(body);
      await sleep(20);
    }
  }
  return { acked, unsure };
}

test('messages arrive in order, each at the next offset of one epoch', { skip }, async () => {
  const server = await startServer();
  const client = new Client({ url: server.url, getToken: () => token(server.secret, 'alice'), WebSocket: globalThis.WebSocket, ...fast });
  const log = record(client);
  try {
    client.connect();
    await waitFor(() => client.state === 'connected', 'connected');
    assert.deepEqual(log.recoveries.map((r) => [r.recovered, r.reason]), [[false, 'fresh']]);
    const ids = [];
    const bodies = [];
    for (let i = 1; i <= 20; i++) {
      bodies.push(`hello ${i}`);
      ids.push(await post(server, 'alice', `hello ${i}`));
    }
    await waitFor(() => log.messages.length >= 20, () => `20 messages, got ${log.messages.length}`);
    assert.deepEqual(streamProblems(log.messages, bodies), []);
    assert.deepEqual(log.messages.map((m) => m.messageId), ids);
    const start = log.recoveries[0].offset;
    assert.deepEqual(log.messages.map((m) => m.offset), bodies.map((_, i) => start + i + 1));
    assert.ok(log.messages.every((m) => m.epoch === log.recoveries[0].epoch && m.epoch !== ''));
    assert.deepEqual(client.position, { epoch: log.messages[19].epoch, offset: log.messages[19].offset });
    assert.deepEqual(log.errors, []);
  } finally {
    await client.close();
    await server.stop();
  }
});

test('server-side closes mid-stream: every message exactly once, in order', { skip }, async () => {
  // The server closes a connection silent for 600 ms (1008 "idle timeout"); the client
  // sends no pings, so it is closed again and again while messages keep coming.
  const server = await startServer({ args: ['--ping-interval', '150ms', '--idle-timeout', '600ms'] });
  const client = new Client({ url: server.url, getToken: () => token(server.secret, 'bob'), pingIntervalMs: 0, ...fast });
  const log = record(client);
  try {
    client.connect();
    await waitFor(() => client.state === 'connected', 'connected');
    const serverCloses = () => log.errors.filter((e) => e.code === 1008 && e.reason === 'idle timeout').length;
    const { acked, unsure } = await sendWhile(server, 'bob', () => serverCloses() >= 3);
    assert.deepEqual(unsure, [], 'the server took every message');
    await waitFor(() => log.messages.length >= acked.length, () => `${acked.length} messages, got ${log.messages.length}`);
    await sleep(300); // a late duplicate would show here
    assert.deepEqual(streamProblems(log.messages, acked), []);
    assert.ok(acked.length > 3, `${acked.length} messages sent across the closes`);
    assert.deepEqual(log.discontinuities, []);
    assert.ok(log.recoveries.length >= 4, `reconnected and recovered ${log.recoveries.length - 1} times`);
    assert.ok(log.recoveries.slice(1).every((r) => r.recovered), JSON.stringify(log.recoveries));
    assert.ok(log.recoveries.some((r) => r.replayed > 0), 'some messages were replayed');
    assert.ok(log.errors.every((e) => !e.fatal));
  } finally {
    await client.close();
    await server.stop();
  }
});

test('the token getter is called again before every attempt, and its new token is used', { skip }, async () => {
  const server = await startServer({ args: ['--ping-interval', '150ms', '--idle-timeout', '600ms'] });
  // First an expired token: the server closes with 4001 and only a new token gets in.
  const issued = [];
  const getToken = async () => {
    const tok = token(server.secret, 'carol', { expInSeconds: issued.length === 0 ? -120 : 3600 });
    issued.push(tok);
    return tok;
  };
  const client = new Client({ url: server.url, getToken, pingIntervalMs: 0, ...fast });
  const log = record(client);
  try {
    client.connect();
    await waitFor(() => client.state === 'connected', 'connected');
    assert.ok(log.errors[0] instanceof TokenExpiredError, `first error ${log.errors[0]?.name}`);
    assert.equal(log.errors[0].code, 4001);
    assert.equal(log.errors[0].fatal, false);
    assert.equal(issued.length, 2, 'asked again after 4001, and the new token got in');
    // Closed by the server again and again: every reconnect asks for a token.
    const serverCloses = () => log.errors.filter((e) => e.code === 1008).length;
    const { acked } = await sendWhile(server, 'carol', () => serverCloses() >= 3, 'c');
    await waitFor(() => log.messages.length >= acked.length, () => `${acked.length} messages, got ${log.messages.length}`);
    assert.deepEqual(streamProblems(log.messages, acked), []);
    const attempts = log.states.filter((s) => s === 'connecting').length;
    assert.ok(attempts >= 5, `${attempts} attempts`);
    assert.equal(issued.length, attempts, 'one token per attempt');
    assert.equal(new Set(issued).size, issued.length, 'every token is new');
    assert.equal(log.errors.filter((e) => e.code === 4001).length, 1);
  } finally {
    await client.close();
    await server.stop();
  }
});

test('a refused token stops the client: AuthError, no further attempt', { skip }, async () => {
  const server = await startServer();
  let calls = 0;
  const client = new Client({
    url: server.url,
    getToken: () => { calls++; return token('not-the-server-secret-0123456789', 'dave'); },
    backoff: { initialMs: 20, maxMs: 50 },
  });
  const log = record(client);
  try {
    client.connect();
    await waitFor(() => client.state === 'closed', 'closed');
    assert.equal(log.errors.length, 1);
    assert.ok(log.errors[0] instanceof AuthError, `${log.errors[0].name}: ${log.errors[0].message}`);
    assert.equal(log.errors[0].code, 4003);
    assert.equal(log.errors[0].refusal, 'signature');
    assert.equal(log.errors[0].fatal, true);
    await sleep(1000); // twenty times the longest backoff delay
    assert.equal(calls, 1, 'the getter was not asked again');
    assert.equal(log.errors.length, 1);
    assert.deepEqual(log.states, ['connecting', 'closed']);
  } finally {
    await client.close();
    await server.stop();
  }
});

test('too many connections stops the client: TooManyConnectionsError', { skip }, async () => {
  const server = await startServer({ args: ['--max-connections-per-user', '1'] });
  const getToken = () => token(server.secret, 'erin');
  const first = new Client({ url: server.url, getToken, ...fast });
  const second = new Client({ url: server.url, getToken, ...fast });
  const log = record(second);
  try {
    first.connect();
    await waitFor(() => first.state === 'connected', 'first connected');
    second.connect();
    await waitFor(() => second.state === 'closed', 'second closed');
    assert.ok(log.errors[0] instanceof TooManyConnectionsError, `${log.errors[0]?.name}`);
    assert.equal(log.errors[0].code, 4029);
    assert.equal(first.state, 'connected');
  } finally {
    await Promise.all([first.close(), second.close()]);
    await server.stop();
  }
});

test('a server killed (SIGKILL) and restarted on the same data dir mid-stream: the client recovers everything acknowledged', { skip }, async () => {
  let server = await startServer();
  const { dataDir, port } = server;
  const client = new Client({ url: server.url, getToken: () => token(server.secret, 'frank'), ...fast });
  const log = record(client);
  try {
    client.connect();
    await waitFor(() => client.state === 'connected', 'connected');
    let phase = 'before';
    const sending = sendWhile({ get addr() { return server.addr; }, get key() { return server.key; } }, 'frank', () => phase === 'done');
    await waitFor(() => log.messages.length >= 10, 'messages before the kill');
    await server.stop('SIGKILL');
    phase = 'down';
    await sleep(300);
    server = await startServer({ dataDir, port });
    phase = 'after';
    await waitFor(() => log.recoveries.length >= 2 && client.state === 'connected', 'reconnected');
    const seen = log.messages.length;
    await waitFor(() => log.messages.length >= seen + 10, 'messages after the restart');
    phase = 'done';
    const { acked, unsure } = await sending;
    await waitFor(() => log.messages.length >= acked.length, () => `${acked.length} messages, got ${log.messages.length}`);
    await sleep(300);
    // Every acknowledged message exactly once, in order; a message whose answer the kill
    // cut may be there too (taken, not acknowledged), in its place.
    const got = log.messages.map((m) => m.body);
    const expected = got.filter((b) => !unsure.includes(b));
    assert.deepEqual(expected, acked);
    assert.equal(new Set(got).size, got.length, 'no duplicate');
    assert.deepEqual(streamProblems(log.messages, got), []);
    assert.deepEqual(log.discontinuities, []);
    assert.ok(log.recoveries.at(-1).recovered, JSON.stringify(log.recoveries));
  } finally {
    await client.close();
    await server.stop();
  }
});

test('reconnecting outside the recovery window: one discontinuity, then live messages in order', { skip }, async () => {
  const server = await startServer({ args: ['--recovery-window', '1s'] });
  const client = new Client({ url: server.url, getToken: () => token(server.secret, 'grace'), ...fast });
  const log = record(client);
  try {
    client.connect();
    await waitFor(() => client.state === 'connected', 'connected');
    await post(server, 'grace', 'before');
    await waitFor(() => log.messages.length === 1, 'the first message');
    const before = client.position;
    await client.close();
    await post(server, 'grace', 'missed 1');
    await post(server, 'grace', 'missed 2');
    // Past the 1 s window the server forgets them (it prunes every second or so): a probe
    // connection asks with the same position until it is told they are gone.
    const probe = () => probeRecover(server.url, token(server.secret, 'grace'), before);
    await waitFor(async () => !(await probe()).recovered || (await sleep(200)), 'the window to pass');
    client.connect();
    await waitFor(() => client.state === 'connected', 'reconnected');
    assert.equal(log.discontinuities.length, 1);
    const d = log.discontinuities[0];
    assert.ok(['too_old', 'epoch_changed'].includes(d.reason), d.reason);
    assert.deepEqual(client.position, { epoch: d.epoch, offset: d.offset });
    assert.deepEqual(log.messages.map((m) => m.body), ['before'], 'nothing replayed');
    if (d.epoch === before.epoch) assert.ok(d.offset >= before.offset + 2, `top ${d.offset} after the missed messages`);
    await post(server, 'grace', 'after 1');
    await post(server, 'grace', 'after 2');
    await waitFor(() => log.messages.length === 3, 'live messages');
    assert.deepEqual(log.messages.map((m) => m.body), ['before', 'after 1', 'after 2']);
    assert.deepEqual(log.messages.slice(1).map((m) => m.offset), [d.offset + 1, d.offset + 2]);
    assert.equal(log.discontinuities.length, 1, 'told once');
  } finally {
    await client.close();
    await server.stop();
  }
});
