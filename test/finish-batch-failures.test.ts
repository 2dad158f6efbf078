import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countingStub, interceptFinishes } from './helpers/finishes.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { waitFor } from './helpers/wait.js';

/**
 * The group commit of owners' finishes (runs/finish.ts) when things go wrong: a run of the batch that is no longer
 * ours, a batch statement Postgres refuses, and a Postgres that refuses every finish. Each caller must get its own
 * outcome, every session refund must be credited once, and the retry-then-abandon path must still hand a run whose
 * end cannot be recorded to recovery. As in finish-batch.test.ts, the first finish is held on the wire until every
 * provider call has ended, so the others are certain to go as one batch behind it.
 */
const N = 6;
let t: TestServer;
let release: () => void = () => {};
let hold = false;
/** Finish statements (single or batch) to refuse, and whether single ones are refused too. */
let refuse = { batches: 0, singles: false };
let finishes: string[] = [];
const { ai, counter } = countingStub();
let undo = () => {};

beforeAll(async () => {
  undo = interceptFinishes((kind, send, args) => {
    finishes.push(kind);
    const go = () => {
      if (kind === 'batch' ? refuse.batches > 0 : refuse.singles) {
        if (kind === 'batch') refuse.batches--;
        // As Postgres refusing it: the pool calls back with the error.
        const err = Object.assign(new Error('refused by the test'), { code: '57P01' });
        const cb = args.find((a) => typeof a === 'function') as ((e: Error) => void) | undefined;
        if (cb) return void setImmediate(() => cb(err));
        return Promise.reject(err);
      }
      return send();
    };
    if (!hold) return go();
    hold = false;
    return new Promise<void>((r) => (release = r)).then(go);
  });
  t = await startTestServer({ LEASE_TTL_S: 600, SESSION_MAX_CONCURRENT_RUNS: 0, MAX_CONCURRENT_RUNS: 32 }, { ai });
});
afterAll(async () => {
  undo();
  await t.close();
});

/** N runs of two sessions whose provider calls have all ended, their finishes waiting (the first held, if `held`). */
async function endedRuns(tag: string, held: boolean) {
  const sessions: PaidSession[] = [await paidSession(t, 2000), await paidSession(t, 2000)];
  finishes = [];
  counter.ended = 0;
  hold = held;
  const runs: Array<{ s: PaidSession; id: string }> = [];
  for (let i = 0; i < N; i++) {
    const s = sessions[i % 2]!;
    runs.push({ s, id: (await postRequest(t, s, `${tag} ${i} [stub:tokens=2]`, { max_tokens: 50 })).requestId });
  }
  await waitFor(() => counter.ended >= N, { what: 'every provider call to end' });
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  return { sessions, runs };
}

/** Each session's refunds: one per run, each of exactly the run's `refundedSats`, the balance their sum. */
async function expectRefundedOnce(sessions: PaidSession[], runs: Array<{ s: PaidSession; id: string }>) {
  for (const s of sessions) {
    const ledger = await expectLedgerBalanced(t, s);
    const refunds = ledger.entries.filter((e) => e.kind === 'refund');
    const mine = runs.filter((r) => r.s === s);
    expect(refunds.map((e) => e.runId).sort()).toEqual(mine.map((r) => r.id).sort());
    for (const r of mine) {
      const final = await waitFinal(t, r.s, r.id);
      expect(refunds.find((e) => e.runId === r.id)!.amountSats).toBe(final.refundedSats);
    }
  }
}

describe('a batch of finishes', () => {
  it('with a run no longer ours: the others finish, it writes nothing (its new owner finishes it)', async () => {
    const { sessions, runs } = await endedRuns('stolen', true);
    const victim = runs[3]!;
    // Taken over by another process while its finish waited in the batch (the attempt moved on).
    await t.ctx.database.pool.query(`update runs set attempt = attempt + 1, lease_owner = 'another-process' where id = $1`, [victim.id]);
    release();
    for (const r of runs.filter((r) => r !== victim)) expect((await waitFinal(t, r.s, r.id)).state).toBe('complete');
    expect(finishes.slice(0, 2)).toEqual(['single', 'batch']);
    await waitFor(() => !t.ctx.registry.get(victim.id), { what: 'the victim let go here' });
    const row = (await t.ctx.database.pool.query(`select state, lease_owner, refunded_sats from runs where id = $1`, [victim.id])).rows[0];
    expect(row).toEqual({ state: 'executing', lease_owner: 'another-process', refunded_sats: 0 });
    // Its new owner's end (here: recovery, unfenced) is the one recorded, refunded once.
    expect(await t.ctx.executor.interruptOrphan(victim.id)).toBe(true);
    expect((await waitFinal(t, victim.s, victim.id)).state).toBe('interrupted');
    await expectRefundedOnce(sessions, runs);
  });

  it('refused as a whole: each run is written alone, each settled once', async () => {
    refuse = { batches: 1, singles: false };
    const { sessions, runs } = await endedRuns('refused', true);
    release();
    for (const r of runs) expect((await waitFinal(t, r.s, r.id)).state).toBe('complete');
    expect(finishes).toEqual(['single', 'batch', ...Array(N - 1).fill('single')]);
    await expectRefundedOnce(sessions, runs);
  });

  it('with Postgres refusing every finish: each run is retried, given up to recovery, then finished once by it', async () => {
    refuse = { batches: Infinity, singles: true };
    const { sessions, runs } = await endedRuns('down', true);
    release();
    await waitFor(() => t.ctx.executor.abandoned().length === N, { timeoutMs: 20_000, what: `every run abandoned (${t.ctx.executor.abandoned().length})` });
    expect(finishes).toContain('batch');
    refuse = { batches: 0, singles: false };
    await t.ctx.maintenance.sweep();
    expect(t.ctx.executor.abandoned()).toEqual([]);
    for (const r of runs) expect((await waitFinal(t, r.s, r.id)).state).toBe('interrupted');
    await expectRefundedOnce(sessions, runs);
  });
});
