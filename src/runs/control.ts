import type { Executor } from './executor.js';
import type { FoundRun } from './lookup.js';
import type { RecentRuns } from './recent.js';
import { isLive, type RunStore } from './store.js';

/** What every face does to stop or forget a run: one implementation, so a face never re-implements either. */
export interface ControlDeps {
  executor: Executor;
  store: RunStore;
  recent: RecentRuns;
}

/**
 * Stop a live run wherever it is: here by aborting its provider call; executing in another process by a NOTIFY it
 * acts on at once (and a flag it reads on its next flush or heartbeat, should the NOTIFY be lost); still queued, by
 * finishing it here. False if it had already ended.
 */
export function stopRun(deps: ControlDeps, runId: string): Promise<boolean> {
  return deps.executor.cancel(runId);
}

/**
 * Forget a finished run's input, output and events (its ledger rows stay: money history is never deleted).
 * 'active' while it is live here or in Postgres.
 */
export async function deleteRun(deps: ControlDeps, found: FoundRun): Promise<'deleted' | 'active'> {
  if (found.live || isLive(found.row.state)) return 'active';
  deps.recent.delete(found.row.id);
  if (await deps.store.delete(found.row.id)) return 'deleted';
  // Nothing deleted: either it was already gone (fine) or it is live after all (another process took it).
  return (await deps.store.get(found.row.id)) ? 'active' : 'deleted';
}
