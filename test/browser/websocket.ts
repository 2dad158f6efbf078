/// <reference lib="dom" />
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { assertWhole, type Harness } from './harness.js';

/**
 * Eight runs at once in one page, the way a console that keeps several conversations live would watch them.
 *
 * Over one WebSocket (`GET /api/ws`): every run's events arrive together, each run whole, once, in order, to its end.
 * Over eight SSE connections: Chromium opens at most 6 HTTP/1.1 connections per origin, so two streams wait until
 * one of the six ends (and the page's other requests queue with them). The check shows both, in the same browser.
 */
const TOKENS = 40;
const request = (i: number) => `Run number ${i} [stub:tokens=${TOKENS}] [stub:delay=50]`;

async function startRuns(h: Harness, n: number) {
  const call = async (path: string, body?: unknown, token?: string) => {
    const res = await fetch(`${h.server.url}/api${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    assert.ok(res.ok, `POST ${path}: ${res.status}`);
    return res.json() as Promise<any>;
  };
  const s = await call('/sessions', { amount_sats: 2000 });
  await call(`/dev/stub/pay/${s.invoice.paymentHash}`);
  const runs: string[] = [];
  for (let i = 1; i <= n; i++) runs.push((await call(`/sessions/${s.sessionId}/request`, { request: request(i) }, s.sessionToken)).requestId);
  return { token: s.sessionToken as string, runs };
}

/** In the page: watch `runs` over one WebSocket until each has ended; what each received, and when. */
function overWebSocket(page: Page, token: string, runs: string[]) {
  return page.evaluate(
    ({ token, runs }) =>
      new Promise<Record<string, { seqs: number[]; first: number; end: number; state: string }>>((resolve, reject) => {
        const t0 = performance.now();
        const got: Record<string, { seqs: number[]; first: number; end: number; state: string }> = {};
        const ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/api/ws?access_token=${encodeURIComponent(token)}`);
        ws.onopen = () => runs.forEach((runId) => ws.send(JSON.stringify({ type: 'subscribe', runId })));
        ws.onerror = () => reject(new Error('the WebSocket failed'));
        ws.onmessage = (ev) => {
          const m = JSON.parse(ev.data);
          if (m.type === 'error' || m.type === 'resync') return reject(new Error(ev.data));
          if (m.type !== 'event') return;
          const r = (got[m.runId] ??= { seqs: [], first: performance.now() - t0, end: 0, state: '' });
          r.seqs.push(m.seq);
          if (m.event === 'done' || m.event === 'error') {
            r.end = performance.now() - t0;
            r.state = m.data.state;
            if (runs.every((id) => got[id]?.end)) {
              ws.close();
              resolve(got);
            }
          }
        };
      }),
    { token, runs },
  );
}

/** In the page: open an EventSource per run; after `ms`, which have received anything yet (then close them all). */
function overSse(page: Page, token: string, runs: string[], ms: number) {
  return page.evaluate(
    ({ token, runs, ms }) =>
      new Promise<{ receiving: number; waiting: number }>((resolve) => {
        const seen = new Set<number>();
        const sources = runs.map((runId, i) => {
          const es = new EventSource(`/api/runs/${runId}/stream?access_token=${encodeURIComponent(token)}`);
          es.addEventListener('token', () => seen.add(i));
          return es;
        });
        setTimeout(() => {
          for (const es of sources) es.close();
          resolve({ receiving: seen.size, waiting: runs.length - seen.size });
        }, ms);
      }),
    { token, runs, ms },
  );
}

export async function manyRuns(h: Harness, log: (msg: string) => void) {
  const page = await h.page();
  const ws = await startRuns(h, 8);
  const got = await overWebSocket(page, ws.token, ws.runs);
  for (const runId of ws.runs) {
    assert.equal(got[runId]!.state, 'complete');
    assertWhole(got[runId]!.seqs, TOKENS + 1, `run ${runId} over the WebSocket`);
  }
  // All eight were live together: each had its first event before any had its last.
  const lastFirst = Math.max(...ws.runs.map((id) => got[id]!.first));
  const firstEnd = Math.min(...ws.runs.map((id) => got[id]!.end));
  assert.ok(lastFirst < firstEnd, `all eight streamed at once (last first event at ${lastFirst.toFixed(0)} ms, first end at ${firstEnd.toFixed(0)} ms)`);
  log(`8 runs over one WebSocket: each whole (${TOKENS + 1} events, once, in order), all live together; done in ${Math.max(...ws.runs.map((id) => got[id]!.end)).toFixed(0)} ms`);

  // The same eight over SSE, in the same browser: two streams wait for a connection (six are the most per origin).
  const sse = await startRuns(h, 8);
  const stalled = await overSse(page, sse.token, sse.runs, 1200);
  assert.equal(stalled.receiving, 6, `HTTP/1.1 lets 6 SSE streams through: ${JSON.stringify(stalled)}`);
  assert.equal(stalled.waiting, 2);
  log(`the same 8 runs over SSE: ${stalled.receiving} streaming, ${stalled.waiting} stalled behind HTTP/1.1’s 6 connections per origin`);
  await page.close();
}
