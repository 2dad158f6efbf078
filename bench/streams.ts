import { jsonClient, now, paidSession, readSse, type SseReader } from './lib/client.js';
import { measured, type BenchEnv } from './lib/env.js';
import { startBenchServer, type BenchServer } from './lib/server.js';
import type { SettledMemory } from './lib/settled-memory.js';
import { percentile, repeated, round, sleep, summarize } from './lib/stats.js';

/** Stream limits are off here: a thousand readers of one session is the point, not a client to refuse. */
const STREAMS = { SESSION_MAX_STREAMS: 0, SESSION_RATE_LIMIT_PER_MIN: 0, SSE_MAX_STREAMS_PER_IP: 100_000, SESSION_CREATE_RATE_LIMIT: 0 };
const TOKEN_MS = 20; // 50 tokens a second

async function waitSubscribers(server: BenchServer, n: number, timeoutMs = 60_000) {
  const end = now() + timeoutMs;
  for (;;) {
    const st = await server.call<{ registry: { subscribers: number; watchers: number } }>('stats');
    if (st.registry.subscribers + st.registry.watchers >= n) return;
    if (now() > end) throw new Error(`only ${st.registry.subscribers} subscribers of ${n}`);
    await sleep(50);
  }
}

/** Open `n` readers in batches (a thousand connects at once would be a SYN flood of our own making). */
async function openReaders(base: string, path: string, headers: Record<string, string>, n: number, keep = true): Promise<SseReader[]> {
  const readers: SseReader[] = [];
  for (let i = 0; i < n; i += 100) {
    const batch = Array.from({ length: Math.min(100, n - i) }, () => readSse(base, path, headers, { keepArrivals: keep }));
    const statuses = await Promise.all(batch.map((r) => r.opened));
    if (statuses.some((s) => s !== 200)) throw new Error(`a reader was answered ${statuses.find((s) => s !== 200)}`);
    readers.push(...batch);
  }
  return readers;
}

/**
 * Fan-out: one run at 50 tokens/s to 10, 100 and 1,000 SSE readers over real sockets: server CPU per event per
 * reader (net of the same run with no reader), the spread between the first and the last reader to get each
 * event, and how much the readers stretched the run beyond its nominal time.
 */
export async function benchFanout(env: BenchEnv) {
  const tokens = env.quick ? 50 : 100;
  const url = await env.pg.freshDatabase('b_fanout');
  const server = await startBenchServer(url, { ...STREAMS, MAX_TOKENS_LIMIT: 10_000 });
  const c = jsonClient(server.url, 8);
  const s = await paidSession(c, 10_000);
  const runOnce = async (n: number) => {
    const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: `fan [bench:gate] [stub:tokens=${tokens}] [stub:delay=${TOKEN_MS}]`, max_tokens: tokens }, s.auth);
    const path = `/api/sessions/${s.id}/requests/${r.body.requestId}/stream`;
    const readers = await openReaders(server.url, path, s.auth, n);
    await waitSubscribers(server, n);
    await sleep(200);
    let opened = 0;
    const m = await measured(env, [server], async () => {
      opened = now();
      await server.call('gate');
      if (n > 0) await Promise.all(readers.map((x) => x.done));
      else await readSse(server.url, path, s.auth).done; // the run's end, read after the fact
    });
    const events = tokens + 1;
    // Spread: per event, the last reader's arrival less the first's.
    const spreads: number[] = [];
    for (let seq = 1; seq <= events && n > 1; seq++) {
      let lo = Infinity;
      let hi = -Infinity;
      for (const x of readers) {
        const t = x.arrivals.get(seq);
        if (t === undefined) continue;
        lo = Math.min(lo, t);
        hi = Math.max(hi, t);
      }
      if (hi >= lo) spreads.push(hi - lo);
    }
    const lastArrival = n > 0 ? Math.min(...readers.map((x) => x.arrivals.get(events) ?? Infinity)) : now();
    const missing = readers.filter((x) => x.events !== events).length;
    if (missing) throw new Error(`${missing} of ${n} readers did not get all ${events} events`);
    return { cpuMs: m.serverCpuMs[0]!, pgMs: m.pgCpuMs, clientMs: m.clientCpuMs, spreadP99: spreads.length ? percentile(spreads, 99) : 0, spreadP50: spreads.length ? percentile(spreads, 50) : 0, stretch: (lastArrival - opened) / (tokens * TOKEN_MS) };
  };
  // The limit of the socket: the same events, pre-rendered, written to as many sockets by a bare Node server.
  const raw = await startBenchServer(url, {}, 'raw-fanout-child');
  const rawOnce = async (n: number) => {
    const readers = await openReaders(raw.url, '/', {}, n);
    while ((await raw.call<number>('count')) < n) await sleep(20);
    const m = await measured(env, [raw], async () => {
      await raw.call('go', { events: tokens + 1, everyMs: TOKEN_MS });
      await Promise.all(readers.map((x) => x.done));
    });
    return (m.serverCpuMs[0]! * 1000) / ((tokens + 1) * n);
  };
  await runOnce(10); // warm-up
  await rawOnce(10);
  const base = [] as number[];
  for (let r = 0; r < env.repeats; r++) base.push((await runOnce(0)).cpuMs);
  const baseCpu = repeated(base).median;
  for (const n of [10, 100, 1000]) {
    const per: number[] = [];
    const gross: number[] = [];
    const spread: number[] = [];
    const stretch: number[] = [];
    const rawPer: number[] = [];
    for (let r = 0; r < env.repeats; r++) {
      const x = await runOnce(n);
      per.push(((x.cpuMs - baseCpu) * 1000) / ((tokens + 1) * n));
      gross.push((x.cpuMs * 1000) / ((tokens + 1) * n));
      spread.push(x.spreadP99);
      stretch.push(x.stretch);
      rawPer.push(await rawOnce(n));
    }
    const p = repeated(per);
    const b = repeated(rawPer);
    env.figures.push(
      { bench: 'fan-out', metric: `server CPU per event per reader, ${n} readers (net of the run alone)`, unit: 'µs', value: round(p.median, 1), noisePct: round(p.noisePct, 0), runs: p.runs.map((x) => round(x, 1)), baseline: { what: 'a bare Node server writing the same chunks to as many sockets', value: round(b.median, 1) }, ratio: round(p.median / b.median), goal: n === 1000 ? '≤ 15 µs' : undefined, note: `gross ${round(repeated(gross).median, 1)} µs; the run alone ${round(baseCpu, 0)} ms CPU for ${tokens + 1} events; baseline noise ±${round(b.noisePct, 0)}%` },
      { bench: 'fan-out', metric: `spread p99 (last reader − first reader, per event), ${n} readers`, unit: 'ms', value: round(repeated(spread).median), noisePct: round(repeated(spread).noisePct, 0) },
      { bench: 'fan-out', metric: `run stretch (actual / nominal ${tokens * TOKEN_MS} ms), ${n} readers`, unit: '×', value: round(repeated(stretch).median, 3), noisePct: round(repeated(stretch).noisePct, 0), goal: n === 1000 ? '≤ 1.1×' : undefined },
    );
  }
  c.close();
  await raw.stop();
  await server.stop();
}

/**
 * Memory per idle reader: RSS and heap growth (after GC) with 1,000 and 5,000 streams open on a run that says
 * nothing, against a bare Node HTTP server holding as many SSE responses open (what a connection costs Node itself).
 */
export async function benchMemory(env: BenchEnv) {
  const url = await env.pg.freshDatabase('b_memory');
  // Both servers run V8's heap as `npm start` does (BENCH_MEMORY_HEAP_FLAGS: other flags, space-separated, to compare).
  const heap = { heapFlags: (process.env.BENCH_MEMORY_HEAP_FLAGS ?? '').split(' ').filter(Boolean) };
  const server = await startBenchServer(url, STREAMS, 'server-child', heap);
  const raw = await startBenchServer(url, {}, 'raw-fanout-child', heap);
  const c = jsonClient(server.url, 8);
  const s = await paidSession(c, 10_000);
  const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: 'idle [bench:gate] [stub:tokens=1]', max_tokens: 1 }, s.auth);
  const path = `/api/sessions/${s.id}/requests/${r.body.requestId}/stream`;
  // Warm both alike: the first streams allocate what every later one shares (code, pools, the young generation's size).
  const warm = await openReaders(server.url, path, s.auth, 200, false);
  const rawWarm = await openReaders(raw.url, '/', {}, 200, false);
  await waitSubscribers(server, 200);
  warm.forEach((x) => x.close());
  rawWarm.forEach((x) => x.close());
  while ((await raw.call<number>('count')) > 0) await sleep(20);
  await sleep(500);
  const mem = (x: BenchServer) => x.call<SettledMemory>('gc');
  const m0 = await mem(server);
  const b0 = await mem(raw);
  const readers: SseReader[] = [];
  const rawReaders: SseReader[] = [];
  let at1000: { n: number; m: SettledMemory; b: SettledMemory } | undefined;
  for (const n of [1000, 5000]) {
    readers.push(...(await openReaders(server.url, path, s.auth, n - readers.length, false)));
    rawReaders.push(...(await openReaders(raw.url, '/', {}, n - rawReaders.length, false)));
    await waitSubscribers(server, n);
    await sleep(500);
    const m = await mem(server);
    const b = await mem(raw);
    const kb = (bytes: number) => round(bytes / n / 1024, 1);
    // Where the RSS went, per reader: V8's committed heap (of which its young generation) and the RSS beyond it (native
    // memory, and heap pages touched since: committed is not resident, so either part may come out below zero).
    const split = (a: SettledMemory, z: SettledMemory) =>
      `heap committed ${kb(z.mem.heapTotal - a.mem.heapTotal)} (young ${kb((z.spaces.new_space ?? 0) - (a.spaces.new_space ?? 0))}: ${round((a.spaces.new_space ?? 0) / 2 ** 20, 1)} → ${round((z.spaces.new_space ?? 0) / 2 ** 20, 1)} MB), RSS beyond it ${kb(z.mem.rss - z.mem.heapTotal - (a.mem.rss - a.mem.heapTotal))} KB`;
    const floor = { what: 'a bare Node server holding as many SSE responses', value: kb(b.mem.rss - b0.mem.rss) };
    // The cost of each reader past the first thousand (no one-off growth in it): a check on the figure, not the figure.
    const marginal = at1000
      ? `; past ${at1000.n} readers, each cost ${round((m.mem.rss - at1000.m.mem.rss) / (n - at1000.n) / 1024, 1)} KB RSS (bare Node ${round((b.mem.rss - at1000.b.mem.rss) / (n - at1000.n) / 1024, 1)})`
      : '';
    at1000 = { n, m, b };
    env.figures.push(
      { bench: 'memory', metric: `RSS per idle reader, ${n} streams`, unit: 'KB', value: kb(m.mem.rss - m0.mem.rss), baseline: floor, ratio: round((m.mem.rss - m0.mem.rss) / (b.mem.rss - b0.mem.rss)), goal: n === 5000 ? '≤ 20 KB' : undefined, note: `Sluice: ${split(m0, m)}; bare Node: ${split(b0, b)}${marginal}` },
      { bench: 'memory', metric: `heap per idle reader, ${n} streams`, unit: 'KB', value: kb(m.mem.heapUsed - m0.mem.heapUsed), baseline: { what: 'the bare Node server', value: kb(b.mem.heapUsed - b0.mem.heapUsed) } },
    );
  }
  readers.forEach((x) => x.close());
  rawReaders.forEach((x) => x.close());
  c.close();
  await raw.stop();
  await server.kill();
}

/**
 * Across processes: a run on A at 50 tokens/s, one reader on A and 1 or 100 on B. The lag of each token on B behind
 * A, and what following costs B and Postgres.
 */
export async function benchCrossProcess(env: BenchEnv) {
  const tokens = env.quick ? 50 : 100;
  const url = await env.pg.freshDatabase('b_cross');
  const a = await startBenchServer(url, STREAMS);
  const b = await startBenchServer(url, STREAMS);
  const c = jsonClient(a.url, 8);
  const s = await paidSession(c, 10_000);
  const once = async (k: number) => {
    const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: `cross [bench:gate] [stub:tokens=${tokens}] [stub:delay=${TOKEN_MS}]`, max_tokens: tokens }, s.auth);
    const path = `/api/sessions/${s.id}/requests/${r.body.requestId}/stream`;
    const onA = await openReaders(a.url, path, s.auth, 1);
    const onB = await openReaders(b.url, path, s.auth, k);
    await waitSubscribers(a, 1);
    await sleep(300);
    await env.pg.resetStatements();
    const m = await measured(env, [a, b], async () => {
      await a.call('gate');
      await Promise.all([...onA, ...onB].map((x) => x.done));
    });
    const statements = (await env.pg.statements('b_cross')).reduce((n, q) => n + q.calls, 0);
    const lags: number[] = [];
    for (const x of onB) for (const [seq, t] of x.arrivals) {
      const ta = onA[0]!.arrivals.get(seq);
      if (ta !== undefined) lags.push(t - ta);
    }
    const missing = onB.filter((x) => x.events !== tokens + 1).length;
    if (missing) throw new Error(`${missing} readers on B missed events`);
    return { lag: summarize(lags), bCpu: m.serverCpuMs[1]!, pg: m.pgCpuMs, wall: m.wallMs, statements };
  };
  await once(1);
  for (const k of [1, 100]) {
    const p99: number[] = [];
    const p50: number[] = [];
    const bcpu: number[] = [];
    const pgcpu: number[] = [];
    const stmts: number[] = [];
    for (let r = 0; r < env.repeats; r++) {
      const x = await once(k);
      p99.push(x.lag.p99);
      p50.push(x.lag.p50);
      bcpu.push((x.bCpu / x.wall) * 100);
      pgcpu.push((x.pg / x.wall) * 100);
      stmts.push(x.statements);
    }
    env.figures.push(
      { bench: 'cross-process', metric: `lag of a token on B behind A, p99, ${k} reader(s) on B`, unit: 'ms', value: round(repeated(p99).median), noisePct: round(repeated(p99).noisePct, 0), runs: p99.map((x) => round(x)), goal: k === 100 ? '≤ 10 ms' : undefined, note: `p50 ${round(repeated(p50).median)} ms` },
      { bench: 'cross-process', metric: `B's CPU while following, ${k} reader(s)`, unit: '% of a core', value: round(repeated(bcpu).median, 1), noisePct: round(repeated(bcpu).noisePct, 0) },
      { bench: 'cross-process', metric: `Postgres CPU while following, ${k} reader(s) on B`, unit: '% of a core', value: round(repeated(pgcpu).median, 1), noisePct: round(repeated(pgcpu).noisePct, 0) },
      { bench: 'cross-process', metric: `statements during one ${tokens}-token run, ${k} reader(s) on B`, unit: 'statements', value: round(repeated(stmts).median, 0) },
    );
  }
  c.close();
  await a.stop();
  await b.stop();
}

/**
 * Resume: a reader reconnecting to a finished run after a gap of 1, 100, 1,000 and 10,000 events, from the
 * memory tier (the process that ran it) and from Postgres (a process with no memory tier), p50 and p99.
 */
export async function benchResume(env: BenchEnv) {
  const url = await env.pg.freshDatabase('b_resume');
  const big = { MAX_TOKENS_LIMIT: 20_000, SESSION_MAX_SATS: 1_000_000, ...STREAMS };
  const mem = await startBenchServer(url, big);
  const pgOnly = await startBenchServer(url, { ...big, RUN_MEMORY_TTL_S: 0 });
  const c = jsonClient(mem.url, 8);
  const s = await paidSession(c, 1_000_000);
  const total = 10_000;
  const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: `long [stub:tokens=${total}] [stub:delay=0]`, max_tokens: total }, s.auth);
  const path = `/api/sessions/${s.id}/requests/${r.body.requestId}/stream`;
  await readSse(mem.url, path, s.auth, { keepArrivals: false }).done;
  await sleep(300);
  const inMemory = await mem.call<{ events: number | null }>('recent', { runId: r.body.requestId });
  env.figures.push({ bench: 'resume', metric: `a finished ${total}-event run is in the memory tier`, unit: 'events held', value: inMemory.events ?? 0 });
  const trials = env.quick ? 40 : 200;
  for (const gap of [1, 100, 1000, 10_000]) {
    for (const [where, server] of [['memory', mem], ['Postgres', pgOnly]] as const) {
      const times: number[] = [];
      for (let i = 0; i < trials + 5; i++) {
        const t0 = now();
        const x = readSse(server.url, path, { ...s.auth, 'last-event-id': String(total + 1 - gap) }, { keepArrivals: false });
        await x.done;
        if (x.events !== gap) throw new Error(`resume after a gap of ${gap} from ${where}: ${x.events} events`);
        if (i >= 5) times.push(now() - t0);
      }
      const t = summarize(times);
      env.figures.push({ bench: 'resume', metric: `resume a gap of ${gap} events from ${where}, p99`, unit: 'ms', value: round(t.p99), note: `p50 ${round(t.p50)} ms`, goal: gap === 100 && where === 'memory' ? '≤ 20 ms' : undefined });
    }
  }
  c.close();
  await mem.stop();
  await pgOnly.stop();
}
