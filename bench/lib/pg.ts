import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { ensureDatabase, startEmbeddedPostgres } from '../../src/db/embedded.js';
import { createDatabase } from '../../src/db/pool.js';
import { runMigrations } from '../../src/db/migrate.js';

/**
 * The project's root (where package.json and drizzle/ are), from the sources or from their compiled copy alike
 * (`.bench-build/` holds a copy of package.json, which src/openapi/document.ts reads two folders up, but no drizzle/).
 */
export function projectRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json')) || !existsSync(path.join(dir, 'drizzle'))) dir = path.dirname(dir);
  return dir;
}

const TICK_MS = 1000 / 100; // USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s

/** utime + stime (and, with `children`, cutime + cstime: its reaped children's) of a process, in ms. */
function procCpuMs(pid: number, children: boolean): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields after the command: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14)
    const own = Number(f[11]) + Number(f[12]);
    return (own + (children ? Number(f[13]) + Number(f[14]) : 0)) * TICK_MS;
  } catch {
    return 0;
  }
}

function ppidOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return -1;
  }
}

export interface BenchPostgres {
  adminUrl: string;
  /** A fresh database cloned from the migrated template. */
  freshDatabase(name: string): Promise<string>;
  /** CPU ms used by the whole cluster so far: the postmaster, its live backends, and every backend that exited. */
  cpuMs(): number;
  /** Reset pg_stat_statements. */
  resetStatements(): Promise<void>;
  /** Statements run against one database since the last reset: calls per normalised query, most first. */
  statements(database: string): Promise<Array<{ calls: number; query: string }>>;
  stop(): Promise<void>;
}

/**
 * The benchmarks' own Postgres: embedded, in a temp folder, with pg_stat_statements loaded and counting utility
 * statements (BEGIN, COMMIT: they are round trips too), a migrated template to clone per benchmark.
 */
export async function startBenchPostgres(): Promise<BenchPostgres> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-'));
  chmodSync(dir, 0o755);
  // A port nobody holds now (a random one collided with other clusters on this shared machine).
  const port = await new Promise<number>((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const p = (probe.address() as net.AddressInfo).port;
      probe.close(() => resolve(p));
    });
  });
  const lines: string[] = [];
  const server = await startEmbeddedPostgres({
    dataDir: path.join(dir, 'pg'),
    port,
    database: 'postgres',
    onLog: (l) => lines.push(l),
    postgresFlags: ['-c', 'shared_preload_libraries=pg_stat_statements', '-c', 'pg_stat_statements.track_utility=on'],
  }).catch((err: unknown) => {
    console.error(lines.slice(-20).join('\n'));
    throw err;
  });
  const adminUrl = server.urlFor('postgres');
  const admin = new pg.Pool({ connectionString: adminUrl, max: 2 });
  admin.on('error', () => {});
  await admin.query('create extension if not exists pg_stat_statements');
  await ensureDatabase(adminUrl, 'bench_template');
  const tpl = createDatabase(server.urlFor('bench_template'), { max: 1 });
  await runMigrations(tpl, path.join(projectRoot(), 'drizzle'));
  await tpl.close();
  const postmaster = server.pid!;
  return {
    adminUrl,
    async freshDatabase(name) {
      await admin.query(`drop database if exists ${name} with (force)`);
      await ensureDatabase(adminUrl, name, 'bench_template');
      return server.urlFor(name);
    },
    cpuMs() {
      let total = procCpuMs(postmaster, true);
      for (const entry of readdirSync('/proc')) {
        const pid = Number(entry);
        if (pid > 0 && ppidOf(pid) === postmaster) total += procCpuMs(pid, false);
      }
      return total;
    },
    async resetStatements() {
      await admin.query('select pg_stat_statements_reset()');
    },
    async statements(database) {
      const res = await admin.query(
        `select calls::int, query from pg_stat_statements s join pg_database d on d.oid = s.dbid
         where d.datname = $1 order by calls desc`,
        [database],
      );
      return res.rows;
    },
    async stop() {
      await admin.end();
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
