/// <reference lib="dom" />
/**
 * The browser console for real: headless Chromium (Debian's `chromium` package, driven by playwright-core)
 * against the real server process. A session flow, stopping a run, a reload mid-stream, a network cut
 * mid-stream, the job flow with its refund, a page on another origin streaming through CORS (and using the openai SDK), the API reference
 * at `/docs`, and eight runs watched at once over one WebSocket (where eight SSE streams stall on HTTP/1.1). Screenshots go to test/browser/screenshots/.
 *
 *   apt-get install -y chromium && npm run test:browser      (CHROMIUM_PATH to use another binary)
 */
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { freePort } from '../helpers/global-setup.js';
import { crossOrigin } from './cross-origin.js';
import { docsPage } from './docs.js';
import { openAiSdkPage } from './openai-sdk.js';
import { manyRuns } from './websocket.js';
import { assertWhole, lastStream, sessionOf, shot, startHarness, until, type Harness } from './harness.js';
import { decodeInvoice } from '../../src/providers/payments/bolt11.js';

const started = Date.now();
const otherOrigin = `http://127.0.0.1:${await freePort()}`;
const sdkOrigin = `http://127.0.0.1:${await freePort()}`;
const h = await startHarness({ CORS_ORIGINS: `${otherOrigin},${sdkOrigin}` });
const log = (msg: string) => console.log(`browser: ${msg} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
const api = async (path: string, token?: string) => {
  const res = await fetch(`${h.server.url}/api${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  assert.equal(res.status, 200, `GET ${path}`);
  return res.json() as Promise<any>;
};

/** Send a request from the ask box; resolves with the run id the viewer follows. */
async function ask(page: Page, request: string): Promise<string> {
  const before = await page.evaluate(() => localStorage.getItem('sluice.viewer'));
  await page.fill('#request', request);
  await page.click('#ask');
  await page.waitForFunction((prev) => localStorage.getItem('sluice.viewer') !== prev, before, { timeout: 10_000 });
  await until(page, () => document.querySelector('#run-viewer .out .tok') !== null, 'the first token');
  return page.evaluate(() => JSON.parse(localStorage.getItem('sluice.viewer')!));
}

/** What the console's session-notices socket did (public/console/notices.js). */
const noticesOf = (page: Page) => page.evaluate(() => (window as unknown as { sluiceConsole: { notices: { opens: number; notices: string[] } } }).sluiceConsole.notices);

const tokensShown = (page: Page) => page.$$eval('#run-viewer .out .tok', (els) => els.length);
const viewerEnded = (page: Page) => until(page, () => document.querySelector('#run-viewer .streamline')?.getAttribute('data-state') === 'ended', 'the run to end', 30_000);

async function sessionFlow(): Promise<Page> {
  const page = await h.page();
  await page.click('#create');
  // The deposit invoice: a QR code drawn by our server, the bolt11 and a copy button.
  await until(page, () => document.querySelector('.invoice[data-status="pending"] img.qr') !== null, 'the deposit invoice');
  await until(page, () => (document.querySelector('.invoice img.qr') as HTMLImageElement).naturalWidth > 0, 'the QR code to load');
  const bolt11 = await page.getAttribute('.invoice [data-copy]', 'data-copy');
  // A real BOLT 11 invoice for the deposit, on the stub's network.
  const decoded = decodeInvoice(bolt11!);
  assert.equal(decoded.network, 'regtest');
  assert.equal(decoded.amountMsat, 200_000n);
  await page.click('.invoice [data-copy]');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), bolt11, 'the copy button copies the bolt11');
  await shot(page, 'session-invoice');
  await page.click('.invoice [data-pay]');
  await until(page, () => document.querySelector('#session-card .badge')?.textContent === 'active', 'the session to be active');
  await until(page, () => document.getElementById('balance')?.dataset.sats === '200', 'the balance of 200');
  await until(page, () => document.querySelector('#ledger tr[data-kind="deposit"]') !== null, 'the deposit in the ledger');

  const runId = await ask(page, 'Tell me about sluice gates [stub:tokens=40] [stub:delay=40]');
  await until(page, () => document.querySelector(`#runs .run-row[data-run-id] .badge`) !== null, 'the run in the list');
  await viewerEnded(page);
  const s = await sessionOf(page);
  const run = await api(`/runs/${runId}`, s.token);
  assert.equal(run.state, 'complete');
  assert.equal(await page.$eval('#run-viewer .out', (el) => el.textContent), run.result, 'the viewer shows the whole reply');
  assert.equal(await tokensShown(page), 40);
  await until(page, () => document.querySelector('#ledger tr[data-kind="refund"]') !== null, 'the refund in the ledger');
  const ledger = await api(`/sessions/${s.id}/ledger`, s.token);
  assert.match((await page.textContent('#ledger-sum'))!, /= balance ✓/);
  assert.equal(await page.getAttribute('#balance', 'data-sats'), String(ledger.balanceSats));
  await until(page, () => document.querySelector('#runs .run-row')?.getAttribute('data-state') === 'complete', 'the run complete in the list');
  // The list follows the session's notices over a WebSocket, rather than polling for them.
  const notices = await noticesOf(page);
  assert.ok(notices.opens >= 1 && notices.notices.includes(`${runId.slice(0, 8)}:complete`), `the run's end came as a notice: ${JSON.stringify(notices)}`);
  log(`session flow: paid 200 sats, 40 tokens streamed, charged ${run.chargedSats}, refunded ${run.refundedSats}`);
  await shot(page, 'session');
  return page;
}

async function stopRun(page: Page) {
  const runId = await ask(page, 'A long one [stub:tokens=300] [stub:delay=40]');
  await until(page, () => document.querySelectorAll('#run-viewer .out .tok').length >= 8, 'eight tokens');
  await until(page, () => document.querySelector(`#runs .run-row[data-state="executing"] .btn.danger`) !== null, 'a stop button on the live run');
  await page.click('#run-viewer-stop');
  await viewerEnded(page);
  const s = await sessionOf(page);
  const run = await api(`/runs/${runId}`, s.token);
  assert.equal(run.state, 'cancelled');
  assert.ok(run.usage.outputTokens >= 8 && run.usage.outputTokens < 300, 'stopped part-way');
  assert.equal(await tokensShown(page), run.usage.outputTokens, 'the page shows what was produced');
  assert.ok(run.refundedSats > 0, 'the unused part is refunded');
  await until(page, () => document.querySelector('#run-viewer .outcome.cancelled') !== null, 'the outcome: cancelled');
  await until(page, () => document.querySelector('#runs .run-row')?.getAttribute('data-state') === 'cancelled', 'the list to show it cancelled');
  log(`stop: cancelled after ${run.usage.outputTokens} tokens, ${run.refundedSats} sats refunded`);
}

async function reloadMidStream(page: Page) {
  const runId = await ask(page, 'Survive a reload [stub:tokens=60] [stub:delay=40]');
  await until(page, () => document.querySelectorAll('#run-viewer .out .tok').length >= 12, 'twelve tokens');
  await page.reload();
  await until(page, () => document.querySelector('#run-viewer .streamline')?.getAttribute('data-state') === 'resumed', 'the reattached indicator');
  await viewerEnded(page);
  const s = await sessionOf(page);
  const run = await api(`/runs/${runId}`, s.token);
  assert.equal(await page.$eval('#run-viewer .out', (el) => el.textContent), run.result);
  assert.equal(await tokensShown(page), 60);
  const stream = await lastStream(page);
  assertWhole(stream.received, 61, 'after a reload');
  log('reload mid-stream: replayed from the first event, then live; 60 tokens, each once');
}

async function cutNetwork(page: Page) {
  const runId = await ask(page, 'Survive a network cut [stub:tokens=150] [stub:delay=40]');
  await until(page, () => document.querySelectorAll('#run-viewer .out .tok').length >= 10, 'ten tokens');
  // The network drops: every connection is cut, and the browser knows it is offline.
  h.proxy.cut();
  await h.browser.setOffline(true);
  await until(page, () => ['reconnecting', 'offline'].includes(document.getElementById('conn')!.dataset.state!), 'the indicator to show the drop');
  const before = await tokensShown(page);
  // The run goes on without us: let it produce while the page is cut off.
  const s = await sessionOf(page);
  const deadline = Date.now() + 10_000;
  while ((await api(`/runs/${runId}`, s.token)).usage.outputTokens < before + 15) {
    assert.ok(Date.now() < deadline, 'the run goes on while the page is offline');
    await new Promise((r) => setTimeout(r, 100));
  }
  await shot(page, 'offline');
  h.proxy.restore();
  await h.browser.setOffline(false);
  await until(page, () => document.getElementById('conn')!.dataset.state === 'resumed', 'the indicator to show the resume', 20_000).catch(async (err) => {
    console.log(JSON.stringify({ ...(await lastStream(page)), conn: await page.textContent('#conn'), line: await page.textContent('#run-viewer .streamline'), online: await page.evaluate(() => navigator.onLine) }));
    throw err;
  });
  await shot(page, 'resumed');
  await viewerEnded(page);
  const states = (await lastStream(page)).states;
  const dropAt = states.findIndex((x) => x === 'reconnecting' || x === 'offline');
  assert.ok(dropAt > 0 && states.indexOf('resumed', dropAt) > dropAt && states.at(-1) === 'ended', `the indicator told the story: ${states.join(' → ')}`);
  const run = await api(`/runs/${runId}`, s.token);
  assert.equal(await page.$eval('#run-viewer .out', (el) => el.textContent), run.result, 'the text is whole');
  assert.equal(await tokensShown(page), 150);
  const stream = await lastStream(page);
  assertWhole(stream.received, 151, 'after a network cut');
  assert.equal(stream.duplicates, 0, 'no event was sent twice');
  assert.ok(stream.reconnects >= 1, 'it reconnected');
  // The notices socket was cut too, and came back by itself.
  await page.waitForFunction(() => (window as unknown as { sluiceConsole: { notices: { opens: number } } }).sluiceConsole.notices.opens >= 2, undefined, { timeout: 20_000, polling: 100 });
  log(`network cut at ${before} tokens: resumed with Last-Event-ID; 150 tokens, each once (indicator: ${states.join(' → ')})`);
}

async function jobFlow() {
  const page = await h.page();
  await page.click('#tab-job');
  await page.fill('#job-request', 'Summarise the water mill [stub:tokens=30] [stub:delay=30]');
  await page.click('#create-job');
  await until(page, () => document.querySelector('[data-step="1"] .invoice[data-status="pending"] img.qr') !== null, 'the evaluation invoice');
  await page.click('[data-step="1"] [data-pay]');
  await until(page, () => document.querySelector('[data-step="3"] .invoice[data-status="pending"]') !== null, 'the work invoice', 20_000);
  await until(page, () => document.querySelector('[data-step="2"] .pricing') !== null, 'the pricing breakdown');
  await shot(page, 'job-quote');
  await page.click('[data-step="3"] [data-pay]');
  await until(page, () => document.querySelectorAll('#job-viewer .out .tok').length > 0, 'the work streaming');
  await until(page, () => document.querySelector('[data-step="5"] #cost-ledger') !== null, 'the result and costs', 30_000);
  const jobId = await page.evaluate(() => JSON.parse(localStorage.getItem('sluice.job')!));
  const job = await api(`/jobs/${jobId}`);
  assert.equal(job.state, 'complete');
  assert.equal(await page.$eval('#job-viewer .out', (el) => el.textContent), job.result);
  await shot(page, 'job');
  log(`job flow: evaluation paid, quoted ${job.workInvoice.amountSats} sats, paid, ${job.costLedger.actualOutputTokens} tokens`);

  // A job whose work fails is owed its whole work payment: claim it with an invoice.
  await page.fill('#job-request', 'This one breaks [stub:fail] [stub:tokens=20] [stub:delay=20]');
  await page.click('#create-job');
  await until(page, () => document.querySelector('[data-step="1"] .invoice[data-status="pending"]') !== null, 'the second evaluation invoice');
  await page.click('[data-step="1"] [data-pay]');
  await until(page, () => document.querySelector('[data-step="3"] .invoice[data-status="pending"]') !== null, 'the second work invoice', 20_000);
  await page.click('[data-step="3"] [data-pay]');
  await until(page, () => document.getElementById('refund-invoice') !== null, 'the refund form', 30_000);
  // The stub plays the client's wallet too: it makes a real signed invoice for exactly what is owed.
  await page.click('#make-refund-invoice');
  await until(page, () => (document.getElementById('refund-invoice') as HTMLInputElement).value.startsWith('lnbcrt'), 'a refund invoice from the stub wallet');
  await page.click('#claim-refund');
  await until(page, () => document.querySelector('[data-step="6"] .badge')?.textContent === 'paid', 'the refund paid');
  const failedId = await page.evaluate(() => JSON.parse(localStorage.getItem('sluice.job')!));
  const failed = await api(`/jobs/${failedId}`);
  assert.equal(failed.costLedger.refundState, 'paid');
  await shot(page, 'job-refund');
  log(`job refund: ${failed.costLedger.refundAmountSats} sats claimed and paid`);
  await page.close();
}

try {
  const page = await sessionFlow();
  await stopRun(page);
  await reloadMidStream(page);
  await cutNetwork(page);
  await page.close();
  await jobFlow();
  await crossOrigin(h, otherOrigin, log);
  await openAiSdkPage(h, sdkOrigin, log);
  await docsPage(h, log);
  await manyRuns(h, log);
  log('all passed; screenshots in test/browser/screenshots/');
} finally {
  await h.close();
}
