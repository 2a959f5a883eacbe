// Browser test of the dashboard's "Connect as a user" panel (the client library in the
// page): a real `wspresence serve` (WSPRESENCE_BIN) that closes idle connections, Debian's
// Chromium driven by Playwright.
// Run: WSPRESENCE_BIN=/path/to/wspresence node --test internal/dashboard/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launchChromium, post, skip, startServer, token } from '../../../client/test/helpers.mjs';

test('the dashboard connects as a user with the client library, shows the messages once and in order across server-side closes', { skip }, async () => {
  // Connections silent for 800 ms are closed by the server (the panel pings every 5 min).
  const server = await startServer({ args: ['--ping-interval', '200ms', '--idle-timeout', '800ms'] });
  const browser = await launchChromium();
  try {
    const dash = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    dash.on('pageerror', (e) => errors.push(e));
    await dash.goto(`http://${server.addr}/ui/#key=${server.key}`);
    await dash.locator('#feed-status', { hasText: 'live' }).waitFor();

    await dash.getByLabel(/User token/).fill(token(server.secret, 'panel-user'));
    await dash.getByRole('button', { name: 'Connect', exact: true }).click();
    await dash.locator('#connect-state', { hasText: /^connected$/ }).waitFor();
    assert.equal(await dash.getByRole('button', { name: 'Disconnect' }).isDisabled(), false);

    await post(server, 'panel-user', 'first');
    await dash.locator('#connect-messages li', { hasText: 'first' }).waitFor();
    // Closed by the server and reconnected: the state goes through disconnected, the
    // error line says so, and what is sent meanwhile arrives once, in order.
    await dash.locator('#connect-error', { hasText: 'idle timeout' }).waitFor({ timeout: 60000 });
    for (const body of ['second', 'third', 'fourth']) await post(server, 'panel-user', body);
    await dash.locator('#connect-messages li', { hasText: 'fourth' }).waitFor({ timeout: 60000 });
    await dash.locator('#connect-state', { hasText: /^connected$/ }).waitFor();
    await dash.waitForTimeout(300); // a late duplicate would show here
    const items = await dash.locator('#connect-messages li').allTextContents();
    assert.deepEqual(items.reverse(), ['#1 first', '#2 second', '#3 third', '#4 fourth']);
    assert.match(await dash.locator('#connect-position').textContent(), / \/ 4$/);

    await dash.getByRole('button', { name: 'Disconnect' }).click();
    await dash.locator('#connect-state', { hasText: /^closed$/ }).waitFor();
    assert.deepEqual(errors, [], 'no script errors on the page');
  } finally {
    await browser.close();
    await server.stop();
  }
});
