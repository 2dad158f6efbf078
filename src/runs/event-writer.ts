import type { Logger } from 'pino';
import type { Registry, RunEvent } from './registry.js';
import type { RunStore } from './store.js';

/**
 * Writes a run's token events to Postgres in small batches, off the token path: `add` only queues; one write at a
 * time. A token is written at once when the last write began at least `flushMs` ago and none is in flight — so the
 * first token always goes at once, and a model slower than one token per `flushMs` has each token in Postgres (and,
 * through the write's NOTIFY, in every other process) a round trip after it was made — else it goes with the tokens
 * after it, `flushMs` after the last write began (or as soon as that write is done). Subscribers never wait for it
 * (they read the registry's buffer); the buffer keeps every event until it is written, so a late reader can always
 * find it somewhere.
 *
 * It also keeps the run's **seq ceiling**: the highest seq Postgres has reserved for this owner (the claim sets it,
 * every flush raises it to `window` past the last event written, in the same statement). The executor publishes
 * no event above it (`reserve` waits for a flush first), so if this process dies with events published but not
 * written, whoever finishes the run numbers its final event above every id a reader may hold.
 */
export interface EventWriter {
  add(event: RunEvent): void;
  /** Events queued or being written. */
  readonly backlog: number;
  /** The highest seq Postgres is known to have reserved for us. */
  readonly ceiling: number;
  flush(): Promise<void>;
  /**
   * Resolve once `seq` is at or under the ceiling (flushing, and retrying with backoff while Postgres is unwell),
   * or once `signal` aborts or the lease is lost (the executor then stops the run).
   */
  reserve(seq: number, signal: AbortSignal): Promise<void>;
  /** Stop writing and hand back what is not yet in Postgres (the finish transaction writes it). */
  close(): Promise<RunEvent[]>;
}

export function createEventWriter(deps: {
  store: RunStore;
  registry: Registry;
  runId: string;
  owner: string;
  /** The attempt our lease is for: every write names it (the fence, runs/queue.ts). */
  attempt: number;
  flushMs: number;
  /** How far past the last written event each flush raises the ceiling. */
  window: number;
  /** The ceiling the claim reserved. */
  ceiling: number;
  /** The run's logger (made when first needed: a run that writes without a hitch never needs it). */
  log: () => Logger;
  /** Called once if Postgres says another process has taken the run over. */
  onLeaseLost: () => void;
  /** Called when Postgres says a stop was asked for through another process. */
  onCancelRequested: () => void;
}): EventWriter {
  let pending: RunEvent[] = [];
  let chain: Promise<void> = Promise.resolve();
  let busy = false;
  let inFlight = 0;
  let timer: NodeJS.Timeout | null = null;
  let closed = false;
  let leaseLost = false;
  let failures = 0;
  let tokensWritten = 0;
  let ceiling = deps.ceiling;
  /** When the last write began (performance.now()); the first write may go at once. */
  let lastStart = -Infinity;

  /** Start the next write when its time comes: none in flight, `flushMs` since the last began (backing off on failures). */
  const schedule = () => {
    if (closed || busy || timer || pending.length === 0 || leaseLost) return;
    const spacing = failures === 0 ? deps.flushMs : Math.min(1_000, deps.flushMs * 2 ** failures);
    const wait = lastStart + spacing - performance.now();
    if (wait <= 0) void flush();
    else timer = setTimeout(() => void flush(), wait);
  };

  async function writeBatch(): Promise<void> {
    const batch = pending;
    if (batch.length === 0 || leaseLost) return;
    pending = [];
    busy = true;
    inFlight = batch.length;
    lastStart = performance.now();
    const text = batch.map((e) => (e.data as { content: string }).content).join('');
    const last = batch[batch.length - 1]!.seq;
    try {
      const outcome = await deps.store.appendTokens(deps.runId, deps.owner, deps.attempt, batch, text, tokensWritten + batch.length, deps.window);
      if (outcome === 'lost') {
        leaseLost = true;
        deps.onLeaseLost();
        return;
      }
      failures = 0;
      if (outcome === 'cancel') deps.onCancelRequested();
      tokensWritten += batch.length;
      ceiling = Math.max(ceiling, last + deps.window);
      deps.registry.markPersisted(deps.runId, last);
    } catch (err) {
      // Postgres hiccup: keep the events (in order) and try again, a little later each time.
      pending = batch.concat(pending);
      if (failures++ === 0) deps.log().warn({ err }, 'writing run events failed; will retry');
    } finally {
      busy = false;
      inFlight = 0;
      schedule();
    }
  }

  function flush(): Promise<void> {
    if (timer) {
      clearTimeout(timer);
      timer = null;
    }
    chain = chain.then(writeBatch);
    return chain;
  }

  return {
    add(event) {
      pending.push(event);
      schedule();
    },
    get backlog() {
      return pending.length + inFlight;
    },
    get ceiling() {
      return ceiling;
    },
    flush,
    async reserve(seq, signal) {
      // Every event under `seq` is published, so the unwritten ones are in `pending`: a successful flush raises
      // the ceiling to `window` past them, which covers `seq` (window ≥ 1). Only a failing Postgres keeps us here.
      for (let attempt = 0; seq > ceiling && !signal.aborted && !leaseLost; attempt++) {
        await flush();
        if (seq <= ceiling || signal.aborted || leaseLost) return;
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(t);
            signal.removeEventListener('abort', done);
            resolve();
          };
          const t = setTimeout(done, Math.min(1_000, deps.flushMs * 2 ** attempt));
          signal.addEventListener('abort', done);
        });
      }
    },
    async close() {
      closed = true;
      if (timer) clearTimeout(timer);
      timer = null;
      await chain;
      return pending;
    },
  };
}
