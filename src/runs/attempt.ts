import type { Logger } from 'pino';
import type { Db } from '../db/pool.js';
import { runLogFields } from '../logger.js';
import { resolveInput } from './context.js';
import { createEventWriter, type EventWriter } from './event-writer.js';
import type { Endings } from './endings.js';
import type { Outcome } from './finish.js';
import { generate, type GenerateDeps } from './generate.js';
import type { RunEntry } from './registry.js';
import type { RunRow, RunStore } from './store.js';

export interface AttemptDeps extends GenerateDeps {
  db: Db;
  store: RunStore;
  log: Logger;
  /** This process's lease owner id. */
  instanceId: string;
  flushMs: number;
  /** How many events may be published ahead of Postgres (the seq ceiling's window). */
  window: number;
  finishAndAnnounce: Endings['finishAndAnnounce'];
}

/**
 * One attempt of one run, split out of the executor (executor.ts says where runs come from and why none is
 * stranded): from its claim to its finish — the provider asked at once, its events written behind it, its end
 * recorded and announced. A run stopped before it got here is finished without asking anyone. What throws out of
 * it (a bug, a Postgres refusal past the retries) the executor hands to recovery.
 */
export function createAttempt(opts: AttemptDeps) {
  return async function attempt(entry: RunEntry): Promise<void> {
    const runId = entry.runId;
    // The run's logger and its event writer are made once its provider has been asked (or when first needed, should
    // anything need them sooner): neither is needed before the first token, and the time to the first token then
    // waits for neither. A run's log lines are the same whenever its child logger was made.
    let log: Logger | undefined;
    const runLog = () => (log ??= opts.log.child({ runId }));
    const signal = entry.controller.signal;
    if (signal.aborted) {
      // Stopped between its claim and here: nothing ran, so everything is refunded.
      await opts.finishAndAnnounce(entry, runId, { state: signal.reason === 'cancelled' ? 'cancelled' : 'interrupted' }, [], entry.lastSeq);
      return;
    }
    // Claimed already: at acceptance (the accept statement inserted it executing under our lease) or from the queue.
    let run: RunRow = entry.row;
    entry.state = 'executing';
    if (run.cancelRequested && !signal.aborted) entry.controller.abort('cancelled');
    // Logged in the next turn: the provider is asked first (the time to the first token waits for nothing else).
    const started = run;
    setImmediate(() => runLog().info(runLogFields(started), 'run started'));

    let writer: EventWriter | undefined;
    // What the claim gave this attempt (as the writer was always made: before a waiting run resolves its context).
    const claimed = { attempt: run.attempt, ceiling: run.seqCeiling };
    const writerOf = () =>
      (writer ??= createEventWriter({
        store: opts.store,
        registry: opts.registry,
        runId,
        owner: opts.instanceId,
        attempt: claimed.attempt,
        flushMs: opts.flushMs,
        window: opts.window,
        ceiling: claimed.ceiling,
        log: runLog,
        onLeaseLost: () => {
          runLog().warn({ attempt: run.attempt }, 'lease lost: another process took this run over; writing nothing more');
          if (!entry.controller.signal.aborted) entry.controller.abort('interrupted');
        },
        onCancelRequested: () => {
          if (!entry.controller.signal.aborted) entry.controller.abort('cancelled');
        },
      }));
    let outcome: Outcome;
    try {
      // (A run that waited behind an earlier turn resolves its context now; the rest go straight to the provider.)
      if (!run.input) entry.row = run = await resolveInput({ db: opts.db, store: opts.store, owner: opts.instanceId, attempt: run.attempt }, run);
      // `generate` has asked the provider by the time it returns its promise: the writer is made now, before the
      // first token can arrive (a provider's first token is at least a tick away).
      const generating = generate(opts, run, entry, writerOf, runLog);
      writerOf();
      outcome = await generating;
    } catch (err) {
      // Resolving its context failed (Postgres): nothing was produced, so it ends failed and refunded.
      runLog().warn({ err }, 'could not resolve the context of a run');
      outcome = { state: 'failed', error: { code: 'internal', message: 'the context of this request could not be read; it was refunded in full' } };
    }
    const pending = await writerOf().close();
    // Its 'run finished' line is written by whoever listens to onFinish (every finish, not only executed runs).
    await opts.finishAndAnnounce(entry, runId, outcome, pending, entry.lastSeq);
  };
}
