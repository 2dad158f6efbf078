import type { Logger } from 'pino';
import type { Registry, RunEvent } from './registry.js';
import type { RunStore } from './store.js';

/**
 * Writes a run's token events to Postgres in small batches, off the token path: `add` only queues, a timer
 * flushes at most every `flushMs`, one write at a time. Subscribers never wait for it (they read the registry's
 * buffer); the buffer keeps every event until it is written, so a late reader can always find it somewhere.
 */
export interface EventWriter {
  add(event: RunEvent): void;
  /** Events queued or being written; the executor waits on `flush()` when this grows too large. */
  readonly backlog: number;
  flush(): Promise<void>;
  /** Stop writing and hand back what is not yet in Postgres (the finish transaction writes it). */
  close(): Promise<RunEvent[]>;
}

export function createEventWriter(deps: {
  store: RunStore;
  registry: Registry;
  runId: string;
  owner: string;
  flushMs: number;
  log: Logger;
  /** Called once if Postgres says another process has taken the run over. */
  onLeaseLost: () => void;
  /** Called when Postgres says a stop was asked for through another process. */
  onCancelRequested: () => void;
}): EventWriter {
  let pending: RunEvent[] = [];
  let writing: Promise<void> | null = null;
  let inFlight = 0;
  let timer: NodeJS.Timeout | null = null;
  let closed = false;
  let leaseLost = false;
  let tokensWritten = 0;

  const schedule = () => {
    if (!timer && !closed) timer = setTimeout(() => void flush(), deps.flushMs);
  };

  async function writeBatch(): Promise<void> {
    const batch = pending;
    if (batch.length === 0 || leaseLost) return;
    pending = [];
    inFlight = batch.length;
    const text = batch.map((e) => (e.data as { content: string }).content).join('');
    try {
      const outcome = await deps.store.appendTokens(deps.runId, deps.owner, batch, text, tokensWritten + batch.length);
      if (outcome === 'lost') {
        leaseLost = true;
        deps.onLeaseLost();
        return;
      }
      if (outcome === 'cancel') deps.onCancelRequested();
      tokensWritten += batch.length;
      deps.registry.markPersisted(deps.runId, batch[batch.length - 1]!.seq);
    } catch (err) {
      // Postgres hiccup: keep the events (in order) and try again on the next tick.
      pending = batch.concat(pending);
      deps.log.warn({ err }, 'writing run events failed; will retry');
      schedule();
    } finally {
      inFlight = 0;
    }
  }

  function flush(): Promise<void> {
    if (timer) {
      clearTimeout(timer);
      timer = null;
    }
    writing = (writing ?? Promise.resolve()).then(writeBatch);
    return writing;
  }

  return {
    add(event) {
      pending.push(event);
      schedule();
    },
    get backlog() {
      return pending.length + inFlight;
    },
    flush,
    async close() {
      closed = true;
      if (timer) clearTimeout(timer);
      timer = null;
      await writing;
      return pending;
    },
  };
}
