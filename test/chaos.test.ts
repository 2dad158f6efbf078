import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../src/db/embedded.js';
import { inspectDataDir, isAlive } from '../src/db/orphan.js';
import { followRun, type Followed } from './helpers/follow.js';
import { freePort } from './helpers/global-setup.js';
import { startServerProcess, type ServerProcess } from './helpers/process.js';
import { waitFor } from './helpers/wait.js';

/**
 * Chaos (issue #9): a real server process with runs streaming to real readers, while its Postgres connections are
 * killed in storms, its Postgres is stopped and restarted, and the server itself is SIGKILLed and started again
 * with its orphaned embedded Postgres still running. After each:
 *
 * - the server is alive, or restarted cleanly;
 * - every run is terminal within a bound;
 * - every reader got exactly one final event, and it says what the database records;
 * - balance = sum(ledger) for every session, debited = charged + refunded for every run, each once in the ledger;
 * - no pool client is leaked (the pool counts in /api/healthz settle to nothing checked out).
 *
 * The suite has a Postgres cluster of its own, so stopping it hurts no other test file.
 */
let dir: string;
let dataDir: string;
let pgPort: number;
let pgServer: EmbeddedPostgres | null = null;
let server: ServerProcess | null = null;
const dbUrl = () => `postgres://postgres:postgres@127.0.0.1:${pgPort}/sluice`;

/** The server's settings: short leases, a fast sweeper, a quick connect timeout, small delays. */
const env = {
  LOG_LEVEL: 'warn',
  LEASE_TTL_S: '2',
  SWEEP_INTERVAL_S: '0.5',
  DB_CONNECT_TIMEOUT_MS: '1000',
  DB_POOL_MAX: '5',
  EVENT_FLUSH_MS: '20',
  SSE_POLL_MS: '100',
  SHUTDOWN_GRACE_MS: '300',
};

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'sluice-chaos-'));
  chmodSync(dir, 0o755);
  dataDir = path.join(dir, 'pg');
  pgPort = await freePort();
  pgServer = await startEmbeddedPostgres({ dataDir, port: pgPort, database: 'sluice' });
}, 60_000);

afterAll(async () => {
  if (server && server.proc.exitCode === null) {
    server.proc.kill('SIGKILL');
    await server.exited;
  }
  await pgServer?.stop();
  // A server killed above may have left its embedded Postgres: that is an orphan of ours to stop.
  const left = inspectDataDir(dataDir);
  if (left.kind === 'orphan' || left.kind === 'sluice') process.kill(left.pid, 'SIGINT');
  await waitFor(() => inspectDataDir(dataDir).kind === 'none', { timeoutMs: 30_000, what: 'the chaos cluster to stop' }).catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
}, 60_000);

// --- a client of the server under test ---------------------------------------------------------------------

interface Session {
  id: string;
  auth: { Authorization: string };
}
async function api(base: string, method: string, p: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${base}${p}`, {
    method,
    headers: { ...headers, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json, retryAfter: res.headers.get('retry-after') };
}
async function session(base: string, sats = 5_000): Promise<Session> {
  const created = await api(base, 'POST', '/api/sessions', { amount_sats: sats });
  expect(created.status).toBe(201);
  expect((await api(base, 'POST', `/api/dev/stub/pay/${created.json.invoice.paymentHash}`)).status).toBe(200);
  return { id: created.json.sessionId, auth: { Authorization: `Bearer ${created.json.sessionToken}` } };
}
async function startRun(base: string, s: Session, request: string): Promise<string> {
  const res = await api(base, 'POST', `/api/sessions/${s.id}/request`, { request }, s.auth);
  expect(res.status, JSON.stringify(res.json)).toBe(202);
  return res.json.requestId;
}

interface Reader {
  runId: string;
  result: Promise<Followed>;
}
function read(base: () => string, s: Session, runId: string, boundMs = 60_000): Reader {
  return { runId, result: followRun(() => `${base()}/api/sessions/${s.id}/requests/${runId}/stream`, s.auth, { deadline: Date.now() + boundMs }) };
}

/** Keep asking while chaos happens; every answer must be a success, a 4xx, or 503 database_unavailable. */
function pester(base: string, s: Session) {
  const answers: Array<{ status: number; code?: string; retryAfter: string | null }> = [];
  let on = true;
  const loop = (async () => {
    while (on) {
      for (const [method, p, body] of [
        ['GET', `/api/sessions/${s.id}`],
        ['GET', '/api/runs?limit=5'],
        ['POST', `/api/sessions/${s.id}/request`, { request: 'pester [stub:tokens=3] [stub:delay=5]' }],
      ] as const) {
        const res = await api(base, method, p, body, s.auth).catch(() => null);
        if (res) answers.push({ status: res.status, code: res.json?.error?.code, retryAfter: res.retryAfter });
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    answers,
    async stop() {
      on = false;
      await loop;
      return answers;
    },
  };
}

// --- what must hold after each kind of chaos ----------------------------------------------------------------

async function sql<T = any>(text: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: dbUrl() });
  await c.connect();
  try {
    return (await c.query(text, params)).rows;
  } finally {
    await c.end();
  }
}

async function expectAllTerminal(boundMs: number) {
  await waitFor(async () => (await sql(`select count(*)::int as n from runs where state in ('queued','executing')`))[0].n === 0, {
    timeoutMs: boundMs,
    intervalMs: 100,
    what: 'every run to be terminal',
  });
}

async function expectMoneyBalanced() {
  expect(await sql(`select s.id from sessions s left join ledger_entries l on l.session_id = s.id group by s.id having s.balance_sats <> coalesce(sum(l.amount_sats), 0)`)).toEqual([]);
  expect(await sql(`select id from runs where debited_sats <> charged_sats + refunded_sats`)).toEqual([]);
  // Each session run has exactly its debit and (if any) its refund in the ledger.
  expect(
    await sql(`
      select r.id from runs r where r.kind = 'session' and (
        coalesce((select sum(amount_sats) from ledger_entries where run_id = r.id and kind = 'debit'), 0) <> -r.debited_sats
        or coalesce((select sum(amount_sats) from ledger_entries where run_id = r.id and kind = 'refund'), 0) <> r.refunded_sats)`),
  ).toEqual([]);
}

/** Every reader got one final event, after ids that only grew, and it is what Postgres finally recorded. */
async function expectReadersTold(readers: Reader[]) {
  for (const r of readers) {
    const got = await r.result;
    expect(got.refused, `run ${r.runId}`).toBeUndefined();
    expect(got.lostOutcome, `run ${r.runId}: a reconnect got 204 before any final event`).toBe(false);
    expect(got.finals, `run ${r.runId}: final events`).toHaveLength(1);
    const ids = got.events.map((e) => Number(e.id));
    expect(ids.every((id, i) => i === 0 || id > ids[i - 1]!), `run ${r.runId}: ids ${ids.join(',')}`).toBe(true);
    const [row] = await sql(`select * from runs where id = $1`, [r.runId]);
    const final = got.finals[0]!;
    expect(Number(final.id)).toBe(row.last_seq);
    if (row.state === 'failed') {
      expect(final).toMatchObject({ event: 'error', data: { state: 'failed', refundedSats: Number(row.refunded_sats) } });
    } else {
      expect(final).toMatchObject({
        event: 'done',
        data: { state: row.state, result: row.result, chargedSats: Number(row.charged_sats), refundedSats: Number(row.refunded_sats) },
      });
    }
  }
}

async function expectAliveWithoutLeaks(base: string) {
  expect(server!.proc.exitCode).toBeNull();
  await waitFor(
    async () => {
      const h = await api(base, 'GET', '/api/healthz');
      return h.status === 200 && h.json.pool.total === h.json.pool.idle && h.json.pool.waiting === 0;
    },
    { timeoutMs: 10_000, intervalMs: 100, what: 'a healthy server with no pool client checked out' },
  );
}

function expectOnlyWeather(answers: Array<{ status: number; code?: string; retryAfter: string | null }>) {
  const bad = answers.filter((a) => a.status >= 500 && !(a.status === 503 && a.code === 'database_unavailable' && Number(a.retryAfter) > 0));
  expect(bad).toEqual([]);
}

// --- the chaos ---------------------------------------------------------------------------------------------

describe('chaos', () => {
  it('storms of terminated backends: nothing crashes, strands, leaks, or lies', async () => {
    server = await startServerProcess({ ...env, DATABASE_URL: dbUrl() });
    const base = server.url;
    const s = await session(base);
    const readers: Reader[] = [];
    for (let i = 0; i < 8; i++) readers.push(read(() => base, s, await startRun(base, s, `storm ${i} [stub:tokens=120] [stub:delay=15]`)));
    const noise = pester(base, s);
    const killer = new pg.Client({ connectionString: dbUrl() });
    await killer.connect();
    let killed = 0;
    try {
      // Storms of a few quick rounds, a breath between them, for as long as the runs stream.
      for (let storm = 0; storm < 8; storm++) {
        for (let round = 0; round < 4; round++) {
          const { rows } = await killer.query(`select count(pg_terminate_backend(pid))::int as n from pg_stat_activity where datname = 'sluice' and pid <> pg_backend_pid()`);
          killed += rows[0].n;
          await new Promise((r) => setTimeout(r, 10));
        }
        await new Promise((r) => setTimeout(r, 150));
      }
    } finally {
      await killer.end();
    }
    expect(killed).toBeGreaterThan(8);
    expectOnlyWeather(await noise.stop());
    await expectAllTerminal(30_000);
    await expectReadersTold(readers);
    await expectMoneyBalanced();
    await expectAliveWithoutLeaks(base);
  });

  it('Postgres stopped and restarted under load: 503 while down, then every run ends and every reader is told', async () => {
    const base = server!.url;
    const s = await session(base);
    const readers: Reader[] = [];
    // Some end while Postgres is down, some stream on past its return.
    for (let i = 0; i < 8; i++) readers.push(read(() => base, s, await startRun(base, s, `restart ${i} [stub:tokens=${i % 2 ? 40 : 300}] [stub:delay=20]`)));
    await new Promise((r) => setTimeout(r, 300));
    await pgServer!.stop();
    const noise = pester(base, s);
    const down = await api(base, 'GET', '/api/runs', undefined, s.auth);
    expect(down).toMatchObject({ status: 503, json: { error: { code: 'database_unavailable' } } });
    expect(Number(down.retryAfter)).toBeGreaterThan(0);
    expect((await api(base, 'GET', '/api/healthz')).status).toBe(503);
    await new Promise((r) => setTimeout(r, 4_000)); // longer than a finish retries: some are left to recovery
    pgServer = await startEmbeddedPostgres({ dataDir, port: pgPort, database: 'sluice' });
    expectOnlyWeather(await noise.stop());
    await expectAllTerminal(30_000);
    await expectReadersTold(readers);
    await expectMoneyBalanced();
    await expectAliveWithoutLeaks(base);
  });

  it('SIGTERM with Postgres dead: the shutdown is bounded', async () => {
    const base = server!.url;
    const s = await session(base);
    for (let i = 0; i < 3; i++) await startRun(base, s, `cut short ${i} [stub:tokens=400] [stub:delay=20]`);
    await pgServer!.stop();
    pgServer = null;
    const started = Date.now();
    server!.proc.kill('SIGTERM');
    expect(await server!.exited).toBe(0);
    // Grace (0.3 s) + a finish retried for about 3 s + bounded steps; it used to hang in database.close().
    expect(Date.now() - started).toBeLessThan(20_000);
    server = null;
  });

  it('SIGKILL with its embedded Postgres orphaned: the next start stops the orphan, recovers, and readers get the outcome', async () => {
    // From here the server runs its own embedded Postgres on the same cluster (as `npm start` does).
    const port = await freePort();
    const embeddedEnv = { ...env, DATABASE_URL: '', DATA_DIR: dataDir, EMBEDDED_PG_PORT: String(pgPort), PORT: String(port), EVENT_FLUSH_MS: '2000' };
    server = await startServerProcess(embeddedEnv);
    const base = server.url;
    // The runs the dead-database shutdown could not record were recovered at this start.
    await expectAllTerminal(10_000);
    await expectMoneyBalanced();
    const s = await session(base);
    const readers: Reader[] = [];
    const progress = new Map<string, number>();
    for (let i = 0; i < 6; i++) {
      const runId = await startRun(base, s, `killed ${i} [stub:tokens=300] [stub:delay=10]`);
      readers.push(read(() => base, s, runId));
      progress.set(runId, 0);
    }
    // Readers hold tokens Postgres does not have yet (flushes every 2 s) when the server dies.
    await waitFor(async () => (await sql(`select count(*)::int as n from runs where state = 'executing' and started_at < now() - interval '300 milliseconds'`))[0].n === 6, {
      what: 'six runs streaming',
    });
    const postmaster = inspectDataDir(dataDir);
    expect(postmaster.kind).toBe('sluice');
    server.proc.kill('SIGKILL');
    await server.exited;
    expect(isAlive((postmaster as { pid: number }).pid)).toBe(true); // the orphan
    server = await startServerProcess(embeddedEnv);
    expect(isAlive((postmaster as { pid: number }).pid)).toBe(false);
    expect(server.output()).toContain('stopping the embedded Postgres a dead Sluice left running');
    await expectAllTerminal(10_000);
    await expectReadersTold(readers);
    await expectMoneyBalanced();
    await expectAliveWithoutLeaks(base);
    // And a clean stop leaves nothing running.
    server.proc.kill('SIGTERM');
    expect(await server.exited).toBe(0);
    server = null;
    expect(inspectDataDir(dataDir)).toEqual({ kind: 'none' });
  });
});
