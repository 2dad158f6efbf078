import net from 'node:net';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { useTestServers, type TestServer } from './helpers/context.js';
import { bigTokens } from './helpers/providers.js';
import { expectLedgerBalanced, paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { readSse } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';
import { authed, isError, noSocketLeaks as noLeaks, range, seqs, WsClient } from './helpers/ws.js';

/**
 * `GET /api/ws` against clients that misbehave: raw frames and handshakes, messages in the wrong order or twice,
 * cursors outside the log, clients that leave mid-handshake — over real sockets, against the real server and
 * Postgres. Each case ends with nothing left behind (registry, per-IP counts, stream slots).
 */
const { server } = useTestServers();
let t: TestServer;
let s: PaidSession;
beforeAll(async () => {
  t = await server({ SESSION_RATE_LIMIT_PER_MIN: 0 });
  s = await paidSession(t, 5000);
});

const send = WebSocket.prototype.send;
const liveSlots = async (x: TestServer) => (await x.ctx.database.pool.query<{ n: number }>('select count(*)::int as n from stream_slots where expires_at > now()')).rows[0]!.n;

/** A client's masked text frame (RFC 6455 §5.2) of a short payload. */
function frame(text: string): Buffer {
  const payload = Buffer.from(text);
  if (payload.length > 125) throw new Error('short frames only');
  const mask = Buffer.from([1, 2, 3, 4]);
  const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]!));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]);
}

const handshake = (path: string) =>
  `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;

describe('handshakes', () => {
  it('a client that resets its connection while its upgrade is being authenticated leaves no stream counted', async () => {
    for (let i = 0; i < 5; i++) {
      await new Promise<void>((resolve, reject) => {
        const sock = net.connect(Number(new URL(t.url).port), '127.0.0.1', () => {
          sock.write(handshake(`/api/ws?access_token=${s.token}`));
          // Gone before the server has read the session from Postgres.
          setImmediate(() => sock.resetAndDestroy());
        });
        sock.on('close', () => resolve());
        sock.on('error', reject);
      }).catch(() => undefined);
    }
    await waitFor(() => t.ctx.streams.size === 0 && t.ctx.sockets.size === 0, { what: `no stream counted (now ${t.ctx.streams.size})`, timeoutMs: 3000 });
    await waitFor(async () => (await liveSlots(t)) === 0, { what: 'no stream slot held' });
    await noLeaks(t);
  });
});

describe('frames', () => {
  // RFC 6455 §4.1 asks a client to wait for the 101 before sending, but a message that comes early must not be lost.
  it('takes an auth and a subscribe pipelined in the handshake’s own packet, in order', async () => {
    const r = await postRequest(t, s, 'pipelined [stub:tokens=3] [stub:delay=1]');
    await waitFinal(t, s, r.requestId);
    const got = await new Promise<string>((resolve, reject) => {
      let text = '';
      const sock = net.connect(Number(new URL(t.url).port), '127.0.0.1', () => {
        sock.write(Buffer.concat([Buffer.from(handshake('/api/ws')), frame(JSON.stringify({ type: 'auth', token: s.token })), frame(JSON.stringify({ type: 'subscribe', runId: r.requestId }))]));
      });
      sock.setEncoding('latin1');
      sock.on('data', (d) => {
        text += d;
        if (text.includes('"event":"done"')) sock.destroy();
      });
      sock.on('close', () => resolve(text));
      sock.on('error', reject);
      setTimeout(() => sock.destroy(), 5000);
    });
    expect(got).toMatch(/^HTTP\/1\.1 101 Switching Protocols/);
    const types = [...got.matchAll(/\{"type":"(\w+)"/g)].map((m) => m[1]);
    expect(types).toEqual(['authenticated', 'subscribed', 'event', 'event', 'event', 'event']);
    await noLeaks(t);
  });

  it('closes a text frame that is not UTF-8 with 1007, and leaves nothing behind', async () => {
    const c = await authed(t.url, s.token);
    const r = await postRequest(t, s, 'utf8 [stub:tokens=50] [stub:delay=5]');
    await c.ask({ type: 'subscribe', runId: r.requestId }, (m) => m.type === 'subscribed');
    c.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });
    expect((await c.closed).code).toBe(1007);
    await waitFinal(t, s, r.requestId);
    await noLeaks(t);
  });

  it('answers messages before authentication with unauthorized, and keeps the socket for its auth', async () => {
    const r = await postRequest(t, s, 'early [stub:tokens=2]');
    const c = await WsClient.open(t.url);
    for (const m of [{ type: 'subscribe', runId: r.requestId }, { type: 'stop', runId: r.requestId }, { type: 'unsubscribe', runId: r.requestId }, { type: 'subscribe', session: true }]) {
      expect(await c.ask(m, isError()), JSON.stringify(m)).toMatchObject({ code: 'unauthorized' });
    }
    // Nothing was done for them: the run is untouched, the socket subscribed to nothing.
    await c.ask({ type: 'auth', token: s.token }, (m) => m.type === 'authenticated');
    expect((await waitFinal(t, s, r.requestId)).state).toBe('complete');
    expect(c.events(r.requestId)).toEqual([]);
    await c.close();
    await noLeaks(t);
  });
});

describe('a client that sends and never reads', () => {
  // It reads nothing, so a close frame would never reach it, and `ws` would wait 30 s for the closing handshake
  // with its subscriptions attached: it is cut at once (1006 on its side).
  it('is cut once its answers pile up past twice WS_MAX_BUFFERED_BYTES, holding no more and nothing after', async () => {
    const x = await server({ WS_MAX_BUFFERED_BYTES: 16 * 1024, SESSION_RATE_LIMIT_PER_MIN: 0 });
    const xs = await paidSession(x, 1000);
    const c = await authed(x.url, xs.token);
    let most = 0;
    const spy = vi.spyOn(WebSocket.prototype, 'send').mockImplementation(function (this: WebSocket, ...args: Parameters<WebSocket['send']>) {
      send.call(this, ...args);
      if ((this as unknown as { _isServer: boolean })._isServer) most = Math.max(most, this.bufferedAmount);
    });
    try {
      c.ws.pause();
      // Each a bad message with a long answer; far more than the loopback's buffers hold.
      const bad = JSON.stringify({ type: 'subscribe', runId: 'x'.repeat(200), after: -1 });
      for (let i = 0; i < 40_000 && x.ctx.sockets.size > 0; i++) {
        c.ws.send(bad);
        if (i % 500 === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      await waitFor(() => x.ctx.sockets.size === 0, { what: 'the flooding socket closed', timeoutMs: 10_000 });
      expect(most).toBeLessThanOrEqual(2 * 16 * 1024 + 1024);
    } finally {
      spy.mockRestore();
    }
    c.ws.resume();
    expect((await c.closed).code).toBe(1006);
    await nothingHeld(x);
  });
});

describe('subscriptions', () => {
  it('refuses a second subscribe to a run already followed, and the first goes on exactly once', async () => {
    const c = await authed(t.url, s.token);
    const r = await postRequest(t, s, 'twice [stub:tokens=30] [stub:delay=5]');
    await c.ask({ type: 'subscribe', runId: r.requestId }, (m) => m.type === 'subscribed');
    const e = await c.ask({ type: 'subscribe', runId: r.requestId, after: 0 }, isError(r.requestId));
    expect(e).toMatchObject({ code: 'invalid_request', message: expect.stringMatching(/already subscribed/) });
    await c.final(r.requestId);
    expect(seqs(c.events(r.requestId))).toEqual(range(1, 31));
    expect(c.messages.filter((m) => m.type === 'subscribed' && m.runId === r.requestId)).toHaveLength(1);
    await c.close();
    await noLeaks(t);
  });

  it('a cursor past the end of a live run gets its final event only, as its SSE stream does', async () => {
    const c = await authed(t.url, s.token);
    const r = await postRequest(t, s, 'beyond [stub:tokens=20] [stub:delay=5]');
    const sse = readSse(`${t.url}/api/runs/${r.requestId}/stream?starting_after=1000`, { headers: s.auth });
    c.send({ type: 'subscribe', runId: r.requestId, after: 1000 });
    const fin = await c.final(r.requestId);
    expect(c.events(r.requestId)).toEqual([fin]);
    const fromSse = (await sse).events.filter((e) => e.id !== undefined).map((e) => ({ seq: Number(e.id), event: e.event, data: e.data }));
    expect([{ seq: fin.seq, event: fin.event, data: fin.data }]).toEqual(fromSse);
    // The same cursor on the run now ended: the final event again (not `unsubscribed`: it is not at the end).
    c.send({ type: 'subscribe', runId: r.requestId, after: 1000 });
    await c.wait((m) => m.type === 'event' && m.runId === r.requestId, { from: c.messages.indexOf(fin) + 1 });
    for (const bad of [2 ** 31, '3', null, Number.MAX_SAFE_INTEGER + 2]) {
      expect((await c.ask({ type: 'subscribe', runId: r.requestId, after: bad }, isError())).code, String(bad)).toBe('invalid_request');
    }
    await c.close();
    await noLeaks(t);
  });

  it('unsubscribing from what was never subscribed is answered, harmlessly (as a subscription that just ended)', async () => {
    const c = await authed(t.url, s.token);
    const missing = '00000000-0000-4000-8000-000000000001';
    expect(await c.ask({ type: 'unsubscribe', runId: missing }, (m) => m.type !== 'authenticated')).toEqual({ type: 'unsubscribed', runId: missing });
    expect(await c.ask({ type: 'unsubscribe', session: true }, (m) => m.type === 'unsubscribed' && m.session)).toEqual({ type: 'unsubscribed', session: true });
    await c.close();
    await noLeaks(t);
  });
});

/** Everything a socket can hold, back to zero: registry, followers, news, per-IP counts, stream slots (here and in Postgres). */
async function nothingHeld(x: TestServer) {
  await noLeaks(x);
  await waitFor(() => x.ctx.followers.size === 0 && x.ctx.limits.streamSlotsHeld === 0 && x.ctx.sse.size === 0, {
    what: `nothing held (followers ${x.ctx.followers.size}, slots ${x.ctx.limits.streamSlotsHeld})`,
  });
  await waitFor(async () => (await liveSlots(x)) === 0, { what: 'no stream slot row' });
}

describe('run ids', () => {
  it('are one run whatever their case: an upper-case id is followed live, stopped at once, and cannot be subscribed twice', async () => {
    // Postgres would find the run by either case; only the canonical id is the run in this process's memory.
    const x = await server({ SSE_POLL_MS: 60_000, SESSION_RATE_LIMIT_PER_MIN: 0 });
    const xs = await paidSession(x, 5000);
    const c = await authed(x.url, xs.token);
    const r = await postRequest(x, xs, 'cased [stub:tokens=300] [stub:delay=5]');
    const upper = r.requestId.toUpperCase();
    expect(await c.ask({ type: 'subscribe', runId: upper }, (m) => m.type === 'subscribed' || m.type === 'error')).toEqual({ type: 'subscribed', runId: r.requestId, state: 'executing' });
    // Live: from the run's own entry, not a follower polling Postgres for it.
    await c.wait((m) => m.type === 'event' && m.seq === 5, { timeoutMs: 3000 });
    expect(x.ctx.followers.size).toBe(0);
    expect(await c.ask({ type: 'subscribe', runId: r.requestId }, isError())).toMatchObject({ code: 'invalid_request', runId: r.requestId });
    expect(await c.ask({ type: 'stop', runId: upper }, (m) => m.type === 'stopping')).toEqual({ type: 'stopping', runId: r.requestId, state: 'cancelling' });
    expect((await c.final(r.requestId, 3000)).data.state).toBe('cancelled');
    const seen = c.events(r.requestId);
    expect(seqs(seen)).toEqual(range(1, seen.length));
    expect(c.messages.filter((m) => m.runId !== undefined && m.runId !== r.requestId)).toEqual([]);
    expect(await c.ask({ type: 'unsubscribe', runId: upper }, (m) => m.type === 'unsubscribed')).toEqual({ type: 'unsubscribed', runId: r.requestId });
    await c.close();
    await nothingHeld(x);
  });
});

describe('the same events as SSE', () => {
  it('for every ending (done, failed, cancelled, filtered), every cursor, from memory and from Postgres', async () => {
    const b = await t.sibling();
    const runs = await Promise.all(['ok [stub:tokens=6]', 'fails [stub:tokens=8] [stub:fail]', 'filtered [stub:tokens=8] [stub:filter]', 'stopped [stub:tokens=400] [stub:delay=5]'].map((p) => postRequest(t, s, p)));
    const stopped = runs[3]!.requestId;
    await waitFor(async () => (await t.http.get(`/api/runs/${stopped}`).set(s.auth)).body.usage?.outputTokens >= 3, { what: 'the run under way' });
    await t.http.post(`/api/runs/${stopped}/stop`).set(s.auth).expect(202);
    const finals = await Promise.all(runs.map((r) => waitFinal(t, s, r.requestId)));
    expect(finals.map((f) => f.state)).toEqual(['complete', 'failed', 'complete', 'cancelled']);
    for (const x of [t, b]) {
      const c = await authed(x.url, s.token);
      for (const r of runs) {
        const whole = (await readSse(`${x.url}/api/runs/${r.requestId}/stream`, { headers: s.auth })).events.filter((e) => e.id !== undefined);
        const last = Number(whole.at(-1)!.id);
        expect(whole.length).toBeGreaterThan(1);
        for (const after of [0, 2, last - 1, last, last + 7]) {
          const what = `${x === t ? 'memory' : 'Postgres'} ${r.requestId} after ${after}`;
          const sse = await readSse(`${x.url}/api/runs/${r.requestId}/stream?starting_after=${after}`, { headers: s.auth });
          const from = c.messages.length;
          c.send({ type: 'subscribe', runId: r.requestId, after });
          const end = await c.wait((m) => m.runId === r.requestId && (m.type === 'unsubscribed' || m.type === 'resync' || m.type === 'error' || (m.type === 'event' && ['done', 'error'].includes(m.event))), { from, what });
          const got = c.messages.slice(from).filter((m) => m.type === 'event').map(({ seq, event, data }) => ({ seq, event, data }));
          if (sse.status === 204) {
            expect(end.type, what).toBe('unsubscribed');
            expect(got, what).toEqual([]);
            continue;
          }
          expect(got, what).toEqual(sse.events.filter((e) => e.id !== undefined).map((e) => ({ seq: Number(e.id), event: e.event, data: e.data })));
        }
      }
      await c.close();
    }
    await b.close();
    await noLeaks(t);
  });
});

describe('the session', () => {
  it('a run’s end is noticed only once its money is settled: the balance read on the notice is final, here and on another process', async () => {
    const b = await t.sibling();
    const xs = await paidSession(t, 5000);
    for (const [x, prompt] of [[t, 'settled here [stub:tokens=40] [stub:delay=2]'], [b, 'settled there [stub:tokens=40] [stub:delay=2]'], [t, 'stopped [stub:tokens=400] [stub:delay=5]']] as const) {
      const c = await authed(x.url, xs.token);
      await c.ask({ type: 'subscribe', session: true }, (m) => m.type === 'subscribed');
      const r = await postRequest(t, xs, prompt);
      if (prompt.startsWith('stopped')) {
        c.send({ type: 'subscribe', runId: r.requestId });
        await c.wait((m) => m.type === 'event' && m.runId === r.requestId);
        c.send({ type: 'stop', runId: r.requestId });
      }
      // On the notice, at once, as the console does: the session's balance and the run's charge are the final ones.
      const balance = new Promise<number>((resolve) =>
        c.ws.on('message', (d) => {
          const m = JSON.parse(d.toString());
          if (m.type === 'run' && m.runId === r.requestId && !['queued', 'executing'].includes(m.state))
            void x.http.get(`/api/sessions/${xs.id}`).set(xs.auth).then((res) => resolve(res.body.balanceSats));
        }),
      );
      const seen = await balance;
      const fin = await waitFinal(t, xs, r.requestId);
      const ledger = await expectLedgerBalanced(t, xs);
      expect(seen, prompt).toBe(ledger.balanceSats);
      expect(ledger.entries.filter((e) => e.runId === r.requestId).reduce((a, e) => a + e.amountSats, 0)).toBe(-fin.chargedSats);
      await c.close();
    }
    await b.close();
  });

  it('a session that expires while its socket is open still watches and stops its runs, as it may over HTTP; it cannot spend', async () => {
    const xs = await paidSession(t, 5000);
    const c = await authed(t.url, xs.token);
    const r = await postRequest(t, xs, 'outlives [stub:tokens=300] [stub:delay=5]');
    await c.ask({ type: 'subscribe', session: true }, (m) => m.type === 'subscribed');
    c.send({ type: 'subscribe', runId: r.requestId });
    await c.wait((m) => m.type === 'event' && m.runId === r.requestId);
    await t.ctx.database.pool.query(`update sessions set expires_at = now() - interval '1 second' where id = $1`, [xs.id]);
    // HTTP: reading its runs still works; spending does not.
    expect((await t.http.get(`/api/runs/${r.requestId}`).set(xs.auth)).status).toBe(200);
    expect((await t.http.post(`/api/sessions/${xs.id}/request`).set(xs.auth).send({ request: 'more' })).body.error.code).toBe('session_not_active');
    // The socket: the same.
    expect((await c.ask({ type: 'subscribe', runId: r.requestId, after: 0 }, isError(r.requestId))).code).toBe('invalid_request');
    expect(await c.ask({ type: 'stop', runId: r.requestId }, (m) => m.type === 'stopping')).toMatchObject({ state: 'cancelling' });
    const fin = await c.final(r.requestId);
    expect(fin.data.state).toBe('cancelled');
    await c.wait((m) => m.type === 'run' && m.runId === r.requestId && m.state === 'cancelled');
    expect(seqs(c.events(r.requestId))).toEqual(range(1, fin.seq));
    // A new socket with the expired session's token is let in, as its HTTP reads are.
    const again = await authed(t.url, xs.token);
    again.send({ type: 'subscribe', runId: r.requestId, after: fin.seq - 1 });
    expect(await again.final(r.requestId)).toEqual(fin);
    await again.close();
    await c.close();
    await noLeaks(t);
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
    let most = 0;
    const spy = vi.spyOn(WebSocket.prototype, 'send').mockImplementation(function (this: WebSocket, ...args: Parameters<WebSocket['send']>) {
      send.call(this, ...args);
      // What the server holds unsent after each write (but the final event's: 13 MB alone, it carries the result).
      const [data] = args as [{ length: number }];
      if ((this as unknown as { _isServer: boolean })._isServer && data.length < 1e6) most = Math.max(most, this.bufferedAmount);
    });
    try {
      const c = await authed(b.url, as.token);
      // Not reading from the start: the loopback's buffers have not grown (they grow to tens of MB for a fast reader).
      c.send({ type: 'subscribe', runId });
      c.ws.pause();
      // The server writes until the peer's buffers are full, then waits for the reader with at most one message held.
      await waitFor(() => most > 0, { what: 'the replay waiting on the reader', timeoutMs: 20_000 });
      c.ws.resume();
      await c.final(runId, 20_000);
      expect(seqs(c.events(runId))).toEqual(range(1, N + 1));
      expect(c.messages.filter((m) => m.type === 'resync')).toEqual([]);
      // Paced: a quarter of WS_MAX_BUFFERED_BYTES, and the one message that went over it.
      expect(most).toBeLessThanOrEqual(32 * 1024 + 66 * 1024);
      await c.close();
    } finally {
      spy.mockRestore();
    }
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

