import { eq } from 'drizzle-orm';
import supertest from 'supertest';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { WebSocket } from 'ws';
import { runs } from '../src/db/schema.js';
import { useTestServers, type TestServer } from './helpers/context.js';
import { startServerProcess } from './helpers/process.js';
import { bigTokens } from './helpers/providers.js';
import { paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { idsOf, readSse, tokensOf } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';
import { authed, isError, nothingHeld, range, seqs, serverBuffers } from './helpers/ws.js';

/**
 * An adversarial pass over event delivery (SSE and the WebSocket), against the real server and Postgres: every reader
 * gets every event exactly once, in order, then the final one, and gives back everything it held.
 */
const { server } = useTestServers();

describe('a WebSocket final event larger than twice WS_MAX_BUFFERED_BYTES', () => {
  // 64 tokens of 64 KiB: a 4 MiB result, carried whole by the final event; a socket may hold 16 KiB unread.
  const N = 64;
  let x: TestServer;
  let xs: PaidSession;
  let big: string;
  beforeAll(async () => {
    x = await server({ WS_MAX_BUFFERED_BYTES: 16 * 1024, MAX_TOKENS_LIMIT: 4096, SSE_PING_MS: 60_000, SESSION_RATE_LIMIT_PER_MIN: 0 }, { ai: bigTokens(N, 64 * 1024) });
    xs = await paidSession(x, 10_000);
    big = (await postRequest(x, xs, 'long result')).requestId;
    expect((await waitFinal(x, xs, big, 20_000)).state).toBe('complete');
  });

  it('reaches a reader that sends its next messages while it is on its way (it is one message, not a flood)', async () => {
    const c = await authed(x.url, xs.token);
    // Pipelined, as a client subscribing to its runs does: the second is read while the 4 MiB message is in flight.
    c.send({ type: 'subscribe', runId: big, after: N });
    c.send({ type: 'subscribe', session: true });
    c.send({ type: 'stop', runId: big });
    await c.final(big, 20_000);
    await c.wait((m) => m.type === 'subscribed' && m.session === true, { what: 'the session subscribed' });
    expect((await c.wait((m) => m.type === 'stopping', { what: 'the answer to stop' })).state).toBe('complete');
    expect(c.messages.filter(isError())).toEqual([]);
    expect(seqs(c.events(big))).toEqual([N + 1]);
    expect(c.events(big)[0]!.data.result.length).toBeGreaterThan(N * 64 * 1024);
    await c.close();
    await nothingHeld(x);
  });

  it('is not written again and again to a reader that subscribes over and over without reading', async () => {
    const c = await authed(x.url, xs.token);
    // The run's log is in memory (recently finished): each subscribe would write its 4 MiB final event once more.
    let sent = 0;
    const most = await serverBuffers(async () => {
      const counting = vi.spyOn(WebSocket.prototype, 'send');
      try {
        c.ws.pause();
        for (let i = 0; i < 40; i++) {
          c.ws.send(JSON.stringify({ type: 'subscribe', runId: big, after: N }));
          c.ws.send(JSON.stringify({ type: 'unsubscribe', runId: big }));
        }
        // Every message read and answered (at least one answer to each) by the server.
        const answers = () => counting.mock.contexts.filter((ws) => (ws as unknown as { _isServer: boolean })._isServer).length;
        await waitFor(() => (sent = answers()) >= 80, { what: 'the 80 messages answered', timeoutMs: 10_000 });
      } finally {
        counting.mockClear();
      }
    });
    // One final event in flight (and small answers), never one per subscription: 40 would be 160 MiB.
    expect(most, `${sent} messages sent`).toBeLessThan(3 * N * 64 * 1024);
    c.ws.resume();
    await c.close();
    await nothingHeld(x);
  });
});

describe('a client that sends and never reads, whose answers are each larger than WS_MAX_BUFFERED_BYTES', () => {
  // Only a run's events are let past the flood check while in flight: answers to the client's own messages (here an
  // 8 KB unknown type, quoted back) always count, however large each is.
  it('is still cut, holding no more than its bound', async () => {
    const x = await server({ WS_MAX_BUFFERED_BYTES: 4096, SESSION_RATE_LIMIT_PER_MIN: 0 });
    const xs = await paidSession(x, 1000);
    const c = await authed(x.url, xs.token);
    const most = await serverBuffers(async () => {
      c.ws.pause();
      const bad = JSON.stringify({ type: 'x'.repeat(8000) });
      for (let i = 0; i < 20_000 && x.ctx.sockets.size > 0; i++) {
        c.ws.send(bad);
        if (i % 100 === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      await waitFor(() => x.ctx.sockets.size === 0, { what: 'the flooding socket closed', timeoutMs: 10_000 });
    });
    expect(most).toBeLessThanOrEqual(2 * 4096 + 9000);
    c.ws.resume();
    expect((await c.closed).code).toBe(1006);
    await nothingHeld(x);
  });
});

describe('a reader following a run whose executing process is SIGKILLed', () => {
  it('gets the persisted tokens, gapless, then the final event recovery writes (SSE and WebSocket on another process)', async () => {
    const b = await server({ SSE_POLL_MS: 60_000 });
    const databaseUrl = b.ctx.config.DATABASE_URL!;
    // A flushes every 300 ms: its readers hold tokens Postgres never gets; B's readers see only what A persisted.
    const a = await startServerProcess({ DATABASE_URL: databaseUrl, EVENT_FLUSH_MS: '300', SESSION_CREATE_RATE_LIMIT: '0' });
    try {
      const s = await paidSession({ http: supertest(a.url) }, 2000);
      const { requestId } = (await supertest(a.url).post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: 'killed [stub:tokens=400] [stub:delay=10]' }).expect(202)).body;
      const sse = readSse(`${b.url}/api/runs/${requestId}/stream`, { headers: s.auth });
      const ws = await authed(b.url, s.token);
      ws.send({ type: 'subscribe', runId: requestId });
      await ws.wait((m) => m.type === 'event' && m.seq >= 5, { what: 'tokens relayed to B' });
      a.proc.kill('SIGKILL');
      await a.exited;
      // Its lease lapses; B recovers it (with a shared database only expired leases are recovered).
      await b.ctx.db.update(runs).set({ leaseExpiresAt: new Date(Date.now() - 1000) }).where(eq(runs.id, requestId));
      expect(await b.ctx.maintenance.recoverOrphans(false)).toBe(1);
      const row = (await b.ctx.db.select().from(runs).where(eq(runs.id, requestId)))[0]!;
      expect(row.state).toBe('interrupted');

      const final = await ws.final(requestId, 10_000);
      const tokens = ws.events(requestId).slice(0, -1);
      expect(seqs(tokens)).toEqual(range(1, row.outputTokens));
      expect(final).toMatchObject({ seq: row.lastSeq, event: 'done', data: { state: 'interrupted', result: row.result } });
      expect(final.data.result).toBe(tokens.map((e) => e.data.content).join(''));

      const { events } = await sse;
      expect(idsOf(events)).toEqual([...range(1, row.outputTokens), row.lastSeq]);
      expect(events.at(-1)).toMatchObject({ event: 'done', data: { state: 'interrupted', result: row.result } });
      expect(tokensOf(events).join('')).toBe(row.result);
      // And a resume with the final event's id is told there is nothing more.
      expect((await readSse(`${b.url}/api/runs/${requestId}/stream`, { headers: { ...s.auth, 'Last-Event-ID': String(row.lastSeq) } })).status).toBe(204);
      await ws.close();
      await nothingHeld(b);
    } finally {
      a.proc.kill('SIGKILL');
    }
  });
});

describe('a cursor far past the end, on a process that follows the run', () => {
  // The first reader on B sets where B's one follower of the run starts. A cursor no event will ever reach must not
  // leave every other reader on B waiting for the end for the events in between.
  it('does not hold up the live tokens of the other readers there (SSE and WebSocket)', async () => {
    const a = await server();
    const b = await a.sibling({ SSE_POLL_MS: 200 });
    const s = await paidSession(a, 5000);
    const r = await postRequest(a, s, 'followed [stub:tokens=200] [stub:delay=10]');
    const running = async () => (await b.ctx.store.get(r.requestId))!.state === 'executing';
    await waitFor(async () => (await b.ctx.store.get(r.requestId))!.lastSeq >= 3, { what: 'the run under way on A' });
    const far = await authed(b.url, s.token);
    far.send({ type: 'subscribe', runId: r.requestId, after: 999_999_999 });
    await far.wait((m) => m.type === 'subscribed');
    await waitFor(() => b.ctx.followers.size === 1, { what: 'B following the run' });
    // Another reader on B, from the start: the tokens keep coming while the run is still executing.
    const sse = await readSse(`${b.url}/api/runs/${r.requestId}/stream`, { headers: s.auth, until: (e) => e.event === 'token' && Number(e.id) >= 40 });
    expect(await running()).toBe(true);
    expect(idsOf(sse.events.filter((e) => e.event === 'token'))).toEqual(range(1, 40));
    const ws = await authed(b.url, s.token);
    const at = (await b.ctx.store.get(r.requestId))!.lastSeq;
    ws.send({ type: 'subscribe', runId: r.requestId });
    await ws.wait((m) => m.type === 'event' && m.seq >= at + 15, { what: 'live tokens on B' });
    expect(await running()).toBe(true);
    // And everyone still ends with the final event, the far reader with that alone.
    const final = await ws.final(r.requestId, 20_000);
    expect(seqs(ws.events(r.requestId))).toEqual(range(1, final.seq));
    await far.final(r.requestId);
    expect(seqs(far.events(r.requestId))).toEqual([final.seq]);
    await far.close();
    await ws.close();
    await nothingHeld(b);
    await b.close();
  });
});

describe('many readers joining as the run ends', () => {
  it('each gets every event once, in order, then the final event (WebSocket here and on another process, SSE)', async () => {
    const a = await server({ SESSION_RATE_LIMIT_PER_MIN: 0, SSE_MAX_STREAMS_PER_IP: 200, SESSION_MAX_STREAMS: 100 });
    const b = await a.sibling({ SESSION_RATE_LIMIT_PER_MIN: 0, SSE_MAX_STREAMS_PER_IP: 200 });
    const s = await paidSession(a, 5000);
    const sockets = await Promise.all(Array.from({ length: 24 }, (_, i) => authed(i % 2 ? b.url : a.url, s.token)));
    const r = await postRequest(a, s, 'ends soon [stub:tokens=30] [stub:delay=2]');
    // Staggered over the run's last moments: some join live, some as it finishes, some after.
    const reads: Promise<unknown>[] = [];
    for (const [i, c] of sockets.entries()) {
      c.send({ type: 'subscribe', runId: r.requestId, after: i % 3 === 0 ? 0 : i });
      if (i % 4 === 0) reads.push(readSse(`${(i % 8 ? b : a).url}/api/runs/${r.requestId}/stream`, { headers: s.auth }));
      await new Promise((resolve) => setImmediate(resolve));
    }
    const row = await waitFinal(a, s, r.requestId);
    for (const [i, c] of sockets.entries()) {
      const from = i % 3 === 0 ? 0 : i;
      const final = await c.final(r.requestId);
      expect(final.seq).toBe(31);
      expect(seqs(c.events(r.requestId)), `socket ${i}`).toEqual(range(from + 1, 31));
      expect(c.messages.filter(isError())).toEqual([]);
    }
    for (const read of reads) {
      const { events } = (await read) as Awaited<ReturnType<typeof readSse>>;
      expect(idsOf(events)).toEqual(range(1, 31));
      expect(events.at(-1)!.data.result).toBe(tokensOf(events).join(''));
    }
    expect(row.state).toBe('complete');
    for (const c of sockets) await c.close();
    for (const x of [a, b]) await nothingHeld(x);
    await b.close();
  });
});
