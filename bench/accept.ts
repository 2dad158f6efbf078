import pg from 'pg';
import { jsonClient, paidSession, type Session } from './lib/client.js';
import { measured, type BenchEnv } from './lib/env.js';
import { closedLoop, openLoop } from './lib/loops.js';
import { rawSessions, rawWork } from './lib/raw.js';
import { startBenchServer } from './lib/server.js';
import { repeated, round, summarize } from './lib/stats.js';

const CLIENTS = 64;

/**
 * Accept: `POST …/request` at 64 concurrent clients against the raw SQL of the same work, and open-loop latency at
 * half the peak against `GET /api/healthz` at the same rate. The runs never start (a gated run holds the only
 * execution slot, the rest wait queued), so this measures acceptance alone. Default limits on: each client has
 * sessions of its own.
 */
export async function benchAccept(env: BenchEnv) {
  const windowMs = env.quick ? 2000 : 5000;
  const url = await env.pg.freshDatabase('b_accept');
  // Tens of thousands of runs pile up queued here: the lease heartbeat and the sweeper (timers, not per request)
  // would renew and scan all of them every few seconds, so they are moved out of the way.
  const server = await startBenchServer(url, {
    SESSION_CREATE_RATE_LIMIT: 0,
    SESSION_MAX_SATS: 1_000_000_000,
    MAX_CONCURRENT_RUNS: 1,
    MAX_QUEUED_RUNS: 1_000_000,
    LEASE_TTL_S: 3600,
    SWEEP_INTERVAL_S: 3600,
  });
  const c = jsonClient(server.url, 256);
  const perClient = 10;
  const sessions: Session[] = [];
  for (let i = 0; i < CLIENTS * perClient; i += 32) sessions.push(...(await Promise.all(Array.from({ length: 32 }, () => paidSession(c, 1_000_000_000)))));
  const statuses = new Map<number, number>();
  let turn = 0;
  const post = async (i: number) => {
    const s = sessions[(i * perClient + (turn++ % perClient)) % sessions.length]!;
    const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: 'accept me [bench:gate] [stub:tokens=1]', max_tokens: 1 }, s.auth);
    statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
  };
  // The one execution slot, held for the whole benchmark.
  await post(0);
  await closedLoop(CLIENTS, 500, post); // warm-up

  const raw = new pg.Pool({ connectionString: url, max: 10 });
  raw.on('error', (err) => env.log(`raw pool: ${err.message}`));
  const rawS = await rawSessions(raw, CLIENTS * perClient, 1_000_000_000);
  const work = rawWork(raw);
  await closedLoop(CLIENTS, 300, async (i) => void (await work.accept(rawS[i]!, false)));

  const sluice: number[] = [];
  const rawRates: number[] = [];
  const healthRates: number[] = [];
  const healthCpu: number[] = [];
  const serverCpu: number[] = [];
  const pgCpuSluice: number[] = [];
  const pgCpuRaw: number[] = [];
  for (let r = 0; r < env.repeats; r++) {
    statuses.clear();
    const m = await measured(env, [server], () => closedLoop(CLIENTS, windowMs, post));
    const ok = statuses.get(202) ?? 0;
    if (ok !== m.result) throw new Error(`accept answered ${JSON.stringify([...statuses])}`);
    sluice.push((ok * 1000) / m.wallMs);
    serverCpu.push((m.serverCpuMs[0]! * 1000) / ok);
    pgCpuSluice.push((m.pgCpuMs * 1000) / ok);
    const mr = await measured(env, [], () => closedLoop(CLIENTS, windowMs, async (i) => void (await work.accept(rawS[(i * perClient + (turn++ % perClient)) % rawS.length]!, false))));
    rawRates.push((mr.result * 1000) / mr.wallMs);
    pgCpuRaw.push((mr.pgCpuMs * 1000) / mr.result);
    // The floor of any request here: HTTP, Express, the logs and one `select 1`.
    const mh = await measured(env, [server], () => closedLoop(CLIENTS, windowMs, async () => void (await c.request('GET', '/api/healthz'))));
    healthRates.push((mh.result * 1000) / mh.wallMs);
    healthCpu.push((mh.serverCpuMs[0]! * 1000) / mh.result);
  }
  const s = repeated(sluice);
  const b = repeated(rawRates);
  env.figures.push(
    { bench: 'accept', metric: 'POST …/request per second, 64 clients', unit: 'req/s', value: round(s.median, 0), noisePct: round(s.noisePct, 0), runs: s.runs.map((x) => round(x, 0)), baseline: { what: 'raw pg, the same work in one statement', value: round(b.median, 0) }, ratio: round(s.median / b.median), goal: '≥ 0.7×' },
    { bench: 'accept', metric: 'server CPU per accepted request', unit: 'µs', value: round(repeated(serverCpu).median, 0), noisePct: round(repeated(serverCpu).noisePct, 0), baseline: { what: 'GET /api/healthz (HTTP, Express, logs, select 1)', value: round(repeated(healthCpu).median, 0) }, ratio: round(repeated(serverCpu).median / repeated(healthCpu).median) },
    { bench: 'accept', metric: 'GET /api/healthz per second, 64 clients (the HTTP floor)', unit: 'req/s', value: round(repeated(healthRates).median, 0), noisePct: round(repeated(healthRates).noisePct, 0), baseline: { what: 'raw pg, the accept statement', value: round(b.median, 0) }, ratio: round(repeated(healthRates).median / b.median) },
    { bench: 'accept', metric: 'Postgres CPU per accepted request', unit: 'µs', value: round(repeated(pgCpuSluice).median, 0), noisePct: round(repeated(pgCpuSluice).noisePct, 0), baseline: { what: 'raw pg, the same work', value: round(repeated(pgCpuRaw).median, 0) }, ratio: round(repeated(pgCpuSluice).median / repeated(pgCpuRaw).median) },
  );

  // Open loop at half the peak, and at a fixed 300/s (a rate every version of the server sustains, so the rows
  // compare across commits): the accept's p50 and p99 against healthz's at the same rate.
  let k = 0;
  for (const [rate, label] of [[Math.max(50, Math.floor(s.median / 2)), 'half the peak'], [300, 'a fixed rate']] as const) {
    const acceptP99: number[] = [];
    const healthP99: number[] = [];
    const acceptP50: number[] = [];
    const healthP50: number[] = [];
    for (let r = 0; r < env.repeats; r++) {
      // Spread over every client's sessions (as the closed loop is): one session's budget (a few hundred a minute)
      // must not turn the open loop's accepts into 429s answered from memory.
      statuses.clear();
      const a = summarize(await openLoop(rate, windowMs, () => post(k++)));
      if ((statuses.get(202) ?? 0) !== a.n) throw new Error(`open-loop accept answered ${JSON.stringify([...statuses])}`);
      const h = summarize(await openLoop(rate, windowMs, async () => void (await c.request('GET', '/api/healthz'))));
      acceptP99.push(a.p99);
      healthP99.push(h.p99);
      acceptP50.push(a.p50);
      healthP50.push(h.p50);
    }
    const a99 = repeated(acceptP99);
    const h99 = repeated(healthP99);
    env.figures.push(
      { bench: 'accept', metric: `open-loop p99 at ${rate}/s (${label})`, unit: 'ms', value: round(a99.median), noisePct: round(a99.noisePct, 0), baseline: { what: `GET /api/healthz p99 at ${rate}/s`, value: round(h99.median) }, ratio: round(a99.median / h99.median) },
      { bench: 'accept', metric: `open-loop p50 at ${rate}/s (${label})`, unit: 'ms', value: round(repeated(acceptP50).median), baseline: { what: 'GET /api/healthz p50', value: round(repeated(healthP50).median) }, ratio: round(repeated(acceptP50).median / repeated(healthP50).median) },
    );
  }
  c.close();
  await raw.end();
  // SIGKILL: a graceful stop would first finish the tens of thousands of queued runs.
  await server.kill();
}
