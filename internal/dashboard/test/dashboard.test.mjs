// Browser test of the dashboard: a real `wspresence serve` (WSPRESENCE_BIN), Debian's
// Chromium driven by Playwright, two real WebSocket clients opened in the browser.
// Run: WSPRESENCE_BIN=/path/to/wspresence node --test internal/dashboard/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const bin = process.env.WSPRESENCE_BIN;
const artifacts = process.env.WSPRESENCE_ARTIFACTS || os.tmpdir();
const screenshotTo = process.env.WSPRESENCE_SCREENSHOT; // e.g. docs/dashboard.png

function startServer(dataDir) {
  const child = spawn(bin, ['serve', '--addr', '127.0.0.1:0', '--data', dataDir, '--offline-grace', '500ms'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let logs = '';
  child.stderr.on('data', (b) => { logs += b; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start: ' + out + logs)), 15000);
    child.stdout.on('data', (b) => {
      out += b;
      const addr = /listening on (\S+)/.exec(out);
      const key = /API key\s+(\S+)/.exec(out);
      if (addr && key && /Metrics/.test(out)) {
        clearTimeout(timer);
        resolve({ child, addr: addr[1], key: key[1], logs: () => logs });
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited ${code}: ${logs}`)));
  });
}

function metric(text, name) {
  const m = new RegExp('^' + name.replace(/[{}"]/g, '\\$&') + ' (\\S+)$', 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

test('the dashboard shows who is online, streams the events, and sends a message', { skip: !bin && 'WSPRESENCE_BIN is not set' }, async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'wspresence-ui-'));
  const server = await startServer(dataDir);
  const token = (user) => execFileSync(bin, ['token', '--user', user, '--data', dataDir]).toString().trim();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const dash = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    dash.on('pageerror', (e) => errors.push(e));

    // A refused key shows nothing of the server's data, then a good key shows it.
    await dash.goto(`http://${server.addr}/ui/#key=not-the-key-0123456789`);
    await dash.locator('#key-title', { hasText: 'refused' }).waitFor();
    await dash.waitForTimeout(1500);
    assert.equal(await dash.locator('#totals').isVisible(), false, 'totals hidden behind a refused key');
    assert.equal(await dash.locator('#app').isVisible(), false, 'the app is hidden behind a refused key');
    assert.equal(await dash.locator('#online-table tbody tr').count(), 0);
    await dash.locator('#key-input').fill(server.key);
    await dash.getByRole('button', { name: 'Use this key' }).click();
    await dash.locator('#feed-status', { hasText: 'live' }).waitFor();
    assert.equal(new URL(dash.url()).hash, '', 'the key leaves the address bar');

    // Two real WebSocket clients, alice and bob, from another page of the same browser.
    const clients = await browser.newPage();
    await clients.goto(`http://${server.addr}/healthz`);
    await clients.evaluate(async ({ addr, alice, bob }) => {
      window.received = { alice: [], bob: [] };
      const open = (user, tok) => new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://${addr}/?Authorization=${tok}`);
        ws.onmessage = (e) => window.received[user].push(e.data);
        ws.onopen = () => resolve();
        ws.onerror = () => reject(new Error('websocket error for ' + user));
      });
      await open('alice', alice);
      await open('bob', bob);
    }, { addr: server.addr, alice: token('alice'), bob: token('bob') });

    // Both users are shown online, with their connection counts.
    for (const user of ['alice', 'bob']) {
      const row = dash.locator(`#online-table tbody tr[data-user="${user}"]`);
      await row.waitFor({ timeout: 10000 });
      assert.equal(await row.locator('td').nth(1).textContent(), '1');
    }
    // The feed shows both UserOnline events.
    await dash.locator('#feed li', { hasText: 'alice came online' }).waitFor();
    await dash.locator('#feed li', { hasText: 'bob came online' }).waitFor();
    assert.equal(await dash.locator('#feed .kind.UserOnline').count(), 2);

    // Sending from the form reaches alice's client, and the feed reports the delivery.
    await dash.getByLabel('User id', { exact: true }).fill('alice');
    await dash.getByLabel('Body (delivered as one text frame)').fill('hello from the dashboard');
    await dash.getByRole('button', { name: 'Send' }).click();
    await dash.locator('#send-result', { hasText: 'Accepted' }).waitFor();
    await clients.waitForFunction(() => window.received.alice.includes('hello from the dashboard'), null, { timeout: 10000 });
    assert.deepEqual(await clients.evaluate(() => window.received.bob), []);
    await dash.locator('#feed li', { hasText: 'reached alice on 1 connection' }).waitFor();

    // The search answers offline users too.
    await dash.getByLabel('User ids, comma-separated (at most 100)').fill('alice,carol');
    await dash.getByRole('button', { name: 'Look up' }).click();
    await dash.locator('#search-table tbody tr', { hasText: 'carol' }).waitFor();
    assert.match(await dash.locator('#search-table tbody tr').first().textContent(), /alice.*online/);
    assert.match(await dash.locator('#search-table tbody tr', { hasText: 'carol' }).textContent(), /offline.*never/, 'a user never seen was never active');

    await dash.locator('#online-count', { hasText: '2' }).waitFor();
    assert.equal(await dash.locator('#online-label').textContent(), 'online users');
    assert.equal(await dash.locator('#connection-label').textContent(), 'connections');
    // The favicon is served, where browsers ask for it.
    const icon = await fetch(`http://${server.addr}/favicon.ico`);
    assert.equal(icon.status, 200);
    assert.equal(icon.headers.get('content-type'), 'image/x-icon');
    mkdirSync(artifacts, { recursive: true });
    await dash.screenshot({ path: path.join(artifacts, 'dashboard.png'), fullPage: true });
    if (screenshotTo) await dash.screenshot({ path: screenshotTo, fullPage: true });
    assert.deepEqual(errors, [], 'no script errors on the page');

    // One user left: the totals say so in the singular.
    await clients.evaluate(() => window.close && null);
    await clients.close();
    const alone = await browser.newPage();
    await alone.goto(`http://${server.addr}/healthz`);
    await alone.evaluate(async ({ addr, tok }) => new Promise((resolve) => {
      window.ws = new WebSocket(`ws://${addr}/?Authorization=${tok}`);
      window.ws.onopen = resolve;
    }), { addr: server.addr, tok: token('dave') });
    await dash.locator('#connection-count', { hasText: /^1$/ }).waitFor({ timeout: 15000 });
    assert.equal(await dash.locator('#connection-label').textContent(), 'connection');

    // After the run, /metrics shows non-zero values for the key figures.
    const text = await (await fetch(`http://${server.addr}/metrics`)).text();
    for (const name of ['wspresence_connections', 'wspresence_online_users', 'wspresence_events_appended_total{type="ConnectionOpened"}',
      'wspresence_projector_lag_seconds_count', 'wspresence_messages_total{outcome="delivered"}',
      'wspresence_delivery_latency_seconds_count', 'wspresence_store_commit_batch_size_count']) {
      assert.ok(metric(text, name) > 0, `${name} = ${metric(text, name)}`);
    }
    assert.ok(!server.logs().includes(server.key), 'the API key is not logged');
  } finally {
    await browser.close();
    server.child.kill('SIGTERM');
    await new Promise((r) => server.child.once('exit', r));
  }
});
