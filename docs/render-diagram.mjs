// Renders docs/architecture.mmd (the Mermaid source also embedded in architecture.md) to
// docs/architecture.svg with Mermaid in headless Chromium.
// Usage: npm install --no-save mermaid@11 playwright-core && node docs/render-diagram.mjs
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(process.cwd(), 'package.json'));
const { chromium } = require('playwright-core');
const mermaidJs = require.resolve('mermaid/dist/mermaid.min.js');

const source = readFileSync(path.join(here, 'architecture.mmd'), 'utf8');
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
});
const page = await browser.newPage();
await page.setContent('<!doctype html><html><body></body></html>');
await page.addScriptTag({ path: mermaidJs });
const svg = await page.evaluate(async (src) => {
  window.mermaid.initialize({ startOnLoad: false, theme: 'default', flowchart: { htmlLabels: false } });
  const { svg } = await window.mermaid.render('architecture', src);
  return svg;
}, source);
writeFileSync(path.join(here, 'architecture.svg'), svg + '\n');
await page.setContent(`<!doctype html><html><body style="margin:0;background:white">${svg}</body></html>`);
const box = await page.locator('svg').boundingBox();
await page.setViewportSize({ width: Math.ceil(box.width) + 20, height: Math.ceil(box.height) + 20 });
await page.screenshot({ path: path.join(here, 'architecture.png'), fullPage: true });
await browser.close();
console.log('wrote docs/architecture.svg and docs/architecture.png');
