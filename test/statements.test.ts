import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runIdOfResponse } from '../src/openai/ids.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { paidSession, type PaidSession } from './helpers/sessions.js';
import { readSse } from './helpers/sse.js';

/**
 * What a run costs Postgres, counted statement by statement (issue #10): every query any client of this process
 * sends — BEGIN, COMMIT and the NOTIFYs included — is recorded by a wrapper around `pg.Client.prototype.query`,
 * which every pool client and transaction goes through. The defaults are on: the per-session request budget
 * (SESSION_RATE_LIMIT_PER_MIN) and stream slots (SESSION_MAX_STREAMS) are counted in Postgres. Only the lease
 * heartbeat is moved out of the way (it is a timer, not part of a run).
 */
let t: TestServer;
let s: PaidSession;
let recording: string[] | null = null;
const query = pg.Client.prototype.query;

beforeAll(async () => {
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    const q = args[0] as string | { text?: string };
    recording?.push((typeof q === 'string' ? q : (q.text ?? '')).replace(/\s+/g, ' ').trim());
    return (query as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof query;
  t = await startTestServer({ LEASE_TTL_S: 600, STUB_TOKEN_DELAY_MS: 1 });
  s = await paidSession(t, 5000);
});
afterAll(async () => {
  pg.Client.prototype.query = query;
  await t.close();
});

/** The statements sent while `fn` runs, and until the run it starts has finished here. */
async function statementsOf(fn: () => Promise<string>): Promise<string[]> {
  const finished = new Set<string>();
  const onFinish = (e: { runId: string }) => finished.add(e.runId);
  t.ctx.bus.on('run:finish', onFinish);
  recording = [];
  try {
    const runId = await fn();
    const deadline = Date.now() + 10_000;
    while (!finished.has(runId) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(finished.has(runId)).toBe(true);
    // Anything the run's end sends after its finish (nothing should) would land in the next turns.
    await new Promise((r) => setTimeout(r, 50));
    return recording;
  } finally {
    recording = null;
    t.ctx.bus.off('run:finish', onFinish);
  }
}

const post = async (body: Record<string, unknown>) => {
  const res = await fetch(`${t.url}/api/sessions/${s.id}/request`, { method: 'POST', headers: { ...s.auth, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  expect(res.status).toBe(202);
  return ((await res.json()) as { requestId: string }).requestId;
};

describe('statements per run', () => {
  it('a 1-token run costs at most 5 statements end to end: one to accept it, one to write its token, one to finish it', async () => {
    await statementsOf(() => post({ request: 'warm [stub:tokens=1]', max_tokens: 1 }));
    const sent = await statementsOf(() => post({ request: 'one token [stub:tokens=1]', max_tokens: 1 }));
    expect(sent.length, sent.join('\n')).toBeLessThanOrEqual(5);
    // No transaction: each is a statement of its own.
    expect(sent.filter((q) => /^(begin|commit)$/i.test(q)), sent.join('\n')).toEqual([]);
    // The accept: the budget count, the debit, the ledger row and the run row in one.
    expect(sent.filter((q) => q.includes('insert into rate_limits') && q.includes('update sessions') && q.includes('insert into runs'))).toHaveLength(1);
    // The finish: the state, the final event, the refund and the notifications in one.
    expect(sent.filter((q) => q.includes('update runs set state') && q.includes('insert into run_events') && q.includes('pg_notify'))).toHaveLength(1);
  });

  it('a stream costs one statement to open (count, slot and session together) and one to give its slot back', async () => {
    const runId = await post({ request: 'streamed [stub:tokens=3]', max_tokens: 3 });
    await new Promise((r) => setTimeout(r, 100));
    recording = [];
    const { events } = await readSse(`${t.url}/api/sessions/${s.id}/requests/${runId}/stream`, { headers: s.auth });
    await new Promise((r) => setTimeout(r, 50));
    const sent = recording;
    recording = null;
    expect(events.at(-1)?.event).toBe('done');
    expect(sent.length, sent.join('\n')).toBeLessThanOrEqual(3);
    expect(sent.filter((q) => q.includes('insert into rate_limits') && q.includes('insert into stream_slots') && q.includes('from sessions'))).toHaveLength(1);
    expect(sent.filter((q) => q.startsWith('delete from stream_slots'))).toHaveLength(1);
  });

  it('a /v1 background response is accepted in one statement too', async () => {
    const sent = await statementsOf(async () => {
      const res = await fetch(`${t.url}/v1/responses`, {
        method: 'POST',
        headers: { ...s.auth, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'sluice-stub', input: 'v1 [stub:tokens=1]', max_output_tokens: 1, background: true }),
      });
      expect(res.status).toBe(200);
      return runIdOfResponse(((await res.json()) as { id: string }).id)!;
    });
    expect(sent.length, sent.join('\n')).toBeLessThanOrEqual(5);
    expect(sent.filter((q) => /^(begin|commit)$/i.test(q))).toEqual([]);
  });
});
