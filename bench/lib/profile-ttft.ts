/**
 * The time-to-first-token path, many times over, one run at a time (as bench/runs.ts's `ttft` does), with its split
 * and the server's CPU per run, and optionally a CPU profile of the server while it runs:
 *   node .bench-build/bench/lib/profile-ttft.js [runs] [out.cpuprofile | ''] [warm-up runs]
 * then: node .bench-build/bench/lib/profile-summary.js out.cpuprofile
 * More runs than the benchmark's 30 (default 400): a p50 of a fraction of a millisecond needs them on a shared machine.
 */
import { jsonClient, paidSession, type Session } from './client.js';
import { startBenchPostgres } from './pg.js';
import { startBenchServer } from './server.js';
import { summarize } from './stats.js';

const [runsArg = '400', out, warmArg = '50'] = process.argv.slice(2);
const n = Number(runsArg);
// The benchmark warms up with 10 runs: its figures are those of a server whose JIT has barely started.
const warm = Number(warmArg);
const pgs = await startBenchPostgres();
const url = await pgs.freshDatabase('b_profile_ttft');
const server = await startBenchServer(url, { BENCH_TIMINGS: true, SESSION_MAX_SATS: 1e9 });
try {
  const c = jsonClient(server.url, 4);
  // Several sessions, taken in turn: each may make SESSION_REQUEST_RATE_LIMIT requests a minute (the limit stays on,
  // as in the benchmark: its count rides in the accept statement).
  const sessions: Session[] = [];
  for (let i = 0; i < 12; i++) sessions.push(await paidSession(c, 1e6));
  const done = new Map<string, () => void>();
  const seen = new Set<string>();
  server.onFinish((runId) => {
    const w = done.get(runId);
    if (w) w();
    else seen.add(runId);
  });
  const finished = (runId: string) => (seen.delete(runId) ? Promise.resolve() : new Promise<void>((r) => done.set(runId, r)));
  const split = { overhead: [] as number[], toStatement: [] as number[], statement: [] as number[], toProvider: [] as number[], toPublish: [] as number[] };
  const one = async (i: number) => {
    const s = sessions[i % sessions.length]!;
    const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: `ttft [bench:id=t${i}] [stub:tokens=1] [stub:delay=${process.env.TTFT_DELAY ?? 2}]`, max_tokens: 1 }, s.auth);
    if (r.status !== 202) throw new Error(`${r.status} ${JSON.stringify(r.body)}`);
    await finished(r.body.requestId);
    return r.body.requestId as string;
  };
  for (let i = 0; i < warm; i++) await one(i);
  await server.call('timings');
  if (out) await server.call('profile:start', { intervalUs: 50 });
  const c0 = await server.cpuMs();
  for (let i = warm; i < warm + n; i++) {
    const runId = await one(i);
    const t = await server.call<Record<string, any>>('timings');
    const run = t[runId];
    const prov = t[`id-t${i}`];
    if (!run?.published || !prov?.providerFirst || !run.sent) continue;
    split.overhead.push(run.published - run.arrival - (prov.providerFirst - prov.call));
    split.toStatement.push(run.sent - run.arrival);
    split.statement.push(run.returned - run.sent);
    split.toProvider.push(prov.call - run.returned);
    split.toPublish.push(run.published - prov.providerFirst);
  }
  const c1 = await server.cpuMs();
  if (out) await server.call('profile:stop', { path: out });
  const f = (xs: number[]) => {
    const s = summarize(xs);
    return `p50 ${s.p50.toFixed(3)}  p90 ${s.p90.toFixed(3)}  mean ${s.mean.toFixed(3)}`;
  };
  console.log(`${split.overhead.length} runs; server CPU per run (POST, run, finish, the IPC of the timings) ${(((c1 - c0) * 1000) / n).toFixed(0)} µs${out ? ' (profiling included)' : ''}`);
  console.log(`TTFT overhead          ${f(split.overhead)}`);
  console.log(`arrival → sent         ${f(split.toStatement)}`);
  console.log(`statement round trip   ${f(split.statement)}`);
  console.log(`returned → provider    ${f(split.toProvider)}`);
  console.log(`provider first → pub   ${f(split.toPublish)}`);
  c.close();
} finally {
  await server.stop();
  await pgs.stop();
}
