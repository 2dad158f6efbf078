import type { Bus } from '../bus.js';
import { keyedListeners } from './listeners.js';

/**
 * "Run X has news in Postgres" (a flush or the finish, possibly on another process; or this process stopped
 * driving it, so Postgres is now the only source), for the readers of X.
 * One pair of bus listeners and a map by run id, so a flush costs O(readers of that run), not O(every open
 * stream) as a listener per stream would.
 */
export function createRunNews(bus: Bus) {
  const waiting = keyedListeners<void>();
  const notify = (e: { runId: string }) => waiting.tell(e.runId, undefined);
  bus.on('run:progress', notify);
  bus.on('run:finish', notify);
  bus.on('run:abandoned', notify);
  return {
    /** Call `wake` on news of `runId`; returns the unsubscribe. */
    on(runId: string, wake: () => void): () => void {
      return waiting.on(runId, wake);
    },
    get size() {
      return waiting.size;
    },
  };
}

export type RunNews = ReturnType<typeof createRunNews>;
