import type { Bus } from '../bus.js';

/**
 * "Run X has news in Postgres" (a flush or the finish, possibly on another process; or this process stopped
 * driving it, so Postgres is now the only source), for the readers of X.
 * One pair of bus listeners and a map by run id, so a flush costs O(readers of that run), not O(every open
 * stream) as a listener per stream would.
 */
export function createRunNews(bus: Bus) {
  const waiting = new Map<string, Set<() => void>>();
  const notify = (e: { runId: string }) => {
    const set = waiting.get(e.runId);
    if (set) for (const wake of set) wake();
  };
  bus.on('run:progress', notify);
  bus.on('run:finish', notify);
  bus.on('run:abandoned', notify);
  return {
    /** Call `wake` on news of `runId`; returns the unsubscribe. */
    on(runId: string, wake: () => void): () => void {
      let set = waiting.get(runId);
      if (!set) waiting.set(runId, (set = new Set()));
      set.add(wake);
      return () => {
        set.delete(wake);
        if (set.size === 0 && waiting.get(runId) === set) waiting.delete(runId);
      };
    },
    get size() {
      return waiting.size;
    },
  };
}

export type RunNews = ReturnType<typeof createRunNews>;
