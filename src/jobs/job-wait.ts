import type { AppContext } from '../context.js';
import { RUN_STATES, type JobRow } from './jobs.service.js';

/**
 * Wait until a job's run exists or the job is rejected, for at most JOB_STREAM_WAIT_S. Woken by the bus
 * (`job:update`), not by sleeping; the poll is the fallback for a settlement this process never hears of
 * (another process, a lost provider event) and reconciles the payment with the provider as it goes.
 */
/** How often a waiting stream asks the payment provider about the awaited invoice. */
const RECONCILE_MS = 5_000;

export async function waitForJob(ctx: Pick<AppContext, 'bus' | 'jobs' | 'config'>, job: JobRow, signal: AbortSignal): Promise<JobRow> {
  const ready = (j: JobRow) => RUN_STATES.includes(j.state) || j.state === 'rejected' || j.state === 'expired';
  if (ready(job)) return job;
  const deadline = Date.now() + ctx.config.JOB_STREAM_WAIT_S * 1000;
  // `dirty` catches an update that lands while we are reading, so it is never slept through.
  let dirty = false;
  let wake: (() => void) | null = null;
  const onUpdate = (e: { jobId: string }) => {
    if (e.jobId !== job.id) return;
    dirty = true;
    wake?.();
  };
  const onAbort = () => wake?.();
  ctx.bus.on('job:update', onUpdate);
  signal.addEventListener('abort', onAbort);
  // Postgres is re-read every SSE_POLL_MS; the payment provider is asked only every RECONCILE_MS.
  let reconcileAt = Date.now() + RECONCILE_MS;
  try {
    for (;;) {
      dirty = false;
      const reconcile = Date.now() >= reconcileAt;
      if (reconcile) reconcileAt = Date.now() + RECONCILE_MS;
      job = reconcile ? await ctx.jobs.get(job.id) : await ctx.jobs.find(job.id);
      if (ready(job) || signal.aborted) return job;
      const left = deadline - Date.now();
      if (left <= 0) return job;
      if (dirty) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, Math.max(ctx.config.SSE_POLL_MS, 50)));
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = null;
    }
  } finally {
    ctx.bus.off('job:update', onUpdate);
    signal.removeEventListener('abort', onAbort);
  }
}
