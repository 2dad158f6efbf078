import { inArray } from 'drizzle-orm';
import type { AppContext } from '../context.js';
import { jobs as jobsTable } from '../db/schema.js';
import { RUN_STATES, type JobRow } from './jobs.service.js';

/** How often a waited-for job's awaited invoice is checked with the payment provider. */
const RECONCILE_MS = 5_000;
/** Jobs read per statement by the shared poll. */
const BATCH = 500;

/** The work has started (its run exists) or never will (rejected, or expired unpaid): a waiting stream can go on. */
const ready = (j: JobRow) => RUN_STATES.includes(j.state) || j.state === 'rejected' || j.state === 'expired';

interface Watch {
  job: JobRow;
  waiters: Set<(job: JobRow) => void>;
  reading: boolean;
  /** An update arrived while reading: read once more after. */
  dirty: boolean;
  reconcileAt: number;
}

/**
 * Streams opened on a job before its work starts wait here, sharing: every stream waiting on job X in this process
 * shares one watch of X, and one timer polls every watched job in one statement. So 6,000 streams on unpaid jobs
 * cost one query per poll interval, not 6,000 (they used to poll Postgres once a second each).
 *
 * Why a waiter cannot sleep through the update it waits for: `job:update` (bridged across processes) marks the
 * watch and re-reads it; a watch re-reads its job once right after it is created, which covers an update that
 * landed between the caller's own read and the watch existing; an update during a read makes one more read after
 * it. The poll is only the fallback for a notification lost on the way (a dropped LISTEN connection), and also
 * asks the payment provider about the awaited invoice now and then, so a lost settlement event only delays.
 */
export function createJobWaits(ctx: Pick<AppContext, 'bus' | 'jobs' | 'config' | 'db' | 'log'>) {
  const watches = new Map<string, Watch>();
  let timer: NodeJS.Timeout | null = null;
  let polling = false;
  const pollMs = Math.max(50, ctx.config.SSE_POLL_MS);

  function update(w: Watch, job: JobRow) {
    w.job = job;
    if (ready(job)) for (const wake of [...w.waiters]) wake(job);
  }

  /** Read one job again (one read at a time per job); `reconcile` asks the payment provider first. */
  function refresh(jobId: string, reconcile = false) {
    const w = watches.get(jobId);
    if (!w) return;
    if (w.reading) {
      w.dirty = true;
      return;
    }
    w.reading = true;
    void (async () => {
      do {
        w.dirty = false;
        try {
          update(w, reconcile ? await ctx.jobs.get(jobId) : await ctx.jobs.find(jobId));
        } catch (err) {
          // Gone (retention) or Postgres unwell: the waiters keep their deadline; the poll tries again.
          ctx.log.debug({ err, jobId }, 'reading a waited-for job failed');
        }
        reconcile = false;
      } while (w.dirty && watches.get(jobId) === w);
      w.reading = false;
    })();
  }

  ctx.bus.on('job:update', (e) => refresh(e.jobId));

  async function poll() {
    if (polling) return;
    polling = true;
    try {
      const ids = [...watches.keys()];
      for (let i = 0; i < ids.length; i += BATCH) {
        const rows = await ctx.db.select().from(jobsTable).where(inArray(jobsTable.id, ids.slice(i, i + BATCH)));
        for (const row of rows) {
          const w = watches.get(row.id);
          if (w) update(w, row);
        }
      }
      const now = Date.now();
      for (const [id, w] of watches) {
        if (w.reconcileAt > now || ready(w.job)) continue;
        w.reconcileAt = now + RECONCILE_MS;
        refresh(id, true);
      }
    } catch (err) {
      ctx.log.debug({ err }, 'polling waited-for jobs failed');
    } finally {
      polling = false;
    }
  }

  function release(jobId: string, w: Watch, wake: (job: JobRow) => void) {
    w.waiters.delete(wake);
    if (w.waiters.size > 0 || watches.get(jobId) !== w) return;
    watches.delete(jobId);
    if (watches.size === 0 && timer) {
      clearInterval(timer);
      timer = null;
    }
  }

  return {
    /**
     * The job once its work has started or it was rejected; or as it is when `signal` aborts or JOB_STREAM_WAIT_S
     * pass. Never throws.
     */
    wait(job: JobRow, signal: AbortSignal): Promise<JobRow> {
      if (ready(job) || signal.aborted) return Promise.resolve(job);
      let w = watches.get(job.id);
      const fresh = !w;
      if (!w) {
        w = { job, waiters: new Set(), reading: false, dirty: false, reconcileAt: Date.now() + RECONCILE_MS };
        watches.set(job.id, w);
        if (!timer) {
          timer = setInterval(() => void poll(), pollMs);
          timer.unref();
        }
      }
      const watch = w;
      return new Promise<JobRow>((resolve) => {
        const finish = (j: JobRow) => {
          clearTimeout(deadline);
          signal.removeEventListener('abort', onAbort);
          release(job.id, watch, finish);
          resolve(j);
        };
        const onAbort = () => finish(watch.job);
        const deadline = setTimeout(() => finish(watch.job), ctx.config.JOB_STREAM_WAIT_S * 1000);
        signal.addEventListener('abort', onAbort);
        watch.waiters.add(finish);
        if (fresh) refresh(job.id);
        else if (ready(watch.job)) finish(watch.job);
      });
    },

    /** Jobs watched right now (each shared by all its waiting streams). */
    get size() {
      return watches.size;
    },
  };
}

export type JobWaits = ReturnType<typeof createJobWaits>;
