import type { RecentRuns } from './recent.js';
import type { Registry, RunEntry, RunEvent } from './registry.js';
import type { RunRow, RunStore } from './store.js';

export interface FoundRun {
  row: RunRow;
  /** The live entry while the run executes in this process. */
  live?: RunEntry;
  /** The whole event log, when the memory tier has it. */
  events?: RunEvent[] | null;
}

/**
 * A run by id from the fastest tier that has it: the registry (live here), the recent-runs memory, then
 * Postgres (which always has it, whichever process ran it).
 */
export async function findRun(deps: { registry: Registry; recent: RecentRuns; store: RunStore }, id: string): Promise<FoundRun | undefined> {
  // As Postgres writes a UUID (the memory tiers are keyed so): `…/runs/<ID IN UPPER CASE>` is the same live run.
  const runId = id.toLowerCase();
  const live = deps.registry.get(runId);
  if (live && !live.ended) return { row: live.row, live };
  const recent = deps.recent.get(runId);
  if (recent) return { row: recent.row, events: recent.events };
  const row = await deps.store.get(runId);
  return row && { row };
}
