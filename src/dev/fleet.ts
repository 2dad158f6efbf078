import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config.js';
import { startEmbeddedPostgres } from '../db/embedded.js';
import { runMigrations } from '../db/migrate.js';
import { createDatabase } from '../db/pool.js';

/**
 * A fleet on one machine, with one command (`npm run fleet`): an embedded Postgres, API processes on PORT, PORT+1, …
 * and worker processes (each answering its health on PORT+100, PORT+101, …), every line of their output prefixed
 * with who wrote it. Ctrl-C (or SIGTERM) stops them all, gracefully (each gets one SIGTERM: it stops taking work,
 * lets running runs finish for SHUTDOWN_GRACE_MS), then Postgres. The rest of the environment is every process's.
 *
 *   npm run fleet                           # 1 API + 2 workers
 *   npm run fleet -- --apis 2 --workers 4   # put any load balancer in front of the API ports
 *
 * It runs what the build made (dist/main.js), as `npm start` does. In production, run the same processes under
 * your orchestrator with PROCESS_ROLE set, against one Postgres (DATABASE_URL): README "Scaling".
 */
const { values } = parseArgs({ options: { apis: { type: 'string', default: '1' }, workers: { type: 'string', default: '2' } } });
const apis = Number(values.apis);
const workers = Number(values.workers);
if (!Number.isInteger(apis) || apis < 1 || !Number.isInteger(workers) || workers < 0) {
  console.error('fleet: --apis must be at least 1 and --workers at least 0');
  process.exit(2);
}

const main = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'main.js');
const config = loadConfig();
const say = (line: string) => process.stdout.write(`[fleet] ${line}\n`);

const pg = await startEmbeddedPostgres({ dataDir: config.DATA_DIR, port: config.EMBEDDED_PG_PORT });
say(`Postgres in ${config.DATA_DIR} on port ${config.EMBEDDED_PG_PORT}`);
// Migrated once here, before any process starts (each would wait on the others' migration lock otherwise).
const database = createDatabase(pg.connectionString, { max: 1 });
await runMigrations(database);
await database.close();

const children: Array<{ name: string; proc: ChildProcess; exited: Promise<void> }> = [];
function launch(name: string, role: 'api' | 'worker', port: number) {
  const proc = spawn(process.execPath, [main], {
    env: { ...process.env, PROCESS_ROLE: role, PORT: String(port), DATABASE_URL: pg.connectionString },
    stdio: ['ignore', 'pipe', 'pipe'],
    // A process group of its own: Ctrl-C reaches the fleet, which sends each process exactly one SIGTERM.
    detached: true,
  });
  const prefix = (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) if (line) process.stdout.write(`[${name}] ${line}\n`);
  };
  proc.stdout!.on('data', prefix);
  proc.stderr!.on('data', prefix);
  const exited = new Promise<void>((resolve) =>
    proc.on('exit', (code, signal) => {
      say(`${name} exited (${signal ?? code})`);
      resolve();
    }),
  );
  children.push({ name, proc, exited });
}
for (let i = 0; i < apis; i++) launch(apis > 1 ? `api-${i + 1}` : 'api', 'api', config.PORT + i);
for (let i = 0; i < workers; i++) launch(`worker-${i + 1}`, 'worker', config.PORT + 100 + i);
say(`${apis} API process(es) on port ${config.PORT}${apis > 1 ? `–${config.PORT + apis - 1}` : ''}, ${workers} worker(s); Ctrl-C stops them all`);

let stopping = false;
async function stop(signal: string) {
  if (stopping) return;
  stopping = true;
  say(`${signal}: stopping every process, then Postgres`);
  for (const c of children) if (c.proc.exitCode === null) c.proc.kill('SIGTERM');
  await Promise.all(children.map((c) => c.exited));
  await pg.stop();
  say('stopped');
  process.exit(0);
}
process.on('SIGINT', () => void stop('SIGINT'));
process.on('SIGTERM', () => void stop('SIGTERM'));
