import { sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { Db } from '../db/pool.js';
import type { Executor } from './executor.js';
import type { RunStore } from './store.js';

export interface MaintenanceDeps {
  config: Config;
  db: Db;
  store: RunStore;
  executor: Executor;
  log: Logger;
  instanceId: string;
  /** Extra sweeps of other features (jobs, the recent-runs cache), run on the same timer. */
  extraSweeps?: Array<() => Promise<void> | void>;
}

/**
 * The background upkeep of one process: keep our leases alive, finish runs whose process died (interrupted,
 * refunded), expire idle sessions, delete runs past retention. One timer for everything, never one per run.
 */
export function createMaintenance(deps: MaintenanceDeps) {
  const { config, store, log } = deps;
  let heartbeat: NodeJS.Timeout | null = null;
  let sweeper: NodeJS.Timeout | null = null;
  let sweeping: Promise<void> | null = null;

  /**
   * Finish started runs no process holds. `everyone`: we are the only process (embedded Postgres), so all are.
   * Queued runs are never finished here: they wait in the queue (runs/queue.ts) for any process to claim them.
   */
  async function recoverOrphans(everyone = false): Promise<number> {
    let n = 0;
    for (;;) {
      const ids = await store.orphans(everyone, deps.executor.held().map((h) => h.id));
      if (ids.length === 0) return n;
      for (const { id, state } of ids) {
        // A queued run here was stopped by a process that died before finishing it; the rest were started.
        if (await deps.executor.interruptOrphan(id, state === 'queued' ? 'cancelled' : 'interrupted')) {
          n++;
          log.warn({ runId: id, state }, state === 'queued' ? 'stopped queued run cancelled and refunded' : 'orphaned run interrupted and refunded');
        }
      }
      if (ids.length < 100) return n;
    }
  }

  async function expireSessions(): Promise<number> {
    // The sessions locked in id order, as a finish statement that settles several runs locks theirs (ledger.ts):
    // two statements that lock several sessions each can then never wait on each other in a cycle.
    const res = await deps.db.execute(sql`
      with due as (
        select id from sessions where state in ('active', 'awaiting_payment') and expires_at <= now() order by id for update
      )
      update sessions set state = 'expired' from due where sessions.id = due.id`);
    return res.rowCount ?? 0;
  }

  async function sweep(): Promise<void> {
    await recoverOrphans(false);
    // Runs this process gave up recording (Postgres was down at their claim or end): finish them now it is back.
    for (const id of deps.executor.abandoned()) await deps.executor.interruptOrphan(id);
    await expireSessions();
    await store.deleteFinishedBefore(new Date(Date.now() - config.RUN_RETENTION_DAYS * 86_400_000));
    for (const extra of extras) await extra();
  }

  function guarded(what: string, fn: () => Promise<unknown>) {
    return () => {
      if (sweeping) return;
      sweeping = fn()
        .then(() => undefined)
        .catch((err) => log.error({ err }, `${what} failed`))
        .finally(() => {
          sweeping = null;
        });
    };
  }

  const extras = [...(deps.extraSweeps ?? [])];

  return {
    /** Run `fn` on every sweep too. */
    addSweep(fn: () => Promise<void> | void) {
      extras.push(fn);
    },
    recoverOrphans,
    expireSessions,
    sweep,
    start() {
      heartbeat = setInterval(() => {
        store
          .renewLeases(deps.instanceId, config.LEASE_TTL_S, deps.executor.held())
          // A stop asked through another process reaches a run here even while it streams no tokens (should its
          // NOTIFY have been lost); a lease taken over (we were frozen past it) stops the provider call at once.
          .then(({ stops, lost }) => {
            for (const id of stops) deps.executor.stop(id, 'cancelled');
            for (const id of lost) if (deps.executor.stop(id, 'interrupted')) log.warn({ runId: id }, 'lease lost at its renewal: another process took this run over; writing nothing more');
          })
          .catch((err) => log.error({ err }, 'renewing leases failed'));
      }, Math.max(100, (config.LEASE_TTL_S * 1000) / 3));
      sweeper = setInterval(guarded('sweep', sweep), config.SWEEP_INTERVAL_S * 1000);
      heartbeat.unref();
      sweeper.unref();
    },
    async stop() {
      if (heartbeat) clearInterval(heartbeat);
      if (sweeper) clearInterval(sweeper);
      heartbeat = sweeper = null;
      await sweeping;
    },
  };
}

export type Maintenance = ReturnType<typeof createMaintenance>;
