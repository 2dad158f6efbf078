import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { paidSession, postRequest, type PaidSession } from './helpers/sessions.js';

/**
 * The queue itself (runs/queue.ts), driven statement by statement: an `api` process queues every run it accepts
 * and executes none, so the claims here are the only ones.
 */
let t: TestServer;
let a: PaidSession;
let b: PaidSession;
beforeAll(async () => {
  t = await startTestServer({ PROCESS_ROLE: 'api', SESSION_RATE_LIMIT_PER_MIN: 0 });
  a = await paidSession(t, 10_000);
  b = await paidSession(t, 10_000);
});
afterAll(() => t.close());
// Finish what a test claimed or left queued, so the next starts from an empty queue.
afterEach(() => t.ctx.database.pool.query(`update runs set state = 'cancelled', lease_owner = null where state in ('queued','executing')`));

const opts = (o: Partial<{ owner: string; sessionCap: number }> = {}) => ({ owner: 'tester', leaseTtlS: 60, sessionCap: 100, window: 64, ...o });
const queued = async () => (await t.ctx.database.pool.query(`select count(*)::int as n from runs where state = 'queued'`)).rows[0].n as number;

describe('the queue', () => {
  it('an api process queues what it accepts, unowned, attempt 0, and executes nothing', async () => {
    const r = await postRequest(t, a, 'queued [stub:tokens=2]');
    const row = await t.ctx.store.get(r.requestId);
    expect(row).toMatchObject({ state: 'queued', leaseOwner: null, leaseExpiresAt: null, attempt: 0 });
    expect(t.ctx.executor.stats().running).toBe(0);
    const health = await t.http.get('/api/healthz').expect(200);
    expect(health.body).toMatchObject({ status: 'ok', role: 'api' });
  });

  it('claims in order of acceptance, round-robin across sessions, each claim attempt + 1', async () => {
    const as: string[] = [];
    for (let i = 0; i < 4; i++) as.push((await postRequest(t, a, `a${i}`)).requestId);
    const bs: string[] = [];
    for (let i = 0; i < 2; i++) bs.push((await postRequest(t, b, `b${i}`)).requestId);
    const got = await t.ctx.queue.claim(4, opts());
    expect(got.map((r) => r.id)).toEqual([as[0], bs[0], as[1], bs[1]]);
    for (const r of got) expect(r).toMatchObject({ state: 'executing', leaseOwner: 'tester', attempt: 1, seqCeiling: 64 });
    expect((await t.ctx.queue.claim(10, opts())).map((r) => r.id)).toEqual([as[2], as[3]]);
    expect(await t.ctx.queue.claim(10, opts())).toEqual([]);
  });

  it('never lets one session run more than the cap at once', async () => {
    for (let i = 0; i < 5; i++) await postRequest(t, a, `capped ${i}`);
    const bRun = (await postRequest(t, b, 'other session')).requestId;
    const first = await t.ctx.queue.claim(10, opts({ sessionCap: 2 }));
    expect(first).toHaveLength(3);
    expect(first.filter((r) => r.sessionId === a.id)).toHaveLength(2);
    expect(first.map((r) => r.id)).toContain(bRun);
    // A's two still execute: nothing more of A.
    expect(await t.ctx.queue.claim(10, opts({ sessionCap: 2 }))).toEqual([]);
    // One of them ends: one more of A may start.
    await t.ctx.database.pool.query(`update runs set state = 'complete' where id = $1`, [first.find((r) => r.sessionId === a.id)!.id]);
    expect(await t.ctx.queue.claim(10, opts({ sessionCap: 2 }))).toHaveLength(1);
  });

  it('claimers racing never take the same run twice, and together take them all', async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 24; i++) ids.add((await postRequest(t, i % 2 ? a : b, `race ${i}`)).requestId);
    const claims = await Promise.all(Array.from({ length: 6 }, (_, i) => t.ctx.queue.claim(5, opts({ owner: `w${i}` }))));
    const taken = claims.flat().map((r) => r.id);
    expect(new Set(taken).size).toBe(taken.length);
    const rest = await t.ctx.queue.claim(24, opts());
    expect(new Set([...taken, ...rest.map((r) => r.id)])).toEqual(ids);
    expect(await queued()).toBe(0);
  });

  it('a stop of a queued run finishes it where it waits, refunded in full; no claim takes it', async () => {
    const r = await postRequest(t, a, 'stop me while queued');
    const before = (await t.http.get(`/api/sessions/${a.id}`).set(a.auth).expect(200)).body.balanceSats;
    await t.http.post(`/api/runs/${r.requestId}/stop`).set(a.auth).expect(202);
    expect(await t.ctx.store.get(r.requestId)).toMatchObject({ state: 'cancelled', refundedSats: r.debitedSats, chargedSats: 0, startedAt: null });
    expect((await t.http.get(`/api/sessions/${a.id}`).set(a.auth).expect(200)).body.balanceSats).toBe(before + r.debitedSats);
    expect(await t.ctx.queue.claim(10, opts())).toEqual([]);
  });
});

describe('fencing', () => {
  it('a write of an attempt that was taken over is refused: tokens, heartbeat and finish', async () => {
    const r = await postRequest(t, a, 'fenced');
    const [mine] = await t.ctx.queue.claim(1, opts({ owner: 'stale' }));
    expect(mine!.attempt).toBe(1);
    // Its lease is taken over: same owner name even, but a later attempt (the worst case for a name-only fence).
    await t.ctx.database.pool.query(`update runs set attempt = 2 where id = $1`, [r.requestId]);
    const event = { seq: 1, type: 'token' as const, data: { content: 'late' } };
    expect(await t.ctx.store.appendTokens(r.requestId, 'stale', 1, [event], 'late', 1, 64)).toBe('lost');
    expect(await t.ctx.store.renewLeases('stale', 60, [{ id: r.requestId, attempt: 1 }])).toEqual({ stops: [], lost: [r.requestId] });
    const row = await t.ctx.store.get(r.requestId);
    expect(row).toMatchObject({ state: 'executing', lastSeq: 0, result: '', attempt: 2 });
    expect(await t.ctx.store.eventsAfter(r.requestId, 0)).toEqual([]);
    // The current attempt writes.
    expect(await t.ctx.store.appendTokens(r.requestId, 'stale', 2, [event], 'late', 1, 64)).toBe('ok');
  });
});
