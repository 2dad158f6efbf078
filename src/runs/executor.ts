import type { Logger } from 'pino';
import type { Bus } from '../bus.js';
import type { Db } from '../db/pool.js';
import type { Models } from '../models/providers.js';
import { resolveInput } from './context.js';
import { retried } from './retry.js';
import { runLogFields } from '../logger.js';
import { createEventWriter } from './event-writer.js';
import { createTurnWait } from './turn-wait.js';
import { createAdmission } from './admission.js';
import { generate } from './generate.js';
import { createFinisher, type Finished, type Outcome, type Settlers } from './finish.js';
import type { Registry, RunEntry, RunEvent } from './registry.js';
import type { RunRow, RunStore } from './store.js';

export interface ExecutorOptions {
  db: Db;
  store: RunStore;
  registry: Registry;
  /** The catalogue: each run is executed by its model's provider. */
  models: Models;
  bus: Bus;
  log: Logger;
  settlers: Settlers;
  /** This process's lease owner id. */
  instanceId: string;
  /** Runs executing at once (default 32); the rest wait in order. */
  maxConcurrent: number;
  /**
   * Runs waiting for a slot (queued here, or parked behind an earlier turn of their conversation) before a new
   * request is refused `503 overloaded` (default: unbounded; the config's MAX_QUEUED_RUNS).
   */
  maxQueued?: number;
  leaseTtlS: number;
  flushMs: number;
  /**
   * At most this many events of a run are published ahead of Postgres (default 2048): the window of its seq
   * ceiling. The executor waits for the event writer beyond it.
   */
  maxBacklog?: number;
  /**
   * Told of every run this process finished. `events()` copies its whole log when memory still holds all of it
   * (null otherwise): call it only if you keep it, and only during the callback.
   */
  onFinish?: (run: RunRow, events: () => RunEvent[] | null) => void;
  /** Told when a run is accepted and when its first token arrives (the operator's metrics; optional). */
  metrics?: RunMetrics;
}

/** The executor's only hooks into the operator's metrics: both are synchronous counters, never awaited. */
export interface RunMetrics {
  accepted(entry: RunEntry): void;
  firstToken(entry: RunEntry): void;
}

/** Why a run's AbortController was aborted. */
export type StopReason = 'cancelled' | 'interrupted';

export type { Admission, Refusal } from './admission.js';


/**
 * Executes accepted runs in the background: provider stream → registry (live subscribers) → event writer
 * (Postgres) → finish transaction (state + money) → bus. HTTP handlers only call `accept` and `stop`, which
 * return at once; nothing here is awaited by a request.
 *
 * Why no accepted run is ever stranded (the recovery model, which later work on workers and fenced leases builds
 * on). A run in Postgres that is `queued` or `executing` is, at every moment, in exactly one of three places:
 *
 * 1. **held** by the process named in its lease (`waiting` or `running` here): that process, and only it, renews
 *    the lease (`held()` is the list the heartbeat renews — never "every run with our name");
 * 2. **abandoned** by it, because its claim or its finish could not be recorded after `RETRIES` tries: it leaves
 *    `held` at once, its registry entry ends *without* inventing a final event (readers then follow Postgres, see
 *    feed.ts), and the sweeper of this process retries `interruptOrphan` on it until Postgres takes it;
 * 3. **orphaned**: its lease ran out (its process died, or forgot it through a bug). Any process's sweeper finishes
 *    it `interrupted` with a full refund — including this one's, for a run of ours we do not hold.
 *
 * Every path out of `execute` ends in a finish or in (2); an exception anywhere leads to (2). The finish is a
 * compare-and-set on the state (finish.ts), so two of these racing — a stop and recovery, two sweepers, an owner
 * whose lease ran out during an outage and the process that recovered it — finish a run once; the loser reads
 * and delivers the winner's final event. The seq ceiling (event-writer.ts) keeps a recovered run's final event
 * above every id its owner sent.
 */
export function createExecutor(opts: ExecutorOptions) {
  const waiting: string[] = [];
  /** Runs parked behind an earlier turn of their conversation; released into `waiting` when it ends. */
  const turns = createTurnWait({
    store: opts.store,
    log: opts.log,
    release: (ids) => {
      waiting.push(...ids);
      pump();
    },
  });
  opts.bus.on('run:finish', (e) => turns.finished(e.runId));
  const running = new Map<string, Promise<void>>();
  /** How many events may be published ahead of Postgres (the seq ceiling's window). */
  const window = Math.max(1, opts.maxBacklog ?? 2048);
  /** Runs whose claim or end could not be recorded: not held, so not renewed; the sweeper hands them to recovery. */
  const abandoned = new Set<string>();
  const admission = createAdmission({
    maxConcurrent: opts.maxConcurrent,
    maxQueued: opts.maxQueued ?? Infinity,
    waiting: () => waiting.length,
    running: () => running.size,
    parked: () => turns.size,
    // A slot held for a run that was refused (or that queued after all) may now be taken by a waiting one.
    slotFreed: () => {
      if (waiting.length > 0) setImmediate(pump);
    },
  });
  const finisher = createFinisher({ db: opts.db, pool: opts.store.pool, settlers: opts.settlers, origin: opts.instanceId, models: opts.models });

  function start(runId: string) {
    const p = execute(runId)
      .catch((err) => opts.log.error({ err, runId }, 'run executor crashed'))
      .finally(() => {
        running.delete(runId);
        pump();
      });
    running.set(runId, p);
  }

  function pump() {
    while (running.size + admission.reserved < opts.maxConcurrent && waiting.length > 0) start(waiting.shift()!);
  }

  /**
   * Publish a finish to whoever watches here, then let the registry forget the run. `ownLog`: the finisher was the
   * owner, so what this process published is exactly the log Postgres now has (a recovered run's memory may hold
   * tokens Postgres never got: it is not offered as the run's log).
   */
  function announce(entry: RunEntry | undefined, fin: Finished | undefined, ownLog: boolean) {
    if (fin && entry) {
      entry.state = fin.run.state;
      opts.registry.publish(entry.runId, fin.final);
    }
    // Before `end`, which may drop the entry: the log is copied only if the listener asks for it.
    if (fin?.won && opts.onFinish) {
      opts.onFinish(fin.run, () => {
        const snap = entry && ownLog ? opts.registry.snapshot(entry.runId, 0) : null;
        return snap?.complete ? snap.events : null;
      });
    }
    if (entry) opts.registry.end(entry.runId);
    if (!fin?.won) return;
    const r = fin.run;
    opts.bus.emit('run:finish', { runId: r.id, kind: r.kind, state: r.state, sessionId: r.sessionId, jobId: r.jobId });
    if (r.kind === 'session' && r.sessionId) {
      opts.bus.emit('session:request:complete', { sessionId: r.sessionId, requestId: r.id, state: r.state });
    }
  }

  const retrying = <T>(what: string, runId: string, fn: () => Promise<T>) => retried(opts.log, what, runId, fn);

  /**
   * Give a run up to recovery (place 2 of the model above): stop renewing its lease, end its entry without a final
   * event (we do not know the outcome Postgres will record), and let the sweeper finish it once Postgres is back.
   */
  function abandon(runId: string, err: unknown) {
    opts.log.error({ err, runId }, 'could not record the state of a run; leaving it to recovery');
    abandoned.add(runId);
    const entry = opts.registry.get(runId);
    if (entry && !entry.ended) {
      if (!entry.controller.signal.aborted) entry.controller.abort('interrupted');
      opts.registry.end(runId);
    }
    opts.bus.emit('run:abandoned', { runId });
  }

  /**
   * Finish (retrying while Postgres is unwell), then announce; if it cannot be recorded at all, abandon the run.
   * With `published` (the owner finishing its own run: it knows everything the finish needs) the finish is one
   * statement; without it, a locked read first (finish.ts).
   */
  async function finishAndAnnounce(entry: RunEntry | undefined, runId: string, outcome: Outcome, pending: RunEvent[] = [], published?: number) {
    let fin: Finished | undefined;
    const own = entry && published !== undefined && entry.row.leaseOwner === opts.instanceId ? entry : undefined;
    try {
      fin = await retrying('finishing a run', runId, () =>
        own
          ? finisher.owned(own.row, opts.instanceId, outcome, pending, published!, own.outputTokens, own.result)
          : finisher.any(runId, outcome, pending, published),
      );
    } catch (err) {
      abandon(runId, err);
      return undefined;
    }
    announce(entry, fin, published !== undefined);
    return fin;
  }

  async function execute(runId: string): Promise<void> {
    const entry = opts.registry.get(runId);
    if (!entry) return;
    try {
      await attempt(entry);
    } catch (err) {
      // Whatever failed (a claim Postgres would not take, a bug), the run must not stay live and forgotten.
      abandon(runId, err);
    }
  }

  async function attempt(entry: RunEntry): Promise<void> {
    const runId = entry.runId;
    const log = opts.log.child({ runId });
    const signal = entry.controller.signal;
    if (signal.aborted) {
      // Stopped while queued: nothing ran, so everything is refunded.
      await finishAndAnnounce(entry, runId, { state: signal.reason === 'cancelled' ? 'cancelled' : 'interrupted' }, [], entry.lastSeq);
      return;
    }
    // Claimed at acceptance (the usual case: the accept statement inserted it executing under our lease), or now.
    // A claim that keeps failing throws out of here: `execute` abandons the run.
    const claimed =
      entry.row.state === 'executing' && entry.row.leaseOwner === opts.instanceId
        ? entry.row
        : await retrying('claiming a run', runId, () => opts.store.claim(runId, opts.instanceId, opts.leaseTtlS, window));
    if (claimed && 'blockedBy' in claimed) {
      // An earlier turn of its conversation is still live: wait for it (the entry stays; streams stay attached).
      turns.park(runId, claimed.blockedBy);
      return;
    }
    if (!claimed) {
      // Someone else finished it (a stop from another process, recovery): deliver their final event. We published
      // nothing, and do not know who did: no `published`, so a still-live row would be numbered past its ceiling.
      await finishAndAnnounce(entry, runId, { state: 'interrupted' });
      return;
    }
    let run: RunRow = { ...entry.row, ...claimed, state: 'executing', leaseOwner: opts.instanceId };
    entry.state = 'executing';
    entry.row = run;
    if (run.cancelRequested && !signal.aborted) entry.controller.abort('cancelled');
    // Logged in the next turn: the provider is asked first (the time to the first token waits for nothing else).
    const started = run;
    setImmediate(() => log.info(runLogFields(started), 'run started'));

    const writer = createEventWriter({
      store: opts.store,
      registry: opts.registry,
      runId,
      owner: opts.instanceId,
      flushMs: opts.flushMs,
      window,
      ceiling: run.seqCeiling,
      log,
      onLeaseLost: () => {
        log.warn('lease lost: another process finished this run');
        if (!entry.controller.signal.aborted) entry.controller.abort('interrupted');
      },
      onCancelRequested: () => {
        if (!entry.controller.signal.aborted) entry.controller.abort('cancelled');
      },
    });
    let outcome: Outcome;
    try {
      // (A run that waited behind an earlier turn resolves its context now; the rest go straight to the provider.)
      if (!run.input) entry.row = run = await resolveInput({ db: opts.db, store: opts.store, owner: opts.instanceId }, run);
      outcome = await generate(opts, run, entry, writer, log);
    } catch (err) {
      // Resolving its context failed (Postgres): nothing was produced, so it ends failed and refunded.
      log.warn({ err }, 'could not resolve the context of a run');
      outcome = { state: 'failed', error: { code: 'internal', message: 'the context of this request could not be read; it was refunded in full' } };
    }
    const pending = await writer.close();
    // Its 'run finished' line is written by whoever listens to onFinish (every finish, not only executed runs).
    await finishAndAnnounce(entry, runId, outcome, pending, entry.lastSeq);
  }

  return {
    /**
     * Take an accepted run (inserted with our lease: `executing` when its admission held a slot, else `queued`) and
     * execute it in the background. A claimed run starts now, in this call: its provider is asked before the
     * request that accepted it has even answered.
     */
    accept(run: RunRow): RunEntry {
      const entry = opts.registry.open(run);
      opts.metrics?.accepted(entry);
      if (run.waitsFor) turns.park(run.id, run.waitsFor);
      else if (run.state === 'executing' && admission.accepting) start(run.id);
      else waiting.push(run.id);
      if (admission.accepting) setImmediate(pump);
      // Paid for after shutdown began (a settlement landing late): interrupted and refunded, never left queued.
      else this.stop(run.id, 'interrupted');
      return entry;
    },

    /** Release parked runs whose predecessor Postgres says has ended (a lost wake-up from another process). */
    recheckBlocked(): Promise<void> {
      return turns.recheck();
    },

    get accepting() {
      return admission.accepting;
    },

    /** No slot is free and MAX_QUEUED_RUNS runs wait: new work is refused `503 overloaded` before anything is paid. */
    get overloaded() {
      return admission.overloaded;
    },

    /** How many events a run may publish ahead of Postgres: the seq ceiling a run claimed at acceptance starts with. */
    get window() {
      return window;
    },

    /**
     * Reserve the right to accept one run before its debit (release after `accept`), or why not (admission.ts).
     * `claimable`: the run may start at once (it waits for no earlier turn).
     */
    admit(claimable = true) {
      return admission.admit(claimable);
    },

    /** Runs this process has given up on, for the sweeper to hand to recovery. */
    abandoned(): string[] {
      return [...abandoned];
    },

    /**
     * Runs this process drives (waiting, executing, or parked behind an earlier turn of their conversation):
     * exactly the leases its heartbeat renews. A parked turn is held too — else its lease would lapse and
     * recovery would interrupt a run that is only waiting its turn.
     */
    held(): string[] {
      return [...new Set([...waiting, ...running.keys(), ...turns.runs()])];
    },

    /**
     * Stop a run this process holds. A queued one is finished at once (full refund); an executing one is
     * aborted and finishes through its own loop within a tick of the provider noticing.
     */
    stop(runId: string, reason: StopReason): boolean {
      if (abandoned.has(runId)) {
        // Given up to recovery: try it now (Postgres may be back); the sweeper keeps trying if not.
        void this.interruptOrphan(runId).catch((err) => opts.log.warn({ err, runId }, 'recovering a stopped run failed; the sweeper will retry'));
        return true;
      }
      const entry = opts.registry.get(runId);
      if (!entry || entry.ended) return false;
      if (!entry.controller.signal.aborted) entry.controller.abort(reason);
      const i = waiting.indexOf(runId);
      if (i >= 0 || turns.unpark(runId)) {
        if (i >= 0) waiting.splice(i, 1);
        const p = finishAndAnnounce(entry, runId, { state: reason }, [], entry.lastSeq).then(
          () => undefined,
          (err) => opts.log.error({ err, runId }, 'stopping a queued run failed'),
        );
        running.set(
          runId,
          p.finally(() => {
            running.delete(runId);
            pump();
          }),
        );
      }
      return true;
    },

    /**
     * Finish a run no live process drives (recovery): interrupted, refunded in full, its final event numbered past
     * its seq ceiling. Readers here (of an abandoned run) get that event; the rest read it from Postgres.
     */
    async interruptOrphan(runId: string): Promise<boolean> {
      const fin = await finisher.any(runId, { state: 'interrupted' });
      abandoned.delete(runId);
      announce(opts.registry.get(runId), fin, false);
      return Boolean(fin?.won);
    },

    /**
     * Shut down: take no more work, let running work finish for `graceMs`, then interrupt (and refund) the
     * rest and wait for their finish transactions.
     */
    async drain(graceMs: number): Promise<{ interrupted: number }> {
      admission.close();
      // Requests already past the accepting check finish their debit and hand us their run first.
      const admitDeadline = Date.now() + 5_000;
      while (admission.admitting > 0 && Date.now() < admitDeadline) await new Promise((r) => setTimeout(r, 5));
      for (const id of [...waiting]) this.stop(id, 'interrupted');
      for (const id of turns.runs()) this.stop(id, 'interrupted');
      const deadline = Date.now() + graceMs;
      while (running.size > 0 && Date.now() < deadline) {
        await Promise.race([Promise.allSettled(running.values()), new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())))]);
      }
      const left = [...running.keys()];
      for (const id of left) this.stop(id, 'interrupted');
      await Promise.allSettled(running.values());
      return { interrupted: left.length };
    },

    stats() {
      return { running: running.size, waiting: waiting.length, blocked: turns.size };
    },
  };
}

export type Executor = ReturnType<typeof createExecutor>;
