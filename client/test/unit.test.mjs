// Unit tests of the backoff, the state machine, recovery and the close-code translation,
// against a scripted WebSocket and Node's mocked timers (no network, no wall clock).
// Run after the build: node --test test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff } from '../dist/backoff.js';
import {
  AuthError, Client, ConnectionError, MessageTooBigError, ProtocolError, RateLimitedError,
  TokenError, TokenExpiredError, TooManyConnectionsError, UnavailableError,
} from '../dist/index.js';

// A WebSocket whose server side the test plays: open(), receive(), serverClose().
function fakeWebSockets() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = new URL(url);
      this.protocols = protocols;
      this.readyState = 0;
      this.protocol = '';
      this.sent = [];
      this.closedWith = undefined;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(JSON.parse(data));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 2;
      queueMicrotask(() => this.serverClose(code ?? 1005, ''));
    }
    // The server's side.
    open(protocol = 'wspresence.v1') {
      this.readyState = 1;
      this.protocol = protocol;
      this.onopen?.({});
    }
    receive(frame) {
      this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
    }
    serverClose(code, reason = '') {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { FakeWebSocket, sockets, last: () => sockets[sockets.length - 1] };
}

// flush lets the client's awaits (the token getter) run; setImmediate is not mocked.
const flush = () => new Promise((resolve) => setImmediate(resolve));

// setup makes a client on fake sockets, with every event recorded in order.
const mocked = new WeakSet();
function setup(t, options = {}) {
  if (!mocked.has(t)) {
    t.mock.timers.enable({ apis: ['setTimeout', 'setInterval'] });
    mocked.add(t);
  }
  const ws = fakeWebSockets();
  const tokens = [];
  const log = { states: [], messages: [], errors: [], discontinuities: [], recoveries: [], all: [] };
  const client = new Client({
    url: 'ws://server.test/',
    getToken: () => { const tok = `tok-${tokens.length + 1}`; tokens.push(tok); return tok; },
    WebSocket: ws.FakeWebSocket,
    ...options,
  });
  client.on('state', (s) => { log.states.push(s); log.all.push(`state:${s}`); });
  client.on('message', (m) => { log.messages.push(m); log.all.push(`message:${m.epoch}/${m.offset}`); });
  client.on('error', (e) => { log.errors.push(e); log.all.push(`error:${e.name}`); });
  client.on('discontinuity', (d) => { log.discontinuities.push(d); log.all.push(`discontinuity:${d.reason}`); });
  client.on('recovered', (r) => { log.recoveries.push(r); log.all.push(`recovered:${r.recovered}`); });
  return { client, ws, tokens, log };
}

// connectTo drives one connection attempt to `connected`, answering recover with answer.
async function connectTo(sock, answer) {
  sock.open();
  sock.receive({ type: 'recovered', ...answer });
}

const message = (epoch, offset) => ({ type: 'message', epoch, offset, messageId: `m-${epoch}-${offset}`, body: `body ${epoch}/${offset}` });

test('backoff: the n-th delay is drawn in [0, min(max, initial*2^n)), then resets', () => {
  const top = new Backoff({ initialMs: 100, maxMs: 1000 }, () => 0.999999);
  assert.deepEqual([0, 1, 2, 3, 4, 5].map(() => top.next()), [99, 199, 399, 799, 999, 999]);
  assert.equal(top.attempt, 6);
  top.reset();
  assert.equal(top.next(), 99, 'reset starts from the first delay again');
  const bottom = new Backoff({ initialMs: 100, maxMs: 1000 }, () => 0);
  assert.deepEqual([0, 1, 2].map(() => bottom.next()), [0, 0, 0], 'full jitter reaches down to zero');

  // With the real random source: always within the ceiling, and spread over it.
  const real = new Backoff({ initialMs: 500, maxMs: 20_000 });
  for (let i = 0; i < 200; i++) real.next();
  const draws = [];
  for (let i = 0; i < 2000; i++) {
    const d = real.next();
    assert.ok(Number.isInteger(d) && d >= 0 && d < 20_000, `delay ${d} within [0, 20000)`);
    draws.push(d);
  }
  assert.ok(draws.some((d) => d < 5_000) && draws.some((d) => d >= 15_000), 'draws spread over the whole interval');
  assert.equal(new Backoff({ initialMs: 1, maxMs: 2 ** 40 }).ceiling(), 1);
  const big = new Backoff({ initialMs: 1, maxMs: 2 ** 40 });
  for (let i = 0; i < 100; i++) big.next();
  assert.equal(big.ceiling(), 2 ** 31, 'the doubling stops before it overflows');
  assert.throws(() => new Backoff({ initialMs: 0 }), RangeError);
  assert.throws(() => new Backoff({ initialMs: 1000, maxMs: 10 }), RangeError);
});

test('connects with the token and the subprotocol, sends recover first, then is connected', async (t) => {
  const { client, ws, tokens, log } = setup(t);
  assert.equal(client.state, 'closed');
  client.connect();
  assert.equal(client.state, 'connecting');
  await flush();
  const sock = ws.last();
  assert.equal(sock.url.searchParams.get('Authorization'), 'tok-1');
  assert.deepEqual(sock.protocols, ['wspresence.v1']);
  sock.open();
  assert.deepEqual(sock.sent, [{ action: 'recover' }]);
  assert.equal(client.state, 'connecting', 'not connected until recover is answered');
  sock.receive({ type: 'recovered', recovered: false, reason: 'fresh', epoch: 'E', offset: 4, replayed: 0 });
  assert.equal(client.state, 'connected');
  assert.deepEqual(client.position, { epoch: 'E', offset: 4 });
  assert.deepEqual(log.discontinuities, [], 'a fresh start is not a discontinuity');
  assert.deepEqual(tokens, ['tok-1']);
  client.connect();
  assert.equal(ws.sockets.length, 1, 'connect() while connected does nothing');
});

test('http URLs become ws, and the URL keeps its own query', async (t) => {
  const { client, ws } = setup(t, { url: 'https://example.test/path?x=1' });
  client.connect();
  await flush();
  assert.equal(ws.last().url.protocol, 'wss:');
  assert.equal(ws.last().url.pathname, '/path');
  assert.equal(ws.last().url.searchParams.get('x'), '1');
  assert.equal(ws.last().url.searchParams.get('Authorization'), 'tok-1');
});

test('messages are emitted in order, once: duplicates are dropped by offset', async (t) => {
  const { client, ws, log } = setup(t);
  client.connect();
  await flush();
  await connectTo(ws.last(), { recovered: false, reason: 'fresh', epoch: 'E', offset: 0, replayed: 0 });
  for (const off of [1, 2, 2, 1, 3]) ws.last().receive(message('E', off));
  assert.deepEqual(log.messages.map((m) => m.offset), [1, 2, 3]);
  assert.deepEqual(log.messages[0], { body: 'body E/1', epoch: 'E', offset: 1, messageId: 'm-E-1' });
  assert.deepEqual(client.position, { epoch: 'E', offset: 3 });
  // A live message of a new epoch (the stream was dropped while idle) is taken, not dropped.
  ws.last().receive(message('F', 1));
  assert.deepEqual(client.position, { epoch: 'F', offset: 1 });
  assert.equal(log.messages.length, 4);
});

test('a message ahead of the next offset is not emitted: the client recovers from its position, in order', async (t) => {
  t.mock.method(Math, 'random', () => 0);
  const { client, ws, log } = setup(t);
  client.connect();
  await flush();
  await connectTo(ws.last(), { recovered: false, reason: 'fresh', epoch: 'E', offset: 0, replayed: 0 });
  ws.last().receive(message('E', 1));
  ws.last().receive(message('E', 3)); // 2 is still on its way (two deliveries crossed)
  assert.deepEqual(log.messages.map((m) => m.offset), [1]);
  assert.equal(client.state, 'disconnected');
  assert.ok(log.errors[0] instanceof ConnectionError && !log.errors[0].fatal);
  assert.deepEqual(client.position, { epoch: 'E', offset: 1 });
  t.mock.timers.tick(0);
  await flush();
  assert.equal(ws.sockets.length, 2);
  const second = ws.last();
  second.open();
  assert.deepEqual(second.sent, [{ action: 'recover', epoch: 'E', offset: 1 }]);
  second.receive(message('E', 2));
  second.receive(message('E', 3));
  second.receive({ type: 'recovered', recovered: true, epoch: 'E', offset: 3, replayed: 2 });
  assert.deepEqual(log.messages.map((m) => m.offset), [1, 2, 3]);
  assert.deepEqual(log.discontinuities, []);
  assert.equal(client.state, 'connected');
});

test('a dropped connection reconnects after a jittered delay with a fresh token and recovers from its position', async (t) => {
  t.mock.method(Math, 'random', () => 0.5);
  const { client, ws, tokens, log } = setup(t, { backoff: { initialMs: 1000, maxMs: 8000 } });
  client.connect();
  await flush();
  await connectTo(ws.last(), { recovered: false, reason: 'fresh', epoch: 'E', offset: 0, replayed: 0 });
  ws.last().receive(message('E', 1));
  ws.last().receive(message('E', 2));
  ws.last().serverClose(1006, '');
  assert.equal(client.state, 'disconnected');
  assert.ok(log.errors[0] instanceof ConnectionError);
  assert.equal(log.errors[0].fatal, false);
  assert.equal(log.errors[0].code, 1006);

  t.mock.timers.tick(499);
  await flush();
  assert.equal(ws.sockets.length, 1, 'waits the drawn delay (0.5 of the first ceiling)');
  t.mock.timers.tick(1);
  await flush();
  assert.equal(ws.sockets.length, 2);
  assert.deepEqual(tokens, ['tok-1', 'tok-2'], 'the token getter is asked again');
  const second = ws.last();
  assert.equal(second.url.searchParams.get('Authorization'), 'tok-2');
  second.open();
  assert.deepEqual(second.sent, [{ action: 'recover', epoch: 'E', offset: 2 }]);
  // The replay may overlap what was received: the overlap is dropped.
  for (const off of [2, 3, 4]) second.receive(message('E', off));
  second.receive({ type: 'recovered', recovered: true, epoch: 'E', offset: 4, replayed: 3 });
  second.receive(message('E', 4));
  second.receive(message('E', 5));
  assert.deepEqual(log.messages.map((m) => m.offset), [1, 2, 3, 4, 5]);
  assert.deepEqual(log.discontinuities, []);
  assert.equal(client.state, 'connected');
  assert.deepEqual(log.states, ['connecting', 'connected', 'disconnected', 'connecting', 'connected']);
  assert.deepEqual(log.recoveries.map((r) => r.recovered), [false, true]);
});

test('recovered:false with a reason other than fresh is one discontinuity, and the client continues from there', async (t) => {
  const { client, ws, log } = setup(t, { position: { epoch: 'E', offset: 7 } });
  client.connect();
  await flush();
  ws.last().open();
  assert.deepEqual(ws.last().sent, [{ action: 'recover', epoch: 'E', offset: 7 }], 'a saved position is resumed');
  ws.last().receive({ type: 'recovered', recovered: false, reason: 'too_old', epoch: 'E2', offset: 40, replayed: 0 });
  assert.deepEqual(log.discontinuities, [{ reason: 'too_old', epoch: 'E2', offset: 40 }]);
  assert.deepEqual(client.position, { epoch: 'E2', offset: 40 });
  assert.deepEqual(log.all, ['state:connecting', 'recovered:false', 'discontinuity:too_old', 'state:connected'],
    'told before the state turns connected, so the application reloads before live messages');
  ws.last().receive(message('E2', 41));
  assert.deepEqual(log.messages.map((m) => `${m.epoch}/${m.offset}`), ['E2/41']);
  // A second, unexpected answer is reported, not taken as another discontinuity.
  ws.last().receive({ type: 'recovered', recovered: false, reason: 'too_old', epoch: 'E3', offset: 1, replayed: 0 });
  assert.equal(log.discontinuities.length, 1);
  assert.ok(log.errors.at(-1) instanceof ProtocolError);
  assert.deepEqual(client.position, { epoch: 'E2', offset: 41 });
});

for (const [code, reason, ErrorClass, extra] of [
  [4003, 'token refused: signature', AuthError, (e) => assert.equal(e.refusal, 'signature')],
  [4029, 'too many connections', TooManyConnectionsError, () => {}],
  [1009, 'message too big', MessageTooBigError, () => {}],
]) {
  test(`close ${code} is a fatal ${ErrorClass.name}: no further attempt`, async (t) => {
    const { client, ws, tokens, log } = setup(t);
    client.connect();
    await flush();
    ws.last().open();
    ws.last().serverClose(code, reason);
    assert.equal(log.errors.length, 1);
    const err = log.errors[0];
    assert.ok(err instanceof ErrorClass, `${err.name} is ${ErrorClass.name}`);
    assert.equal(err.fatal, true);
    assert.equal(err.code, code);
    assert.equal(err.reason, reason);
    extra(err);
    assert.equal(client.state, 'closed');
    t.mock.timers.tick(10 * 60_000);
    await flush();
    assert.equal(ws.sockets.length, 1, 'no new socket');
    assert.deepEqual(tokens, ['tok-1'], 'the token getter is not asked again');
    assert.deepEqual(log.states, ['connecting', 'closed']);
  });
}

for (const [code, reason, ErrorClass] of [
  [4001, 'token expired', TokenExpiredError],
  [4503, 'unavailable', UnavailableError],
  [1008, 'rate limit exceeded', RateLimitedError],
  [1008, 'idle timeout', ConnectionError],
  [1001, 'server shutting down', ConnectionError],
  [1013, 'send queue full', ConnectionError],
]) {
  test(`close ${code} "${reason}" is a ${ErrorClass.name}: the client retries with a new token`, async (t) => {
    t.mock.method(Math, 'random', () => 0);
    const { client, ws, tokens, log } = setup(t);
    client.connect();
    await flush();
    ws.last().open();
    ws.last().serverClose(code, reason);
    assert.ok(log.errors[0] instanceof ErrorClass);
    assert.equal(log.errors[0].fatal, false);
    assert.equal(client.state, 'disconnected');
    t.mock.timers.tick(0);
    await flush();
    assert.equal(ws.sockets.length, 2);
    assert.deepEqual(tokens, ['tok-1', 'tok-2']);
    assert.equal(ws.last().url.searchParams.get('Authorization'), 'tok-2');
  });
}

test('failed attempts back off exponentially; a connection that stays up resets the backoff', async (t) => {
  t.mock.method(Math, 'random', () => 0.999999);
  const { client, ws } = setup(t, { backoff: { initialMs: 100, maxMs: 1000 }, stableAfterMs: 5000 });
  client.connect();
  await flush();
  // Each attempt fails before opening; the wait before the next one grows to the cap.
  const waits = [];
  for (let i = 0; i < 6; i++) {
    const before = ws.sockets.length;
    ws.last().serverClose(1006);
    let waited = 0;
    while (ws.sockets.length === before) {
      t.mock.timers.tick(1);
      waited++;
      await flush();
    }
    waits.push(waited);
  }
  assert.deepEqual(waits, [99, 199, 399, 799, 999, 999]);
  // Up, but not for long enough: the backoff keeps growing.
  await connectTo(ws.last(), { recovered: false, reason: 'fresh', epoch: 'E', offset: 0, replayed: 0 });
  t.mock.timers.tick(4999);
  ws.last().serverClose(1006);
  const before = ws.sockets.length;
  t.mock.timers.tick(998);
  await flush();
  assert.equal(ws.sockets.length, before, 'still at the cap');
  t.mock.timers.tick(1);
  await flush();
  // Up for stableAfterMs: the next drop retries within the first delay again.
  await connectTo(ws.last(), { recovered: true, reason: '', epoch: 'E', offset: 0, replayed: 0 });
  t.mock.timers.tick(5000);
  ws.last().serverClose(1001);
  t.mock.timers.tick(99);
  await flush();
  assert.equal(ws.sockets.length, before + 2, 'back to the first delay');
});

test('an error event without a close event (Node 20 on a refused connection) fails the attempt', async (t) => {
  t.mock.method(Math, 'random', () => 0.5);
  const { client, ws, log } = setup(t);
  client.connect();
  await flush();
  const first = ws.last();
  first.onerror({});
  t.mock.timers.tick(0);
  assert.ok(log.errors[0] instanceof ConnectionError);
  assert.equal(log.errors[0].code, 1006);
  assert.equal(client.state, 'disconnected');
  t.mock.timers.tick(250);
  await flush();
  assert.equal(ws.sockets.length, 2);
  // An error followed by its close event is one failure, reported with the close's code.
  ws.last().onerror({});
  ws.last().serverClose(1006, '');
  t.mock.timers.tick(0);
  assert.equal(log.errors.length, 2);
});

test('API Gateway\'s own error frame in answer to recover fails the attempt at once', async (t) => {
  t.mock.method(Math, 'random', () => 0.5);
  const { client, ws, log } = setup(t);
  client.connect();
  await flush();
  const first = ws.last();
  first.open();
  first.receive({ message: 'Internal server error', connectionId: 'c-1', requestId: 'r-1' });
  assert.ok(log.errors[0] instanceof ConnectionError);
  assert.equal(log.errors[0].reason, 'Internal server error');
  assert.equal(client.state, 'disconnected');
  assert.deepEqual(first.closedWith, { code: 1000, reason: 'client closed' });
  t.mock.timers.tick(250);
  await flush();
  assert.equal(ws.sockets.length, 2);
  // Once connected, the same frame (a failed ping route) is reported, not a reason to reconnect.
  await connectTo(ws.last(), { recovered: false, reason: 'fresh', epoch: 'E', offset: 0, replayed: 0 });
  ws.last().receive({ message: 'Internal server error' });
  assert.ok(log.errors[1] instanceof ProtocolError);
  assert.equal(log.errors[1].fatal, false);
  assert.equal(client.state, 'connected');
});

test('an attempt not recovered in time is abandoned and retried', async (t) => {
  t.mock.method(Math, 'random', () => 0);
  const { client, ws, log } = setup(t, { connectTimeoutMs: 3000 });
  client.connect();
  await flush();
  const first = ws.last();
  first.open();
  t.mock.timers.tick(3000);
  assert.ok(log.errors[0] instanceof ConnectionError);
  assert.match(log.errors[0].message, /not recovered within 3000 ms/);
  assert.deepEqual(first.closedWith, { code: 1000, reason: 'client closed' });
  t.mock.timers.tick(0);
  await flush();
  assert.equal(ws.sockets.length, 2);
  // Late frames of the abandoned socket are ignored.
  first.receive(message('E', 1));
  assert.deepEqual(log.messages, []);
  // A long replay that makes progress is not cut: each frame restarts the bound.
  const second = ws.last();
  second.open();
  for (let off = 1; off <= 5; off++) {
    t.mock.timers.tick(2500);
    second.receive(message('E', off));
  }
  second.receive({ type: 'recovered', recovered: true, epoch: 'E', offset: 5, replayed: 5 });
  assert.equal(client.state, 'connected');
  assert.equal(log.errors.length, 1);
  t.mock.timers.tick(60_000);
  assert.equal(client.state, 'connected', 'no bound once recovered');
});

test('close() closes the socket with 1000 and stops every retry; connect() resumes from the position', async (t) => {
  const { client, ws, tokens, log } = setup(t);
  client.connect();
  await flush();
  await connectTo(ws.last(), { recovered: false, reason: 'fresh', epoch: 'E', offset: 0, replayed: 0 });
  ws.last().receive(message('E', 1));
  const closing = client.close();
  assert.equal(client.state, 'closed');
  await closing;
  assert.deepEqual(ws.last().closedWith, { code: 1000, reason: 'client closed' });
  assert.equal(log.errors.length, 0, 'a close asked for is not an error');
  t.mock.timers.tick(60_000);
  await flush();
  assert.equal(ws.sockets.length, 1);

  // Closed while waiting to reconnect: the pending attempt never happens.
  client.connect();
  await flush();
  ws.last().open();
  assert.deepEqual(ws.last().sent, [{ action: 'recover', epoch: 'E', offset: 1 }]);
  ws.last().serverClose(1006);
  assert.equal(client.state, 'disconnected');
  await client.close();
  t.mock.timers.tick(60_000);
  await flush();
  assert.equal(ws.sockets.length, 2);

  // Closed while the token getter runs: no socket is opened with the token.
  let release;
  const slow = setup(t, { getToken: () => new Promise((resolve) => { release = resolve; }) });
  slow.client.connect();
  await slow.client.close();
  release('late');
  await flush();
  assert.equal(slow.ws.sockets.length, 0);
  assert.equal(slow.client.state, 'closed');
  assert.equal(tokens.length, 2);
});

test('a failing token getter is retried with backoff; a fatal error thrown by it stops the client', async (t) => {
  t.mock.method(Math, 'random', () => 0);
  let calls = 0;
  const { client, ws, log } = setup(t, {
    getToken: async () => {
      calls++;
      if (calls === 1) throw new Error('network down');
      if (calls === 2) return '';
      if (calls === 3) return 'good';
      throw new AuthError({ reason: 'token refused: user_id' });
    },
  });
  client.connect();
  await flush();
  assert.ok(log.errors[0] instanceof TokenError);
  assert.equal(log.errors[0].cause.message, 'network down');
  t.mock.timers.tick(0);
  await flush();
  assert.ok(log.errors[1] instanceof TokenError, 'an empty token is a getter failure');
  t.mock.timers.tick(0);
  await flush();
  assert.equal(ws.sockets.length, 1);
  assert.equal(ws.last().url.searchParams.get('Authorization'), 'good');
  ws.last().serverClose(1006);
  t.mock.timers.tick(0);
  await flush();
  assert.ok(log.errors.at(-1) instanceof AuthError);
  assert.equal(client.state, 'closed');
  t.mock.timers.tick(60_000);
  await flush();
  assert.equal(calls, 4);
});

test('a server that does not select the subprotocol is a fatal ProtocolError', async (t) => {
  const { client, ws, log } = setup(t);
  client.connect();
  await flush();
  ws.last().open('');
  assert.ok(log.errors[0] instanceof ProtocolError);
  assert.equal(log.errors[0].fatal, true);
  assert.equal(client.state, 'closed');
  assert.deepEqual(ws.last().sent, [], 'nothing is sent to it');
});

test('pings while connected; error frames and unreadable frames are reported without dropping the connection', async (t) => {
  const { client, ws, log } = setup(t, { pingIntervalMs: 1000 });
  client.connect();
  await flush();
  await connectTo(ws.last(), { recovered: false, reason: 'fresh', epoch: 'E', offset: 0, replayed: 0 });
  t.mock.timers.tick(2000);
  assert.deepEqual(ws.last().sent, [{ action: 'recover' }, { action: 'ping' }, { action: 'ping' }]);
  ws.last().receive({ type: 'error', code: 'invalid_frame', message: 'recover was already answered' });
  ws.last().receive('not json');
  ws.last().receive({ type: 'message', epoch: 'E', offset: 'one', messageId: 'm', body: 'b' });
  ws.last().receive({ type: 'presence', something: 'new' });
  assert.deepEqual(log.errors.map((e) => [e.name, e.fatal]), [['ProtocolError', false], ['ProtocolError', false], ['ProtocolError', false]]);
  assert.equal(log.errors[0].reason, 'recover was already answered');
  assert.equal(client.state, 'connected');
  assert.equal(ws.sockets.length, 1);
  await client.close();
  t.mock.timers.tick(5000);
  assert.equal(ws.last().sent.length, 3, 'no ping after close');
});

test('options are checked', () => {
  const WebSocket = fakeWebSockets().FakeWebSocket;
  const getToken = () => 't';
  assert.throws(() => new Client({ url: 'ftp://x/', getToken, WebSocket }), TypeError);
  assert.throws(() => new Client({ url: 'ws://x/', WebSocket }), TypeError);
  assert.throws(() => new Client({ url: 'ws://x/', getToken, WebSocket, stableAfterMs: -1 }), RangeError);
  assert.throws(() => new Client({ url: 'ws://x/', getToken, WebSocket, connectTimeoutMs: 0 }), RangeError);
  assert.throws(() => new Client({ url: 'ws://x/', getToken, WebSocket, position: { epoch: 'E', offset: 1.5 } }), TypeError);
  assert.throws(() => new Client({ url: 'ws://x/', getToken, WebSocket, backoff: { initialMs: -5 } }), RangeError);
});
