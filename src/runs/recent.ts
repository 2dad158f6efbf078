import type { RunEvent } from './registry.js';
import type { RunRow } from './store.js';

/**
 * The memory tier of finished runs: for RUN_MEMORY_TTL_S after it ends, a run (and its whole event log, when
 * it fits the replay buffer) is answered from here; after that from Postgres, which always has everything.
 * Bounded by count and age, swept by the maintenance timer (not a timer per run). Maps keep insertion order,
 * which is finish order, so eviction takes from the front.
 */
export function createRecentRuns(opts: { ttlMs: number; max: number }) {
  const runs = new Map<string, { row: RunRow; events: RunEvent[] | null; at: number }>();
  return {
    put(row: RunRow, events: RunEvent[] | null, now = Date.now()) {
      if (opts.ttlMs <= 0 || opts.max <= 0) return;
      runs.delete(row.id);
      runs.set(row.id, { row, events, at: now });
      while (runs.size > opts.max) runs.delete(runs.keys().next().value!);
    },
    get(runId: string, now = Date.now()) {
      const hit = runs.get(runId);
      if (!hit) return undefined;
      if (now - hit.at >= opts.ttlMs) {
        runs.delete(runId);
        return undefined;
      }
      return hit;
    },
    delete(runId: string) {
      runs.delete(runId);
    },
    sweep(now = Date.now()) {
      for (const [id, hit] of runs) {
        if (now - hit.at < opts.ttlMs) break;
        runs.delete(id);
      }
    },
    get size() {
      return runs.size;
    },
  };
}

export type RecentRuns = ReturnType<typeof createRecentRuns>;
