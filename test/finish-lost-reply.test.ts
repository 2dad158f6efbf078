import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, paidSession, postRequest, waitFinal } from './helpers/sessions.js';
import { waitFor } from './helpers/wait.js';

/**
 * A finish that committed, whose reply never came back: the connection died between Postgres's commit and the reply
 * reaching us. The retry finds the run already ended. It must know that end as its own (the finish token,
 * runs/finish.ts) and announce it here as any finish is announced: the bus's `run:finish` and
 * `session:request:complete`, the executor's onFinish (metrics, the memory tier, the 'run finished' line). Before the
 * token it took its own end for another finisher's and announced nothing but the final event.
 *
 * The fault is real: the finish statement runs on Postgres and commits; its reply arrives; only then the test
 * destroys that connection's socket and hands the caller the error a dead connection gives.
 */
let t: TestServer;
let loseNext = 0;
const lost: string[] = [];
const query = pg.Client.prototype.query;

beforeAll(async () => {
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    const q = args[0] as { text?: string } | string;
    const text = typeof q === 'string' ? q : (q?.text ?? '');
    const at = args.findIndex((a) => typeof a === 'function');
    if (loseNext > 0 && at >= 0 && text.includes('with old as (select last_seq from runs')) {
      loseNext--;
      const cb = args[at] as (err: Error | null, res?: unknown) => void;
      args[at] = (err: Error | null, res?: unknown) => {
        if (err) return cb(err);
        lost.push(String((res as { rows: unknown[] }).rows.length));
        (this as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
        cb(new Error('Connection terminated unexpectedly'));
      };
    }
    return (query as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof query;
  t = await startTestServer({ LEASE_TTL_S: 600 });
});
afterAll(async () => {
  pg.Client.prototype.query = query;
  await t.close();
});

const finishedCount = async (state: string) => {
  const text = (await t.http.get('/metrics').expect(200)).text;
  const line = text.split('\n').find((l) => l.startsWith('sluice_runs_finished_total{') && l.includes('kind="session"') && l.includes(`state="${state}"`));
  return line ? Number(line.split(' ').at(-1)) : 0;
};

describe('a finish whose reply was lost after it committed', () => {
  it('is recognised as this process’s own on the retry, and announced here exactly once', async () => {
    const s = await paidSession(t, 500);
    const before = await finishedCount('complete');
    const heard: string[] = [];
    const onFinish = (e: { runId: string }) => heard.push(`finish ${e.runId}`);
    const onComplete = (e: { requestId: string }) => heard.push(`complete ${e.requestId}`);
    t.ctx.bus.on('run:finish', onFinish);
    t.ctx.bus.on('session:request:complete', onComplete);
    try {
      loseNext = 1;
      const { requestId } = await postRequest(t, s, 'lost reply [stub:tokens=3] [stub:delay=1]', { max_tokens: 50 });
      const final = await waitFinal(t, s, requestId);
      expect(final.state).toBe('complete');
      expect(final.result).toBeTruthy();
      // The statement did commit (one row came back) before its reply was taken away.
      expect(lost).toEqual(['1']);
      await waitFor(() => heard.length >= 2, { what: `the end announced here (${JSON.stringify(heard)})` });
      expect(heard.sort()).toEqual([`complete ${requestId}`, `finish ${requestId}`]);
      await waitFor(async () => (await finishedCount('complete')) === before + 1, { what: 'the finish counted once in the metrics' });
      // Charged once, refunded once.
      const ledger = await expectLedgerBalanced(t, s);
      expect(ledger.entries.filter((e) => e.runId === requestId).map((e) => e.kind).sort()).toEqual(final.refundedSats > 0 ? ['debit', 'refund'] : ['debit']);
    } finally {
      t.ctx.bus.off('run:finish', onFinish);
      t.ctx.bus.off('session:request:complete', onComplete);
    }
  });

  it('a run another finisher ended is still not announced as ours', async () => {
    // The control: the token tells our end from another's. A queued run stopped by recovery (a finisher without our
    // token) and then finished by us must read `won: false`.
    const s = await paidSession(t, 500);
    const { requestId } = await postRequest(t, s, 'ended by another [stub:tokens=2] [stub:delay=1]', { max_tokens: 50 });
    await waitFinal(t, s, requestId);
    const again = await t.ctx.executor.interruptOrphan(requestId);
    expect(again).toBe(false);
  });
});
