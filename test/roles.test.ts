import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { createJob, pay, waitJob } from './helpers/jobs.js';
import { expectLedgerBalanced, expectNoLeaks, paidSession, postRequest, waitFinal } from './helpers/sessions.js';
import { readSse, tokensOf } from './helpers/sse.js';
import { createStubAiProvider } from '../src/providers/ai/stub.js';
import type { AiProvider } from '../src/providers/ai/types.js';
import { BUS_CHANNEL } from '../src/bus-bridge.js';
import { waitFor } from './helpers/wait.js';

/**
 * Every face works on an `api` process whose runs all execute elsewhere (here a `worker` context in this process,
 * on the same database): the answers that wait on a run (the demo, `/v1` without `background`, a job) wait on it
 * through Postgres and its notifications, never on an executor of their own.
 */
let api: TestServer;
let worker: TestServer;
beforeAll(async () => {
  api = await startTestServer({ PROCESS_ROLE: 'api' });
  worker = await api.sibling({ PROCESS_ROLE: 'worker' });
});
afterAll(async () => {
  await worker.close();
  await api.close();
});

describe('an api process', () => {
  it('executes nothing: a session request runs on the worker and streams from the api', async () => {
    const s = await paidSession(api, 2000);
    const r = await postRequest(api, s, 'on the worker [stub:tokens=6] [stub:delay=2]');
    expect(r.state).toBe('queued');
    const { events } = await readSse(`${api.url}/api/sessions/${s.id}/requests/${r.requestId}/stream`, { headers: s.auth });
    expect(events.at(-1)).toMatchObject({ event: 'done', data: { state: 'complete', result: tokensOf(events).join('') } });
    expect(api.ctx.executor.stats().running).toBe(0);
    expect((await api.ctx.store.get(r.requestId))?.attempt).toBe(1);
    await expectLedgerBalanced(api, s);
    await expectNoLeaks(api);
  });

  it('answers /v1 responses and chat completions that wait for their run', async () => {
    const s = await paidSession(api, 2000);
    const client = new OpenAI({ baseURL: `${api.url}/v1`, apiKey: s.token });
    const resp = await client.responses.create({ model: 'sluice-stub', input: 'sync [stub:tokens=4] [stub:delay=1]' });
    expect(resp.status).toBe('completed');
    expect(resp.output_text.length).toBeGreaterThan(0);
    const chat = await client.chat.completions.create({ model: 'sluice-stub', messages: [{ role: 'user', content: 'chat [stub:tokens=3] [stub:delay=1]' }] });
    expect(chat.choices[0]!.finish_reason).toBe('stop');
    await expectLedgerBalanced(api, s);
  });

  it('serves the demo and a paid job', async () => {
    const demo = await api.http.get('/api/demo').query({ request: 'demo [stub:tokens=2] [stub:delay=0]' });
    expect(demo.status, JSON.stringify(demo.body)).toBe(200);
    const job = await createJob(api, 'a job [stub:tokens=3] [stub:delay=1]');
    await pay(api, job.evalInvoice.paymentHash);
    const quoted = await waitJob(api, job.jobId, ['awaiting_work_payment']);
    await pay(api, quoted.workInvoice.paymentHash);
    expect((await waitJob(api, job.jobId, ['complete'])).state).toBe('complete');
  });

  it('stops a run executing on the worker', async () => {
    const s = await paidSession(api, 2000);
    const running = await postRequest(api, s, 'long [stub:tokens=500] [stub:delay=20]');
    await api.http.post(`/api/runs/${running.requestId}/stop`).set(s.auth).expect(202);
    expect((await waitFinal(api, s, running.requestId)).state).toBe('cancelled');
    await expectLedgerBalanced(api, s);
  });
});

describe('job evaluations across processes', () => {
  it('an evaluation paid through an api process is heard by every worker; exactly one asks the provider', async () => {
    let evaluations = 0;
    const stub = createStubAiProvider({ tokenDelayMs: 1, outputTokens: 3 });
    const counting: AiProvider = { ...stub, name: 'stub', stream: stub.stream.bind(stub), evaluate: (req, signal) => (evaluations++, stub.evaluate(req, signal)) };
    const a = await startTestServer({ PROCESS_ROLE: 'api' }, { ai: counting });
    const b = await a.sibling({ PROCESS_ROLE: 'worker' });
    const c = await a.sibling({ PROCESS_ROLE: 'worker' });
    try {
      for (let i = 0; i < 3; i++) {
        const before = evaluations;
        const job = await createJob(a, `evaluate once ${i} [stub:tokens=2] [stub:delay=1]`);
        await pay(a, job.evalInvoice.paymentHash);
        await waitJob(b, job.jobId, ['awaiting_work_payment']);
        await Promise.all([a, b, c].map((t) => t.ctx.jobs.drain()));
        expect(evaluations - before).toBe(1);
      }
    } finally {
      await c.close();
      await b.close();
      await a.close();
    }
  });
  it('a process that hears of an evaluation after another claimed it leaves it alone (the claim is on the paid-for timestamp)', async () => {
    // The first evaluation waits at a gate, so it is still running when the notice is heard again.
    let evaluations = 0;
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const stub = createStubAiProvider({ tokenDelayMs: 1, outputTokens: 3 });
    const gated: AiProvider = {
      ...stub,
      name: 'stub',
      stream: stub.stream.bind(stub),
      evaluate: async (req, signal) => {
        if (++evaluations === 1) await gate;
        return stub.evaluate(req, signal);
      },
    };
    const a = await startTestServer({ PROCESS_ROLE: 'api' }, { ai: gated });
    const b = await a.sibling({ PROCESS_ROLE: 'worker' });
    // What the api process told the workers, as Postgres delivered it.
    const listener = await a.ctx.database.pool.connect();
    const heard: Array<{ e: string; p: { jobId: string; at: string } }> = [];
    listener.on('notification', (m) => {
      const msg = JSON.parse(m.payload ?? '{}');
      if (msg.e === 'job:evaluate') heard.push(msg);
    });
    await listener.query(`listen ${BUS_CHANNEL}`);
    let late: TestServer | undefined;
    try {
      const job = await createJob(a, 'evaluate once, late notice [stub:tokens=2] [stub:delay=1]');
      await pay(a, job.evalInvoice.paymentHash);
      const notice = await waitFor(() => heard.find((m) => m.p.jobId === job.jobId), { what: 'the job:evaluate notice' });
      await waitFor(() => evaluations === 1 || null, { what: 'the worker to claim the evaluation' });
      // A worker that hears the same notice only now (it started late, or its connection was slow): the job is
      // still evaluating, claimed by the other, and must stay the other's.
      late = await a.sibling({ PROCESS_ROLE: 'worker' });
      late.ctx.bus.emit('job:evaluate', notice.p);
      await late.ctx.jobs.drain();
      expect(evaluations).toBe(1);
      open();
      await waitJob(a, job.jobId, ['awaiting_work_payment']);
      await Promise.all([a, b, late].map((t) => t.ctx.jobs.drain()));
      expect(evaluations).toBe(1);
    } finally {
      open();
      await listener.query(`unlisten ${BUS_CHANNEL}`);
      listener.release();
      await late?.close();
      await b.close();
      await a.close();
    }
  });
});
