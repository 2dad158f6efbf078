import { beforeAll, describe, expect, it } from 'vitest';
import { useTestServers, type TestServer } from './helpers/context.js';
import { bigTokens } from './helpers/providers.js';
import { paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { waitFor } from './helpers/wait.js';
import { authed, isError, liveSlots, nothingHeld, range, seqs, serverBuffers, WsClient } from './helpers/ws.js';

/**
 * `GET /api/ws` under pressure, over real sockets against the real server and Postgres: a client that floods and never
 * reads, hundreds of subscribe/unsubscribe cycles here and across processes, a reader that stops mid-replay, and a
 * shutdown with sockets open. Each ends with nothing held: registry, followers, per-IP counts, stream slots.
 */
const { server } = useTestServers();
let t: TestServer;
let s: PaidSession;
beforeAll(async () => {
  t = await server({ SESSION_RATE_LIMIT_PER_MIN: 0 });
  s = await paidSession(t, 5000);
});

describe('a client that sends and never reads', () => {
  // It reads nothing, so a close frame would never reach it, and `ws` would wait 30 s for the closing handshake
  // with its subscriptions attached: it is cut at once (1006 on its side).
  it('is cut once its answers pile up past twice WS_MAX_BUFFERED_BYTES, holding no more and nothing after', async () => {
    const x = await server({ WS_MAX_BUFFERED_BYTES: 16 * 1024, SESSION_RATE_LIMIT_PER_MIN: 0 });
    const xs = await paidSession(x, 1000);
    const c = await authed(x.url, xs.token);
    const most = await serverBuffers(async () => {
      c.ws.pause();
      // Each a bad message with a long answer; far more than the loopback's buffers hold.
      const bad = JSON.stringify({ type: 'subscribe', runId: 'x'.repeat(200), after: -1 });
      for (let i = 0; i < 40_000 && x.ctx.sockets.size > 0; i++) {
        c.ws.send(bad);
        if (i % 500 === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      await waitFor(() => x.ctx.sockets.size === 0, { what: 'the flooding socket closed', timeoutMs: 10_000 });
    });
    expect(most).toBeLessThanOrEqual(2 * 16 * 1024 + 1024);
    c.ws.resume();
    expect((await c.closed).code).toBe(1006);
    await nothingHeld(x);
  });
});

describe('a client that never reads, closed by the server', () => {
  it('is let go within seconds of its close (no auth in time, a refused token), not after ws’s 30 s closing handshake', async () => {
    const x = await server({ WS_AUTH_TIMEOUT_MS: 100 });
    const silent = await WsClient.open(x.url);
    silent.ws.pause();
    const refused = await WsClient.open(x.url);
    refused.ws.pause();
    refused.send({ type: 'auth', token: 'sk_nope' });
    await waitFor(() => x.ctx.sockets.size === 0 && x.ctx.streams.size === 0, { what: 'both sockets let go', timeoutMs: 5000 });
    for (const c of [silent, refused]) c.ws.terminate();
    await nothingHeld(x);
  });
});

describe('many cycles', () => {
  it('subscribe and unsubscribe hundreds of times, here and across processes, and close sockets mid-subscribe: nothing leaks', async () => {
    const b = await t.sibling({ SESSION_RATE_LIMIT_PER_MIN: 0 });
    const here = await postRequest(t, s, 'cycles here [stub:tokens=400] [stub:delay=5]');
    const there = await postRequest(t, s, 'cycles there [stub:tokens=400] [stub:delay=5]');
    const ca = await authed(t.url, s.token);
    const cb = await authed(b.url, s.token);
    for (const [c, r] of [[ca, here], [cb, there]] as const) {
      const from = c.messages.length;
      // Pipelined: each unsubscribe right behind its subscribe, 150 times, then the session notices on and off.
      for (let i = 0; i < 150; i++) {
        c.send({ type: 'subscribe', runId: r.requestId, after: i });
        c.send({ type: 'unsubscribe', runId: r.requestId });
        c.send({ type: 'subscribe', session: true });
        c.send({ type: 'unsubscribe', session: true });
      }
      await waitFor(() => c.messages.slice(from).filter((m) => m.type === 'unsubscribed').length >= 300, { what: 'every unsubscribe answered', timeoutMs: 20_000 });
      expect(c.messages.slice(from).filter(isError())).toEqual([]);
      // What each subscription sent before its unsubscribe came in order, from its own cursor.
      let after = -1;
      let last = 0;
      for (const m of c.messages.slice(from)) {
        if (m.type === 'subscribed' && m.runId) last = ++after;
        if (m.type === 'event') {
          expect(m.seq).toBe(last + 1);
          last = m.seq;
        }
      }
      expect(after).toBe(149);
    }
    // Sockets closed while their subscribe is being read from Postgres, or just after.
    for (let i = 0; i < 20; i++) {
      const c = await authed(i % 2 ? b.url : t.url, s.token);
      c.send({ type: 'subscribe', runId: i % 2 ? there.requestId : here.requestId });
      c.send({ type: 'subscribe', session: true });
      if (i % 3 === 0) await c.wait((m) => m.type === 'subscribed');
      c.ws.terminate();
    }
    // Sockets gone while their first-message auth takes its stream slot in Postgres.
    for (let i = 0; i < 10; i++) {
      const c = await WsClient.open(i % 2 ? b.url : t.url);
      c.send({ type: 'auth', token: s.token });
      if (i % 2) await new Promise((resolve) => setImmediate(resolve));
      c.ws.terminate();
    }
    await ca.close();
    await cb.close();
    for (const x of [t, b]) await nothingHeld(x);
    expect((await waitFinal(t, s, here.requestId)).state).toBe('complete');
    expect((await waitFinal(t, s, there.requestId)).state).toBe('complete');
    for (const x of [t, b]) await nothingHeld(x);
    await b.close();
  });
});

describe('a reader that stops reading mid-replay', () => {
  // 200 events of 64 KiB: 13 MB, more than the loopback's socket buffers hold, so a reader that stops backs the server up.
  const N = 200;
  let a: TestServer;
  let as: PaidSession;
  let runId: string;
  beforeAll(async () => {
    a = await server({ WS_MAX_BUFFERED_BYTES: 128 * 1024, MAX_TOKENS_LIMIT: 4096, SSE_PING_MS: 60_000, SSE_MAX_QUEUE: 16, SESSION_RATE_LIMIT_PER_MIN: 0 }, { ai: bigTokens(N, 64 * 1024, 2) });
    as = await paidSession(a, 10_000);
  });
  const tokens = async () => (await a.http.get(`/api/runs/${runId}`).set(as.auth)).body.usage?.outputTokens ?? 0;

  it('of a live run: resync once it reads again, never a gap, and the run is not held up', async () => {
    runId = (await postRequest(a, as, 'live')).requestId;
    await waitFor(async () => (await tokens()) >= 30, { what: 'the run under way' });
    const c = await authed(a.url, as.token);
    c.send({ type: 'subscribe', runId });
    await c.wait((m) => m.type === 'event');
    c.ws.pause();
    expect((await waitFinal(a, as, runId, 20_000)).state).toBe('complete');
    c.ws.resume();
    const resync = await c.wait((m) => m.type === 'resync' && m.runId === runId, { timeoutMs: 20_000 });
    const got = seqs(c.events(runId));
    expect(got).toEqual(range(1, got.length));
    expect(resync.lastSeq).toBe(got.at(-1));
    c.send({ type: 'subscribe', runId, after: resync.lastSeq });
    await c.final(runId, 20_000);
    expect(seqs(c.events(runId))).toEqual(range(1, N + 1));
    await c.close();
    await nothingHeld(a);
  });

  it('of an ended run read from Postgres: paced (the server holds no more than its bound) and whole once it reads again; cut if it never does', async () => {
    // Another process: nothing of the run in memory, so the replay is read from Postgres, a page at a time.
    const b = await a.sibling({ SSE_WRITE_TIMEOUT_MS: 10_000 });
    // What the server holds, leaving out the final event's message: 13 MB alone, it carries the result.
    const most = await serverBuffers(async (most) => {
      const c = await authed(b.url, as.token);
      // Not reading from the start: the loopback's buffers have not grown (they grow to tens of MB for a fast reader).
      c.send({ type: 'subscribe', runId });
      c.ws.pause();
      // The server writes until the peer's buffers are full, then waits for the reader with at most one message held.
      await waitFor(() => most() > 0, { what: 'the replay waiting on the reader', timeoutMs: 20_000 });
      c.ws.resume();
      await c.final(runId, 20_000);
      expect(seqs(c.events(runId))).toEqual(range(1, N + 1));
      expect(c.messages.filter((m) => m.type === 'resync')).toEqual([]);
      await c.close();
    }, 1e6);
    // Paced: a quarter of WS_MAX_BUFFERED_BYTES, and the one message that went over it.
    expect(most).toBeLessThanOrEqual(32 * 1024 + 66 * 1024);
    await nothingHeld(b);
    await b.close();
    // A reader that never reads again: cut after SSE_WRITE_TIMEOUT_MS, and everything it held is freed.
    const x = await a.sibling({ SSE_WRITE_TIMEOUT_MS: 300 });
    const gone = await authed(x.url, as.token);
    gone.send({ type: 'subscribe', runId });
    gone.ws.pause();
    await waitFor(() => x.ctx.sockets.size === 0, { what: 'the stalled socket closed', timeoutMs: 10_000 });
    gone.ws.terminate();
    await nothingHeld(x);
    await x.close();
  });
});

describe('shutdown', () => {
  it('gives back the stream slots of the sockets it closes, so their clients can reconnect at once elsewhere', async () => {
    const x = await server({ SESSION_MAX_STREAMS: 2 });
    const other = await x.sibling({ SESSION_MAX_STREAMS: 2 });
    const xs = await paidSession(x, 2000);
    const r = await postRequest(x, xs, 'outlasts [stub:tokens=20] [stub:delay=5]');
    const sockets = [await authed(x.url, xs.token), await WsClient.open(x.url)];
    await sockets[1]!.ask({ type: 'auth', token: xs.token }, (m) => m.type === 'authenticated');
    sockets[0]!.send({ type: 'subscribe', runId: r.requestId });
    await waitFor(async () => (await liveSlots(other)) === 2, { what: 'both slots held' });
    await x.close();
    for (const c of sockets) expect((await c.closed).code).toBe(1001);
    // Told to go away and come back: their session's slots are free now, not when they lapse (STREAM_SLOT_TTL_S).
    expect(await liveSlots(other)).toBe(0);
    const back = await Promise.all([authed(other.url, xs.token), authed(other.url, xs.token)]);
    for (const c of back) await c.close();
    await other.close();
  });
});
