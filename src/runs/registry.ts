import type { RunEventType, RunKind, RunState } from '../db/schema.js';
import { eventBytes } from './frames.js';
import type { RunRow } from './store.js';

/** One event of a run's log. `seq` starts at 1, grows by 1, and is the SSE `id:`. */
export interface RunEvent {
  seq: number;
  type: RunEventType;
  data: unknown;
}

export const isTerminalEvent = (e: RunEvent) => e.type === 'done' || e.type === 'error';

/**
 * Called in order for every event published after it attached: in the turn after the event was published, all the
 * turn's events one after the other (so a subscriber attached in between also finds them in `snapshot`, and drops
 * them by seq). Must not throw or block.
 */
export type Subscriber = (event: RunEvent) => void;

/** What the registry knows of a live run in this process. */
export interface RunEntry {
  readonly runId: string;
  readonly kind: RunKind;
  readonly sessionId: string | null;
  readonly jobId: string | null;
  /** The row as accepted, then as claimed: with the live fields below, enough to answer without Postgres. */
  row: RunRow;
  /** Aborting it stops the provider call; the reason says why ('cancelled' or 'interrupted'). */
  readonly controller: AbortController;
  state: RunState;
  /** Text of the token events so far. */
  result: string;
  outputTokens: number;
  /** Highest seq published, and highest seq known to be in Postgres. */
  lastSeq: number;
  persistedSeq: number;
  ended: boolean;
}

interface Internal extends RunEntry {
  buffer: RunEvent[];
  /** Events published but not yet handed to the subscribers (they are, in the next turn of the event loop). */
  outbox: RunEvent[];
  /** What `buffer` costs (eventBytes). */
  bytes: number;
  subscribers: Set<Subscriber>;
  /** Set on an entry that follows a run driven by another process (follow.ts): how to stop following it. */
  follower?: { stop(): void };
}

export interface RegistryOptions {
  /**
   * Events always kept per run for replay, whatever they cost (default 512). Events not yet in Postgres are never
   * dropped.
   */
  bufferSize?: number;
  /** Bytes of log a run keeps in memory while live (default: unbounded): past it, its oldest persisted events go. */
  runMaxBytes?: number;
}

export type Registry = ReturnType<typeof createRegistry>;

/**
 * The in-process registry of live runs: an AbortController, a bounded replay buffer and the live subscribers
 * of each. An entry exists from acceptance to the end of the run, and until its last subscriber leaves. A run keeps
 * its whole log here while it fits `runMaxBytes`, so a reader resuming from anywhere is served from memory.
 *
 * Besides the runs this process drives, an entry may *follow* a run driven elsewhere (follow.ts): it has
 * subscribers, a buffer and a publisher like any other, but `get` does not return it (it drives nothing here:
 * stops, lookups and the executor see only the runs this process executes). It lives while it has subscribers.
 *
 * Why subscribing cannot miss an event: `snapshot()` and `attach()` called in the same tick see one consistent
 * point of the stream — the buffer holds every event published up to that point that Postgres may not have yet
 * (unpersisted events are never trimmed), and the subscriber gets every event published after it. Events published
 * but not yet delivered (the outbox, handed out in the next turn) are in both: a reader drops the second by seq. A reader without an entry `watch()`es the run first, then reads Postgres: an entry
 * opened later adopts the watchers before its first event; an entry that already ended flushed everything.
 */
export function createRegistry(opts: RegistryOptions = {}) {
  const bufferSize = opts.bufferSize ?? 512;
  const runMaxBytes = opts.runMaxBytes ?? Infinity;
  const entries = new Map<string, Internal>();
  const watchers = new Map<string, Set<Subscriber>>();
  let bytes = 0;

  function drop(entry: Internal) {
    if (entries.get(entry.runId) !== entry || entry.subscribers.size > 0) return;
    if (entry.follower) {
      entry.ended = true;
      entry.follower.stop();
    } else if (!entry.ended) return;
    entries.delete(entry.runId);
    bytes -= entry.bytes;
    entry.bytes = 0;
  }

  function create(row: RunRow, subscribers: Set<Subscriber>): Internal {
    return {
      runId: row.id,
      kind: row.kind,
      sessionId: row.sessionId,
      jobId: row.jobId,
      state: row.state,
      lastSeq: row.lastSeq,
      row,
      controller: new AbortController(),
      result: '',
      outputTokens: 0,
      persistedSeq: row.lastSeq,
      ended: false,
      buffer: [],
      outbox: [],
      bytes: 0,
      subscribers,
    };
  }

  /** Hand what was published since the last turn to every subscriber, in order. */
  function deliver(entry: Internal) {
    const batch = entry.outbox;
    entry.outbox = [];
    for (const event of batch) for (const sub of entry.subscribers) sub(event);
  }

  return {
    /**
     * Register a run accepted by this process. Watchers waiting for it become its subscribers, and so do the
     * subscribers of an entry that followed it (a run this process now drives: its log is empty, nothing was
     * published, so they miss nothing and get nothing twice).
     */
    open(row: RunRow): RunEntry {
      const prior = entries.get(row.id);
      if (prior && !prior.follower) throw new Error(`run ${row.id} is already registered`);
      const subscribers = watchers.get(row.id) ?? new Set();
      if (prior) {
        for (const sub of prior.subscribers) subscribers.add(sub);
        prior.subscribers.clear();
        prior.follower!.stop();
        bytes -= prior.bytes;
      }
      const entry = create(row, subscribers);
      watchers.delete(row.id);
      entries.set(row.id, entry);
      return entry;
    },

    /**
     * Follow a run driven by another process, from `lastSeq` on (follow.ts publishes what it reads). Returns the
     * entry, or the one already here (driving or following it).
     */
    follow(runId: string, lastSeq: number, stop: () => void): RunEntry {
      const prior = entries.get(runId);
      if (prior) return prior;
      // A followed run's row is not known here (nothing reads it: `get` never returns this entry).
      const row = { id: runId, kind: 'session', sessionId: null, jobId: null, state: 'executing', lastSeq } as RunRow;
      const entry = create(row, watchers.get(runId) ?? new Set());
      let stopped = false;
      entry.follower = {
        stop() {
          if (stopped) return;
          stopped = true;
          stop();
        },
      };
      watchers.delete(runId);
      entries.set(runId, entry);
      return entry;
    },

    /**
     * A followed entry that has published nothing starts after `seq` instead of the higher point it was opened at.
     * The first reader's cursor sets where a follower starts; a cursor past every event the log holds (one no event
     * may ever reach) would leave the other readers here waiting for the run's end for the events in between: the
     * follower publishes only above its start, and a reader parked on a live entry does not read Postgres. Nothing
     * was handed to anyone yet, so no reader misses or repeats an event: each drops what is at or below its own
     * cursor, and one that joined meanwhile read the log first.
     */
    rewind(runId: string, seq: number) {
      const entry = entries.get(runId);
      if (!entry?.follower || seq >= entry.lastSeq || entry.buffer.length > 0 || entry.outbox.length > 0) return;
      entry.lastSeq = seq;
      entry.persistedSeq = seq;
    },

    /** The run as this process drives it (never a followed one). */
    get(runId: string): RunEntry | undefined {
      const e = entries.get(runId);
      return e && !e.follower ? e : undefined;
    },

    /** The entry a reader attaches to: the run driven here, or followed here. */
    source(runId: string): RunEntry | undefined {
      return entries.get(runId);
    },

    /** An entry here will still hand its readers events: it has not ended, or has published ones not yet delivered. */
    delivering(runId: string): boolean {
      const e = entries.get(runId);
      return e !== undefined && (!e.ended || e.outbox.length > 0);
    },

    /** Append the next event (seq = lastSeq + 1) and hand it to every subscriber. */
    append(runId: string, type: RunEventType, data: unknown): RunEvent {
      const entry = entries.get(runId);
      if (!entry) throw new Error(`run ${runId} is not registered`);
      return this.publish(runId, { seq: entry.lastSeq + 1, type, data });
    },

    /** Hand an event with a known seq (e.g. the final one written by the finish transaction) to subscribers. */
    publish(runId: string, event: RunEvent): RunEvent {
      const entry = entries.get(runId);
      if (!entry) throw new Error(`run ${runId} is not registered`);
      // Already published — unless it is a final event, which always reaches the subscribers (another process
      // that finished the run may have numbered it below tokens this one streamed but never persisted).
      if (event.seq <= entry.lastSeq && !isTerminalEvent(event)) return event;
      entry.lastSeq = Math.max(entry.lastSeq, event.seq);
      if (event.type === 'token') {
        entry.result += (event.data as { content: string }).content;
        entry.outputTokens += 1;
      }
      entry.buffer.push(event);
      const size = eventBytes(event);
      entry.bytes += size;
      bytes += size;
      if (entry.follower) entry.persistedSeq = Math.max(entry.persistedSeq, event.seq);
      trim(entry);
      // The subscribers get it in the next turn of the event loop, with whatever else is published before then:
      // the publisher (the provider's loop) is never held up by a thousand socket writes, and what a burst
      // publishes in one turn reaches each reader together.
      if (entry.subscribers.size > 0 && entry.outbox.push(event) === 1) setImmediate(deliver, entry);
      return event;
    },

    /** Everything up to `seq` is in Postgres: the buffer may now forget the oldest of those. */
    markPersisted(runId: string, seq: number) {
      const entry = entries.get(runId);
      if (!entry || seq <= entry.persistedSeq) return;
      entry.persistedSeq = seq;
      trim(entry);
    },

    /**
     * Buffered events after `after`, and whether they are the whole story from `after` on
     * (false: the ones before the buffer's first event must be read from Postgres, where they are).
     */
    snapshot(runId: string, after: number): { events: RunEvent[]; complete: boolean } {
      const entry = entries.get(runId);
      if (!entry) return { events: [], complete: false };
      const first = entry.buffer[0]?.seq ?? entry.lastSeq + 1;
      return { events: entry.buffer.filter((e) => e.seq > after), complete: first <= after + 1 };
    },

    /** Attach to a live (or followed) entry; returns the detach function. */
    attach(runId: string, sub: Subscriber): () => void {
      const entry = entries.get(runId);
      if (!entry) throw new Error(`run ${runId} is not registered`);
      entry.subscribers.add(sub);
      return () => {
        // The run may since have been adopted by an entry of this process (`open`): detach from whichever holds it.
        const now = entries.get(runId) ?? entry;
        now.subscribers.delete(sub);
        entry.subscribers.delete(sub);
        drop(now);
      };
    },

    /** Wait for a run not registered here (yet): it becomes a subscriber if the run opens in this process. */
    watch(runId: string, sub: Subscriber): () => void {
      const entry = entries.get(runId);
      if (entry) return this.attach(runId, sub);
      let set = watchers.get(runId);
      if (!set) watchers.set(runId, (set = new Set()));
      set.add(sub);
      return () => {
        const current = entries.get(runId);
        if (current) {
          (current as Internal).subscribers.delete(sub);
          drop(current as Internal);
        }
        const w = watchers.get(runId);
        if (w) {
          w.delete(sub);
          if (w.size === 0) watchers.delete(runId);
        }
      };
    },

    /** The run has published its final event (or this process gave it up): forget it as soon as nobody watches. */
    end(runId: string) {
      const entry = entries.get(runId);
      if (!entry) return;
      entry.ended = true;
      if (entry.follower) entry.follower.stop();
      drop(entry);
    },

    /** Bytes of log held by the entries here (the memory tier counts them against RUN_MEMORY_MAX_BYTES). */
    get bytes() {
      return bytes;
    },

    stats() {
      let subscribers = 0;
      let followed = 0;
      for (const e of entries.values()) {
        subscribers += e.subscribers.size;
        if (e.follower) followed++;
      }
      let watching = 0;
      for (const w of watchers.values()) watching += w.size;
      return { entries: entries.size, subscribers, watchers: watching, followed, bytes };
    },
  };

  function trim(entry: Internal) {
    // Past the run's share of memory, drop the oldest events — never one Postgres does not have yet, and never
    // below the `bufferSize` newest.
    if (entry.bytes <= runMaxBytes) return;
    const buf = entry.buffer;
    let n = 0;
    let freed = 0;
    while (entry.bytes - freed > runMaxBytes && buf.length - n > bufferSize && buf[n]!.seq <= entry.persistedSeq) freed += eventBytes(buf[n++]!);
    if (n === 0) return;
    buf.splice(0, n);
    entry.bytes -= freed;
    bytes -= freed;
  }
}
