/// <reference lib="dom" />
import assert from 'node:assert/strict';
import path from 'node:path';
import type { Page, Request } from 'playwright-core';
import { SCREENSHOTS, until, type Harness } from './harness.js';

/** A screenshot once the page's transitions have settled (Scalar fades panels in). */
async function still(page: Page, name: string) {
  // Only timed, finite ones: scroll-driven fades and endless pulses never "finish".
  const settled = () =>
    document.getAnimations().every((a) => a.playState !== 'running' || a.timeline !== document.timeline || a.effect?.getComputedTiming().iterations === Infinity);
  await until(page, settled, 'animations to finish');
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`) });
}

/**
 * The API reference at `/docs` (Scalar) in a real browser: it renders the document of `/api/openapi.json`
 * under `/docs`'s Content-Security-Policy without a violation or a page error (the harness fails the run on
 * either), fetches nothing from another origin (no CDN, no fonts, no telemetry), and its "Test Request" client
 * calls the API from the page.
 */
export async function docsPage(h: Harness, log: (msg: string) => void) {
  const origin = new URL(h.proxy.url).origin;
  const elsewhere: string[] = [];
  const requests: string[] = [];
  const watch = (r: Request) => {
    const url = new URL(r.url());
    if (url.protocol === 'data:' || url.protocol === 'blob:') return;
    requests.push(url.pathname);
    if (url.origin !== origin) elsewhere.push(r.url());
  };
  h.browser.on('request', watch);
  try {
    const page = await h.page(`${h.proxy.url}/docs`);
    await until(page, () => document.body.innerText.includes('Ask for AI work, paid from the balance'), 'the reference to render the document', 30_000);
    assert.ok(requests.includes('/docs/scalar.js'), 'Scalar’s bundle is served by the app');
    assert.ok(requests.includes('/api/openapi.json'), 'the page renders the served document');
    await still(page, 'docs');

    // A stream: its SSE frames, resume parameters and both ways to pass the token are described.
    await page.getByText('Stream a request (SSE, resumable)').first().click();
    const heading = page.getByRole('heading', { name: 'Stream a request (SSE, resumable)' });
    await heading.waitFor({ state: 'visible' });
    await until(page, () => document.body.innerText.includes('Last-Event-ID'), 'the stream operation’s parameters');
    await still(page, 'docs-stream');

    // Search finds an operation.
    await page.getByText('Search', { exact: true }).first().click();
    await page.keyboard.type('ledger');
    await until(page, () => Array.from(document.querySelectorAll('[role="option"]')).some((o) => o.textContent?.includes('A session’s ledger')), 'a search result');
    await page.keyboard.press('Escape');

    // The page's own client sends the documented example and gets a session from the API (connect-src 'self').
    await page.getByText('Open a prepaid session').first().click();
    await page.getByRole('heading', { name: 'Open a prepaid session' }).waitFor({ state: 'visible' });
    await page.getByRole('button', { name: 'Test Request' }).first().click();
    await page.getByRole('button', { name: /^Send post request to .*\/api\/sessions$/ }).click();
    await until(page, () => /201 Created/.test(document.body.innerText) && document.body.innerText.includes('"sessionToken"'), 'the API client to create a session');
    await still(page, 'docs-client');
    assert.deepEqual(elsewhere, [], 'the reference fetches nothing from another origin');
    log(`API reference: rendered from ${requests.length} same-origin requests and nothing else; its client created a session; screenshots docs*.png`);
    await page.close();
  } finally {
    h.browser.off('request', watch);
  }
}
