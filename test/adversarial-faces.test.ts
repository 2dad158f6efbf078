import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, expectNoLeaks, paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
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
