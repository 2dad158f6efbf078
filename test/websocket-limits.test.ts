import { afterAll, describe, expect, it } from 'vitest';
import { useTestServers, type TestServer } from './helpers/context.js';
import { bigTokens } from './helpers/providers.js';
import { paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { readSse } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';
import { authed, isError, noSocketLeaks as noLeaks, range, seqs, WsClient } from './helpers/ws.js';

/**
 * `GET /api/ws`'s limits, counted with the SSE streams' (subscriptions per socket, sockets per session and per IP,
 * the session's request budget), backpressure (a reader that stops reading), liveness (a peer that answers no
 * ping), a run executing on another process, and shutdown — over real sockets, against the real server and Postgres.
 */
const { server } = useTestServers();

describe('limits', () => {
  it('caps subscriptions per socket (WS_MAX_SUBSCRIPTIONS) and sockets per session with the SSE streams (SESSION_MAX_STREAMS)', async () => {
    const x = await server({ WS_MAX_SUBSCRIPTIONS: 2, SESSION_MAX_STREAMS: 2 });
    const xs = await paidSession(x, 5000);
    const runs = await Promise.all([1, 2, 3].map((i) => postRequest(x, xs, `cap ${i} [stub:tokens=100] [stub:delay=10]`)));
    const c = await authed(x.url, xs.token);
    for (const r of runs.slice(0, 2)) await c.ask({ type: 'subscribe', runId: r.requestId }, (m) => m.type === 'subscribed');
    const e = await c.ask({ type: 'subscribe', runId: runs[2]!.requestId }, isError());
    expect(e).toMatchObject({ code: 'too_many_streams', runId: runs[2]!.requestId, details: { limit: 2 } });
    await c.ask({ type: 'unsubscribe', runId: runs[0]!.requestId }, (m) => m.type === 'unsubscribed');
    await c.ask({ type: 'subscribe', runId: runs[2]!.requestId }, (m) => m.type === 'subscribed' && m.runId === runs[2]!.requestId);
    // The session's second stream is an SSE one; a third — a socket — is refused, over HTTP or after its first message.
    const sse = readSse(`${x.url}/api/runs/${runs[1]!.requestId}/stream`, { headers: xs.auth });
    await waitFor(() => x.ctx.limits.streamSlotsHeld === 2, { what: 'two slots held' });
    const refused = await WsClient.open(x.url, { token: xs.token }).catch((err) => err);
    expect(refused.status).toBe(429);
    expect(refused.body.error).toMatchObject({ code: 'rate_limited', details: { limit: 'streams' } });
    const late = await WsClient.open(x.url);
    expect((await late.ask({ type: 'auth', token: xs.token }, isError())).code).toBe('rate_limited');
    expect((await late.closed).code).toBe(4429);
    // Closing the socket gives its slot back.
    await c.close();
    const live = async () => (await x.ctx.database.pool.query<{ n: number }>('select count(*)::int as n from stream_slots where expires_at > now()')).rows[0]!.n;
    await waitFor(async () => (await live()) === 1, { what: 'the slot given back' });
    await (await authed(x.url, xs.token)).close();
    await sse;
  });

  it('counts a socket as one of its client IP’s streams, with the SSE ones (SSE_MAX_STREAMS_PER_IP)', async () => {
    const x = await server({ SSE_MAX_STREAMS_PER_IP: 2 });
    const xs = await paidSession(x, 5000);
    const r = await postRequest(x, xs, 'ip [stub:tokens=50] [stub:delay=10]');
    const c = await authed(x.url, xs.token);
    const sse = readSse(`${x.url}/api/runs/${r.requestId}/stream`, { headers: xs.auth });
    await waitFor(() => x.ctx.sse.size === 1, { what: 'the SSE stream open' });
    const refused = await WsClient.open(x.url, { token: xs.token }).catch((err) => err);
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe('too_many_streams');
    await c.close();
    await waitFor(() => x.ctx.streams.size === 1, { what: 'one stream left' });
    await (await authed(x.url, xs.token)).close();
    await sse;
  });

  it('counts subscribe and stop messages against the session’s budget (SESSION_RATE_LIMIT_PER_MIN)', async () => {
    const x = await server({ SESSION_RATE_LIMIT_PER_MIN: 4 });
    const xs = await paidSession(x, 5000);
    const r = await postRequest(x, xs, 'budget [stub:tokens=2]'); // 1 (creating and paying the session are not the session's)
    const c = await WsClient.open(x.url, { token: xs.token }); // 2
    await c.wait((m) => m.type === 'authenticated');
    await c.ask({ type: 'subscribe', runId: r.requestId }, (m) => m.type === 'subscribed'); // 3
    await c.ask({ type: 'stop', runId: r.requestId }, (m) => m.type === 'stopping'); // 4
    const e = await c.ask({ type: 'subscribe', session: true }, (m) => m.type !== 'event');
    expect(e.type).toBe('subscribed'); // notices cost nothing
    const limited = await c.ask({ type: 'stop', runId: r.requestId }, isError(r.requestId));
    expect(limited).toMatchObject({ code: 'rate_limited', details: { limit: 'session_requests', retryAfterSeconds: expect.any(Number) } });
    await c.close();
  });
});

describe('backpressure and liveness', () => {
  it('a reader that stops reading gets resync for the run that filled its socket, never a gap, and resumes by after', async () => {
    const x = await server({ WS_MAX_BUFFERED_BYTES: 256 * 1024, MAX_TOKENS_LIMIT: 4096, SSE_PING_MS: 60_000 }, { ai: bigTokens(150, 64 * 1024) });
    const xs = await paidSession(x, 10_000);
    const c = await authed(x.url, xs.token);
    await c.ask({ type: 'subscribe', session: true }, (m) => m.type === 'subscribed');
    const r = await postRequest(x, xs, 'big');
    c.send({ type: 'subscribe', runId: r.requestId });
    await c.wait((m) => m.type === 'event' && m.runId === r.requestId);
    c.ws.pause();
    // The run is not held up by its reader.
    expect((await waitFinal(x, xs, r.requestId, 20_000)).state).toBe('complete');
    c.ws.resume();
    const resync = await c.wait((m) => m.type === 'resync' && m.runId === r.requestId, { timeoutMs: 20_000 });
    const got = seqs(c.events(r.requestId));
    expect(got).toEqual(range(1, got.length));
    expect(resync.lastSeq).toBe(got.at(-1));
    expect(got.length).toBeLessThan(151);
    // The session notices were held up too (the run's end came while the socket was behind): dropped, and said so.
    await c.wait((m) => m.type === 'resync' && m.session === true);
    expect(c.messages.some((m) => m.type === 'run' && m.state === 'complete')).toBe(false);
    // The socket is still open: resume the run after the last event it got.
    c.send({ type: 'subscribe', runId: r.requestId, after: resync.lastSeq });
    await c.final(r.requestId, 20_000);
    expect(seqs(c.events(r.requestId))).toEqual(range(1, 151));
    await c.close();
    await noLeaks(x);
  });

  it('a peer that answers no ping is closed and leaves no subscriber, while the run goes on', async () => {
    const x = await server({ SSE_PING_MS: 100 });
    const xs = await paidSession(x, 5000);
    const r = await postRequest(x, xs, 'long [stub:tokens=150] [stub:delay=10]');
    const c = await authed(x.url, xs.token);
    await c.ask({ type: 'subscribe', runId: r.requestId }, (m) => m.type === 'subscribed');
    await c.ask({ type: 'subscribe', session: true }, (m) => m.type === 'subscribed' && m.session);
    // A live peer answers pings (the client does it by itself) and stays.
    await new Promise((resolve) => setTimeout(resolve, 350));
    expect(x.ctx.sockets.size).toBe(1);
    // A dead one — it reads nothing, so it never sees a ping — is closed by the sweep.
    c.ws.pause();
    await waitFor(() => x.ctx.sockets.size === 0, { what: 'the dead socket closed', timeoutMs: 3000 });
    expect(x.ctx.registry.stats().subscribers).toBe(0);
    expect(x.ctx.streams.size).toBe(0);
    expect((await x.http.get(`/api/runs/${r.requestId}`).set(xs.auth)).body.state).toBe('executing');
    c.ws.terminate();
    await waitFinal(x, xs, r.requestId);
    await noLeaks(x);
  });
});

describe('the HTTP server’s timeouts', () => {
  it('do not cut a socket: once upgraded it is not a request in progress', async () => {
    const x = await server({ HTTP_REQUEST_TIMEOUT_MS: 200, HTTP_HEADERS_TIMEOUT_MS: 100 });
    const xs = await paidSession(x, 1000);
    const c = await authed(x.url, xs.token);
    // Nothing happens here but time: three request timeouts pass (checked every 50 ms).
    await new Promise((resolve) => setTimeout(resolve, 700));
    const r = await postRequest(x, xs, 'late [stub:tokens=3]');
    c.send({ type: 'subscribe', runId: r.requestId });
    expect((await c.final(r.requestId)).event).toBe('done');
    await c.close();
  });
});

describe('several processes', () => {
  let a: TestServer;
  let b: TestServer;
  let as: PaidSession;
  afterAll(async () => {
    await b?.close();
  });

  it('a socket on B follows a run executing on A, live, and hears of its end', async () => {
    a = await server();
    b = await a.sibling({ SSE_POLL_MS: 60_000 });
    as = await paidSession(a, 5000);
    const c = await authed(b.url, as.token);
    await c.ask({ type: 'subscribe', session: true }, (m) => m.type === 'subscribed');
    const r = await postRequest(a, as, 'cross [stub:tokens=40] [stub:delay=15]');
    const started = Date.now();
    c.send({ type: 'subscribe', runId: r.requestId });
    const fin = await c.final(r.requestId);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(seqs(c.events(r.requestId))).toEqual(range(1, 41));
    expect(fin.data.result).toBe(c.events(r.requestId).filter((e) => e.event === 'token').map((e) => e.data.content).join(''));
    await c.wait((m) => m.type === 'run' && m.runId === r.requestId && m.state === 'complete');
    // A stop sent to B reaches the run on A.
    const long = await postRequest(a, as, 'stop across [stub:tokens=500] [stub:delay=10]');
    c.send({ type: 'subscribe', runId: long.requestId });
    await c.wait((m) => m.type === 'event' && m.runId === long.requestId && m.seq >= 3);
    await c.ask({ type: 'stop', runId: long.requestId }, (m) => m.type === 'stopping');
    expect((await c.final(long.requestId)).data.state).toBe('cancelled');
    await c.close();
    await noLeaks(b);
  });
});

describe('shutdown', () => {
  it('closes every socket with 1001 (going away)', async () => {
    const x = await server();
    const xs = await paidSession(x, 1000);
    const c = await authed(x.url, xs.token);
    await x.close();
    expect((await c.closed).code).toBe(1001);
  });
});

