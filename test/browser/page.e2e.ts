/// <reference lib="dom" />
/**
 * The browser page, for real: headless Chromium (Debian's `chromium` package, driven by playwright-core)
 * against the real server process. Creates and pays a session, sends a request, watches tokens arrive over
 * EventSource, reloads mid-stream and checks the replay resumes, then saves a screenshot.
 *
 *   apt-get install -y chromium && npm run test:browser      (CHROMIUM_PATH to use another binary)
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { freePort } from '../helpers/global-setup.js';
import { startServerProcess } from '../helpers/process.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'sluice-browser-'));
chmodSync(dir, 0o755);
const server = await startServerProcess({ DATA_DIR: path.join(dir, 'data'), EMBEDDED_PG_PORT: String(await freePort()), DATABASE_URL: '' });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  await page.goto(server.url);
  await page.click('#create');
  await page.waitForFunction(() => document.getElementById('session')!.textContent!.includes('active'));
  await page.fill('#request', 'Tell me about sluice gates [stub:tokens=40] [stub:delay=40]');
  await page.click('#ask');
  await page.waitForFunction(() => document.querySelectorAll('#out .tok').length >= 10);
  // A reload mid-stream: the page reattaches and the server replays every token from the first.
  await page.reload();
  await page.waitForFunction(() => document.getElementById('status')!.textContent!.startsWith('complete'), undefined, { timeout: 15_000 });
  const tokens = await page.$$eval('#out .tok', (els) => els.length);
  assert.equal(tokens, 40, 'the whole reply, exactly once, after a reload');
  const status = await page.textContent('#status');
  assert.match(status!, /complete · 40 tokens · charged \d+ of \d+ sats/);
  const shot = path.join(os.tmpdir(), 'sluice-page.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`browser: ok (${tokens} tokens, "${status}") — screenshot ${shot}`);
} finally {
  await browser.close();
  server.proc.kill('SIGTERM');
  await server.exited;
  rmSync(dir, { recursive: true, force: true });
}
