import { eventBytes } from './frames.js';
import type { RunEvent } from './registry.js';
import type { RunRow } from './store.js';

/**
 * The memory tier of finished runs: for RUN_MEMORY_TTL_S after it ends, a run (and its whole event log, when
 * memory had all of it) is answered from here; after that from Postgres, which always has everything.
 *
 * Bounded by bytes, not by a count of runs or events: the logs kept here and the live runs' logs in the registry
 * together stay under RUN_MEMORY_MAX_BYTES (`liveBytes` says what the live ones hold), the oldest finished logs
 * going first. A 10,000-event run is kept whole like a 10-event one, as long as it fits; a log that alone would
 * not fit is not kept (its row still is: rows are small). Swept by the maintenance timer (not a timer per run).
 * Maps keep insertion order, which is finish order, so eviction takes from the front.
 */
export function createRecentRuns(opts: { ttlMs: number; maxBytes: number; liveBytes?: () => number }) {
  const runs = new Map<string, { row: RunRow; events: RunEvent[] | null; at: number; bytes: number }>();
  let bytes = 0;
  const ROW_BYTES = 1024;

  function remove(runId: string) {
    const hit = runs.get(runId);
    if (!hit) return;
    runs.delete(runId);
    bytes -= hit.bytes;
  }

  return {
    put(row: RunRow, events: RunEvent[] | null, now = Date.now()) {
      if (opts.ttlMs <= 0 || opts.maxBytes <= 0) return;
      remove(row.id);
      const budget = opts.maxBytes - (opts.liveBytes?.() ?? 0);
      let size = ROW_BYTES;
      if (events) for (const e of events) size += eventBytes(e);
      // A log that cannot fit even alone is not kept; the row is (a reader then replays from Postgres).
      const kept = events && size <= budget ? events : null;
      if (!kept) size = ROW_BYTES;
      runs.set(row.id, { row, events: kept, at: now, bytes: size });
      bytes += size;
      while (bytes > budget && runs.size > 1) remove(runs.keys().next().value!);
    },
    get(runId: string, now = Date.now()) {
      const hit = runs.get(runId);
      if (!hit) return undefined;
      if (now - hit.at >= opts.ttlMs) {
        remove(runId);
        return undefined;
      }
      return hit;
    },
    delete(runId: string) {
      remove(runId);
    },
    sweep(now = Date.now()) {
      for (const [id, hit] of runs) {
        if (now - hit.at < opts.ttlMs) break;
        remove(id);
      }
    },
    get size() {
      return runs.size;
    },
    /** Bytes held (logs and rows). */
    get bytes() {
      return bytes;
    },
  };
}

export type RecentRuns = ReturnType<typeof createRecentRuns>;
