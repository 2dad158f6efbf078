import pg from 'pg';
import { makeWorkerUtils, runMigrations as graphileMigrations } from 'graphile-worker';
import { measured, versus, type BenchEnv } from './lib/env.js';
import { startBenchServer, type BenchServer } from './lib/server.js';
import { repeated, round, sleep, summarize } from './lib/stats.js';

/**
 * The queue (issue #11): no-op runs claimed and finished per second by 2 Sluice worker processes, and the time from a
 * run's insert to its claim, against the same work done by 2 graphile-worker 0.17 processes on the same Postgres in
 * the same run (each side on a database of its own, one after the other, same concurrency: 32 per process).
 *
 * - Throughput: N items inserted at once (one statement each side, NOTIFY included), then timed until none is left;
 *   items per second, with the CPU of the workers and of Postgres per 1000 items beside it.
 * - Latency: an item every 10 ms while the workers idle; insert → claim (a run's `started_at − created_at`, by
 *   Postgres's clock; a job's task called − its `created_at`, which includes its claim's reply).
 *
 * A Sluice no-op run is a real run: `[stub:tokens=0]`, claimed (fair across 64 sessions, per-session cap on) and
 * finished by the finish statement (settlement, final event, notifications). A graphile job runs a task that returns.
 */
const SESSIONS = 64;

async function sluiceSide(env: BenchEnv, workers: number, n: number, trickle: number) {
  const url = await env.pg.freshDatabase(`b_queue_sluice_${workers}`);
  const db = new pg.Pool({ connectionString: url, max: 2 });
  // (A later benchmark recreating this database terminates any connection still closing: not a failure.)
  db.on('error', () => {});
  await db.query(`insert into sessions (token_hash, state, balance_sats, expires_at)
                  select md5(g::text), 'active', 0, now() + interval '1 day' from generate_series(1, ${SESSIONS}) g`);
  const servers: BenchServer[] = [];
  for (let i = 0; i < workers; i++) servers.push(await startBenchServer(url, { PROCESS_ROLE: 'worker', WORKER_CONCURRENCY: 32, SWEEP_INTERVAL_S: 3600, LOG_LEVEL: 'warn', BENCH_SILENT_FINISH: true }));
  // As the accept statement does: the insert and its NOTIFY in one statement.
  const insert = (count: number) =>
    db.query(`with s as (select id, row_number() over () - 1 as i from sessions),
      r as (insert into runs (kind, session_id, state, request, input, max_tokens, pricing, debited_sats)
            select 'session', s.id, 'queued', 'noop', '[{"role":"user","content":"noop [stub:tokens=0]"}]'::jsonb, 1,
                   '{"inputPer1k":0,"outputPer1k":0,"minSats":0}'::jsonb, 0
            from generate_series(0, $1::int - 1) g join s on s.i = g % ${SESSIONS} returning id)
      select pg_notify('sluice_bus', '{"o":"bench","e":"run:queued","p":{"runId":"' || min(id::text) || '"}}') from r`, [count]);
  const left = async () => (await db.query(`select count(*)::int as n from runs where state in ('queued','executing')`)).rows[0].n as number;
  const dbName = `b_queue_sluice_${workers}`;
  const out = await measure(env, servers, insert, left, n, trickle, async () => {
    const r = await db.query(`select extract(epoch from started_at - created_at) * 1000 as ms from runs where state = 'complete' and request = 'trickle'`);
    return r.rows.map((x) => Number(x.ms));
  }, (count) => db.query(`with s as (select id from sessions limit 1)
      insert into runs (kind, session_id, state, request, input, max_tokens, pricing, debited_sats)
      select 'session', s.id, 'queued', 'trickle', '[{"role":"user","content":"noop [stub:tokens=0]"}]'::jsonb, 1, '{"inputPer1k":0,"outputPer1k":0,"minSats":0}'::jsonb, 0
      from s, generate_series(1, $1::int) returning pg_notify('sluice_bus', '{"o":"bench","e":"run:queued","p":{}}')`, [count]));
  for (const s of servers) await s.stop();
  await db.end();
  return out;
}

async function graphileSide(env: BenchEnv, workers: number, n: number, trickle: number) {
  const url = await env.pg.freshDatabase(`b_queue_graphile_${workers}`);
  await graphileMigrations({ connectionString: url });
  const utilsPool = new pg.Pool({ connectionString: url, max: 2 });
  utilsPool.on('error', () => {});
  const utils = await makeWorkerUtils({ pgPool: utilsPool });
  const db = new pg.Pool({ connectionString: url, max: 2 });
  const servers: BenchServer[] = [];
  for (let i = 0; i < workers; i++) servers.push(await startBenchServer(url, { concurrency: 32 }, 'graphile-child'));
  const add = (count: number) => utils.addJobs(Array.from({ length: count }, () => ({ identifier: 'noop', payload: {} })));
  const left = async () => (await db.query(`select count(*)::int as n from graphile_worker._private_jobs`)).rows[0].n as number;
  // One job at a time through add_job, which NOTIFYs the workers (as the accept statement does for a run).
  const addOne = () => utils.addJob('noop', {});
  const out = await measure(env, servers, add, left, n, trickle, async () => (await Promise.all(servers.map((s) => s.call<number[]>('latencies')))).flat(), addOne);
  for (const s of servers) await s.stop();
  await utils.release();
  await utilsPool.end();
  await db.end();
  return out;
}

/** Throughput (N at once, timed until none is left), then latency (one every 10 ms, idle workers). */
async function measure(
  env: BenchEnv,
  servers: BenchServer[],
  insertMany: (n: number) => Promise<unknown>,
  left: () => Promise<number>,
  n: number,
  trickle: number,
  latencies: () => Promise<number[]>,
  insertOne: (n: number) => Promise<unknown>,
  profile = Boolean(process.env.BENCH_QUEUE_PROFILE),
) {
  // Warm: every connection prepares its statements.
  await insertMany(200);
  while ((await left()) > 0) await sleep(10);
  if (profile) await env.pg.resetStatements();
  const m = await measured(env, servers, async () => {
    await insertMany(n);
    while ((await left()) > 0) await sleep(5);
  });
  if (profile) {
    const admin = new pg.Client({ connectionString: env.pg.adminUrl });
    await admin.connect();
    // Per statement: calls, total and mean time, rows, WAL (what a run's cost is made of).
    const top = await admin.query(`select calls::int, round(total_exec_time::numeric, 0) as ms, round(mean_exec_time::numeric, 3) as mean, rows::int,
        pg_size_pretty(wal_bytes) as wal, left(regexp_replace(query, '\\s+', ' ', 'g'), 140) as q
      from pg_stat_statements order by total_exec_time desc limit 14`);
    for (const r of top.rows) env.log(`    ${String(r.calls).padStart(6)}× ${String(r.ms).padStart(6)} ms (${r.mean} ms) ${String(r.rows).padStart(6)} rows ${String(r.wal).padStart(8)} WAL  ${r.q}`);
    await admin.end();
  }
  const cpuMs = m.serverCpuMs.reduce((a, b) => a + b, 0);
  await latencies(); // (what the throughput phase waited is not the trickle's latency)
  for (let i = 0; i < trickle; i++) {
    await insertOne(1);
    await sleep(10);
  }
  while ((await left()) > 0) await sleep(10);
  const lat = summarize(await latencies());
  return { perSecond: (n / m.wallMs) * 1000, workerCpuPer1k: (cpuMs / n) * 1000, pgCpuPer1k: (m.pgCpuMs / n) * 1000, lat };
}

export async function benchQueue(env: BenchEnv) {
  const n = env.quick ? 1000 : 3000;
  const trickle = env.quick ? 100 : 200;
  const workers = 2;
  const sl: Awaited<ReturnType<typeof sluiceSide>>[] = [];
  const gw: Awaited<ReturnType<typeof graphileSide>>[] = [];
  for (let i = 0; i < env.repeats; i++) {
    sl.push(await sluiceSide(env, workers, n, trickle));
    gw.push(await graphileSide(env, workers, n, trickle));
    env.log(`  queue #${i + 1}: sluice ${round(sl.at(-1)!.perSecond, 0)}/s p50 ${round(sl.at(-1)!.lat.p50, 1)} ms; graphile ${round(gw.at(-1)!.perSecond, 0)}/s p50 ${round(gw.at(-1)!.lat.p50, 1)} ms`);
  }
  const base = repeated(gw.map((r) => r.perSecond));
  env.figures.push(
    versus({
      bench: 'queue',
      metric: `no-op runs claimed and finished per second, ${workers} worker processes × 32 slots (${n} queued at once)`,
      unit: 'runs/s',
      digits: 0,
      mine: sl.map((r) => r.perSecond),
      base: base.runs,
      baseline: `graphile-worker 0.17.3, ${workers} processes × concurrency 32, no-op task, same Postgres`,
      goal: '≥ 1.0× graphile-worker',
      note: `graphile-worker's repeats: ${base.runs.map((x) => round(x, 0)).join(', ')}. CPU per 1000: Sluice workers ${round(repeated(sl.map((r) => r.workerCpuPer1k)).median, 0)} ms + Postgres ${round(repeated(sl.map((r) => r.pgCpuPer1k)).median, 0)} ms; graphile workers ${round(repeated(gw.map((r) => r.workerCpuPer1k)).median, 0)} ms + Postgres ${round(repeated(gw.map((r) => r.pgCpuPer1k)).median, 0)} ms`,
    }),
    // CPU is the steadier figure on a shared machine: what one run costs the workers and Postgres together.
    versus({
      bench: 'queue',
      metric: 'CPU per 1000 no-op runs, workers + Postgres',
      unit: 'ms',
      digits: 0,
      mine: sl.map((r) => r.workerCpuPer1k + r.pgCpuPer1k),
      base: gw.map((r) => r.workerCpuPer1k + r.pgCpuPer1k),
      baseline: 'graphile-worker 0.17.3, the same 1000 no-op jobs',
    }),
    ...(['p50', 'p99'] as const).map((p) =>
      versus({
        bench: 'queue',
        metric: `insert → claim, ${p} (one every 10 ms, idle workers; Postgres's clock)`,
        unit: 'ms',
        digits: 1,
        mine: sl.map((r) => r.lat[p]),
        base: gw.map((r) => r.lat[p]),
        baseline: 'graphile-worker 0.17.3 (its task called − created_at)',
        goal: '≤ graphile-worker',
      }),
    ),
  );
}

/** runs/s with 1, 2 and 4 worker processes (the README's scaling paragraph): throughput only. */
export async function benchQueueScaling(env: BenchEnv) {
  const n = env.quick ? 1000 : 3000;
  for (const workers of [1, 2, 4]) {
    const runs: number[] = [];
    for (let i = 0; i < env.repeats; i++) runs.push((await sluiceSide(env, workers, n, 0)).perSecond);
    const r = repeated(runs);
    env.figures.push({
      bench: 'queue-scaling',
      metric: `no-op runs per second, ${workers} worker process${workers > 1 ? 'es' : ''} × 32 slots`,
      unit: 'runs/s',
      value: round(r.median, 0),
      noisePct: round(r.noisePct, 0),
      runs: r.runs.map((x) => round(x, 0)),
    });
  }
}
