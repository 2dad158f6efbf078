import type { RunEventType, RunKind, RunState } from '../db/schema.js';
import type { RunRow } from './store.js';

/** One event of a run's log. `seq` starts at 1, grows by 1, and is the SSE `id:`. */
export interface RunEvent {
  seq: number;
  type: RunEventType;
  data: unknown;
}

export const isTerminalEvent = (e: RunEvent) => e.type === 'done' || e.type === 'error';

/** Called synchronously, in order, for every event published after it attached. Must not throw or block. */
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
  subscribers: Set<Subscriber>;
}

export interface RegistryOptions {
  /** Events kept per run for replay (default 512). Events not yet in Postgres are never dropped. */
  bufferSize?: number;
}

export type Registry = ReturnType<typeof createRegistry>;

/**
 * The in-process registry of live runs: an AbortController, a bounded replay buffer and the live subscribers
 * of each. An entry exists from acceptance to the end of the run, and until its last subscriber leaves.
 *
 * Why subscribing cannot miss or double an event: everything here is synchronous, so `snapshot()` and
 * `attach()` called in the same tick see one consistent point of the stream — the buffer holds every event up
 * to that point that Postgres may not have yet (unpersisted events are never trimmed), and the subscriber gets
 * every event after it. A reader without an entry `watch()`es the run first, then reads Postgres: an entry
 * opened later adopts the watchers before its first event; an entry that already ended flushed everything.
 */
export function createRegistry(opts: RegistryOptions = {}) {
  const bufferSize = opts.bufferSize ?? 512;
  const entries = new Map<string, Internal>();
  const watchers = new Map<string, Set<Subscriber>>();

  function drop(entry: Internal) {
    if (entry.ended && entry.subscribers.size === 0 && entries.get(entry.runId) === entry) entries.delete(entry.runId);
  }

  return {
    /** Register a run accepted by this process. Watchers waiting for it become its subscribers. */
    open(row: RunRow): RunEntry {
      if (entries.has(row.id)) throw new Error(`run ${row.id} is already registered`);
      const info = { runId: row.id, kind: row.kind, sessionId: row.sessionId, jobId: row.jobId, state: row.state, lastSeq: row.lastSeq };
      const entry: Internal = {
        ...info,
        row,
        controller: new AbortController(),
        result: '',
        outputTokens: 0,
        persistedSeq: info.lastSeq,
        ended: false,
        buffer: [],
        subscribers: watchers.get(info.runId) ?? new Set(),
      };
      watchers.delete(info.runId);
      entries.set(info.runId, entry);
      return entry;
    },

    get(runId: string): RunEntry | undefined {
      return entries.get(runId);
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
      trim(entry);
      for (const sub of entry.subscribers) sub(event);
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

    /** Attach to a live entry; returns the detach function. */
    attach(runId: string, sub: Subscriber): () => void {
      const entry = entries.get(runId);
      if (!entry) throw new Error(`run ${runId} is not registered`);
      entry.subscribers.add(sub);
      return () => {
        entry.subscribers.delete(sub);
        drop(entry);
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

    /** The run has published its final event: forget it as soon as nobody watches. */
    end(runId: string) {
      const entry = entries.get(runId);
      if (!entry) return;
      entry.ended = true;
      drop(entry);
    },

    stats() {
      let subscribers = 0;
      for (const e of entries.values()) subscribers += e.subscribers.size;
      let watching = 0;
      for (const w of watchers.values()) watching += w.size;
      return { entries: entries.size, subscribers, watchers: watching };
    },
  };

  function trim(entry: Internal) {
    // Drop the oldest events beyond the bound, but never one Postgres does not have yet.
    const excess = entry.buffer.length - bufferSize;
    if (excess <= 0) return;
    let n = 0;
    while (n < excess && entry.buffer[n]!.seq <= entry.persistedSeq) n++;
    if (n > 0) entry.buffer.splice(0, n);
  }
}
