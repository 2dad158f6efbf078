import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countingStub, interceptFinishes } from './helpers/finishes.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectLedgerBalanced, paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { waitFor } from './helpers/wait.js';

/**
 * Group commit of the owners' finishes (runs/finish.ts): runs that end while a finish statement of this process is
 * in flight are finished together, in one statement. The first finish is held on the wire until every other run's
 * provider call has ended, so the rest are certain to wait for it and to go as one batch: several runs of two
 * sessions, each settled exactly, each with its final event, each announced by its own NOTIFY.
 */
const N = 12;
let t: TestServer;
let release: () => void = () => {};
let held = false;
let finishes: string[] = [];
const { ai, counter } = countingStub();
let undo = () => {};

beforeAll(async () => {
  undo = interceptFinishes((kind, send) => {
    finishes.push(kind);
    if (held || finishes.length !== 1) return send();
    held = true;
    return new Promise<void>((r) => (release = r)).then(send);
  });
  t = await startTestServer({ LEASE_TTL_S: 600, SESSION_MAX_CONCURRENT_RUNS: 0, MAX_CONCURRENT_RUNS: 32 }, { ai });
});
afterAll(async () => {
  undo();
  await t.close();
});

describe('finishes in one process at once', () => {
  it('go as one statement, each run settled, logged and announced as if alone', async () => {
    const sessions: PaidSession[] = [await paidSession(t, 2000), await paidSession(t, 2000)];
    const listener = new pg.Client({ connectionString: t.ctx.config.DATABASE_URL });
    await listener.connect();
    const heard = new Set<string>();
    listener.on('notification', (m) => {
      const msg = JSON.parse(m.payload ?? '{}') as { e?: string; p?: { runId?: string } };
      if (msg.e === 'run:finish' && msg.p?.runId) heard.add(msg.p.runId);
    });
    await listener.query('listen sluice_bus');
    try {
      finishes = [];
      const runs: Array<{ s: PaidSession; id: string }> = [];
      for (let i = 0; i < N; i++) {
        const s = sessions[i % 2]!;
        runs.push({ s, id: (await postRequest(t, s, `batch ${i} [stub:tokens=2]`, { max_tokens: 50 })).requestId });
      }
      // Every provider call over, the first finish still held: the other N − 1 wait behind it.
      await waitFor(() => counter.ended >= N, { what: 'every provider call to end' });
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
      release();
      const done = await Promise.all(runs.map((r) => waitFinal(t, r.s, r.id)));
      expect(finishes).toEqual(['single', 'batch']);
      for (const d of done) {
        expect(d.state).toBe('complete');
      }
      for (const s of sessions) {
        const ledger = await expectLedgerBalanced(t, s);
        const mine = runs.filter((r) => r.s === s).map((r) => r.id);
        const refunds = ledger.entries.filter((e) => e.kind === 'refund');
        expect(refunds.map((e) => e.runId).sort()).toEqual([...mine].sort());
        const byRun = new Map(done.map((d, i) => [runs[i]!.id, d]));
        for (const e of refunds) expect(e.amountSats).toBe(byRun.get(e.runId!)!.refundedSats);
      }
      // Each run's final event is in its log, right after its tokens; each run's end was NOTIFYed.
      const ev = await t.ctx.database.pool.query<{ run_id: string; seq: number; type: string }>(
        `select run_id, seq, type from run_events where run_id = any($1::uuid[]) order by run_id, seq`,
        [runs.map((r) => r.id)],
      );
      for (const r of runs) {
        const log = ev.rows.filter((e) => e.run_id === r.id);
        expect(log.map((e) => e.seq)).toEqual(log.map((_, i) => i + 1));
        expect(log.at(-1)!.type).toBe('done');
      }
      await waitFor(() => heard.size === N, { what: `every run:finish heard (${heard.size})` });
    } finally {
      await listener.end();
    }
  });
});
