import { isTerminalEvent, type Registry, type RunEvent } from './registry.js';
import { isLive, type RunStore } from './store.js';

export type FeedItem = { kind: 'event'; event: RunEvent } | { kind: 'resync'; lastEventId: number };

export interface FeedOptions {
  registry: Registry;
  store: RunStore;
  runId: string;
  /** Deliver events with seq > after. */
  after: number;
  /** Ends the feed (the reader left). */
  signal: AbortSignal;
  /** Events queued for a slow reader before it is cut loose with a resync hint. */
  maxQueue: number;
  /** How often to re-read Postgres while no live entry in this process feeds us (another process, recovery). */
  pollMs: number;
}

/**
 * Every event of a run after a cursor, exactly once and in order, then live ones, ending with the final event.
 *
 * Attach first, read second: in one synchronous step we take the registry's buffered events and attach a
 * subscriber (or, for a run not live here, a watcher that a later `open` adopts). Only then do we read Postgres
 * for anything older than the buffer. Whatever the timing — a run that starts, streams and ends while we read —
 * each event is in the log, the snapshot, or the live queue; duplicates are dropped by seq.
 */
export async function* runFeed(opts: FeedOptions): AsyncGenerator<FeedItem> {
  const { registry, store, runId, signal } = opts;
  const queue: RunEvent[] = [];
  let overflow = false;
  let wake: (() => void) | null = null;
  const onEvent = (e: RunEvent) => {
    if (queue.length >= opts.maxQueue) overflow = true;
    else queue.push(e);
    wake?.();
  };

  const live = registry.get(runId);
  const snap = registry.snapshot(runId, opts.after);
  const detach = live ? registry.attach(runId, onEvent) : registry.watch(runId, onEvent);
  let last = opts.after;
  const onAbort = () => wake?.();
  signal.addEventListener('abort', onAbort);
  try {
    // Oldest first: Postgres (only if the buffer does not reach back to the cursor), the snapshot, then live.
    const fromDb = snap.complete ? [] : await store.eventsAfter(runId, opts.after);
    for (const e of [...fromDb, ...snap.events]) {
      if (signal.aborted) return;
      if (e.seq <= last) continue;
      last = e.seq;
      yield { kind: 'event', event: e };
      if (isTerminalEvent(e)) return;
    }
    for (;;) {
      while (queue.length > 0) {
        const e = queue.shift()!;
        if (e.seq <= last) continue;
        if (e.seq > last + 1) {
          // A gap: the live stream got ahead of what we have read (only across processes); fill it from the log.
          for (const g of await store.eventsAfter(runId, last, e.seq - last - 1)) {
            last = g.seq;
            yield { kind: 'event', event: g };
          }
        }
        last = e.seq;
        yield { kind: 'event', event: e };
        if (isTerminalEvent(e)) return;
      }
      if (signal.aborted) return;
      if (overflow) {
        yield { kind: 'resync', lastEventId: last };
        return;
      }
      const localEntry = registry.get(runId);
      await new Promise<void>((resolve) => {
        wake = resolve;
        // A live entry here pushes every event to us; otherwise Postgres is the only source, so poll it.
        const timer = localEntry ? null : setTimeout(resolve, opts.pollMs);
        wake = () => {
          if (timer) clearTimeout(timer);
          resolve();
        };
      });
      wake = null;
      if (!registry.get(runId) && queue.length === 0 && !signal.aborted) {
        const found = await store.eventsAfter(runId, last, 1000);
        for (const e of found) {
          if (e.seq <= last) continue;
          last = e.seq;
          yield { kind: 'event', event: e };
          if (isTerminalEvent(e)) return;
        }
        if (found.length === 0) {
          // Nothing new: a run that is gone, or ended at or before the cursor, has nothing more to say.
          const row = await store.get(runId);
          if (!row || (!isLive(row.state) && row.lastSeq <= last)) return;
        }
      }
    }
  } finally {
    signal.removeEventListener('abort', onAbort);
    detach();
  }
}
