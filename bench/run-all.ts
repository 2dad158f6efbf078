/**
 * Benchmarks. Each prints a ratio against a baseline measured in the same run on the same machine (these
 * machines are noisy, so absolute numbers mean little and ratios travel):
 *
 * 1. accept latency — POST /request (validate, debit + insert in one transaction, 202) vs GET /api/healthz
 *    (one `select 1` round trip): how many database round trips a 202 costs.
 * 2. token path — one 4000-token run delivered to 10 SSE subscribers over real sockets, persisted to Postgres,
 *    vs the bare stub provider producing the same tokens in memory: what the engine adds per token.
 * 3. replay — a late joiner reading a finished 4000-event run: from Postgres vs from the memory tier.
 *
 * `npm run bench` (embedded Postgres in a temp folder, or BENCH_DATABASE_URL).
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { createApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { createContext } from '../src/context.js';
import { startEmbeddedPostgres } from '../src/db/embedded.js';
import { runMigrations } from '../src/db/migrate.js';
import { createDatabase } from '../src/db/pool.js';
import { createStubAiProvider } from '../src/providers/ai/stub.js';

const TOKENS = 4000;

async function main() {
  let url = process.env.BENCH_DATABASE_URL;
  let cleanup = async () => {};
  if (!url) {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-'));
    chmodSync(dir, 0o755);
    const pg = await startEmbeddedPostgres({ dataDir: path.join(dir, 'pg'), port: 55000 + Math.floor(Math.random() * 5000) });
    url = pg.connectionString;
    cleanup = async () => {
      await pg.stop();
      rmSync(dir, { recursive: true, force: true });
    };
  }
  const config = loadConfig({}, {
    DATABASE_URL: url,
    NODE_ENV: 'test',
    LOG_LEVEL: 'silent',
    STUB_TOKEN_DELAY_MS: 0,
    MAX_TOKENS_LIMIT: 10_000,
    SESSION_MAX_SATS: 1_000_000,
    SWEEP_INTERVAL_S: 3600,
    // The memory tier keeps a finished run's log only when it fits the replay buffer: make this one fit.
    REPLAY_BUFFER_EVENTS: 8192,
    // One session makes hundreds of requests a minute here: the limits would (rightly) refuse it.
    SESSION_RATE_LIMIT_PER_MIN: 0,
    SESSION_MAX_STREAMS: 0,
  });
  const database = createDatabase(url, { max: 10 });
  await runMigrations(database.db);
  const ctx = createContext({ config, database, log: pino({ level: 'silent' }) });
  const app = createApp(ctx);
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const json = async (method: string, p: string, body?: unknown, token?: string) => {
    const res = await fetch(base + p, {
      method,
      headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return res.json() as Promise<any>;
  };
  const created = await json('POST', '/api/sessions', { amount_sats: 1_000_000 });
  await json('POST', `/api/dev/stub/pay/${created.invoice.paymentHash}`);
  const token: string = created.sessionToken;
  const sid: string = created.sessionId;
  const results: Array<{ bench: string; baseline: string; measured: string; ratio: number }> = [];

  // 1. accept latency
  {
    const n = 300;
    const time = async (fn: () => Promise<unknown>) => {
      const out: number[] = [];
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        await fn();
        out.push(performance.now() - t0);
      }
      return out.sort((a, b) => a - b)[Math.floor(n / 2)]!;
    };
    await time(() => json('GET', '/api/healthz')); // warm up
    const health = await time(() => json('GET', '/api/healthz'));
    const accept = await time(() => json('POST', `/api/sessions/${sid}/request`, { request: 'bench [stub:tokens=1]', max_tokens: 1 }, token));
    results.push({ bench: 'accept latency (p50)', baseline: `healthz ${health.toFixed(2)} ms`, measured: `202 ${accept.toFixed(2)} ms`, ratio: accept / health });
    await new Promise((r) => setTimeout(r, 500));
  }

  // 2. token path
  {
    const stub = createStubAiProvider({ tokenDelayMs: 0 });
    const t0 = performance.now();
    let n = 0;
    for await (const c of stub.stream({ model: 'bench', messages: [{ role: 'user', content: `x [stub:tokens=${TOKENS}]` }], maxTokens: TOKENS }, new AbortController().signal)) if (c.type === 'token') n++;
    const bare = performance.now() - t0;
    if (n !== TOKENS) throw new Error('stub produced the wrong number of tokens');

    const start = performance.now();
    const r = await json('POST', `/api/sessions/${sid}/request`, { request: `bench [stub:tokens=${TOKENS}]`, max_tokens: TOKENS }, token);
    const readers = Array.from({ length: 10 }, async () => {
      const res = await fetch(`${base}/api/sessions/${sid}/requests/${r.requestId}/stream`, { headers: { authorization: `Bearer ${token}` } });
      const text = await res.text();
      const tokens = text.match(/^event: token$/gm)?.length ?? 0;
      if (tokens !== TOKENS || !text.includes('event: done')) throw new Error(`a reader got ${tokens} tokens`);
    });
    await Promise.all(readers);
    const engine = performance.now() - start;
    results.push({
      bench: `token path (${TOKENS} tokens, 10 SSE readers)`,
      baseline: `bare stub ${bare.toFixed(1)} ms`,
      measured: `engine ${engine.toFixed(1)} ms (${((engine / TOKENS) * 1000).toFixed(1)} µs/token)`,
      ratio: engine / bare,
    });

    // 3. replay of that finished run: memory tier vs Postgres
    const replay = async () => {
      const t = performance.now();
      const res = await fetch(`${base}/api/runs/${r.requestId}/stream`, { headers: { authorization: `Bearer ${token}` } });
      await res.text();
      return performance.now() - t;
    };
    await new Promise((res) => setTimeout(res, 200));
    const cached = ctx.recent.get(r.requestId);
    if (!cached?.events) throw new Error('the finished run is not in the memory tier');
    // Interleaved, after a warm-up of each, so JIT and caches favour neither side.
    const mem: number[] = [];
    const fromPg: number[] = [];
    for (let i = 0; i < 7; i++) {
      ctx.recent.put(cached.row, cached.events);
      mem.push(await replay());
      ctx.recent.delete(r.requestId);
      fromPg.push(await replay());
    }
    const med = (a: number[]) => a.slice(2).sort((x, y) => x - y)[2]!;
    results.push({
      bench: `replay of a finished ${TOKENS}-event run (median)`,
      baseline: `memory ${med(mem).toFixed(1)} ms`,
      measured: `Postgres ${med(fromPg).toFixed(1)} ms`,
      ratio: med(fromPg) / med(mem),
    });
  }

  console.log('\nSluice benchmarks (ratio = measured / baseline, same run, same machine)\n');
  for (const r of results) console.log(`${r.bench.padEnd(48)} ${r.baseline.padEnd(26)} ${r.measured.padEnd(44)} ratio ${r.ratio.toFixed(2)}`);
  console.log(`\n${JSON.stringify({ node: process.version, cpus: os.cpus().length, results })}`);

  await ctx.executor.drain(0);
  await ctx.maintenance.stop();
  server.closeAllConnections();
  server.close();
  await database.close();
  await cleanup();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
