import { existsSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import path from 'node:path';

/**
 * Who holds an embedded cluster's data folder before we start it. The embedded Postgres is our child process, but
 * it does not die with us: after a SIGKILL of Sluice (an OOM kill, `kill -9`, a crashed container runtime) it runs
 * on, orphaned, holding the folder's `postmaster.pid`, and every later start fails. Start-up therefore looks first:
 *
 * - we start every embedded Postgres with `-c cluster_name=sluice:<our pid>:<our start time>`, so the postmaster's
 *   command line names the Sluice that owns it (the start time guards against a reused pid);
 * - a postmaster is *ours* only if `/proc` shows it really is a postgres serving this very folder (its working
 *   directory) and its command line carries that mark;
 * - it is an *orphan* if the Sluice it names is gone. Only then do we stop it, with the fast shutdown Postgres
 *   itself uses (SIGINT: in-flight transactions roll back, the data is safe), and start our own.
 *
 * Anything else — a Postgres not started by Sluice, one of another folder behind a reused pid, one whose Sluice is
 * alive, or a system without `/proc` where none of this can be verified — is left alone, and start-up fails with
 * a message saying what holds the folder.
 */
export type Holder =
  | { kind: 'none' }
  | { kind: 'orphan'; pid: number; sluicePid: number }
  | { kind: 'sluice'; pid: number; sluicePid: number }
  | { kind: 'foreign'; pid: number; why: string };

const MARK = 'sluice';

/** The `cluster_name` that marks a postmaster as started by this process. */
export function ownerMark(pid = process.pid): string {
  const start = startTimeOf(pid);
  return `${MARK}:${pid}:${start ?? 0}`;
}

/** Fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses). */
function statFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** Clock ticks since boot at which `pid` started (field 22 of /proc/<pid>/stat), or null. */
function startTimeOf(pid: number): string | null {
  return statFields(pid)?.[19] ?? null;
}

/** A process that exists and is not a zombie waiting to be reaped. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const state = statFields(pid)?.[0];
  return state !== 'Z' && state !== 'X';
}

function postmasterPid(dataDir: string): number | null {
  const file = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(file)) return null;
  const pid = Number(readFileSync(file, 'utf8').split('\n')[0]);
  return Number.isInteger(pid) && pid > 0 ? pid : null;
}

export function inspectDataDir(dataDir: string): Holder {
  const pid = postmasterPid(dataDir);
  // No lock file, or one whose process is gone: Postgres itself clears a stale lock file.
  if (pid === null || !isAlive(pid)) return { kind: 'none' };
  if (!existsSync('/proc/self/stat')) return { kind: 'foreign', pid, why: 'this system has no /proc, so it cannot be checked' };
  let cwd: string;
  let exe: string;
  let args: string[];
  try {
    cwd = realpathSync(readlinkSync(`/proc/${pid}/cwd`));
    exe = path.basename(readlinkSync(`/proc/${pid}/exe`));
    args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return { kind: 'foreign', pid, why: 'its process cannot be inspected' };
  }
  if (!exe.startsWith('postgres') || cwd !== realpathSync(dataDir)) {
    return { kind: 'foreign', pid, why: 'that process is not a Postgres serving this folder, so postmaster.pid is stale' };
  }
  const mark = args.map((a) => /^cluster_name=(.*)$/.exec(a)?.[1]).find((v) => v?.startsWith(`${MARK}:`));
  if (!mark) return { kind: 'foreign', pid, why: 'it was not started by Sluice' };
  const [, ownerPid, ownerStart] = mark.split(':');
  const sluicePid = Number(ownerPid);
  const ownerAlive = isAlive(sluicePid) && startTimeOf(sluicePid) === ownerStart;
  return ownerAlive ? { kind: 'sluice', pid, sluicePid } : { kind: 'orphan', pid, sluicePid };
}

/**
 * Stop an orphaned postmaster: fast shutdown (SIGINT), then, if it has not exited in `graceMs`, immediate shutdown
 * (SIGQUIT: crash recovery at the next start, still no data lost). Resolves once it is gone.
 */
export async function stopOrphan(pid: number, opts: { graceMs?: number } = {}): Promise<void> {
  const waitGone = async (ms: number) => {
    const deadline = Date.now() + ms;
    while (isAlive(pid)) {
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 50));
    }
    return true;
  };
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(pid, sig);
    } catch {
      // gone already
    }
  };
  signal('SIGINT');
  if (await waitGone(opts.graceMs ?? 30_000)) return;
  signal('SIGQUIT');
  if (await waitGone(10_000)) return;
  throw new Error(`the orphaned Postgres (pid ${pid}) did not stop`);
}
