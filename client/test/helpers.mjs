// Helpers of the tests against a real `wspresence serve` (the binary in WSPRESENCE_BIN).
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const bin = process.env.WSPRESENCE_BIN;
export const skip = !bin && 'WSPRESENCE_BIN is not set (the wspresence binary to test against)';

/** A port free now on 127.0.0.1, to restart a server on the same address. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/**
 * startServer runs `wspresence serve` on a data dir (a new temporary one unless given) and a
 * port (a free one unless given), with a known JWT secret and API key, and the extra flags.
 * It resolves once the server prints its addresses.
 */
export async function startServer({ dataDir, port, args = [] } = {}) {
  dataDir ??= mkdtempSync(path.join(os.tmpdir(), 'wspresence-client-'));
  port ??= await freePort();
  const secret = 'client-test-secret-0123456789';
  const key = 'client-test-api-key-0123456789';
  const child = spawn(bin, ['serve', '--addr', `127.0.0.1:${port}`, '--data', dataDir,
    '--jwt-secret', secret, '--api-key', key, '--offline-grace', '500ms', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let logs = '';
  child.stderr.on('data', (b) => { logs += b; });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${out}${logs}`)), 20000);
    child.stdout.on('data', (b) => {
      out += b;
      if (/listening on/.test(out) && /Metrics/.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    });
    exited.then(({ code }) => { clearTimeout(timer); reject(new Error(`server exited ${code}: ${logs}`)); });
  });
  const addr = `127.0.0.1:${port}`;
  return {
    child, dataDir, port, addr, secret, key,
    url: `ws://${addr}/`,
    logs: () => logs,
    /** stop ends the server (SIGTERM, or the signal given) and waits for it. */
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** token signs an HS256 user token; expInSeconds may be negative (an expired token). */
export function token(secret, userId, { expInSeconds = 3600 } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const claims = b64url({ userId, exp: now + expInSeconds, iat: now, jti: randomBytes(6).toString('hex') });
  const sig = createHmac('sha256', secret).update(`${head}.${claims}`).digest('base64url');
  return `${head}.${claims}.${sig}`;
}

/** post sends one message with POST /messages and resolves with its id (throws unless 202). */
export async function post(server, userId, body) {
  const resp = await fetch(`http://${server.addr}/messages`, {
    method: 'POST',
    headers: { 'X-Api-Key': server.key, 'Content-Type': 'application/json' },
    body: JSON.stringify({ UserId: userId, Body: body }),
  });
  const reply = await resp.json();
  if (resp.status !== 202) throw new Error(`POST /messages: ${resp.status} ${JSON.stringify(reply)}`);
  return reply.messageIds[0];
}

/**
 * launchChromium starts Debian's Chromium (or $CHROMIUM) headless, driven by playwright-core
 * from the repository's node_modules.
 */
export function launchChromium() {
  const require = createRequire(new URL('../../package.json', import.meta.url));
  const { chromium } = require('playwright-core');
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** waitFor polls cond (which may return a promise) until it is true, or fails with what() after timeoutMs. */
export async function waitFor(cond, what, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
    await sleep(20);
  }
}

/** record subscribes to every event of a client and keeps them, in order. */
export function record(client) {
  const log = { messages: [], states: [], errors: [], discontinuities: [], recoveries: [] };
  client.on('message', (m) => log.messages.push(m));
  client.on('state', (s) => log.states.push(s));
  client.on('error', (e) => log.errors.push(e));
  client.on('discontinuity', (d) => log.discontinuities.push(d));
  client.on('recovered', (r) => log.recoveries.push(r));
  return log;
}

/**
 * streamProblems lists how the received messages differ from the expected bodies (each once,
 * in order) and where their offsets are not contiguous within an epoch; none: an empty list.
 */
export function streamProblems(messages, bodies) {
  const got = messages.map((m) => m.body);
  const problems = [];
  if (got.length !== bodies.length || got.some((b, i) => b !== bodies[i])) {
    problems.push(`bodies differ: got ${got.length} ${JSON.stringify(got.slice(0, 50))}, want ${bodies.length} ${JSON.stringify(bodies.slice(0, 50))}`);
  }
  for (let i = 1; i < messages.length; i++) {
    const [a, b] = [messages[i - 1], messages[i]];
    if (a.epoch === b.epoch && b.offset !== a.offset + 1) problems.push(`offset ${b.offset} follows ${a.offset}`);
  }
  return problems;
}
