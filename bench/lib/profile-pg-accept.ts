/**
 * Where Postgres spends its CPU per accept: the accept bench's closed loop (64 clients, every run queued behind a
 * gated one), then the raw statement's, with the cluster's CPU split per process (each Sluice pool connection, its
 * LISTEN connection, the raw pool, Postgres's own background processes) and pg_stat_statements per statement:
 *   npm run bench -- --quick accept   (builds .bench-build), then
 *   node .bench-build/bench/lib/profile-pg-accept.js [seconds]
 *   node .bench-build/bench/lib/profile-pg-accept.js [seconds] open <rate> <sessions>   (open-loop accept latency)
 */
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import pg from 'pg';
import { jsonClient, now, paidSession, type Session } from './client.js';
import { closedLoop } from './loops.js';
import { startBenchPostgres } from './pg.js';
import { rawSessions, rawWork } from './raw.js';
import { startBenchServer } from './server.js';

const seconds = Number(process.argv[2] ?? '4');
const CLIENTS = 64;

function cpuOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return 0;
  }
}
function cmdOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
  } catch {
    return '?';
  }
}
function children(ppid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    const pid = Number(e);
    if (!(pid > 0)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === ppid) out.push(pid);
    } catch {}
  }
  return out;
}

const pgs = await startBenchPostgres();
const url = await pgs.freshDatabase('b_pgprof');
const server = await startBenchServer(url, { SESSION_CREATE_RATE_LIMIT: 0, SESSION_MAX_SATS: 1e9, MAX_CONCURRENT_RUNS: 1, MAX_QUEUED_RUNS: 1e6, LEASE_TTL_S: 3600, SWEEP_INTERVAL_S: 3600 });
const admin = new pg.Client({ connectionString: pgs.adminUrl });
await admin.connect();
const pmPid = Number((await admin.query('select pg_backend_pid() as p')).rows[0].p);
const postmasterPid = Number(readFileSync(`/proc/${pmPid}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
try {
  const c = jsonClient(server.url, 256);
  const sessions: Session[] = [];
  for (let i = 0; i < CLIENTS * 10; i += 32) sessions.push(...(await Promise.all(Array.from({ length: 32 }, () => paidSession(c, 1e9)))));
  let turn = 0;
  const post = async (i: number) => {
    const s = process.argv[3] === 'open' ? sessions[i]! : sessions[(i * 10 + (turn++ % 10)) % sessions.length]!;
    const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: 'accept me [bench:gate] [stub:tokens=1]', max_tokens: 1 }, s.auth);
    if (r.status !== 202) throw new Error(`${r.status} ${JSON.stringify(r.body)}`);
  };
  await post(0);
  await closedLoop(CLIENTS, 500, post);
  const raw = new pg.Pool({ connectionString: url, max: 10 });
  const rawS = await rawSessions(raw, CLIENTS * 10, 1e9);
  const work = rawWork(raw);
  await closedLoop(CLIENTS, 300, async (i) => void (await work.accept(rawS[i]!, false)));

  async function profile(label: string, fn: () => Promise<number>) {
    const act = await admin.query(`select pid, backend_type, datname, application_name, client_port, state, left(query, 40) as q from pg_stat_activity`);
    const info = new Map<number, string>(act.rows.map((r) => [Number(r.pid), `${r.backend_type}${r.datname ? ` ${r.datname}` : ''} ${r.q?.startsWith('listen') ? 'LISTEN' : ''}`]));
    const pids = [postmasterPid, ...children(postmasterPid)];
    const before = new Map(pids.map((p) => [p, cpuOf(p)]));
    await pgs.resetStatements();
    const s0 = await server.cpuMs();
    const t0 = now();
    const n = await fn();
    const wall = now() - t0;
    const serverUs = (((await server.cpuMs()) - s0) * 1000) / n;
    const rows: Array<[string, number]> = [];
    let total = 0;
    for (const p of [postmasterPid, ...children(postmasterPid)]) {
      const d = cpuOf(p) - (before.get(p) ?? 0);
      total += d;
      if (d > 0) rows.push([`${p} ${p === postmasterPid ? 'postmaster' : (info.get(p) ?? cmdOf(p))}`, d]);
    }
    console.log(`\n== ${label}: ${n} in ${wall.toFixed(0)} ms = ${((n * 1000) / wall).toFixed(0)}/s; Postgres CPU ${((total * 1000) / n).toFixed(0)} µs each, server CPU ${serverUs.toFixed(0)} µs each (load ${os.loadavg()[0]!.toFixed(1)})`);
    rows.sort((a, b) => b[1] - a[1]);
    for (const [k, v] of rows) console.log(`  ${((v * 1000) / n).toFixed(0).padStart(6)} µs  ${k}`);
    const st = await admin.query(
      `select calls::int, round(total_exec_time::numeric, 1) as exec_ms, round(total_plan_time::numeric,1) as plan_ms, wal_records, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) as q
       from pg_stat_statements s join pg_database d on d.oid = s.dbid where d.datname = 'b_pgprof' order by calls desc limit 12`,
    );
    for (const r of st.rows) console.log(`  ${String(r.calls).padStart(7)} calls ${String(r.exec_ms).padStart(8)} ms exec  wal ${r.wal_records}  ${r.q}`);
  }
  // `open <rate> <sessions>`: open-loop latency of the accept at that rate over that many sessions (as accept.ts's).
  if (process.argv[3] === 'open') {
    const rate = Number(process.argv[4] ?? '700');
    const nS = Number(process.argv[5] ?? '10');
    for (let k = 0; k < 3; k++) {
      const lat: number[] = [];
      const start = now();
      const all: Array<Promise<void>> = [];
      for (let i = 0; i < (rate * seconds); i++) {
        const due = start + (i * 1000) / rate;
        const wait = due - now();
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        all.push(post(k * nS + (i % nS)).then(() => void lat.push(now() - due)));
      }
      await Promise.all(all);
      lat.sort((a, b) => a - b);
      console.log(`open ${rate}/s over ${nS} sessions: p50 ${lat[Math.floor(lat.length / 2)]!.toFixed(2)} ms p99 ${lat[Math.floor(lat.length * 0.99)]!.toFixed(2)} ms`);
    }
  } else for (let k = 0; k < 2; k++) {
    await profile('sluice accept', () => closedLoop(CLIENTS, seconds * 1000, post));
    await profile('raw accept', () => closedLoop(CLIENTS, seconds * 1000, async (i) => void (await work.accept(rawS[(i * 10 + (turn++ % 10)) % rawS.length]!, false))));
  }
  c.close();
  await raw.end();
} finally {
  await admin.end();
  await server.kill();
  await pgs.stop();
}
