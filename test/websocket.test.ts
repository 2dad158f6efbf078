import net from 'node:net';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { createSafeLogger } from '../src/log-safety.js';
import { useTestServers, type TestServer } from './helpers/context.js';
import { paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { readSse } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';
import { authed, isError, noSocketLeaks as noLeaks, range, seqs, WsClient } from './helpers/ws.js';

/**
 * `GET /api/ws` over a real socket with the `ws` client, against the real server and Postgres: the protocol (several
 * runs on one socket, resume by `after`, stop, session notices, other sessions' runs, bad messages), authentication,
 * and upgrade requests that are not WebSockets. Limits, backpressure, liveness and other processes: websocket-limits.test.ts.
 */
const { server } = useTestServers();
let t: TestServer;
let s: PaidSession;
beforeAll(async () => {
  t = await server({ WS_AUTH_TIMEOUT_MS: 300 });
  s = await paidSession(t, 5000);
});

describe('the protocol', () => {
  it('carries several runs on one socket, joined at different points, each exactly once and in order, as their SSE streams', async () => {
    const c = await WsClient.open(t.url, { token: s.token });
    expect(await c.wait((m) => m.type === 'authenticated')).toEqual({ type: 'authenticated', sessionId: s.id, maxSubscriptions: 64 });
    const [a, b, d] = await Promise.all([
      postRequest(t, s, 'one [stub:tokens=30] [stub:delay=8]'),
      postRequest(t, s, 'two [stub:tokens=20] [stub:delay=10]'),
      postRequest(t, s, 'three [stub:tokens=5] [stub:delay=1]'),
    ]);
    // a from its first event, live; b once it is under way, resuming after its 4th event; d after it has ended.
    c.send({ type: 'subscribe', runId: a.requestId });
    await waitFor(async () => (await t.http.get(`/api/runs/${b.requestId}`).set(s.auth)).body.usage.outputTokens >= 8, { what: 'b under way' });
    c.send({ type: 'subscribe', runId: b.requestId, after: 4 });
    await waitFinal(t, s, d.requestId);
    c.send({ type: 'subscribe', runId: d.requestId, after: 2 });
    const subscribed = await c.wait((m) => m.type === 'subscribed' && m.runId === d.requestId);
    expect(subscribed.state).toBe('complete');
    for (const r of [a, b, d]) await c.final(r.requestId);
    expect(seqs(c.events(a.requestId))).toEqual(range(1, 31));
    expect(seqs(c.events(b.requestId))).toEqual(range(5, 21));
    expect(seqs(c.events(d.requestId))).toEqual(range(3, 6));
    // Exactly the SSE stream's events: the same ids, names and data.
    for (const [r, after] of [[a, 0], [b, 4], [d, 2]] as const) {
      const sse = await readSse(`${t.url}/api/runs/${r.requestId}/stream?starting_after=${after}`, { headers: s.auth });
      const fromSse = sse.events.filter((e) => e.id !== undefined).map((e) => ({ seq: Number(e.id), event: e.event, data: e.data }));
      expect(c.events(r.requestId).map(({ seq, event, data }) => ({ seq, event, data }))).toEqual(fromSse);
    }
    // The subscriptions ended with their final events; the socket is still open and usable.
    expect((await c.ask({ type: 'subscribe', runId: a.requestId, after: 30 }, (m) => m.runId === a.requestId && m.type === 'event')).event).toBe('done');
    await c.close();
    await noLeaks(t);
  });

  it('serialises each event once: every socket of a run is sent the very same bytes', async () => {
    const send = vi.spyOn(WebSocket.prototype, 'send');
    try {
      const r = await postRequest(t, s, 'shared [stub:tokens=8] [stub:delay=150]');
      const clients = await Promise.all([1, 2, 3, 4, 5].map(() => authed(t.url, s.token)));
      await Promise.all(clients.map((c) => c.ask({ type: 'subscribe', runId: r.requestId }, (m) => m.type === 'subscribed')));
      for (const c of clients) expect(seqs(c.events((await c.final(r.requestId)).runId))).toEqual(range(1, 9));
      const bySeq = new Map<number, Set<unknown>>();
      for (const [data] of send.mock.calls) {
        if (!Buffer.isBuffer(data)) continue;
        const m = JSON.parse(data.toString());
        if (m.runId === r.requestId) bySeq.set(m.seq, (bySeq.get(m.seq) ?? new Set()).add(data));
      }
      // Those after every socket was subscribed went out live: one Buffer for all five.
      for (let seq = 3; seq <= 9; seq++) expect(bySeq.get(seq)?.size, `event ${seq}`).toBe(1);
      await Promise.all(clients.map((c) => c.close()));
    } finally {
      send.mockRestore();
    }
  });

  it('answers a cursor already at the final event with subscribed, then unsubscribed (nothing to send)', async () => {
    const c = await authed(t.url, s.token);
    const r = await postRequest(t, s, 'short [stub:tokens=3] [stub:delay=0]');
    await waitFinal(t, s, r.requestId);
    c.send({ type: 'subscribe', runId: r.requestId, after: 4 });
    await c.wait((m) => m.type === 'unsubscribed' && m.runId === r.requestId);
    expect(c.events(r.requestId)).toEqual([]);
    await c.close();
  });

  it('unsubscribing detaches only: the run goes on, and a later subscription resumes where the first stopped', async () => {
    const c = await authed(t.url, s.token);
    const r = await postRequest(t, s, 'long [stub:tokens=60] [stub:delay=10]');
    c.send({ type: 'subscribe', runId: r.requestId });
    await c.wait((m) => m.type === 'event' && m.runId === r.requestId && m.seq === 5);
    await c.ask({ type: 'unsubscribe', runId: r.requestId }, (m) => m.type === 'unsubscribed');
    const got = seqs(c.events(r.requestId));
    expect(got).toEqual(range(1, got.length));
    c.send({ type: 'subscribe', runId: r.requestId, after: got.at(-1) });
    const fin = await c.final(r.requestId);
    expect(fin.data.state).toBe('complete');
    expect(seqs(c.events(r.requestId))).toEqual(range(1, 61));
    await c.close();
    await noLeaks(t);
  });

  it('stops a run over the socket', async () => {
    const c = await authed(t.url, s.token);
    const r = await postRequest(t, s, 'stop me [stub:tokens=500] [stub:delay=10]');
    c.send({ type: 'subscribe', runId: r.requestId });
    await c.wait((m) => m.type === 'event' && m.runId === r.requestId && m.seq === 3);
    expect(await c.ask({ type: 'stop', runId: r.requestId }, (m) => m.type === 'stopping')).toEqual({ type: 'stopping', runId: r.requestId, state: 'cancelling' });
    const fin = await c.final(r.requestId);
    expect(fin).toMatchObject({ event: 'done', data: { state: 'cancelled' } });
    expect(fin.data.refundedSats).toBeGreaterThan(0);
    // Stopping an ended run is harmless: its state.
    expect((await c.ask({ type: 'stop', runId: r.requestId }, (m) => m.type === 'stopping')).state).toBe('cancelled');
    await c.close();
    await noLeaks(t);
  });

  it('answers another session’s run exactly as a missing one: not_found, for subscribe and stop alike', async () => {
    const other = await paidSession(t, 1000);
    const theirs = await postRequest(t, other, 'theirs [stub:tokens=50] [stub:delay=10]');
    const c = await authed(t.url, s.token);
    const missing = '00000000-0000-4000-8000-000000000000';
    const answers = [];
    for (const runId of [theirs.requestId, missing]) {
      for (const type of ['subscribe', 'stop']) {
        const e = await c.ask({ type, runId }, isError(runId));
        answers.push({ ...e, runId: 'x' });
      }
    }
    expect(new Set(answers.map((a) => JSON.stringify(a))).size).toBe(1);
    expect(answers[0]).toEqual({ type: 'error', code: 'not_found', message: 'run not found', runId: 'x' });
    expect((await waitFinal(t, other, theirs.requestId)).state).toBe('complete');
    await c.close();
  });

  it('delivers session notices: a run created, and its end, from the bus', async () => {
    const c = await authed(t.url, s.token);
    expect(await c.ask({ type: 'subscribe', session: true }, (m) => m.type === 'subscribed')).toEqual({ type: 'subscribed', session: true });
    const r = await postRequest(t, s, 'noticed [stub:tokens=3] [stub:delay=1]');
    await c.wait((m) => m.type === 'run' && m.runId === r.requestId && m.state === 'complete');
    expect(c.messages.filter((m) => m.type === 'run' && m.runId === r.requestId).map((m) => m.state)).toEqual(['executing', 'complete']);
    // Another session's runs say nothing here.
    const other = await paidSession(t, 1000);
    const theirs = await postRequest(t, other, 'quiet [stub:tokens=1]');
    await waitFinal(t, other, theirs.requestId);
    const mine = await postRequest(t, s, 'mine [stub:tokens=1]');
    await c.wait((m) => m.type === 'run' && m.runId === mine.requestId && m.state === 'complete');
    expect(c.messages.some((m) => m.runId === theirs.requestId)).toBe(false);
    await c.ask({ type: 'unsubscribe', session: true }, (m) => m.type === 'unsubscribed' && m.session === true);
    await c.close();
  });

  it('answers bad messages with the HTTP API’s codes and keeps the socket open', async () => {
    const c = await authed(t.url, s.token);
    const cases: Array<[unknown, string, RegExp]> = [
      ['not json', 'invalid_json', /not valid JSON/],
      ['[1,2]', 'invalid_json', /JSON object/],
      ['null', 'invalid_json', /JSON object/],
      [{ type: 'dance' }, 'invalid_request', /type must be one of auth, subscribe, unsubscribe, stop/],
      [{ nothing: 1 }, 'invalid_request', /type must be one of/],
      [{ type: 'subscribe' }, 'invalid_request', /invalid subscribe message/],
      [{ type: 'subscribe', runId: 'abc' }, 'invalid_request', /runId must be a run id/],
      [{ type: 'subscribe', runId: '00000000-0000-4000-8000-000000000000', after: -1 }, 'invalid_request', /after must be at least 0/],
      [{ type: 'subscribe', runId: '00000000-0000-4000-8000-000000000000', after: 1.5 }, 'invalid_request', /whole number/],
      [{ type: 'stop' }, 'invalid_request', /invalid stop message/],
      [{ type: 'auth', token: 'sk_again' }, 'invalid_request', /already authenticated/],
    ];
    for (const [m, code, message] of cases) {
      const e = await c.ask(m, isError());
      expect(e.code, JSON.stringify(m)).toBe(code);
      expect(e.message).toMatch(message);
    }
    const bin = c.messages.length;
    c.ws.send(Buffer.from('{"type":"stop"}'), { binary: true });
    expect((await c.wait(isError(), { from: bin })).message).toMatch(/text frames/);
    // Still open and working.
    const r = await postRequest(t, s, 'after the noise [stub:tokens=2]');
    c.send({ type: 'subscribe', runId: r.requestId });
    await c.final(r.requestId);
    // A message over WS_MAX_MESSAGE_BYTES closes the socket with 1009.
    c.send({ type: 'auth', token: 'x'.repeat(20_000) });
    expect((await c.closed).code).toBe(1009);
    await noLeaks(t);
  });
});

describe('authentication', () => {
  it('takes the token as ?access_token=, as a Bearer header, or as the first message', async () => {
    for (const c of [await WsClient.open(t.url, { token: s.token }), await WsClient.open(t.url, { header: s.token })]) {
      expect((await c.wait((m) => m.type === 'authenticated')).sessionId).toBe(s.id);
      await c.close();
    }
    const c = await WsClient.open(t.url);
    expect(c.messages).toEqual([]);
    // Counted as open (the metrics read the hub) before it has even authenticated.
    await waitFor(async () => /^sluice_websockets_open 1$/m.test((await t.http.get('/metrics').expect(200)).text), { what: 'sluice_websockets_open 1' });
    expect((await c.ask({ type: 'subscribe', session: true }, isError())).code).toBe('unauthorized');
    expect((await c.ask({ type: 'auth', token: s.token }, (m) => m.type === 'authenticated')).sessionId).toBe(s.id);
    await c.close();
  });

  it('refuses a bad token on the upgrade over HTTP, with the error envelope, and a bad first message with 4401', async () => {
    const err = await WsClient.open(t.url, { token: 'sk_nope' }).catch((e) => e);
    expect(err.status).toBe(401);
    expect(err.body).toEqual({ error: { code: 'unauthorized', message: 'the bearer token is not valid' } });
    const c = await WsClient.open(t.url);
    expect((await c.ask({ type: 'auth', token: 'sk_nope' }, isError())).code).toBe('unauthorized');
    expect(await c.closed).toEqual({ code: 4401, reason: 'unauthorized' });
    await noLeaks(t);
  });

  it('closes a socket that does not authenticate in time (WS_AUTH_TIMEOUT_MS)', async () => {
    const c = await WsClient.open(t.url);
    const closed = await c.closed;
    expect(closed).toEqual({ code: 1008, reason: 'authentication timeout' });
    expect(c.messages).toEqual([expect.objectContaining({ type: 'error', code: 'unauthorized' })]);
    await noLeaks(t);
  });

  it('answers a plain GET with 426 and Upgrade, and a page of an origin CORS_ORIGINS does not list with 403', async () => {
    const res = await t.http.get('/api/ws').set(s.auth).expect(426);
    expect(res.headers.upgrade).toBe('websocket');
    expect(res.body.error.code).toBe('upgrade_required');
    const err = await WsClient.open(t.url, { token: s.token, headers: { origin: 'https://evil.example' } }).catch((e) => e);
    expect(err.status).toBe(403);
    expect(err.body.error.code).toBe('origin_not_allowed');
    const own = await WsClient.open(t.url, { token: s.token, headers: { origin: t.url } });
    await own.wait((m) => m.type === 'authenticated');
    await own.close();
  });

  it('never logs the token of ?access_token=, and logs the socket as one request with status 101', async () => {
    const lines: string[] = [];
    const x = await server({}, { log: createSafeLogger({ level: 'info', destination: { write: (l: string) => void lines.push(l) } }) });
    const xs = await paidSession(x, 1000);
    const c = await WsClient.open(x.url, { token: xs.token });
    await c.wait((m) => m.type === 'authenticated');
    await c.close();
    const line = await waitFor(() => lines.map((l) => JSON.parse(l)).find((l) => l.req?.url?.startsWith('/api/ws')), { what: 'the log line of the socket' });
    expect(line).toMatchObject({ msg: 'request completed', res: { statusCode: 101 }, req: { url: '/api/ws?access_token=[redacted]' } });
    expect(lines.join('')).not.toContain(xs.token);
  });
});

describe('other upgrade requests', () => {
  /** Send raw bytes (in pieces, a turn apart) and read until the server closes the connection. */
  const raw = (...pieces: string[]) =>
    new Promise<string>((resolve, reject) => {
      const u = new URL(t.url);
      let text = '';
      const sock = net.connect(Number(u.port), u.hostname, async () => {
        for (const p of pieces) {
          sock.write(p);
          await new Promise((r) => setTimeout(r, 20));
        }
      });
      sock.setEncoding('utf8');
      sock.on('data', (d) => (text += d));
      sock.on('close', () => resolve(text));
      sock.on('error', reject);
    });
  const h2c = 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n';
  const bodyOf = (res: string) => JSON.parse(res.slice(res.indexOf('\r\n\r\n') + 4));

  it('answers an offer of another protocol (curl --http2: Upgrade: h2c) as the HTTP/1.1 request it also is, body included', async () => {
    const got = await raw(`GET /api/healthz HTTP/1.1\r\nHost: x\r\n${h2c}\r\n`);
    expect(got).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(bodyOf(got).status).toBe('ok');
    const json = '{"amount_sats":300}';
    // The body arrives after the headers, in a packet of its own.
    const created = await raw(`POST /api/sessions HTTP/1.1\r\nHost: x\r\n${h2c}Content-Type: application/json\r\nContent-Length: ${json.length}\r\n\r\n`, json);
    expect(created).toMatch(/^HTTP\/1\.1 201 Created/);
    expect(bodyOf(created).invoice.amountSats).toBe(300);
    const chunked = await raw(`POST /api/sessions HTTP/1.1\r\nHost: x\r\n${h2c}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n13\r\n${json}\r\n0\r\n\r\n`);
    expect(chunked).toMatch(/^HTTP\/1\.1 400 Bad Request/);
    expect(bodyOf(chunked).error.message).toMatch(/without the Upgrade header/);
  });

  it('answers a WebSocket upgrade of any other path as the app would (404 in the envelope), and a bad handshake with 400', async () => {
    const ws = 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n';
    const missing = await raw(`GET /api/nope HTTP/1.1\r\nHost: x\r\n${ws}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
    expect(missing).toMatch(/^HTTP\/1\.1 404 Not Found/);
    expect(bodyOf(missing).error.code).toBe('not_found');
    const noKey = await raw(`GET /api/ws?access_token=${s.token} HTTP/1.1\r\nHost: x\r\n${ws}\r\n`);
    expect(noKey).toMatch(/^HTTP\/1\.1 400 Bad Request/);
    await noLeaks(t);
  });
});

