// The built library (dist/, ESM) in Chromium (Debian's, driven by playwright-core from the
// repository's node_modules) against a real `wspresence serve` (WSPRESENCE_BIN): connect,
// receive, be closed by the server mid-stream, reconnect and recover.
// Run: WSPRESENCE_BIN=/path/to/wspresence node --test test/browser.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchChromium, post, skip, startServer, streamProblems, token } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, '..', 'dist');

test('in Chromium: connect, receive, reconnect after server-side closes, recover every message once, in order', { skip }, async () => {
  // The server closes a connection silent for 600 ms (1008 "idle timeout"); the page's
  // client sends no pings, so it is closed again and again while messages keep coming.
  const server = await startServer({ args: ['--ping-interval', '150ms', '--idle-timeout', '600ms'] });
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e));
    // The library's files, served on the server's origin as the page would load them.
    await page.route(`http://${server.addr}/lib/*.js`, (route) => route.fulfill({
      contentType: 'text/javascript',
      body: readFileSync(path.join(dist, path.basename(new URL(route.request().url()).pathname))),
    }));
    let minted = 0;
    await page.exposeFunction('mintToken', () => { minted++; return token(server.secret, 'browser-user'); });
    await page.goto(`http://${server.addr}/healthz`);
    await page.evaluate(async ({ url }) => {
      const { Client } = await import('/lib/index.js');
      const log = { messages: [], states: [], errors: [], recoveries: [], discontinuities: [] };
      const client = new Client({ url, getToken: () => window.mintToken(), pingIntervalMs: 0, backoff: { initialMs: 50, maxMs: 400 } });
      client.on('message', (m) => log.messages.push(m));
      client.on('state', (s) => log.states.push(s));
      client.on('error', (e) => log.errors.push({ name: e.name, code: e.code, reason: e.reason, fatal: e.fatal }));
      client.on('recovered', (r) => log.recoveries.push(r));
      client.on('discontinuity', (d) => log.discontinuities.push(d));
      Object.assign(window, { client, log });
      client.connect();
    }, { url: server.url });
    await page.waitForFunction(() => window.client.state === 'connected', null, { timeout: 60000 });

    const acked = [];
    const closes = () => page.evaluate(() => window.log.errors.filter((e) => e.code === 1008).length);
    for (let i = 1; (await closes()) < 2; i++) {
      await post(server, 'browser-user', `b-${i}`);
      acked.push(`b-${i}`);
    }
    await page.waitForFunction((n) => window.log.messages.length >= n, acked.length, { timeout: 60000 });
    await page.waitForTimeout(300); // a late duplicate would show here
    const log = await page.evaluate(() => window.log);
    assert.deepEqual(streamProblems(log.messages, acked), []);
    assert.deepEqual(log.discontinuities, []);
    assert.ok(log.recoveries.length >= 3, `${log.recoveries.length} connections`);
    assert.ok(log.recoveries.slice(1).every((r) => r.recovered), JSON.stringify(log.recoveries));
    assert.deepEqual(log.states.slice(0, 5), ['connecting', 'connected', 'disconnected', 'connecting', 'connected']);
    assert.ok(log.errors.every((e) => !e.fatal && e.name === 'ConnectionError'), JSON.stringify(log.errors));
    assert.ok(minted >= log.recoveries.length, 'a token per connection');

    await page.evaluate(() => window.client.close());
    assert.equal(await page.evaluate(() => window.client.state), 'closed');
    assert.deepEqual(errors, [], 'no script errors on the page');
  } finally {
    await browser.close();
    await server.stop();
  }
});
