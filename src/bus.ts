import { EventEmitter } from 'eventemitter3';
import type { JobState, RunEventType, RunKind, RunState } from './db/schema.js';

/**
 * The typed in-process event bus. Names are `noun:verb` or `noun:sub:verb`; payloads are objects.
 * Postgres stays the truth: a listener that misses an event (another process, a restart) re-reads the database.
 */
export interface BusEvents {
  /** A session request reached a final state (complete, failed, cancelled, interrupted). */
  'session:request:complete': (e: { sessionId: string; requestId: string; state: RunState }) => void;
  /**
   * A session run was accepted (`queued` or `executing`), or a queued one was claimed (`executing`). Emitted here by
   * the process that did it (runs/session-notices.ts); other processes hear a queued run from its `run:queued` and a
   * claim from the NOTIFY the claim statement sends itself (bus-bridge.ts), so it costs no statement of its own. A
   * run accepted straight into executing (a free slot on an `all` process) is announced to that process only.
   */
  'run:state': (e: { runId: string; kind: RunKind; sessionId: string | null; state: RunState }) => void;
  /** Any run reached a final state. */
  'run:finish': (e: { runId: string; kind: RunKind; state: RunState; sessionId: string | null; jobId: string | null }) => void;
  /**
   * New events of a run are in Postgres, up to `lastSeq` (sent by the flush statement itself, across processes),
   * with the events themselves when they fit a NOTIFY payload.
   */
  'run:progress': (e: { runId: string; lastSeq: number; events?: Array<{ seq: number; type: RunEventType; data: unknown }> }) => void;
  /** A run went into the shared queue (sent by the statement that queued it): a claimer with a free slot looks. */
  'run:queued': (e: { runId: string; sessionId?: string | null }) => void;
  /** A stop was asked for a run executing somewhere (sent by the statement that flagged it): its owner aborts it. */
  'run:cancel': (e: { runId: string }) => void;
  /**
   * This process gave up driving a run (Postgres could not record its claim or its end): its readers here stop
   * waiting for live events and follow Postgres until recovery records the outcome. Local to the process.
   */
  'run:abandoned': (e: { runId: string }) => void;
  /** A payment was confirmed and committed: its effect applied (`paid`), or held for the payer (`refundable`). */
  'invoice:settle': (e: { paymentHash: string; purpose: string; sessionId: string | null; jobId: string | null; state: 'paid' | 'refundable' }) => void;
  /** A job's evaluation was paid for through a process that asks no provider (`api`): one that does, evaluates it. */
  'job:evaluate': (e: { jobId: string; at: string }) => void;
  /** A job changed state. */
  'job:update': (e: { jobId: string; state: JobState }) => void;
}

export type Bus = EventEmitter<BusEvents>;

export function createBus(): Bus {
  return new EventEmitter<BusEvents>();
}
