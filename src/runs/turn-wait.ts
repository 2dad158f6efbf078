import type { Logger } from 'pino';
import type { RunStore } from './store.js';

/**
 * Runs this process accepted that must wait for an earlier turn of their conversation, keyed by the run they
 * wait for. Postgres decides when a run may start (the claim checks the turn order in SQL); this only says
 * when it is worth trying again.
 *
 * Why a wake-up cannot be missed: a run is parked first and Postgres asked second whether its predecessor has
 * already ended; the predecessor's `run:finish` (from this process, or from another through the bus bridge)
 * releases it; a wake-up that comes too early only parks it again, behind whatever still blocks it; and the
 * sweep asks Postgres again (`recheck`) in case a notification from another process was lost.
 */
export function createTurnWait(deps: { store: RunStore; log: Logger; release: (runIds: string[]) => void }) {
  const parked = new Map<string, Set<string>>();
  let count = 0;

  function finished(predecessor: string) {
    const set = parked.get(predecessor);
    if (!set) return;
    parked.delete(predecessor);
    count -= set.size;
    deps.release([...set]);
  }

  return {
    finished,

    /** Park `runId` until `predecessor` ends. */
    park(runId: string, predecessor: string) {
      let set = parked.get(predecessor);
      if (!set) parked.set(predecessor, (set = new Set()));
      if (!set.has(runId)) count++;
      set.add(runId);
      deps.store.liveAmong([predecessor]).then(
        (live) => {
          if (!live.has(predecessor)) finished(predecessor);
        },
        (err) => deps.log.warn({ err, runId }, 'checking a predecessor failed; the sweep will'),
      );
    },

    /** Take a parked run out (it is being stopped); false if it was not parked. */
    unpark(runId: string): boolean {
      for (const [pred, set] of parked) {
        if (set.delete(runId)) {
          count--;
          if (set.size === 0) parked.delete(pred);
          return true;
        }
      }
      return false;
    },

    /** Release the runs whose predecessor Postgres says has ended. */
    async recheck(): Promise<void> {
      const preds = [...parked.keys()];
      if (preds.length === 0) return;
      const live = await deps.store.liveAmong(preds);
      for (const p of preds) if (!live.has(p)) finished(p);
    },

    /** How many runs are parked. */
    get size() {
      return count;
    },

    /** Every parked run. */
    runs(): string[] {
      return [...parked.values()].flatMap((set) => [...set]);
    },
  };
}
