import net from 'node:net';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestServers, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { readSse } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';
import { authed, isError, liveSlots, noSocketLeaks as noLeaks, nothingHeld, range, seqs, WsClient } from './helpers/ws.js';

/**
 * `GET /api/ws` against clients that misbehave or look for gaps: raw frames and handshakes, messages in the wrong
 * order or twice, cursors outside the log, run ids in another case, the SSE stream's events compared for every ending
 * and cursor, the session's money and expiry — over real sockets, against the real server and Postgres. Each case ends
 * with nothing left behind. Floods, cycles, stalled readers and shutdown: websocket-pressure.test.ts.
 */
const { server } = useTestServers();
let t: TestServer;
let s: PaidSession;
beforeAll(async () => {
  t = await server({ SESSION_RATE_LIMIT_PER_MIN: 0 });
  s = await paidSession(t, 5000);
});

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
