/// <reference lib="dom" />
import assert from 'node:assert/strict';
import http from 'node:http';
import { freePort } from '../helpers/global-setup.js';
import { shot, until, type Harness } from './harness.js';

/**
 * A third-party page on another origin that uses the API the way a browser app would: JSON POSTs with
 * `Authorization` (preflighted), then `new EventSource(url + '?access_token=…')` — no headers, so the token rides
 * in the query — and, after a network cut, EventSource's own reconnect with `Last-Event-ID`.
 */
const PAGE = `<!doctype html><meta charset="utf-8"><title>another origin</title>
<body><h1>A page on another origin</h1><pre id="out"></pre><script>
const api = new URLSearchParams(location.search).get('api');
window.progress = { ids: [], text: '', opens: 0, done: null, failure: null };
async function call(method, path, body, token) {
  const headers = {};
  if (body) headers['content-type'] = 'application/json';
  if (token) { headers.authorization = 'Bearer ' + token; headers['idempotency-key'] = crypto.randomUUID(); }
  const res = await fetch(api + '/api' + path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const json = await res.json();
  window.progress.lastRequestId = res.headers.get('x-request-id');
  window.progress.rateRemaining = res.headers.get('ratelimit-remaining');
  if (!res.ok) throw new Error(json.error.message);
  return json;
}
(async () => {
  try {
    const s = await call('POST', '/sessions', { amount_sats: 300 });
    await call('POST', '/dev/stub/pay/' + s.invoice.paymentHash);
    const r = await call('POST', '/sessions/' + s.sessionId + '/request', { request: 'From afar [stub:tokens=50] [stub:delay=40]' }, s.sessionToken);
    window.progress.runId = r.requestId;
    window.progress.token = s.sessionToken;
    const es = new EventSource(api + '/api/runs/' + r.requestId + '/stream?access_token=' + encodeURIComponent(s.sessionToken));
    es.onopen = () => window.progress.opens++;
    es.addEventListener('token', (ev) => {
      window.progress.ids.push(Number(ev.lastEventId));
      window.progress.text += JSON.parse(ev.data).content;
      document.getElementById('out').textContent = window.progress.text;
    });
    es.addEventListener('done', (ev) => { window.progress.ids.push(Number(ev.lastEventId)); window.progress.done = JSON.parse(ev.data); es.close(); });
  } catch (err) {
    window.progress.failure = String(err);
  }
})();
</script>`;

function serve(port: number): Promise<http.Server> {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE);
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

export async function crossOrigin(h: Harness, allowed: string, log: (msg: string) => void) {
  const good = await serve(Number(new URL(allowed).port));
  const badPort = await freePort();
  const bad = await serve(badPort);
  try {
    const page = await h.browser.newPage();
    await page.goto(`${allowed}/?api=${encodeURIComponent(h.proxy.url)}`);
    await until(page, () => (window as any).progress.ids.length >= 10 || (window as any).progress.failure, 'tokens on the other origin');
    const failure = await page.evaluate(() => (window as any).progress.failure);
    assert.equal(failure, null, `the other origin may use the API: ${failure}`);
    // Cut the network mid-stream: EventSource reconnects by itself, cross-origin, with Last-Event-ID.
    h.proxy.cut();
    await h.browser.setOffline(true);
    const runId = await page.evaluate(() => (window as any).progress.runId);
    const token = await page.evaluate(() => (window as any).progress.token);
    const deadline = Date.now() + 10_000;
    for (;;) {
      const run = await (await fetch(`${h.server.url}/api/runs/${runId}`, { headers: { authorization: `Bearer ${token}` } })).json();
      if (run.usage.outputTokens >= 25 || run.state !== 'executing') break;
      assert.ok(Date.now() < deadline, 'the run goes on while the page is offline');
      await new Promise((r) => setTimeout(r, 100));
    }
    h.proxy.restore();
    await h.browser.setOffline(false);
    await until(page, () => (window as any).progress.done !== null, 'the end of the cross-origin stream', 30_000);
    const p = await page.evaluate(() => (window as any).progress);
    assert.deepEqual(p.ids, Array.from({ length: 51 }, (_, i) => i + 1), 'every event once, across a reconnect');
    assert.equal(p.text, p.done.result, 'the whole text');
    assert.ok(p.opens >= 2, 'EventSource reconnected');
    assert.match(p.lastRequestId, /^[\w-]+$/, 'x-request-id is readable from the other origin');
    assert.match(p.rateRemaining, /^\d+$/, 'RateLimit-Remaining is readable from the other origin');
    await shot(page, 'cross-origin');
    log(`cross-origin: ${allowed} created, paid and streamed 50 tokens through CORS, reconnecting once (Last-Event-ID)`);

    // An origin not in CORS_ORIGINS gets nothing: the browser refuses to hand it the answers.
    const denied = await h.browser.newPage();
    await denied.goto(`http://127.0.0.1:${badPort}/?api=${encodeURIComponent(h.proxy.url)}`);
    await until(denied, () => (window as any).progress.failure !== null, 'the refusal');
    assert.match(await denied.evaluate(() => (window as any).progress.failure), /Failed to fetch/);
    log('cross-origin: an origin not in CORS_ORIGINS is refused by the browser');
    await page.close();
    await denied.close();
  } finally {
    good.close();
    bad.close();
  }
}
