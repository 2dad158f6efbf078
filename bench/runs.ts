import pg from 'pg';
import { jsonClient, now, paidSession, readSse, type Session } from './lib/client.js';
import { measured, type BenchEnv } from './lib/env.js';
import { rawSessions, rawWork } from './lib/raw.js';
import { startBenchServer, type BenchServer } from './lib/server.js';
import { repeated, round, sleep, summarize } from './lib/stats.js';

/** Resolves runs' finishes reported by a server (by run id), whichever comes first: the finish or the wait. */
function finishes(server: BenchServer) {
  const done = new Set<string>();
  const waiting = new Map<string, () => void>();
  server.onFinish((runId) => {
    const w = waiting.get(runId);
    if (w) {
      waiting.delete(runId);
      w();
    } else done.add(runId);
  });
  return (runId: string) =>
    new Promise<void>((resolve) => {
      if (done.delete(runId)) resolve();
      else waiting.set(runId, resolve);
    });
}

/**
 * Statements per 1-token run, end to end (accept → token → finish, notifications included), counted by
 * pg_stat_statements with the default configuration (only the sweeper's timer is moved out of the way: it is
 * not per run). And the statements a stream costs: one reader opened and closed on a run.
 */
export async function benchStatements(env: BenchEnv) {
  const url = await env.pg.freshDatabase('b_statements');
  const server = await startBenchServer(url, { SWEEP_INTERVAL_S: 3600 });
  const c = jsonClient(server.url, 8);
  const s = await paidSession(c, 10_000);
  const finished = finishes(server);
  const run = async (withReader: boolean) => {
    const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: 'one [stub:tokens=1] [stub:delay=0]', max_tokens: 1 }, s.auth);
    if (r.status !== 202) throw new Error(`${r.status} ${JSON.stringify(r.body)}`);
    const fin = finished(r.body.requestId);
    if (withReader) await readSse(server.url, `/api/sessions/${s.id}/requests/${r.body.requestId}/stream`, s.auth).done;
    await fin;
  };
  for (let i = 0; i < 5; i++) await run(true); // warm every connection's prepared statements
  const n = env.quick ? 10 : 40;
  const count = async (withReader: boolean) => {
    await sleep(200);
    await env.pg.resetStatements();
    for (let i = 0; i < n; i++) await run(withReader);
    await sleep(300); // a slot given back after its stream closed
    return env.pg.statements('b_statements');
  };
  const plain = await count(false);
  const total = plain.reduce((a, q) => a + q.calls, 0) / n;
  env.figures.push({
    bench: 'statements',
    metric: 'statements per 1-token run (POST → token → finish, notifications included)',
    unit: 'statements',
    value: round(total, 2),
    goal: '≤ 5',
    note: plain.map((q) => `${round(q.calls / n, 2)}× ${q.query.replace(/\s+/g, ' ').slice(0, 160)}`).join('\n'),
  });
  const read = await count(true);
  const withReader = read.reduce((a, q) => a + q.calls, 0) / n;
  env.figures.push({
    bench: 'statements',
    metric: 'statements a stream adds (open one reader, read to the end, close)',
    unit: 'statements',
    value: round(withReader - total, 2),
    note: read.map((q) => `${round(q.calls / n, 2)}× ${q.query.replace(/\s+/g, ' ').slice(0, 160)}`).join('\n'),
  });
  c.close();
  await server.stop();
}

/**
 * Runs end to end per second: 64 clients each accepting a 1-token run and waiting for its finish, against the raw
 * SQL of the same work (one accept statement, one finish statement) on 64 loops. Default configuration, except the
 * per-session limits (64 clients share sessions that make thousands of requests a minute).
 */
export async function benchEndToEnd(env: BenchEnv) {
  const windowMs = env.quick ? 2000 : 5000;
  const url = await env.pg.freshDatabase('b_e2e');
  const server = await startBenchServer(url, { SESSION_CREATE_RATE_LIMIT: 0, SESSION_MAX_SATS: 1_000_000_000, STUB_TOKEN_DELAY_MS: 0 });
  const c = jsonClient(server.url, 128);
  const sessions: Session[] = [];
  for (let i = 0; i < 64 * 10; i += 32) sessions.push(...(await Promise.all(Array.from({ length: 32 }, () => paidSession(c, 1_000_000_000)))));
  const finished = finishes(server);
  let turn = 0;
  let refused = 0;
  const one = async () => {
    const s = sessions[turn++ % sessions.length]!;
    const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: 'e2e [stub:tokens=1]', max_tokens: 1 }, s.auth);
    if (r.status === 503) {
      refused++;
      await sleep(5);
      return false;
    }
    if (r.status !== 202) throw new Error(`${r.status} ${JSON.stringify(r.body)}`);
    await finished(r.body.requestId);
    return true;
  };
  const loop = async (ms: number, fn: () => Promise<boolean>) => {
    const end = now() + ms;
    let n = 0;
    await Promise.all(Array.from({ length: 64 }, async () => {
      while (now() < end) if (await fn()) n++;
    }));
    return n;
  };
  await loop(500, one);
  const raw = new pg.Pool({ connectionString: url, max: 10 });
  raw.on('error', (err) => env.log(`raw pool: ${err.message}`));
  const rawS = await rawSessions(raw, 640, 1_000_000_000);
  const work = rawWork(raw);
  const rawOne = async () => {
    const id = await work.accept(rawS[turn++ % rawS.length]!, true);
    await work.finish(id);
    return true;
  };
  await loop(300, rawOne);
  const rates: number[] = [];
  const rawRates: number[] = [];
  const cpu: number[] = [];
  const pgCpu: number[] = [];
  for (let r = 0; r < env.repeats; r++) {
    const m = await measured(env, [server], () => loop(windowMs, one));
    rates.push((m.result * 1000) / m.wallMs);
    cpu.push((m.serverCpuMs[0]! * 1000) / m.result);
    pgCpu.push((m.pgCpuMs * 1000) / m.result);
    const mr = await measured(env, [], () => loop(windowMs, rawOne));
    rawRates.push((mr.result * 1000) / mr.wallMs);
  }
  const a = repeated(rates);
  const b = repeated(rawRates);
  env.figures.push(
    { bench: 'end to end', metric: 'runs per second (accept → 1 token → finish), 64 clients', unit: 'runs/s', value: round(a.median, 0), noisePct: round(a.noisePct, 0), runs: a.runs.map((x) => round(x, 0)), baseline: { what: 'raw pg: accept + finish statements', value: round(b.median, 0) }, ratio: round(a.median / b.median), note: refused ? `${refused} answers were 503 overloaded (retried)` : undefined },
    { bench: 'end to end', metric: 'server CPU per run', unit: 'µs', value: round(repeated(cpu).median, 0), noisePct: round(repeated(cpu).noisePct, 0) },
    { bench: 'end to end', metric: 'Postgres CPU per run', unit: 'µs', value: round(repeated(pgCpu).median, 0), noisePct: round(repeated(pgCpu).noisePct, 0) },
  );
  c.close();
  await raw.end();
  await server.stop();
}

/**
 * Time to first token in-process: from a POST's arrival to its run's first token published, less the provider's
 * own time to its first token (from its call). One run at a time, so this is the engine's overhead, not queueing.
 */
export async function benchTtft(env: BenchEnv) {
  const url = await env.pg.freshDatabase('b_ttft');
  const server = await startBenchServer(url, { BENCH_TIMINGS: true });
  const c = jsonClient(server.url, 4);
  const s = await paidSession(c, 10_000);
  const finished = finishes(server);
  const n = env.quick ? 30 : 100;
  // A server in service is warm: the first runs measure V8 compiling the path (arrival → statement sent is ~0.75 ms
  // after 10 runs, ~0.45 ms after 50), not the engine. 100 runs warm it, as the other benches' warm-up windows do.
  const warm = 100;
  const overheads: number[] = [];
  const after202: number[] = [];
  const toStatement: number[] = [];
  const statement: number[] = [];
  const toProvider: number[] = [];
  for (let i = 0; i < n + warm; i++) {
    const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: `ttft [bench:id=t${i}] [stub:tokens=1] [stub:delay=20]`, max_tokens: 1 }, s.auth);
    await finished(r.body.requestId);
    const t = await server.call<Record<string, any>>('timings');
    const run = t[r.body.requestId];
    const prov = t[`id-t${i}`];
    if (i < warm || !run?.published || !prov?.providerFirst) continue;
    const providerTtft = prov.providerFirst - prov.call;
    overheads.push(run.published - run.arrival - providerTtft);
    after202.push(run.published - run.answered - providerTtft);
    if (run.sent) {
      toStatement.push(run.sent - run.arrival);
      statement.push(run.returned - run.sent);
      toProvider.push(prov.call - run.returned);
    }
  }
  // The floor: the same work's one statement (raw pg, a run accepted straight into executing), one at a time, on the
  // same Postgres. Its round trip is mostly the commit's WAL flush, which no server can skip and keep a 202's promise.
  const raw = new pg.Pool({ connectionString: url, max: 1 });
  const [rawS] = await rawSessions(raw, 1, 1_000_000_000);
  const work = rawWork(raw);
  const rawTrips: number[] = [];
  for (let i = 0; i < n + warm; i++) {
    const t0 = now();
    await work.accept(rawS!, true);
    if (i >= warm) rawTrips.push(now() - t0);
    await sleep(20); // as the runs above are spaced by their provider's 20 ms
  }
  await raw.end();
  const floor = summarize(rawTrips);
  const o = summarize(overheads);
  const a = summarize(after202);
  env.figures.push(
    { bench: 'ttft', metric: 'TTFT overhead p50 (arrival → first token published, less the provider’s own TTFT)', unit: 'ms', value: round(o.p50), goal: '≤ 2 ms', baseline: { what: 'raw pg: the accept statement’s round trip alone, p50', value: round(floor.p50) }, ratio: round(o.p50 / floor.p50), note: `p90 ${round(o.p90)} ms, p99 ${round(o.p99)} ms over ${o.n} runs (after ${warm} to warm up)` },
    { bench: 'ttft', metric: 'first token after the 202, less the provider’s TTFT, p50', unit: 'ms', value: round(a.p50), note: `p99 ${round(a.p99)} ms` },
  );
  if (statement.length) {
    env.figures.push({
      bench: 'ttft',
      metric: 'of which: arrival → accept statement sent / its round trip / → provider called, p50',
      unit: 'ms',
      value: round(summarize(statement).p50),
      note: `${round(summarize(toStatement).p50)} ms to send it, ${round(summarize(statement).p50)} ms for Postgres to answer, ${round(summarize(toProvider).p50)} ms to call the provider`,
    });
  }
  c.close();
  await server.stop();
}
