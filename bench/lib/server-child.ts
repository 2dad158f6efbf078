/**
 * One Sluice server under benchmark, in a process of its own (so its CPU and memory are its own), driven over IPC
 * by bench/lib/server.ts. It is the real app (createContext + createApp, the defaults unless the benchmark says
 * otherwise, logs at `info` into /dev/null so their cost is counted) with two additions that only observe:
 *
 * - the AI provider is the stub, except that a request containing `[bench:gate]` waits before its first token
 *   until the parent opens the gate, and each run's provider call and first token are timed;
 * - a POST's arrival and its answer are timed, and the first token each run publishes.
 */
import { writeFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Session } from 'node:inspector/promises';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { createApp } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import { createContext } from '../../src/context.js';
import { createDatabase } from '../../src/db/pool.js';
import { listen } from '../../src/http/server.js';
import { safeLogOptions } from '../../src/log-safety.js';
import { settledMemory } from './settled-memory.js';
import { createStubAiProvider } from '../../src/providers/ai/stub.js';
import type { AiProvider } from '../../src/providers/ai/types.js';

const now = () => performance.timeOrigin + performance.now();
const overrides = JSON.parse(process.env.BENCH_CONFIG ?? '{}') as Record<string, unknown>;
// Only the time-to-first-token benchmark reads the timings: elsewhere timing every POST and statement (a map that
// grew by one entry per request, a 'finish' listener, a wrapper around every query) was CPU and garbage counted
// against the server it measured.
const timing = overrides.BENCH_TIMINGS === true;
delete overrides.BENCH_TIMINGS;
const databaseUrl = process.env.BENCH_DATABASE_URL!;
const config = loadConfig({}, { ...overrides, DATABASE_URL: databaseUrl } as never);
const log = pino({ level: config.LOG_LEVEL, ...safeLogOptions() }, pino.destination({ dest: '/dev/null', sync: false }));
const database = createDatabase(databaseUrl, { max: config.DB_POOL_MAX, connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS, log });

let openGate: () => void = () => {};
let gate = new Promise<void>((r) => (openGate = r));
const stub = createStubAiProvider({ tokenDelayMs: config.STUB_TOKEN_DELAY_MS, outputTokens: config.STUB_OUTPUT_TOKENS });
/**
 * Per run: when the provider was called, when it yielded its first token (or was aborted); when the POST arrived and was
 * answered; first token published.
 */
const timings = new Map<string, { call?: number; providerFirst?: number; arrival?: number; answered?: number; published?: number; aborted?: number }>();
const timed = (key: string) => {
  let t = timings.get(key);
  if (!t) timings.set(key, (t = {}));
  return t;
};
const provider: AiProvider = {
  name: 'stub',
  async *stream(req, signal) {
    const text = req.messages.at(-1)?.content ?? '';
    // `[bench:id=X]` names the request, so its provider timings can be paired with its run's.
    const t = timed(`id-${/\[bench:id=(\w+)\]/.exec(text)?.[1] ?? 'none'}`);
    if (text.includes('[bench:gate]')) {
      // When this process saw the stop (bench/stop.ts): its provider call aborted.
      signal.addEventListener('abort', () => (t.aborted = now()), { once: true });
      await Promise.race([gate, new Promise((r) => signal.addEventListener('abort', r, { once: true }))]);
      signal.throwIfAborted();
    }
    t.call = now();
    let first = true;
    for await (const chunk of stub.stream(req, signal)) {
      if (first && chunk.type === 'token') {
        t.providerFirst = now();
        first = false;
      }
      yield chunk;
    }
  },
  evaluate: (request, signal) => stub.evaluate(request, signal),
};

// The accept's statement, timed by its run id (its fifth parameter), to split the time to first token.
const query = database.pool.query.bind(database.pool) as (...a: unknown[]) => Promise<unknown>;
if (timing) (database.pool as unknown as { query: (...a: unknown[]) => Promise<unknown> }).query = (...args: unknown[]) => {
  const q = args[0] as { text?: string; values?: unknown[] };
  const runId = typeof q === 'object' && q?.text?.includes('insert into runs') && typeof q.values?.[4] === 'string' ? (q.values[4] as string) : null;
  if (!runId) return query(...args);
  const sent = now();
  return query(...args).then((r) => {
    Object.assign(timed(runId), { sent, returned: now() });
    return r;
  });
};
const ctx = createContext({ config, database, log, ai: provider });
// The first token each run publishes (the registry is called as a method, by every version of the engine).
const registry = ctx.registry as unknown as { append: (runId: string, type: string, data: unknown) => { seq: number } };
const append = registry.append.bind(ctx.registry);
if (timing) registry.append = (runId, type, data) => {
  const e = append(runId, type, data);
  if (type === 'token' && e.seq === 1) timed(runId).published = now();
  return e;
};
// Every finish this process hears (its own and, through NOTIFY, every other's), for `onFinish`; `BENCH_SILENT_FINISH`
// spares a benchmark that does not listen this IPC message per run (bench/queue.ts: its workers' CPU is the figure).
if (!overrides.BENCH_SILENT_FINISH) ctx.bus.on('run:finish', (e) => process.send?.({ event: 'finish', runId: e.runId, state: e.state }));

const app = createApp(ctx);
const handler = (req: IncomingMessage, res: ServerResponse) => {
  if (timing && req.method === 'POST') {
    const arrival = now();
    res.once('finish', () => {
      const loc = String(res.getHeader('location') ?? '');
      const runId = loc.split('/').at(-1);
      if (runId && res.statusCode === 202) Object.assign(timed(runId), { arrival, answered: now() });
    });
  }
  (app as unknown as (a: IncomingMessage, b: ServerResponse) => void)(req, res);
};

await ctx.bridge.start();
ctx.maintenance.start();
ctx.executor.startClaiming();
// The app's prototypes, for the requests the server makes (a wrapper of the app has none: see http/server.ts).
const server = await listen(handler, config, 0, '127.0.0.1', app);
const port = (server.address() as AddressInfo).port;

type Command = { id: number; cmd: string; args?: Record<string, unknown> };
let profiler: Session | undefined;
process.on('message', async (m: Command) => {
  const reply = (result: unknown) => process.send?.({ id: m.id, result });
  try {
    switch (m.cmd) {
      case 'cpu': {
        const u = process.cpuUsage();
        return reply({ cpuMs: (u.user + u.system) / 1000, at: now(), mem: process.memoryUsage() });
      }
      case 'gc':
        return reply(await settledMemory());
      case 'gate':
        openGate();
        gate = new Promise<void>((r) => (openGate = r));
        return reply(true);
      case 'timings': {
        // Provider timings by bench id (`id-X`), run timings by run id: the parent pairs them.
        const out = Object.fromEntries(timings);
        timings.clear();
        return reply(out);
      }
      case 'recent': {
        const hit = ctx.recent.get(String(m.args?.runId));
        return reply({ found: Boolean(hit), events: hit?.events?.length ?? null });
      }
      case 'profile:start': {
        // A CPU profile of a stretch of work (BENCH_CPU_PROF: the parent asks around its measured windows).
        profiler ??= new Session();
        profiler.connect();
        await profiler.post('Profiler.enable');
        // A finer grain than V8's default (1 ms) when asked: a request's path is a fraction of a millisecond.
        if (m.args?.intervalUs) await profiler.post('Profiler.setSamplingInterval', { interval: Number(m.args.intervalUs) });
        await profiler.post('Profiler.start');
        return reply(true);
      }
      case 'profile:stop': {
        const { profile } = await profiler!.post('Profiler.stop');
        writeFileSync(String(m.args?.path), JSON.stringify(profile));
        profiler!.disconnect();
        return reply(true);
      }
      case 'heap': {
        for (let i = 0; i < 3; i++) (globalThis as { gc?: () => void }).gc?.();
        const { writeHeapSnapshot } = await import('node:v8');
        return reply(writeHeapSnapshot(String(m.args?.path)));
      }
      case 'stats':
        return reply({ registry: ctx.registry.stats(), executor: ctx.executor.stats(), pool: ctx.database.stats() });
      case 'quit':
        server.closeAllConnections();
        server.close();
        await ctx.executor.drain(0);
        await ctx.maintenance.stop();
        await ctx.bridge.stop();
        await database.close();
        reply(true);
        return setTimeout(() => process.exit(0), 50);
      default:
        return reply({ error: `unknown command ${m.cmd}` });
    }
  } catch (err) {
    reply({ error: String(err) });
  }
});
process.send?.({ event: 'ready', port, pid: process.pid });
