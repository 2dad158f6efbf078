import type { Bus } from '../bus.js';
import type { RunKind, RunState } from '../db/schema.js';
import type { RunMetrics } from './executor.js';
import { keyedListeners } from './listeners.js';

/** A session notice: a run of the session was created, started, or ended in `state`. */
export interface SessionNotice {
  runId: string;
  state: RunState;
}

/** Runs whose last notice is remembered (to drop a stale one that arrives late): about 100 bytes each. */
const RECENT_RUNS = 10_000;

/**
 * The executor's hooks, also announcing `run:state` on this process's bus: a session run accepted here (`queued` or
 * `executing`), and a queued one this process claimed (`executing`). Synchronous and free when no socket listens.
 * Other processes hear the same from Postgres: a queued run from the accept's own `run:queued` NOTIFY, a claim from
 * the claim statement's `run:state` (see createSessionNotices), its end from the finish's.
 */
export function withRunStates(bus: Bus, hooks: RunMetrics): RunMetrics {
  const tell = (runId: string, kind: RunKind, sessionId: string | null, state: RunState) => {
    if (kind === 'session' && bus.listenerCount('run:state') > 0) bus.emit('run:state', { runId, kind, sessionId, state });
  };
  return {
    accepted(run, entry, at) {
      hooks.accepted(run, entry, at);
      tell(run.id, run.kind, run.sessionId, run.state);
    },
    claimed(entry) {
      hooks.claimed?.(entry);
      tell(entry.runId, entry.kind, entry.sessionId, 'executing');
    },
    firstToken: (entry) => hooks.firstToken(entry),
  };
}

/**
 * Session notices for the sockets of this process: one pair of bus listeners and a map by session id, so a run's
 * change costs O(sockets of that session), not O(every socket) as a listener per socket would.
 */
export function createSessionNotices(bus: Bus) {
  const listeners = keyedListeners<SessionNotice>();
  /**
   * How far each recently told run has gone (0 queued, 1 executing, 2 ended). Notices come by two paths that race:
   * this process's own (told as its statement returns) and other processes' NOTIFYs (on the listening connection).
   * Under load a worker's claim can be heard before the accept that queued the run has returned here, so a notice
   * that would move a run backwards is stale and dropped. Bounded: the oldest entries go past RECENT_RUNS.
   */
  const reached = new Map<string, number>();
  const tell = (sessionId: string | null, runId: string, state: RunState) => {
    if (!sessionId || listeners.size === 0) return;
    const rank = state === 'queued' ? 0 : state === 'executing' ? 1 : 2;
    if ((reached.get(runId) ?? -1) >= rank) return;
    reached.delete(runId);
    reached.set(runId, rank);
    if (reached.size > RECENT_RUNS) reached.delete(reached.keys().next().value!);
    listeners.tell(sessionId, { runId, state });
  };
  bus.on('run:state', (e) => tell(e.sessionId, e.runId, e.state));
  // A run another process queued (its accept statement's NOTIFY); this process's own are told by `withRunStates`.
  bus.on('run:queued', (e) => tell(e.sessionId ?? null, e.runId, 'queued'));
  // From any process: the finish statement NOTIFYs it (bus-bridge.ts).
  bus.on('session:request:complete', (e) => tell(e.sessionId, e.requestId, e.state));
  return {
    /** Call `fn` with every notice of `sessionId`; returns the unsubscribe. */
    on: (sessionId: string, fn: (n: SessionNotice) => void) => listeners.on(sessionId, fn),
    get size() {
      return listeners.size;
    },
  };
}

export type SessionNotices = ReturnType<typeof createSessionNotices>;
