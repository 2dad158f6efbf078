import net from 'node:net';
import { EventSource } from 'eventsource';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runFeed, type FeedItem } from '../src/runs/feed.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, expectNoLeaks, paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { idsOf, readSse, tokensOf, type SseEvent } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';

let t: TestServer;
let s: PaidSession;
beforeAll(async () => {
  t = await startTestServer({ SSE_PING_MS: 100 });
  s = await paidSession(t, 10_000);
});
afterAll(() => t.close());
afterEach(() => expectNoLeaks(t));

const streamUrl = (requestId: string, query = '') => `${t.url}/api/sessions/${s.id}/requests/${requestId}/stream${query}`;
const read = (requestId: string, opts: Parameters<typeof readSse>[1] = {}, query = '') =>
  readSse(streamUrl(requestId, query), { ...opts, headers: { ...s.auth, ...opts.headers } });

/** A whole stream is: ids 1..n+1 in order, n tokens, one final event last whose result is the tokens joined. */
function expectWholeStream(events: SseEvent[], n: number) {
  expect(idsOf(events)).toEqual(Array.from({ length: n + 1 }, (_, i) => i + 1));
  expect(tokensOf(events)).toHaveLength(n);
  const last = events.at(-1)!;
  expect(last.event).toBe('done');
  expect(last.data.result).toBe(tokensOf(events).join(''));
}

describe('SSE streams', () => {
  it('sends the SSE headers, retry on connect, pings, and one event per token ending with done', async () => {
    const r = await postRequest(t, s, 'hello [stub:tokens=10] [stub:delay=40]');
    const res = await fetch(streamUrl(r.requestId), { headers: s.auth });
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(res.headers.get('cache-control')).toBe('no-cache, no-transform');
    expect(res.headers.get('x-accel-buffering')).toBe('no');
    const text = await res.text();
    expect(text.startsWith('retry: ')).toBe(true);
    expect(text).toContain(': ping');
    const final = await waitFinal(t, s, r.requestId);
    expect(final.usage.outputTokens).toBe(10);
    expect(text.match(/^event: token$/gm)).toHaveLength(10);
    expect(text.trimEnd().split('\n\n').at(-1)).toMatch(/^id: 11\nevent: done\ndata: /);
  });

  it('honours Connection: close: says so, and closes the socket after the final event', async () => {
    const r = await postRequest(t, s, 'close me [stub:tokens=3] [stub:delay=5]');
    const u = new URL(t.url);
    const sock = net.connect(Number(u.port), u.hostname);
    let raw = '';
    sock.on('data', (d) => (raw += d));
    const closed = new Promise<void>((resolve) => sock.on('close', () => resolve()));
    sock.write(`GET /api/sessions/${s.id}/requests/${r.requestId}/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${s.token}\r\nConnection: close\r\n\r\n`);
    await closed; // the server closed it: a kept-alive socket would stay open
    const head = raw.slice(0, raw.indexOf('\r\n\r\n')).toLowerCase();
    expect(head).toContain('connection: close');
    expect(head).not.toContain('keep-alive');
    expect(raw).toContain('event: done');
  });

  it('feeds two live subscribers the same whole stream', async () => {
    const r = await postRequest(t, s, 'two readers [stub:tokens=15] [stub:delay=10]');
    const [a, b] = await Promise.all([read(r.requestId), read(r.requestId)]);
    expectWholeStream(a.events, 15);
    expect(b.events).toEqual(a.events);
    const final = await waitFinal(t, s, r.requestId);
    expect(final.result).toBe(tokensOf(a.events).join(''));
  });

  it('replays everything to a subscriber that joins mid-run, then goes live', async () => {
    const r = await postRequest(t, s, 'late joiner [stub:tokens=30] [stub:delay=20]');
    // Wait until some tokens went out, then join.
    await waitFor(() => (t.ctx.registry.get(r.requestId)?.lastSeq ?? 0) >= 5, { what: 'five tokens' });
    const late = await read(r.requestId);
    expectWholeStream(late.events, 30);
  });

  it('replays the whole stream after completion, once the memory entry is gone, from Postgres', async () => {
    const r = await postRequest(t, s, 'after the end [stub:tokens=12] [stub:delay=0]');
    await waitFinal(t, s, r.requestId);
    await expectNoLeaks(t);
    expect(t.ctx.registry.get(r.requestId)).toBeUndefined();
    const replay = await read(r.requestId);
    expectWholeStream(replay.events, 12);
  });

  it('resumes after Last-Event-ID or ?starting_after, and 400s a malformed cursor', async () => {
    const r = await postRequest(t, s, 'resume [stub:tokens=20] [stub:delay=10]');
    const first = await read(r.requestId, { until: (e) => e.id === '7' });
    expect(idsOf(first.events)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    const rest = await read(r.requestId, { headers: { 'Last-Event-ID': '7' } });
    expect(idsOf(rest.events)).toEqual(Array.from({ length: 14 }, (_, i) => i + 8));
    const joined = [...tokensOf(first.events), ...tokensOf(rest.events)].join('');
    expect(rest.events.at(-1)!.data.result).toBe(joined);

    const viaQuery = await read(r.requestId, {}, '?starting_after=18');
    expect(idsOf(viaQuery.events)).toEqual([19, 20, 21]);
    for (const bad of ['abc', '-1', '1.5', '99999999999']) {
      const res = await fetch(streamUrl(r.requestId), { headers: { ...s.auth, 'Last-Event-ID': bad } });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('invalid_request');
    }
    expect((await fetch(streamUrl(r.requestId, '?starting_after=x'), { headers: s.auth })).status).toBe(400);
    // Asking after the final event of a finished run: 204, which tells EventSource to stop reconnecting.
    expect((await fetch(streamUrl(r.requestId), { headers: { ...s.auth, 'Last-Event-ID': '21' } })).status).toBe(204);
  });

  it('ends a failed run with event: error, refunding everything', async () => {
    const before = (await expectLedgerBalanced(t, s)).balanceSats;
    const r = await postRequest(t, s, 'doomed [stub:tokens=10] [stub:fail] [stub:delay=5]');
    const { events } = await read(r.requestId);
    const last = events.at(-1)!;
    expect(last.event).toBe('error');
    expect(last.data).toMatchObject({ state: 'failed', code: 'provider_error', message: expect.any(String), refundedSats: r.debitedSats, chargedSats: 0 });
    expect(tokensOf(events)).toHaveLength(5);
    // The final event describes the whole run, so a reader needs nothing else.
    expect(last.data.result).toBe(tokensOf(events).join(''));
    const final = await waitFinal(t, s, r.requestId);
    expect(final).toMatchObject({ state: 'failed', chargedSats: 0, refundedSats: r.debitedSats, error: { code: 'provider_error' } });
    expect(final.result).toBe(tokensOf(events).join(''));
    expect((await expectLedgerBalanced(t, s)).balanceSats).toBe(before);
  });

  it('detaches a closing subscriber without stopping the run', async () => {
    const r = await postRequest(t, s, 'keep going [stub:tokens=25] [stub:delay=10]');
    const partial = await read(r.requestId, { until: (e) => e.id === '3' });
    expect(partial.events).toHaveLength(3);
    await waitFor(() => t.ctx.registry.stats().subscribers === 0, { what: 'the subscriber to detach' });
    const final = await waitFinal(t, s, r.requestId);
    expect(final.state).toBe('complete');
    expect(final.usage.outputTokens).toBe(25);
  });

  it('works with the eventsource client and ?access_token=, as a browser would', async () => {
    const r = await postRequest(t, s, 'browser [stub:tokens=8] [stub:delay=10]');
    const events: SseEvent[] = [];
    await new Promise<void>((resolve, reject) => {
      const es = new EventSource(streamUrl(r.requestId, `?access_token=${encodeURIComponent(s.token)}`));
      const on = (type: string) => (ev: MessageEvent) => {
        events.push({ id: ev.lastEventId, event: type, data: JSON.parse(ev.data) });
        if (type === 'done' || type === 'error') {
          es.close();
          resolve();
        }
      };
      es.addEventListener('token', on('token'));
      es.addEventListener('done', on('done'));
      es.addEventListener('error', (e) => {
        if ('data' in e && e.data) on('error')(e as MessageEvent);
        else if (es.readyState === EventSource.CLOSED) reject(new Error('stream failed'));
      });
    });
    expectWholeStream(events, 8);
    // The token in the query is for EventSource only; an API call with it alone is 401.
    await t.http.get(`/api/sessions/${s.id}?access_token=${s.token}`).expect(401);
  });

  it('replays the same events to many concurrent late joiners while tokens flow', async () => {
    const r = await postRequest(t, s, 'crowd [stub:tokens=40] [stub:delay=5]');
    const readers: Array<Promise<Awaited<ReturnType<typeof read>>>> = [];
    for (let i = 0; i < 8; i++) {
      readers.push(read(r.requestId));
      await new Promise((res) => setTimeout(res, 15));
    }
    for (const got of await Promise.all(readers)) expectWholeStream(got.events, 40);
  });
});

describe('the feed', () => {
  it('cuts a reader that falls behind loose with a resync hint, without slowing the run', async () => {
    const r = await postRequest(t, s, 'flood [stub:tokens=200] [stub:delay=0]');
    const controller = new AbortController();
    const feed = runFeed({ registry: t.ctx.registry, store: t.ctx.store, runId: r.requestId, after: 0, signal: controller.signal, maxQueue: 10, pollMs: 50 });
    // Take one item, then stop reading until the run has finished.
    const first = await feed.next();
    expect(first.value).toMatchObject({ kind: 'event' });
    const final = await waitFinal(t, s, r.requestId);
    expect(final.state).toBe('complete');
    const items: FeedItem[] = [];
    for await (const item of feed) items.push(item);
    const last = items.at(-1)!;
    expect(last.kind).toBe('resync');
    expect(items.filter((i) => i.kind === 'event').length).toBeLessThanOrEqual(11);
  });

  it('delivers the final event of a run that finishes while the reader waits for it', async () => {
    const r = await postRequest(t, s, 'wait for me [stub:tokens=3] [stub:delay=30]');
    const controller = new AbortController();
    const items: FeedItem[] = [];
    for await (const item of runFeed({ registry: t.ctx.registry, store: t.ctx.store, runId: r.requestId, after: 0, signal: controller.signal, maxQueue: 100, pollMs: 50 })) {
      items.push(item);
    }
    expect(items.map((i) => (i.kind === 'event' ? i.event.type : i.kind))).toEqual(['token', 'token', 'token', 'done']);
  });

  it('stops at once when the reader aborts', async () => {
    const r = await postRequest(t, s, 'abort me [stub:tokens=50] [stub:delay=20]');
    const controller = new AbortController();
    const seen: number[] = [];
    const started = Date.now();
    setTimeout(() => controller.abort(), 100);
    for await (const item of runFeed({ registry: t.ctx.registry, store: t.ctx.store, runId: r.requestId, after: 0, signal: controller.signal, maxQueue: 100, pollMs: 50 })) {
      if (item.kind === 'event') seen.push(item.event.seq);
    }
    expect(Date.now() - started).toBeLessThan(1000);
    expect(seen.length).toBeLessThan(50);
    expect((await waitFinal(t, s, r.requestId)).state).toBe('complete');
  });
});

