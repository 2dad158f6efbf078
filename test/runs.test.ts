import { eq } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ledgerEntries, runEvents, runs } from '../src/db/schema.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { pay, quotedJob, waitJob } from './helpers/jobs.js';
import { expectLedgerBalanced, expectNoLeaks, paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { idsOf, readSse, tokensOf } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';

let t: TestServer;
let a: PaidSession;
let b: PaidSession;
beforeAll(async () => {
  t = await startTestServer();
  a = await paidSession(t, 10_000);
  b = await paidSession(t, 10_000);
});
afterAll(() => t.close());
afterEach(() => expectNoLeaks(t));

const getRun = (s: PaidSession, id: string) => t.http.get(`/api/runs/${id}`).set(s.auth);
const stream = (s: PaidSession, id: string, headers: Record<string, string> = {}, until?: NonNullable<Parameters<typeof readSse>[1]>['until']) =>
  readSse(`${t.url}/api/runs/${id}/stream`, { headers: { ...s.auth, ...headers }, until });

describe('runs API', () => {
  it('gets a run with its links; a session request id is its run id', async () => {
    const r = await postRequest(t, a, 'runs api [stub:tokens=4] [stub:delay=1]');
    const live = (await getRun(a, r.requestId).expect(200)).body;
    expect(live).toMatchObject({ runId: r.requestId, kind: 'session', request: 'runs api [stub:tokens=4] [stub:delay=1]', debitedSats: r.debitedSats });
    expect(live.links).toEqual({ self: `/api/runs/${r.requestId}`, stream: `/api/runs/${r.requestId}/stream`, stop: `/api/runs/${r.requestId}/stop` });
    await waitFinal(t, a, r.requestId);
    const done = (await getRun(a, r.requestId).expect(200)).body;
    expect(done).toMatchObject({ state: 'complete', usage: { outputTokens: 4 } });
    expect(done.chargedSats + done.refundedSats).toBe(done.debitedSats);
  });

  it('lists only the caller runs, newest first, by state, with a cursor that only works for its session', async () => {
    const s = await paidSession(t, 5000);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await postRequest(t, s, `list ${i} [stub:tokens=1] [stub:delay=0]`)).requestId);
    const failing = (await postRequest(t, s, 'list fail [stub:fail] [stub:delay=0]')).requestId;
    ids.push(failing);
    for (const id of ids) await waitFinal(t, s, id);

    const page1 = (await t.http.get('/api/runs').query({ limit: 4 }).set(s.auth).expect(200)).body;
    expect(page1.data.map((r: { runId: string }) => r.runId)).toEqual(ids.slice().reverse().slice(0, 4));
    expect(page1.nextCursor).toEqual(expect.any(String));
    const page2 = (await t.http.get('/api/runs').query({ limit: 4, cursor: page1.nextCursor }).set(s.auth).expect(200)).body;
    expect(page2.data.map((r: { runId: string }) => r.runId)).toEqual(ids.slice().reverse().slice(4));
    expect(page2.nextCursor).toBeNull();

    const failed = (await t.http.get('/api/runs').query({ state: 'failed' }).set(s.auth).expect(200)).body;
    expect(failed.data.map((r: { runId: string }) => r.runId)).toEqual([failing]);
    const all = (await t.http.get('/api/runs').set(s.auth).expect(200)).body;
    expect(all.data).toHaveLength(6);

    // Another session's cursor, a forged one, bad limits and states: 400.
    const other = await t.http.get('/api/runs').query({ cursor: page1.nextCursor }).set(b.auth).expect(400);
    expect(other.body.error.code).toBe('invalid_cursor');
    await t.http.get('/api/runs').query({ cursor: 'garbage' }).set(s.auth).expect(400);
    for (const q of [{ limit: 0 }, { limit: 101 }, { limit: 'ten' }, { state: 'sleeping' }]) {
      const res = await t.http.get('/api/runs').query(q).set(s.auth).expect(400);
      expect(res.body.error.code).toBe('invalid_request');
    }
    await t.http.get('/api/runs').expect(401);
  });

  it('hides a run of another session on every endpoint (404), and 401s without a token', async () => {
    const r = await postRequest(t, a, 'private [stub:tokens=30] [stub:delay=20]');
    await getRun(b, r.requestId).expect(404);
    expect((await stream(b, r.requestId)).status).toBe(404);
    await t.http.post(`/api/runs/${r.requestId}/stop`).set(b.auth).expect(404);
    await t.http.delete(`/api/runs/${r.requestId}`).set(b.auth).expect(404);
    const missing = await getRun(b, '00000000-0000-4000-8000-000000000000').expect(404);
    expect(missing.body.error.code).toBe('not_found');
    await t.http.get(`/api/runs/${r.requestId}`).expect(401);
    await t.http.post(`/api/runs/${r.requestId}/stop`).expect(401);
    await t.http.delete(`/api/runs/${r.requestId}`).expect(401);
    expect((await readSse(`${t.url}/api/runs/${r.requestId}/stream`)).status).toBe(401);
    // B's attempts changed nothing.
    expect((await waitFinal(t, a, r.requestId)).state).toBe('complete');
  });

  it('streams with a run frame first (no id), then replay; closing does not stop the run; Last-Event-ID replays exactly the gap', async () => {
    const r = await postRequest(t, a, 'stream me [stub:tokens=30] [stub:delay=15]');
    const first = await stream(a, r.requestId, {}, (e) => e.id === '10');
    expect(first.events[0]).toEqual({ id: undefined, event: 'run', data: { runId: r.requestId, state: expect.stringMatching(/queued|executing/) } });
    expect(idsOf(first.events)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    // The connection is closed: the run goes on.
    await waitFor(() => t.ctx.registry.stats().subscribers === 0, { what: 'detach' });
    expect(['executing', 'queued']).toContain((await getRun(a, r.requestId)).body.state);
    const rest = await stream(a, r.requestId, { 'Last-Event-ID': '10' });
    expect(rest.events[0]!.event).toBe('run');
    expect(idsOf(rest.events)).toEqual(Array.from({ length: 21 }, (_, i) => i + 11));
    const all = [...tokensOf(first.events), ...tokensOf(rest.events)].join('');
    expect(rest.events.at(-1)!.data.result).toBe(all);
  });

  it('stop mid-stream: cancelled within a second, charged for the partial output, the rest refunded, ledger balanced', async () => {
    const before = (await expectLedgerBalanced(t, a)).balanceSats;
    const r = await postRequest(t, a, 'stop me [stub:tokens=400] [stub:delay=20]');
    const reading = stream(a, r.requestId);
    await waitFor(() => (t.ctx.registry.get(r.requestId)?.lastSeq ?? 0) >= 5, { what: 'five tokens' });
    const stopped = await t.http.post(`/api/runs/${r.requestId}/stop`).set(a.auth).expect(202);
    expect(stopped.body).toEqual({ runId: r.requestId, state: 'cancelling' });
    const startedAt = Date.now();
    const { events } = await reading;
    expect(Date.now() - startedAt).toBeLessThan(1000);
    const last = events.at(-1)!;
    expect(last).toMatchObject({ event: 'done', data: { state: 'cancelled' } });
    expect(last.data.result).toBe(tokensOf(events).join(''));
    const run = (await getRun(a, r.requestId).expect(200)).body;
    expect(run.state).toBe('cancelled');
    expect(run.usage.outputTokens).toBe(tokensOf(events).length);
    expect(run.usage.outputTokens).toBeLessThan(400);
    expect(run.chargedSats).toBeGreaterThan(0);
    expect(run.refundedSats).toBe(run.debitedSats - run.chargedSats);
    const ledger = await expectLedgerBalanced(t, a);
    expect(ledger.balanceSats).toBe(before - run.chargedSats);

    // Stop twice is harmless: 200 with the run, no second refund.
    const again = await t.http.post(`/api/runs/${r.requestId}/stop`).set(a.auth).expect(200);
    expect(again.body).toMatchObject({ runId: r.requestId, state: 'cancelled' });
    expect((await expectLedgerBalanced(t, a)).balanceSats).toBe(before - run.chargedSats);
  });

  it('cancels a queued run at once with a full refund', async () => {
    // A database of its own: a sibling would share the queue with `t`, whose free slots would claim the run.
    const q = await startTestServer({ MAX_CONCURRENT_RUNS: 1 });
    try {
      const s = await paidSession(q, 1000);
      const busy = await postRequest(q, s, 'hog [stub:tokens=200] [stub:delay=20]');
      const queued = await postRequest(q, s, 'waiting [stub:tokens=5]');
      expect((await q.http.get(`/api/runs/${queued.requestId}`).set(s.auth).expect(200)).body.state).toBe('queued');
      await q.http.post(`/api/runs/${queued.requestId}/stop`).set(s.auth).expect(202);
      const run = await waitFinal(q, s, queued.requestId);
      expect(run).toMatchObject({ state: 'cancelled', chargedSats: 0, refundedSats: queued.debitedSats, startedAt: null });
      const { events } = await readSse(`${q.url}/api/runs/${queued.requestId}/stream`, { headers: s.auth });
      expect(events.map((e) => e.event)).toEqual(['run', 'done']);
      await q.http.post(`/api/runs/${busy.requestId}/stop`).set(s.auth).expect(202);
      await waitFinal(q, s, busy.requestId);
      await expectLedgerBalanced(q, s);
      await expectNoLeaks(q);
    } finally {
      await q.close();
    }
  });

  it('stops a run held by another process through Postgres', async () => {
    const other = await t.sibling();
    try {
      const r = await postRequest(other, a, 'remote [stub:tokens=300] [stub:delay=20]');
      await waitFor(async () => ((await t.ctx.store.get(r.requestId))?.lastSeq ?? 0) >= 3, { what: 'tokens in Postgres' });
      // This process does not hold the run: it asks its owner through the row.
      await t.http.post(`/api/runs/${r.requestId}/stop`).set(a.auth).expect(202);
      const final = await waitFinal(t, a, r.requestId, 2000);
      expect(final.state).toBe('cancelled');
      await expectNoLeaks(other);
    } finally {
      await other.close();
    }
  });

  it('delete: 409 while active, then 204; events and text gone, ledger rows stay', async () => {
    const r = await postRequest(t, a, 'forget me [stub:tokens=40] [stub:delay=10]');
    const busy = await t.http.delete(`/api/runs/${r.requestId}`).set(a.auth).expect(409);
    expect(busy.body.error.code).toBe('run_active');
    await waitFinal(t, a, r.requestId);
    await t.http.delete(`/api/runs/${r.requestId}`).set(a.auth).expect(204);
    await getRun(a, r.requestId).expect(404);
    await t.http.get(`/api/sessions/${a.id}/requests/${r.requestId}`).set(a.auth).expect(404);
    expect((await stream(a, r.requestId)).status).toBe(404);
    await t.http.delete(`/api/runs/${r.requestId}`).set(a.auth).expect(404);
    expect(await t.ctx.db.select().from(runs).where(eq(runs.id, r.requestId))).toHaveLength(0);
    expect(await t.ctx.db.select().from(runEvents).where(eq(runEvents.runId, r.requestId))).toHaveLength(0);
    const money = await t.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.runId, r.requestId));
    expect(money.map((m) => m.kind).sort()).toEqual(['debit', 'refund']);
    await expectLedgerBalanced(t, a);
  });

  it('serves a finished run from memory, then from Postgres once evicted (TTL 0)', async () => {
    const cold = await t.sibling({ RUN_MEMORY_TTL_S: 0 });
    try {
      const s = await paidSession(cold, 1000);
      const r = await postRequest(cold, s, 'evicted [stub:tokens=7] [stub:delay=0]');
      await waitFinal(cold, s, r.requestId);
      await expectNoLeaks(cold);
      expect(cold.ctx.recent.size).toBe(0);
      const list = (await cold.http.get('/api/runs').set(s.auth).expect(200)).body;
      expect(list.data.map((x: { runId: string }) => x.runId)).toContain(r.requestId);
      expect((await cold.http.get(`/api/runs/${r.requestId}`).set(s.auth).expect(200)).body.state).toBe('complete');
      const { events } = await readSse(`${cold.url}/api/runs/${r.requestId}/stream`, { headers: s.auth });
      expect(idsOf(events)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    } finally {
      await cold.close();
    }
    // With the default TTL the same run is answered from memory without Postgres.
    const r2 = await postRequest(t, a, 'warm [stub:tokens=3] [stub:delay=0]');
    await waitFinal(t, a, r2.requestId);
    expect(t.ctx.recent.get(r2.requestId)?.events?.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    const { events } = await stream(a, r2.requestId);
    expect(idsOf(events)).toEqual([1, 2, 3, 4]);
  });

  it('does not list or expose job runs (they are reached through their job)', async () => {
    const quoted = await quotedJob(t, 'a job [stub:tokens=2] [stub:delay=0]');
    await pay(t, quoted.workInvoice.paymentHash);
    await waitJob(t, quoted.jobId, ['complete']);
    const [job] = await t.ctx.db.execute<{ run_id: string }>(
      (await import('drizzle-orm')).sql`select run_id from jobs where id = ${quoted.jobId}`,
    ).then((r) => r.rows);
    await getRun(a, job!.run_id).expect(404);
  });

  it('sweeps finished runs past retention, with their events, and keeps the money', async () => {
    const r = await postRequest(t, a, 'old [stub:tokens=2] [stub:delay=0]');
    await waitFinal(t, a, r.requestId);
    await t.ctx.db.update(runs).set({ completedAt: new Date(Date.now() - 31 * 86_400_000) }).where(eq(runs.id, r.requestId));
    t.ctx.recent.delete(r.requestId);
    await t.ctx.maintenance.sweep();
    await getRun(a, r.requestId).expect(404);
    expect(await t.ctx.db.select().from(ledgerEntries).where(eq(ledgerEntries.runId, r.requestId))).toHaveLength(2);
  });
});

describe('review fixes', () => {
  it('400s a cursor whose timestamp Postgres would refuse', async () => {
    // Year 0000 has the exact form we write, and JavaScript takes it, but Postgres has no year zero.
    for (const ts of ['Tuesday 2020', '2020-02-30T00:00:00.000000Z', '-271821-04-20T00:00:00.000Z', '0000-01-01T00:00:00.000000Z', '0000-06-15T12:00:00.000000Z']) {
      const cursor = Buffer.from(JSON.stringify({ s: a.id, t: ts, i: '00000000-0000-4000-8000-000000000000' })).toString('base64url');
      const res = await t.http.get('/api/runs').query({ cursor }).set(a.auth);
      expect(res.status, ts).toBe(400);
    }
  });

  it('a cursor past the end of a run in memory still gets the final event', async () => {
    const r = await postRequest(t, a, 'past the end [stub:tokens=3] [stub:delay=0]');
    await waitFinal(t, a, r.requestId);
    expect(t.ctx.recent.get(r.requestId)?.events).toBeTruthy();
    const { events } = await stream(a, r.requestId, { 'Last-Event-ID': '99' });
    expect(events.map((e) => e.event)).toEqual(['run', 'done']);
  });
});
