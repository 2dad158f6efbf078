import supertest from 'supertest';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runs } from '../src/db/schema.js';
import { hashToken } from '../src/http/auth.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { startServerProcess } from './helpers/process.js';
import { expectLedgerBalanced, expectNoLeaks, paidSession, postRequest, waitFinal } from './helpers/sessions.js';
import { idsOf, readSse, tokensOf } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';
import { WsClient } from './helpers/ws.js';

let t: TestServer;
let databaseUrl: string;
beforeAll(async () => {
  t = await startTestServer();
  databaseUrl = t.ctx.config.DATABASE_URL!;
});
afterAll(() => t.close());

const runRow = async (id: string) => (await t.ctx.db.select().from(runs).where(eq(runs.id, id)))[0]!;

describe('crash and restart', () => {
  it('a restart finds a run a killed process left executing, interrupts it, refunds it in full, and replays it', async () => {
    const p = await startServerProcess({ DATABASE_URL: databaseUrl, EVENT_FLUSH_MS: '10' });
    const s = await paidSession({ http: supertest(p.url) }, 500);
    const res = await fetch(`${p.url}/api/sessions/${s.id}/request`, {
      method: 'POST',
      headers: { ...s.auth, 'content-type': 'application/json' },
      body: JSON.stringify({ request: 'crash me [stub:tokens=200] [stub:delay=20]' }),
    });
    expect(res.status).toBe(202);
    const { requestId, debitedSats } = (await res.json()) as { requestId: string; debitedSats: number };
    await waitFor(async () => (await runRow(requestId)).lastSeq >= 3, { what: 'some tokens in Postgres' });
    p.proc.kill('SIGKILL');
    await p.exited;
    expect((await runRow(requestId)).state).toBe('executing');

    // The restart: a new process on the same database. With one process per database (as with the embedded
    // cluster) every live run at start-up is an orphan.
    const restarted = await t.sibling();
    try {
      expect(await restarted.ctx.maintenance.recoverOrphans(true)).toBe(1);
      const row = await runRow(requestId);
      expect(row).toMatchObject({ state: 'interrupted', chargedSats: 0, refundedSats: debitedSats });
      const ledger = await expectLedgerBalanced(restarted, s);
      expect(ledger.balanceSats).toBe(500);
      // Its stream still replays every persisted token, then done {interrupted}, exactly once: the tokens are
      // gapless, the final event is numbered past the run's seq ceiling (above any id the dead process sent).
      const replay = await readSse(`${restarted.url}/api/sessions/${s.id}/requests/${requestId}/stream`, { headers: s.auth });
      const tokenIds = idsOf(replay.events.filter((e) => e.event === 'token'));
      expect(tokenIds).toEqual(Array.from({ length: row.outputTokens }, (_, i) => i + 1));
      expect(Number(replay.events.at(-1)!.id)).toBe(row.lastSeq);
      expect(row.lastSeq).toBeGreaterThan(row.seqCeiling);
      const last = replay.events.at(-1)!;
      expect(last).toMatchObject({ event: 'done', data: { state: 'interrupted', refundedSats: debitedSats } });
      expect(last.data.result).toBe(tokensOf(replay.events).join(''));
      expect(last.data.result).toBe(row.result);
      // A second recovery does nothing: a run finishes once.
      expect(await restarted.ctx.maintenance.recoverOrphans(true)).toBe(0);
      await expectNoLeaks(restarted);
    } finally {
      await restarted.close();
    }
  });

  it('never gives the final event an id a reader already holds: reconnecting with any id it was sent gets the outcome once', async () => {
    // Tokens reach readers before Postgres has them; with a slow flush, the reader holds many the crash loses.
    const p = await startServerProcess({ DATABASE_URL: databaseUrl, EVENT_FLUSH_MS: '5000' });
    const s = await paidSession({ http: supertest(p.url) }, 500);
    const res = await supertest(p.url).post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: 'lose me [stub:tokens=200] [stub:delay=10]' }).expect(202);
    const requestId = res.body.requestId as string;
    const seen: number[] = [];
    const reading = readSse(`${p.url}/api/sessions/${s.id}/requests/${requestId}/stream`, {
      headers: s.auth,
      until: (e) => {
        if (e.event === 'token') seen.push(Number(e.id));
        return seen.length >= 20;
      },
    });
    await reading;
    p.proc.kill('SIGKILL');
    await p.exited;
    const restarted = await t.sibling();
    try {
      expect(await restarted.ctx.maintenance.recoverOrphans(true)).toBe(1);
      const row = await runRow(requestId);
      expect(row.state).toBe('interrupted');
      expect(row.lastSeq).toBeGreaterThan(Math.max(...seen));
      for (const id of seen) {
        const again = await readSse(`${restarted.url}/api/sessions/${s.id}/requests/${requestId}/stream`, { headers: { ...s.auth, 'Last-Event-ID': String(id) } });
        expect(again.status, `reconnect after id ${id}`).toBe(200);
        const finals = again.events.filter((e) => e.event === 'done' || e.event === 'error');
        expect(finals, `reconnect after id ${id}`).toHaveLength(1);
        expect(finals[0]).toMatchObject({ id: String(row.lastSeq), event: 'done', data: { state: 'interrupted', result: row.result } });
        expect(idsOf(again.events).every((x) => x > id)).toBe(true);
      }
      // The final event's id: nothing more.
      const after = await readSse(`${restarted.url}/api/sessions/${s.id}/requests/${requestId}/stream`, { headers: { ...s.auth, 'Last-Event-ID': String(row.lastSeq) } });
      expect(after.status).toBe(204);
      await expectLedgerBalanced(restarted, s);
    } finally {
      await restarted.close();
    }
  });

  it('with a shared database, only runs whose lease expired are recovered', async () => {
    const a = await t.sibling({ LEASE_TTL_S: 1 });
    const b = await t.sibling({ LEASE_TTL_S: 1 });
    try {
      const s = await paidSession(a, 500);
      const r = await postRequest(a, s, 'long [stub:tokens=50] [stub:delay=40]');
      await waitFor(async () => (await runRow(r.requestId)).state === 'executing', { what: 'executing' });
      // A live process keeps its lease: B must not touch A's run.
      await a.ctx.store.renewLeases(a.ctx.instanceId, 1, a.ctx.executor.held());
      expect(await b.ctx.maintenance.recoverOrphans(false)).toBe(0);
      // A's lease lapses (its heartbeat is not running in tests): B recovers, A notices and stops writing.
      await t.ctx.db.update(runs).set({ leaseExpiresAt: new Date(Date.now() - 1000) }).where(eq(runs.id, r.requestId));
      expect(await b.ctx.maintenance.recoverOrphans(false)).toBe(1);
      const final = await waitFinal(a, s, r.requestId);
      expect(final.state).toBe('interrupted');
      await expectLedgerBalanced(a, s);
      await expectNoLeaks(a);
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('graceful shutdown', () => {
  it('SIGTERM lets short work finish, interrupts and refunds long work after the grace period, and exits 0', async () => {
    const p = await startServerProcess({ DATABASE_URL: databaseUrl, SHUTDOWN_GRACE_MS: '600' });
    const http = supertest(p.url);
    const s = await paidSession({ http }, 1000);
    const post = async (request: string) => {
      const res = await http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request }).expect(202);
      return res.body as { requestId: string; debitedSats: number };
    };
    const short = await post('short [stub:tokens=5] [stub:delay=50]');
    const long = await post('long [stub:tokens=500] [stub:delay=50]');
    await waitFor(async () => (await runRow(long.requestId)).state === 'executing', { what: 'long run executing' });
    // A WebSocket following the long run stays open through the drain, gets its final event, then 1001 (going away).
    const ws = await WsClient.open(p.url, { token: s.token });
    await ws.ask({ type: 'subscribe', runId: long.requestId }, (m) => m.type === 'event');
    const slotsOf = async () => (await t.ctx.database.pool.query('select count(*)::int as n from stream_slots where key = $1 and expires_at > now()', [`session:${hashToken(s.token)}`])).rows[0].n;
    expect(await slotsOf()).toBe(1);
    p.proc.kill('SIGTERM');
    expect((await ws.final(long.requestId)).data.state).toBe('interrupted');
    expect((await ws.closed).code).toBe(1001);
    expect(await p.exited).toBe(0);
    // The socket's stream slot was given back on the way out: its client may reconnect at once.
    expect(await slotsOf()).toBe(0);
    expect((await runRow(short.requestId)).state).toBe('complete');
    expect(await runRow(long.requestId)).toMatchObject({ state: 'interrupted', chargedSats: 0, refundedSats: long.debitedSats });
    const ledger = await expectLedgerBalanced(t, s);
    expect(ledger.balanceSats).toBe(1000 - (await runRow(short.requestId)).chargedSats);
  });

  it('refuses new work with 503 while draining', async () => {
    const x = await t.sibling();
    const s = await paidSession(x, 500);
    const r = await postRequest(x, s, 'drain [stub:tokens=20] [stub:delay=20]');
    const draining = x.ctx.executor.drain(5_000);
    const refused = await x.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: 'more' }).expect(503);
    expect(refused.body.error.code).toBe('shutting_down');
    await draining;
    expect((await waitFinal(x, s, r.requestId)).state).toBe('complete');
    await x.close();
  });
});
