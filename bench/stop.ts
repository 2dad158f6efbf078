import pg from 'pg';
import { jsonClient, now, paidSession } from './lib/client.js';
import { measured, versus, type BenchEnv } from './lib/env.js';
import { startBenchServer, type BenchServer } from './lib/server.js';
import { round, sleep, summarize } from './lib/stats.js';

/**
 * Stopping across processes (issue #11: "a stop on process A of a run executing on worker B … within 100 ms p99").
 * N runs execute on a `worker` process B, each waiting in its provider call (`[bench:gate]`, never opened); each is
 * stopped in turn through an `api` process A (`POST /api/runs/:id/stop`, the next once the last one's end was seen):
 *
 * - **sent → final state visible:** from the stop request leaving the client to the `run:finish` notification of
 *   that run reaching a third connection LISTENing on the bus (sent by the finish statement, so the `cancelled` row
 *   and its refund are committed by then: what any process, and any reader, can see). The strict figure.
 * - **202 → final state visible:** the same, from the stop's `202` reaching the client. Across processes the `202`
 *   follows the statement whose NOTIFY tells B, so B's finish races the `202` back (near 0, or below); in one process
 *   the `202` follows the abort at once, and the finish statement comes after it.
 * - **sent → provider aborted:** from the request leaving to the provider call seeing its signal abort, where the run
 *   executes (both clocks are this machine's: `performance.timeOrigin + now()` in each process).
 *
 * The baseline is the same stop where it needs no other process: one `all` process executing the runs it accepted,
 * stopped through itself. CPU of the processes and of Postgres per stop sits beside the wall times.
 */
const CONFIG = { SESSION_RATE_LIMIT_PER_MIN: 0, SESSION_MAX_CONCURRENT_RUNS: 0, MAX_QUEUED_RUNS: 100_000, SWEEP_INTERVAL_S: 3600, LOG_LEVEL: 'warn' };

async function side(env: BenchEnv, cross: boolean, n: number) {
  const url = await env.pg.freshDatabase(`b_stop_${cross ? 'cross' : 'local'}`);
  const front = await startBenchServer(url, { ...CONFIG, PROCESS_ROLE: cross ? 'api' : 'all', WORKER_CONCURRENCY: n + 8, MAX_CONCURRENT_RUNS: n + 8 });
  const worker = cross ? await startBenchServer(url, { ...CONFIG, PROCESS_ROLE: 'worker', WORKER_CONCURRENCY: n + 8, MAX_CONCURRENT_RUNS: n + 8 }) : front;
  const servers = cross ? [front, worker] : [front];
  const listener = new pg.Client({ connectionString: url });
  await listener.connect();
  const finished = new Map<string, number>();
  const waiters = new Map<string, () => void>();
  listener.on('notification', (m) => {
    const t = now();
    const msg = JSON.parse(m.payload ?? '{}') as { e?: string; p?: { runId?: string } };
    if (msg.e !== 'run:finish' || !msg.p?.runId) return;
    finished.set(msg.p.runId, t);
    waiters.get(msg.p.runId)?.();
  });
  await listener.query('listen sluice_bus');
  const c = jsonClient(front.url);
  try {
    const s = await paidSession(c, 10_000);
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: `stop me [bench:gate] [bench:id=s${i}] [stub:tokens=1]`, max_tokens: 1 }, s.auth);
      if (r.status !== 202) throw new Error(`accept: ${r.status} ${JSON.stringify(r.body)}`);
      ids.push(r.body.requestId);
    }
    // Every run executing on the worker (claimed from the queue when cross), each waiting in its provider call.
    const deadline = now() + 60_000;
    for (;;) {
      const st = await worker.call<{ executor: { running: number } }>('stats');
      if (st.executor.running >= n) break;
      if (now() > deadline) {
        const states = await listener.query('select state, count(*)::int from runs group by 1');
        throw new Error(`the runs did not all start: ${JSON.stringify(st)} ${JSON.stringify(states.rows)}`);
      }
      await sleep(20);
    }
    await sleep(200);
    const sent = new Map<string, number>();
    const answered = new Map<string, number>();
    const m = await measured(env, servers, async () => {
      for (const id of ids) {
        const seen = new Promise<void>((resolve) => waiters.set(id, resolve));
        sent.set(id, now());
        const r = await c.request('POST', `/api/runs/${id}/stop`, undefined, s.auth);
        answered.set(id, now());
        if (r.status !== 202) throw new Error(`stop: ${r.status} ${JSON.stringify(r.body)}`);
        await Promise.race([seen, sleep(5_000)]);
        waiters.delete(id);
      }
    });
    const timings = await worker.call<Record<string, { aborted?: number }>>('timings');
    const visible: number[] = [];
    const fromSent: number[] = [];
    const aborted: number[] = [];
    ids.forEach((id, i) => {
      const f = finished.get(id);
      if (f === undefined) throw new Error(`run ${id} never finished after its stop`);
      visible.push(f - answered.get(id)!);
      fromSent.push(f - sent.get(id)!);
      const ab = timings[`id-s${i}`]?.aborted;
      if (ab === undefined) throw new Error(`run ${id}: its provider call never saw the abort`);
      aborted.push(ab - sent.get(id)!);
    });
    const state = await listener.query(`select count(*)::int as n from runs where state = 'cancelled'`);
    if (state.rows[0].n !== n) throw new Error(`${state.rows[0].n} of ${n} runs cancelled`);
    const cpu = m.serverCpuMs.reduce((x, y) => x + y, 0) + m.pgCpuMs;
    return { visible: summarize(visible), fromSent: summarize(fromSent), aborted: summarize(aborted), cpuPerStop: cpu / n };
  } finally {
    c.close();
    await listener.end();
    for (const sv of servers) await sv.stop();
  }
}

export async function benchStop(env: BenchEnv) {
  const n = env.quick ? 100 : 200;
  const cross: Awaited<ReturnType<typeof side>>[] = [];
  const local: Awaited<ReturnType<typeof side>>[] = [];
  for (let i = 0; i < env.repeats; i++) {
    cross.push(await side(env, true, n));
    local.push(await side(env, false, n));
    const x = cross.at(-1)!;
    const l = local.at(-1)!;
    env.log(`  stop #${i + 1}: api → worker: sent → visible p50 ${round(x.fromSent.p50, 1)} p99 ${round(x.fromSent.p99, 1)} ms, 202 → visible p99 ${round(x.visible.p99, 1)}, sent → aborted p99 ${round(x.aborted.p99, 1)}; one process: sent → visible p99 ${round(l.fromSent.p99, 1)} ms`);
  }
  const figure = (key: 'fromSent' | 'visible' | 'aborted', p: 'p50' | 'p99', metric: string, goal?: string) =>
    versus({
      bench: 'stop',
      metric: `${metric}, ${p} (${n} stops, run on a worker, stop sent to an api process)`,
      unit: 'ms',
      digits: 1,
      mine: cross.map((r) => r[key][p]),
      base: local.map((r) => r[key][p]),
      baseline: 'the same stop in one `all` process executing the run itself',
      goal,
    });
  for (const p of ['p50', 'p99'] as const) env.figures.push(figure('fromSent', p, 'stop request sent → run cancelled and visible (its run:finish heard by a third connection)', p === 'p99' ? '≤ 100 ms p99' : undefined));
  for (const p of ['p50', 'p99'] as const) env.figures.push(figure('visible', p, "stop's 202 received → run cancelled and visible"));
  for (const p of ['p50', 'p99'] as const) env.figures.push(figure('aborted', p, 'stop request sent → provider call aborted where the run executes'));
  env.figures.push(
    versus({
      bench: 'stop',
      metric: 'CPU per stop (api + worker + Postgres), from the request to the run finished',
      unit: 'ms',
      digits: 2,
      mine: cross.map((r) => r.cpuPerStop),
      base: local.map((r) => r.cpuPerStop),
      baseline: 'one `all` process + Postgres',
    }),
  );
}
