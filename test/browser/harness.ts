/// <reference lib="dom" />
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { freePort } from '../helpers/global-setup.js';
import { startServerProcess, type ServerProcess } from '../helpers/process.js';
import { startCutProxy, type CutProxy } from './cut-proxy.js';

export const SCREENSHOTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), 'screenshots');

/** Flags for Debian's chromium in a container: no sandbox, no GPU, nothing phoning home. */
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export interface Harness {
  server: ServerProcess;
  /** Where the browser reaches the server: a proxy whose connections can be cut like a dropped network. */
  proxy: CutProxy;
  browser: BrowserContext;
  /** A fresh page on the console with an empty localStorage, failing the run on any page error or CSP violation. */
  page(url?: string): Promise<Page>;
  close(): Promise<void>;
}

/** The real server process (its own embedded Postgres) and headless Chromium with a fresh profile. */
export async function startHarness(env: Record<string, string>): Promise<Harness> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sluice-browser-'));
  chmodSync(dir, 0o755);
  mkdirSync(SCREENSHOTS, { recursive: true });
  const server = await startServerProcess({ DATA_DIR: path.join(dir, 'data'), EMBEDDED_PG_PORT: String(await freePort()), DATABASE_URL: '', ...env });
  let browser: BrowserContext;
  try {
    browser = await chromium.launchPersistentContext(path.join(dir, 'profile'), {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      headless: true,
      args: FLAGS,
      viewport: { width: 1320, height: 940 },
      deviceScaleFactor: 1,
    });
  } catch (err) {
    server.proc.kill('SIGTERM');
    await server.exited;
    throw err;
  }
  const proxy = await startCutProxy(new URL(server.url));
  // The console's copy buttons write to the clipboard; the check reads it back.
  await browser.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: proxy.url });
  const problems: string[] = [];
  return {
    server,
    proxy,
    browser,
    async page(url = proxy.url) {
      const page = await browser.newPage();
      page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
      page.on('console', (msg) => {
        if (msg.type() === 'error' && /Content Security Policy|Refused to/.test(msg.text())) problems.push(`CSP: ${msg.text()}`);
      });
      await page.goto(url);
      await page.evaluate(() => localStorage.clear());
      await page.reload();
      return page;
    },
    async close() {
      await browser.close().catch(() => undefined);
      await proxy.close();
      server.proc.kill('SIGTERM');
      const code = await server.exited;
      rmSync(dir, { recursive: true, force: true });
      assert.deepEqual(problems, [], 'no page errors and no CSP violations');
      assert.equal(code, 0, 'the server shut down cleanly');
    },
  };
}

/** Wait for `fn` to be true in the page (a deadline, never a sleep). */
export async function until(page: Page, fn: () => boolean, what: string, timeoutMs = 20_000) {
  try {
    await page.waitForFunction(fn, undefined, { timeout: timeoutMs, polling: 50 });
  } catch (err) {
    throw new Error(`timed out waiting for ${what}: ${(err as Error).message.split('\n')[0]}`);
  }
}

export async function shot(page: Page, name: string) {
  const file = path.join(SCREENSHOTS, `${name}.png`);
  // A sticky top bar would be painted mid-page in a full-page capture (and an injected style breaks our CSP).
  await page.evaluate(() => document.body.classList.add('capture'));
  await page.screenshot({ path: file, fullPage: true });
  await page.evaluate(() => document.body.classList.remove('capture'));
  return path.relative(process.cwd(), file);
}

/** What the page's stream really received: every id (duplicates included), and how often it reconnected. */
export async function lastStream(page: Page) {
  return page.evaluate(() => {
    const w = window as unknown as { sluiceConsole: { streams: Array<{ received: number[]; duplicates: number; reconnects: number; opens: number; states: string[] }> } };
    return w.sluiceConsole.streams.at(-1)!;
  });
}

/** The session this page remembers (to check what it shows against the API). */
export async function sessionOf(page: Page): Promise<{ id: string; token: string }> {
  return page.evaluate(() => JSON.parse(localStorage.getItem('sluice.session')!));
}

/** Ids 1..n, each once, in order. */
export function assertWhole(received: number[], n: number, what: string) {
  assert.deepEqual(received, Array.from({ length: n }, (_, i) => i + 1), `${what}: every event exactly once, in order`);
}
