import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, expectNoLeaks, paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { readSse, tokensOf } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';

/**
 * Odd but legal HTTP on both faces, each case a defect an adversarial pass found: what a client sends that the
 * fuzzers (test/fuzz*.test.ts) do not — HEAD on the stream routes, repeated and malformed resume cursors, ids of
 * the other door — gets a clear answer and leaves nothing held.
 */
let t: TestServer;
let s: PaidSession;
beforeAll(async () => {
  t = await startTestServer({ STUB_TOKEN_DELAY_MS: 20, STUB_OUTPUT_TOKENS: 4, SESSION_RATE_LIMIT_PER_MIN: 0 });
  s = await paidSession(t, 10_000);
});
afterAll(() => t.close());

/**
 * Two requests on one keep-alive connection, the second sent once the first's head has arrived: the raw bytes
 * that came back by the deadline (a client pool reuses connections just so).
 */
async function twoOnOneConnection(first: string, second: string, deadlineMs: number): Promise<string> {
  const sock = net.connect(Number(new URL(t.url).port), '127.0.0.1');
  let got = '';
  sock.on('data', (d) => (got += d.toString('latin1')));
  try {
    sock.write(first);
    await waitFor(() => got.includes('\r\n\r\n'), { timeoutMs: 5000, what: 'the head of the first answer' });
    sock.write(second);
    await waitFor(() => got.includes('"status":"ok"'), { timeoutMs: deadlineMs, what: `the second answer (got ${JSON.stringify(got.slice(0, 300))})` });
    return got;
  } finally {
    sock.destroy();
  }
}

describe('HEAD on a stream route', () => {
  const healthz = 'GET /api/healthz HTTP/1.1\r\nHost: x\r\n\r\n';

  it('answers the head and ends: the connection is free and no stream slot is held while the run goes on', async () => {
    const { requestId } = await postRequest(t, s, 'a long one [stub:tokens=400]');
    const v = await t.http.post('/v1/responses').set(s.auth).send({ input: 'another [stub:tokens=400]', background: true }).expect(200);
    const job = (await t.http.post('/api/jobs').send({ request: 'unpaid' }).expect(201)).body;
    const auth = `Authorization: Bearer ${s.token}\r\n`;
    for (const [path, headers] of [
      [`/api/runs/${requestId}/stream`, auth],
      [`/api/sessions/${s.id}/requests/${requestId}/stream`, auth],
      [`/v1/responses/${v.body.id}?stream=true`, auth],
      // Unpaid: a GET would wait JOB_STREAM_WAIT_S (90 s) for the payment.
      [`/api/jobs/${job.jobId}/stream`, ''],
    ] as const) {
      const got = await twoOnOneConnection(`HEAD ${path} HTTP/1.1\r\nHost: x\r\n${headers}\r\n`, healthz, 2000);
      expect(got, path).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*content-type: text\/event-stream/i);
      // Nothing of a stream is held for a HEAD, though both runs still execute.
      await waitFor(() => t.ctx.limits.streamSlotsHeld === 0 && t.ctx.streams.size === 0, { timeoutMs: 2000, what: `${path}: slots given back` });
    }
    expect((await t.http.get(`/api/runs/${requestId}`).set(s.auth).expect(200)).body.state).toBe('executing');
    // A HEAD of what does not exist is the GET's 404, as before.
    const missing = await twoOnOneConnection(`HEAD /api/runs/${crypto.randomUUID()}/stream HTTP/1.1\r\nHost: x\r\n${auth}\r\n`, healthz, 2000);
    expect(missing).toMatch(/^HTTP\/1\.1 404/);

    await t.http.post(`/api/runs/${requestId}/stop`).set(s.auth).expect(202);
    await t.http.post(`/v1/responses/${v.body.id}/cancel`).set(s.auth).expect(200);
    await waitFinal(t, s, requestId);
    await expectNoLeaks(t);
    await expectLedgerBalanced(t, s);
  });
});

describe('resume cursors', () => {
  it('/v1: starting_after is digits or a 400, never a number coerced from something else', async () => {
    const r = await t.http.post('/v1/responses').set(s.auth).send({ input: 'short [stub:tokens=2]' }).expect(200);
    for (const bad of ['', '%20', '0x10', '1e3', '-0', '1.0', '+1', String(2 ** 31)]) {
      const res = await t.http.get(`/v1/responses/${r.body.id}?stream=true&starting_after=${bad}`).set(s.auth);
      expect(res.status, bad).toBe(400);
      expect(res.body.error, bad).toMatchObject({ type: 'invalid_request_error', param: 'starting_after' });
    }
    // What the SDK sends still resumes: after response.created (0), from response.in_progress on.
    const ok = await t.http.get(`/v1/responses/${r.body.id}?stream=true&starting_after=0`).set(s.auth).buffer(true).parse((res, cb) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => cb(null, text));
    });
    expect(ok.status).toBe(200);
    expect(ok.body).toMatch(/^retry: \d+\n\nid: 1\nevent: response\.in_progress\n/);
  });

  it('/api: a repeated starting_after is a 400, not the whole replay', async () => {
    const { requestId } = await postRequest(t, s, 'short [stub:tokens=2]');
    await waitFinal(t, s, requestId);
    const res = await t.http.get(`/api/runs/${requestId}/stream?starting_after=1&starting_after=2`).set(s.auth);
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({ code: 'invalid_request', message: expect.stringMatching(/starting_after/) });
  });
});

describe('ids of the other door', () => {
  it('previous_response_id naming a chat completion or an /api request is not found, as its GET is', async () => {
    const chat = await t.http.post('/v1/chat/completions').set(s.auth).send({ messages: [{ role: 'user', content: 'hi [stub:tokens=2]' }] }).expect(200);
    const { requestId } = await postRequest(t, s, 'hi [stub:tokens=2]');
    await waitFinal(t, s, requestId);
    const before = (await expectLedgerBalanced(t, s)).balanceSats;
    for (const id of [`resp_${chat.body.id.slice('chatcmpl-'.length)}`, `resp_${requestId.replaceAll('-', '')}`]) {
      await t.http.get(`/v1/responses/${id}`).set(s.auth).expect(404);
      const res = await t.http.post('/v1/responses').set(s.auth).send({ input: 'go on', previous_response_id: id });
      expect(res.status, id).toBe(400);
      expect(res.body.error).toMatchObject({ param: 'previous_response_id', code: 'previous_response_not_found' });
    }
    expect((await expectLedgerBalanced(t, s)).balanceSats).toBe(before);
  });
});

describe('a UUID in any case is one id', () => {
  it('an upper-case job id does not open a job stream past its SESSION_MAX_STREAMS', async () => {
    const x = await startTestServer({ SESSION_MAX_STREAMS: 1 });
    try {
      const job = (await x.http.post('/api/jobs').send({ request: 'unpaid' }).expect(201)).body;
      // Unpaid: the first stream waits for the payment, holding the job's one slot.
      const first = new AbortController();
      const open = await fetch(`${x.url}/api/jobs/${job.jobId}/stream`, { signal: first.signal });
      expect(open.status).toBe(200);
      const second = await fetch(`${x.url}/api/jobs/${job.jobId.toUpperCase()}/stream`);
      expect(second.status).toBe(429);
      expect((await second.json()).error.code).toBe('rate_limited');
      first.abort();
      await waitFor(() => x.ctx.limits.streamSlotsHeld === 0, { timeoutMs: 5000, what: 'the slot given back' });
    } finally {
      await x.close();
    }
  });

  it('a session answers to its id in upper case, as its runs do', async () => {
    const up = s.id.toUpperCase();
    expect((await t.http.get(`/api/sessions/${up}`).set(s.auth)).status).toBe(200);
    const { requestId } = await postRequest(t, s, 'hi [stub:tokens=2]');
    await waitFinal(t, s, requestId);
    // A live run found by its id in upper case is the live run: its stream has every token, as it comes.
    const live = await postRequest(t, s, 'live [stub:tokens=5] [stub:delay=20]');
    const streamed = await readSse(`${t.url}/api/runs/${live.requestId.toUpperCase()}/stream`, { headers: s.auth });
    expect(tokensOf(streamed.events)).toHaveLength(5);
    expect(streamed.events.at(-1)?.event).toBe('done');
    const r = await t.http.get(`/api/sessions/${up}/requests/${requestId.toUpperCase()}`).set(s.auth).expect(200);
    expect(r.body).toMatchObject({ requestId, sessionId: s.id });
    const posted = await t.http.post(`/api/sessions/${up}/request`).set(s.auth).send({ request: 'hi [stub:tokens=2]' });
    expect(posted.status).toBe(202);
    expect(posted.body.sessionId).toBe(s.id);
    expect(posted.headers.location).toBe(`/api/sessions/${s.id}/requests/${posted.body.requestId}`);
    await waitFinal(t, s, posted.body.requestId);
  });

  it("an upper-case session id does not start a run past the session's SESSION_MAX_CONCURRENT_RUNS", async () => {
    const x = await startTestServer({ SESSION_MAX_CONCURRENT_RUNS: 1, SESSION_RATE_LIMIT_PER_MIN: 0 });
    try {
      const p = await paidSession(x, 10_000);
      const long = await x.http.post(`/api/sessions/${p.id}/request`).set(p.auth).send({ request: 'long [stub:tokens=50] [stub:delay=50]' }).expect(202);
      const stateOf = async (id: string) => (await x.http.get(`/api/sessions/${p.id}/requests/${id}`).set(p.auth).expect(200)).body.state;
      await waitFor(async () => (await stateOf(long.body.requestId)) === 'executing', { what: 'the first run executing' });
      // The same session, its id spelled in upper case: its one run is running, so this one waits in the queue (split
      // by case, it would start at once beside it, and its one token be done in a few ms).
      const second = await x.http.post(`/api/sessions/${p.id.toUpperCase()}/request`).set(p.auth).send({ request: 'next [stub:tokens=1] [stub:delay=1]' }).expect(202);
      expect(x.ctx.registry.get(second.body.requestId)).toBeUndefined();
      expect(await stateOf(second.body.requestId)).toBe('queued');
      expect(await stateOf(long.body.requestId)).toBe('executing');
      await x.http.post(`/api/runs/${long.body.requestId}/stop`).set(p.auth).expect(202);
      await waitFinal(x, p, second.body.requestId);
      await expectLedgerBalanced(x, p);
    } finally {
      await x.close();
    }
  });
});
