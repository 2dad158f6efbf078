import { isDatabaseUnavailable } from '../db/errors.js';
import type { Departure } from '../http/sse.js';
import { isTerminalEvent, type Registry, type RunEvent } from './registry.js';
import { isLive, type RunStore } from './store.js';

export type FeedItem = { kind: 'event'; event: RunEvent } | { kind: 'resync'; lastEventId: number };

export interface FeedOptions {
  registry: Registry;
  store: RunStore;
  runId: string;
  /** Deliver events with seq > after. */
  after: number;
  /** Ends the feed (the reader left): an AbortSignal, or an SSE stream's `gone`. */
  signal: Departure;
  /** Events queued for a slow reader before it is cut loose with a resync hint. */
  maxQueue: number;
  /** How often to re-read Postgres while no live entry in this process feeds us (another process, recovery). */
  pollMs: number;
  /** Subscribe to "the run has news in Postgres" (the bus, bridged across processes); returns the unsubscribe. */
  onNews?: (wake: () => void) => () => void;
  /**
   * When no entry here drives the run: start following it (follow.ts: one reader of Postgres per process and run,
   * publishing into the registry) from `after`, so this feed attaches to that like to a live run.
   */
  follow?: (after: number) => void;
  /**
   * The direct path: called synchronously from `publish` with the next event while this feed is caught up (parked
   * waiting for live events, nothing queued). True: it was written, the feed moves on without yielding it. False:
   * it is queued and yielded as usual (the socket is full, or it is an event the consumer must see).
   */
  direct?: (event: RunEvent) => boolean;
}

const PAGE = 1000;
/** Longest wait between reads while Postgres is unreachable. */
const MAX_BACKOFF_MS = 2_000;

/**
 * Every event of a run after a cursor, exactly once and in order, then live ones, ending with the final event.
 *
 * Attach first, read second: in one synchronous step we take the registry's buffered events and attach a
 * subscriber (or, for a run not live here, a watcher that a later `open` adopts). Only then do we read Postgres
 * for anything older than the buffer. Whatever the timing — a run that starts, streams and ends while we read —
 * each event is in the log, the snapshot, or the live queue; duplicates are dropped by seq.
 *
 * The log is gapless, except right before a final event written by recovery: it is numbered above the run's seq
 * ceiling, past ids its owner may have sent but never persisted (see finish.ts). So a hole is accepted before a
 * final event and nowhere else; and a cursor anywhere in that hole still gets the final event.
 *
 * Postgres is the truth about the outcome. Once no live entry here drives the run (another process runs it, or
 * this one gave it up because Postgres could not record its end), the feed follows Postgres — woken by news, or
 * polling — until the log has the final event; while Postgres is unreachable it keeps the reader waiting and
 * retries, rather than inventing an outcome the database may never record.
 *
 * A reader that falls `maxQueue` events behind stops receiving (so it cannot grow memory or skip an event
 * silently): it gets what it had queued, then a resync hint naming the last id it was sent.
 *
 * The direct path, and why it cannot race with the queued one. A caught-up reader of a live run costs no promise per
 * event: while this generator is parked waiting for live events with nothing queued (`parked`), `onEvent` — called
 * synchronously by `publish` — hands the next event (seq = last + 1) to `direct`, which writes the shared frame to the
 * socket, and moves `last` on. Everything here happens in synchronous steps: `publish` never runs while this
 * generator runs, and vice versa. `parked` is set just before the generator awaits the live wait and cleared by
 * the very wake-up that ends it, so an event is handled by exactly one path: written directly (then it is never
 * queued), or queued (then it is yielded in order after everything queued before it). Once one event is queued
 * (a full socket, a final event, an event out of order), every later one is queued behind it until the generator
 * has drained the queue and parks again — so a reader moves between the paths without a gap or a duplicate, and
 * the resync rules (maxQueue) see every event that was not written.
 */
export async function* runFeed(opts: FeedOptions): AsyncGenerator<FeedItem> {
  const { registry, store, runId, signal } = opts;
  const queue: RunEvent[] = [];
  let overflow = false;
  let wake: (() => void) | null = null;
  let parked = false;
  let last = opts.after;
  const direct = opts.direct;
  const onEvent = (e: RunEvent) => {
    if (overflow) return;
    if (parked && direct && queue.length === 0 && e.seq === last + 1 && !isTerminalEvent(e) && direct(e)) {
      last = e.seq;
      return;
    }
    if (queue.length >= opts.maxQueue) overflow = true;
    else queue.push(e);
    wake?.();
  };

  if (!registry.source(runId)) opts.follow?.(opts.after);
  const live = registry.source(runId);
  const snap = registry.snapshot(runId, opts.after);
  const detach = live ? registry.attach(runId, onEvent) : registry.watch(runId, onEvent);
  const onAbort = () => wake?.();
  signal.addEventListener('abort', onAbort);
  // News from another process: re-read Postgres now rather than at the next poll. `news` catches one that
  // lands while we are reading, so it is never slept through. Only a feed that follows Postgres itself listens
  // (subscribed when it first must: an entry here publishes everything else).
  let news = false;
  let offNews: (() => void) | undefined;
  const listen = () => {
    offNews ??= opts.onNews?.(() => {
      news = true;
      wake?.();
    });
  };
  /** An entry here that will still publish events (an ended one stays while we are subscribed, but is silent). */
  const drivenHere = () => registry.delivering(runId);
  /**
   * Sleep up to `ms`, woken early by a live event, news or the reader leaving; `live`: caught up, direct writes on.
   * Whatever ends it (the wake or the timer) unparks at once, in the same synchronous step, so an event published
   * after that is queued, never written directly while the generator is about to run. (No `.finally`: a parked idle
   * reader holds one promise and one closure, not a second promise and its handlers.)
   */
  const nap = (ms: number | null, live = false) =>
    new Promise<void>((resolve) => {
      let timer: NodeJS.Timeout | null = null;
      const done = () => {
        parked = false;
        wake = null;
        if (timer) clearTimeout(timer);
        resolve();
      };
      if (ms !== null) timer = setTimeout(done, ms);
      parked = live;
      wake = done;
    });

  /** A read of Postgres, retried while it is unreachable; null once the reader has gone. */
  async function read<T>(fn: () => Promise<T>): Promise<T | null> {
    for (let attempt = 0; !signal.aborted; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (!isDatabaseUnavailable(err)) throw err;
        await nap(Math.min(MAX_BACKOFF_MS, opts.pollMs * 2 ** attempt));
      }
    }
    return null;
  }

  /**
   * Log pages after `last` up to `until` (inclusive); the return value is false if the log lacks events it must
   * have (a hole before an event that is not final: it cannot happen, but a reader is never silently skipped).
   */
  async function* fromLog(until = Infinity): AsyncGenerator<RunEvent, boolean> {
    while (last < until && !signal.aborted) {
      const want = Math.min(PAGE, until - last);
      const page = await read(() => store.eventsAfter(runId, last, want));
      if (!page) return true;
      for (const e of page) {
        if (e.seq !== last + 1 && !isTerminalEvent(e)) return false;
        yield e; // the caller moves `last` on before asking for the next one
      }
      if (page.length < want) return until === Infinity || last >= until;
    }
    return true;
  }

  try {
    // Oldest first: Postgres (only up to where the buffer begins), the snapshot, then live events.
    if (!snap.complete) {
      const firstBuffered = snap.events[0]?.seq;
      const log = fromLog(firstBuffered !== undefined ? firstBuffered - 1 : Infinity);
      let n = await log.next();
      for (; !n.done; n = await log.next()) {
        last = n.value.seq;
        yield { kind: 'event', event: n.value };
        if (isTerminalEvent(n.value)) return;
      }
      if (!n.value && !signal.aborted) {
        yield { kind: 'resync', lastEventId: last };
        return;
      }
    }
    for (const e of snap.events) {
      if (signal.aborted) return;
      if (e.seq <= last && !isTerminalEvent(e)) continue;
      last = Math.max(last, e.seq);
      yield { kind: 'event', event: e };
      if (isTerminalEvent(e)) return;
    }
    // The snapshot is a copy of the buffer: a reader that stays live for hours need not keep it.
    snap.events.length = 0;
    for (;;) {
      while (queue.length > 0) {
        const e = queue.shift()!;
        // A final event always ends the stream, even one another process wrote with a seq we already passed.
        if (e.seq <= last && !isTerminalEvent(e)) continue;
        if (e.seq > last + 1) {
          // The live stream got ahead of what we have read (a watcher adopted mid-run): fill from the log. Only a
          // final event may follow a hole (one numbered by recovery past its ceiling).
          const log = fromLog(e.seq - 1);
          let n = await log.next();
          for (; !n.done; n = await log.next()) {
            last = n.value.seq;
            yield { kind: 'event', event: n.value };
            if (isTerminalEvent(n.value)) return;
          }
          if (signal.aborted) return;
          if (!n.value && !isTerminalEvent(e)) {
            yield { kind: 'resync', lastEventId: last };
            return;
          }
        }
        last = Math.max(last, e.seq);
        yield { kind: 'event', event: e };
        if (isTerminalEvent(e)) return;
      }
      if (signal.aborted) return;
      if (overflow) {
        yield { kind: 'resync', lastEventId: last };
        return;
      }
      // A live entry here pushes every event to us; otherwise Postgres is the only source, so poll it (at once the
      // first time: the entry that drove it may have just stopped).
      const here = drivenHere();
      const first = !here && !offNews;
      if (!here) listen();
      if (!first && (!news || here)) await nap(here ? null : opts.pollMs, here);
      news = false;
      if (!drivenHere() && queue.length === 0 && !signal.aborted) {
        let got = 0;
        for await (const e of fromLog()) {
          got++;
          last = Math.max(last, e.seq);
          yield { kind: 'event', event: e };
          if (isTerminalEvent(e)) return;
        }
        if (got === 0 && !signal.aborted) {
          // Nothing new. A run that is gone has nothing more to say; one that ended at our cursor neither.
          // One whose final event sits *before* our cursor (a cursor we never sent, or a run finished before
          // seq ceilings existed) still owes us its outcome.
          const row = await read(() => store.get(runId));
          if (!row) return;
          if (!isLive(row.state) && row.lastSeq <= last) {
            if (row.lastSeq < last) {
              const final = await read(() => store.eventsAfter(runId, row.lastSeq - 1, 1));
              if (final?.[0]) yield { kind: 'event', event: final[0] };
            }
            return;
          }
        }
      }
    }
  } finally {
    signal.removeEventListener('abort', onAbort);
    offNews?.();
    detach();
  }
}
