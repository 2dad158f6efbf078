import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { useTestServers } from './helpers/context.js';
import { createJob, pay, waitJob } from './helpers/jobs.js';
import { expectLedgerBalanced, expectNoLeaks, paidSession, postRequest, waitFinal } from './helpers/sessions.js';
import { readSse } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';

/** Bounded under abuse (issue #9, findings 7 and 8): slow clients, many connections, many streams, spoofed IPs. */
const { server } = useTestServers();

describe('TRUST_PROXY', () => {
  it('takes what Express takes: true/false, a hop count, or addresses and subnets; refuses anything else', () => {
    expect(loadConfig({ TRUST_PROXY: 'false' }).TRUST_PROXY).toBe(false);
    expect(loadConfig({ TRUST_PROXY: 'true' }).TRUST_PROXY).toBe(true);
    expect(loadConfig({ TRUST_PROXY: '1' }).TRUST_PROXY).toBe(1);
    expect(loadConfig({ TRUST_PROXY: '2' }).TRUST_PROXY).toBe(2);
    expect(loadConfig({ TRUST_PROXY: 'loopback, 10.0.0.0/8, fc00::/7' }).TRUST_PROXY).toBe('loopback, 10.0.0.0/8, fc00::/7');
    for (const bad of ['yes please', '10.0.0.0/99', '1.2.3']) expect(() => loadConfig({ TRUST_PROXY: bad }), bad).toThrow(ConfigError);
  });

  it.each(['1', 'loopback'])('behind a proxy (TRUST_PROXY=%s), a client cannot pick its own IP with X-Forwarded-For', async (setting) => {
    const t = await server({ DEMO_RATE_LIMIT: 3, TRUST_PROXY: loadConfig({ TRUST_PROXY: setting }).TRUST_PROXY });
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) {
      // The client sends a made-up hop; the proxy (here: the loopback peer) appends the address it saw.
      const res = await t.http.get('/api/demo').query({ request: 'hi [stub:tokens=1] [stub:delay=0]' }).set('X-Forwarded-For', `198.51.100.${i}, 203.0.113.9`);
      statuses.push(res.status);
    }
    expect(statuses).toEqual([200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);
  });
});

/** A client that opens a connection and sends half a request, then nothing (slowloris). */
function slowClient(port: number) {
  const sock = net.connect(port, '127.0.0.1', () => sock.write('GET /api/healthz HTTP/1.1\r\nHost: x\r\n'));
  let data = '';
  sock.on('data', (d) => (data += d));
  sock.on('error', () => undefined);
  const closed = new Promise<string>((resolve) => sock.on('close', () => resolve(data)));
  return { sock, closed };
}

describe('slow and many connections', () => {
  it('a client that never finishes its headers is cut off; past the connection cap new ones are refused, and service comes back', async () => {
    const t = await server({ HTTP_HEADERS_TIMEOUT_MS: 300, HTTP_REQUEST_TIMEOUT_MS: 1_000, MAX_CONNECTIONS: 20 });
    const port = Number(new URL(t.url).port);
    const slow = Array.from({ length: 20 }, () => slowClient(port));
    const connections = () => new Promise<number>((resolve) => t.server.getConnections((_e, n) => resolve(n)));
    await waitFor(async () => (await connections()) === 20, { what: 'twenty connections held' });
    // The 21st is closed unanswered (one accepted would get its 408 like the others).
    const extra = slowClient(port);
    expect(await extra.closed).toBe('');
    // The slow ones get 408 after the headers timeout, and the server answers again.
    const answers = await Promise.all(slow.map((s) => s.closed));
    expect(answers.every((a) => a.startsWith('HTTP/1.1 408'))).toBe(true);
    expect(JSON.parse(answers[0]!.split('\r\n\r\n')[1]!)).toEqual({ error: { code: 'request_timeout', message: expect.any(String) } });
    await t.http.get('/api/healthz').expect(200);
  });
});

/** Send raw bytes, read until the server closes: the status line, the headers and the body. */
function rawExchange(port: number, bytes: string) {
  return new Promise<{ status: number; headers: string; body: string }>((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1', () => sock.write(bytes));
    let data = '';
    sock.on('data', (d) => (data += d));
    sock.on('error', reject);
    sock.on('close', () => {
      const [head = '', body = ''] = data.split('\r\n\r\n');
      resolve({ status: Number(head.split(' ')[1]), headers: head.toLowerCase(), body });
    });
  });
}

describe('what the HTTP parser refuses', () => {
  it('is a 4xx in the face’s envelope, not a bare status line (request line too long, malformed, on /api and /v1)', async () => {
    const t = await server();
    const port = Number(new URL(t.url).port);
    const long = 'x'.repeat(20_000);
    const api = await rawExchange(port, `GET /api/jobs/j/stream?request=${long} HTTP/1.1\r\nHost: x\r\n\r\n`);
    expect(api.status).toBe(431);
    expect(api.headers).toContain('content-type: application/json');
    expect(JSON.parse(api.body)).toEqual({ error: { code: 'headers_too_large', message: expect.stringContaining('16 KB') } });
    const v1 = await rawExchange(port, `GET /v1/models?x=${long} HTTP/1.1\r\nHost: x\r\n\r\n`);
    expect(v1.status).toBe(431);
    expect(JSON.parse(v1.body)).toEqual({ error: { message: expect.any(String), type: 'invalid_request_error', param: null, code: 'headers_too_large' } });
    const bad = await rawExchange(port, 'BLAH\x01 / HTTP/1.1\r\n\r\n');
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.body)).toEqual({ error: { code: 'bad_request', message: expect.any(String) } });
    // A keep-alive connection that was answered before still gets its refusal answered.
    const sock = net.connect(port, '127.0.0.1');
    let data = '';
    sock.on('data', (d) => (data += d));
    const closed = new Promise((r) => sock.on('close', r));
    sock.write('GET /api/healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor(() => data.includes('"status"'), { what: 'the first answer on the connection' });
    sock.write(`GET /api/healthz?q=${long} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await closed;
    expect(data.startsWith('HTTP/1.1 200')).toBe(true);
    expect(data).toContain('HTTP/1.1 431 Request Header Fields Too Large');
    expect(data).toContain('"code":"headers_too_large"');
    await t.http.get('/api/healthz').expect(200);
  });

  it('behind a paid request whose answer has not begun, waits for that answer: the 202 arrives, then the 400', async () => {
    const t = await server();
    const s = await paidSession(t, 1000);
    const body = JSON.stringify({ request: 'pipelined [stub:tokens=2]', max_tokens: 20 });
    const post = `POST /api/sessions/${s.id}/request HTTP/1.1\r\nHost: x\r\nAuthorization: ${s.auth.Authorization}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    // One write: the parser reads the POST whole, hands it to the app (whose answer waits for Postgres), then meets
    // the garbage behind it.
    const sock = net.connect(Number(new URL(t.url).port), '127.0.0.1', () => sock.write(`${post}BLAH\x01 / HTTP/1.1\r\n\r\n`));
    let data = '';
    sock.on('data', (d) => (data += d));
    await new Promise((r) => sock.on('close', r));
    expect(data.startsWith('HTTP/1.1 202 Accepted\r\n')).toBe(true);
    const head = data.slice(0, data.indexOf('\r\n\r\n'));
    const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1]);
    const answer = data.slice(head.length + 4, head.length + 4 + length);
    const refusal = data.slice(head.length + 4 + length);
    expect(JSON.parse(answer)).toMatchObject({ requestId: expect.any(String) });
    expect(refusal.startsWith('HTTP/1.1 400 Bad Request\r\n')).toBe(true);
    expect(refusal).toContain('"code":"bad_request"');
    // The run it paid for is the client's to follow, and its money adds up.
    expect((await waitFinal(t, s, JSON.parse(answer).requestId)).state).toBe('complete');
    await expectLedgerBalanced(t, s);
  });
  it('a body cut short by a half-close (Content-Length never reached) is refused and its connection let go', async () => {
    const t = await server({ HTTP_REQUEST_TIMEOUT_MS: 60_000 });
    const s = await paidSession(t, 1000);
    const sock = net.connect(Number(new URL(t.url).port), '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    let data = '';
    sock.on('data', (d) => (data += d));
    sock.on('error', () => undefined);
    const closed = new Promise((r) => sock.on('close', r));
    // The headers promise 100 bytes; 5 come, then the client's side closes. The request can never complete, so
    // nothing may wait for its answer (the request timeout, a minute here, is not what ends it).
    sock.end(`POST /api/sessions/${s.id}/request HTTP/1.1\r\nHost: x\r\nAuthorization: ${s.auth.Authorization}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"req`);
    const deadline = Date.now() + 5_000;
    const gone = await Promise.race([closed.then(() => true), new Promise((r) => setTimeout(() => r(false), deadline - Date.now()))]);
    expect(gone, 'the server let the connection go').toBe(true);
    expect(data).not.toContain('202');
    // Nothing was paid.
    await expectLedgerBalanced(t, s);
    expect((await t.http.get(`/api/sessions/${s.id}`).set(s.auth)).body.balanceSats).toBe(1000);
  });
});

describe('streams per client', () => {
  it('a client holds at most SSE_MAX_STREAMS_PER_IP streams; the next is 429 in the envelope; closing one frees a slot', async () => {
    const t = await server({ SSE_MAX_STREAMS_PER_IP: 3 });
    const s = await paidSession(t, 5000);
    const r = await postRequest(t, s, 'long [stub:tokens=400] [stub:delay=20]');
    const url = `${t.url}/api/sessions/${s.id}/requests/${r.requestId}/stream`;
    const holders = Array.from({ length: 3 }, () => new AbortController());
    const open = holders.map((c) => readSse(url, { headers: s.auth, signal: c.signal }).catch(() => undefined));
    await waitFor(() => t.ctx.registry.stats().subscribers === 3, { what: 'three open streams' });
    const refused = await fetch(url, { headers: s.auth });
    expect(refused.status).toBe(429);
    expect(await refused.json()).toMatchObject({ error: { code: 'too_many_streams', details: { limit: 3 } } });
    holders[0]!.abort();
    await waitFor(() => t.ctx.registry.stats().subscribers === 2, { what: 'a stream closed' });
    const fourth = new AbortController();
    const again = readSse(url, { headers: s.auth, signal: fourth.signal, until: (e) => e.event === 'token' });
    expect((await again).status).toBe(200);
    fourth.abort();
    for (const c of holders) c.abort();
    await Promise.all(open);
    expect(t.ctx.executor.stop(r.requestId, 'cancelled')).toBe(true);
    await waitFinal(t, s, r.requestId);
    await expectNoLeaks(t);
  });
});

describe('job streams waiting for payment', () => {
  it('share one watch per job: fifty waiting streams cost one poll, not fifty, and all wake on payment', async () => {
    const t = await server({ SSE_POLL_MS: 50, JOB_STREAM_WAIT_S: 30, SSE_MAX_STREAMS_PER_IP: 100, SESSION_MAX_STREAMS: 100 });
    const a = await createJob(t, 'job a [stub:tokens=3] [stub:delay=1]');
    const b = await createJob(t, 'job b [stub:tokens=3] [stub:delay=1]');
    const streams = [...Array.from({ length: 40 }, () => a), ...Array.from({ length: 10 }, () => b)].map((j) => readSse(`${t.url}/api/jobs/${j.jobId}/stream`));
    // Every stream open (its slot statement sent) before the window: on a loaded machine the last ones are still
    // opening when the two watches exist, and their opening statements are not polls.
    await waitFor(() => t.ctx.jobWaits.size === 2 && t.ctx.streams.size === 1 && t.ctx.sse.size === 50, { what: 'fifty waiting streams' });
    let checkouts = 0;
    const count = () => checkouts++;
    t.ctx.database.pool.on('acquire', count);
    await new Promise((r) => setTimeout(r, 1_000)); // the window we measure
    t.ctx.database.pool.off('acquire', count);
    // One statement per poll (every 50 ms) for both jobs: about 20 in a second. Fifty pollers made about 1000.
    expect(checkouts).toBeLessThan(60);
    for (const j of [a, b]) {
      await pay(t, j.evalInvoice.paymentHash);
      const quoted = await waitJob(t, j.jobId, ['awaiting_work_payment']);
      await pay(t, quoted.workInvoice.paymentHash);
    }
    const results = await Promise.all(streams);
    expect(results.every((res) => res.events.at(-1)?.event === 'done')).toBe(true);
    await waitFor(() => t.ctx.jobWaits.size === 0, { what: 'no watch left' });
    await expectNoLeaks(t);
  });
});
