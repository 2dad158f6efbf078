/**
 * The baseline of bench/queue.ts: one graphile-worker 0.17 process (`run`, its own pool, LISTEN/NOTIFY and its
 * poll) with a task that does nothing, in a process of its own so its CPU is its own. Driven over IPC with the
 * protocol of server-child.ts (`ready`, `cpu`, `quit`), plus `latencies`: for each job it ran, the time from its
 * insert to its task being called (`Date.now() − created_at`; a Sluice run's claim is timed by Postgres alone), as the Sluice side measures its runs.
 */
import { Logger, run, type Runner } from 'graphile-worker';

const options = JSON.parse(process.env.BENCH_CONFIG ?? '{}') as { concurrency?: number; pollMs?: number };
const concurrency = options.concurrency ?? 32;
const latencies: number[] = [];
let runner: Runner;

runner = await run({
  connectionString: process.env.BENCH_DATABASE_URL!,
  concurrency,
  // Its own pool, sized as a Sluice process's default (DB_POOL_MAX 10).
  maxPoolSize: 10,
  pollInterval: options.pollMs ?? 1000,
  noHandleSignals: true,
  // Silent (it logs every job at info; Sluice's bench servers log into /dev/null, cost counted: this favours it).
  logger: new Logger(() => () => {}),
  taskList: {
    noop: async (_payload, helpers) => {
      const job = helpers.job;
      // (This machine's clock, as Postgres's: one machine. `locked_at` is when its claim's transaction began.)
      latencies.push(Date.now() - new Date(job.created_at).getTime());
    },
  },
});

process.send?.({ event: 'ready', port: 0, pid: process.pid });
process.on('message', async (m: { id: number; cmd: string }) => {
  const reply = (result: unknown) => process.send?.({ id: m.id, result });
  switch (m.cmd) {
    case 'cpu': {
      const u = process.cpuUsage();
      return reply({ cpuMs: (u.user + u.system) / 1000 });
    }
    case 'latencies':
      return reply(latencies.splice(0));
    case 'quit':
      await runner.stop();
      reply(true);
      return setTimeout(() => process.exit(0), 50);
    default:
      return reply(null);
  }
});
