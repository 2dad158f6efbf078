import { fork, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
/**
 * `npm run bench` runs the suite compiled by tsc, as `npm start` runs the server: tsx (esbuild with `keepNames`)
 * gives every closure an own `name` property, which costs memory and CPU a production build does not pay. Run from
 * the sources (`npx tsx bench/run-all.ts`), the servers run through tsx too.
 */
const compiled = import.meta.url.endsWith('.js');

export interface BenchServer {
  url: string;
  port: number;
  pid: number;
  /** Ask the server process something (see server-child.ts). */
  call<T = any>(cmd: string, args?: Record<string, unknown>): Promise<T>;
  /** Called for every run the server finishes. */
  onFinish(fn: (runId: string, state: string) => void): () => void;
  /** Server CPU ms used so far. */
  cpuMs(): Promise<number>;
  stop(): Promise<void>;
  /** SIGKILL it (its database is thrown away anyway: no need to drain a queue of thousands). */
  kill(): Promise<void>;
}

export interface BenchServerOptions {
  /**
   * V8's heap flags for the server process. By default `--max-semi-space-size=32`: the young generation may grow to
   * 32 MB per semi-space (Node 20's own cap is 16 MB), which spares the CPU benchmarks scavenges. It is not what
   * `npm start` runs, so a benchmark of memory passes its own (`[]`: the heap as production has it).
   */
  heapFlags?: string[];
}

/** Start a Sluice server process on `databaseUrl` with these configuration overrides (the rest are defaults). */
export async function startBenchServer(databaseUrl: string, config: Record<string, unknown> = {}, script = 'server-child', opts: BenchServerOptions = {}): Promise<BenchServer> {
  const heap = opts.heapFlags ?? ['--max-semi-space-size=32'];
  const child: ChildProcess = fork(path.join(here, `${script}.${compiled ? 'js' : 'ts'}`), [], {
    // `--expose-gc` only lets the parent ask for a collection before reading memory: it changes no heap setting.
    execArgv: ['--expose-gc', ...heap, ...(compiled ? [] : ['--import', 'tsx'])],
    env: { ...process.env, BENCH_DATABASE_URL: databaseUrl, BENCH_CONFIG: JSON.stringify({ LOG_LEVEL: 'info', LOG_FORMAT: 'json', ...config }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let next = 1;
  const pending = new Map<number, (v: unknown) => void>();
  const finishers = new Set<(runId: string, state: string) => void>();
  const ready = new Promise<{ port: number; pid: number }>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`bench server exited (${code}) before it was ready`)));
    child.on('message', (m: any) => {
      if (m.event === 'ready') resolve(m);
      else if (m.event === 'finish') for (const f of finishers) f(m.runId, m.state);
      else if (m.id !== undefined) {
        pending.get(m.id)?.(m.result);
        pending.delete(m.id);
      }
    });
  });
  const { port, pid } = await ready;
  const call = <T>(cmd: string, args?: Record<string, unknown>) =>
    new Promise<T>((resolve) => {
      const id = next++;
      pending.set(id, resolve as (v: unknown) => void);
      child.send({ id, cmd, args });
    });
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    pid,
    call,
    onFinish(fn) {
      finishers.add(fn);
      return () => finishers.delete(fn);
    },
    async cpuMs() {
      return (await call<{ cpuMs: number }>('cpu')).cpuMs;
    },
    async kill() {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    },
    async stop() {
      const exited = new Promise((r) => child.once('exit', r));
      await Promise.race([call('quit'), new Promise((r) => setTimeout(r, 15_000))]);
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
