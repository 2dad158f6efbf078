import type { Logger } from 'pino';
import type { Bus } from '../bus.js';
import type { Db } from '../db/pool.js';
import { toStorable } from '../http/validate.js';
import type { Models } from '../models/providers.js';
import { AiError, type AiRequest, type AiStopReason } from '../providers/ai/types.js';
import { composeInput, conversationHistory } from './context.js';
import { runLogFields } from '../logger.js';
import { createEventWriter } from './event-writer.js';
import { createTurnWait } from './turn-wait.js';
import { finishRun, type Finished, type Outcome, type Settlers, type Usage } from './finish.js';
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
  leaseTtlS: number;
  flushMs: number;
  /** The executor waits for the event writer when this many events are unwritten (default 4 × buffer). */
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

/** Attempts to record a run's end before leaving it to recovery (backoff 100 ms · 2^n: about 3 s in all). */
const FINISH_RETRIES = 5;

/** Postgres cannot store NUL or a lone surrogate; a provider that sends one must not wedge the run. */
const clean = toStorable;

/**
 * Executes accepted runs in the background: provider stream → registry (live subscribers) → event writer
 * (Postgres) → finish transaction (state + money) → bus. HTTP handlers only call `accept` and `stop`, which
 * return at once; nothing here is awaited by a request.
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
  const maxBacklog = opts.maxBacklog ?? 2048;
  /** Runs whose end could not be recorded: their leases are no longer renewed, so recovery takes them. */
  const abandoned = new Set<string>();
  let accepting = true;
  /** Requests between the accepting check and `accept` (their debit is in flight); drain waits for them. */
  let admitting = 0;

  function pump() {
    while (running.size < opts.maxConcurrent && waiting.length > 0) {
      const runId = waiting.shift()!;
      const p = execute(runId)
        .catch((err) => opts.log.error({ err, runId }, 'run executor crashed'))
        .finally(() => {
          running.delete(runId);
          pump();
        });
      running.set(runId, p);
    }
  }

  /** Publish a finish to whoever watches here, then let the registry forget the run. */
  function announce(entry: RunEntry | undefined, fin: Finished | undefined) {
    if (fin && entry) {
      entry.state = fin.run.state;
      opts.registry.publish(entry.runId, fin.final);
    }
    // Before `end`, which may drop the entry: the log is copied only if the listener asks for it.
    if (fin?.won && opts.onFinish) {
      opts.onFinish(fin.run, () => {
        const snap = entry ? opts.registry.snapshot(entry.runId, 0) : null;
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

  /**
   * Finish (retrying while Postgres is unwell), then announce. If it cannot be recorded at all, readers are told
   * so and the run is let go: this process stops renewing its lease, so recovery refunds it in full later.
   */
  async function finishAndAnnounce(entry: RunEntry | undefined, runId: string, outcome: Outcome, pending = [] as Parameters<typeof finishRun>[3]) {
    let fin: Finished | undefined;
    for (let attempt = 0; ; attempt++) {
      try {
        fin = await finishRun(opts, runId, outcome, pending);
        break;
      } catch (err) {
        if (attempt >= FINISH_RETRIES) {
          opts.log.error({ err, runId }, 'could not record the end of a run; leaving it to recovery');
          abandoned.add(runId);
          if (entry) {
            opts.registry.publish(runId, {
              seq: entry.lastSeq + 1,
              type: 'error',
              data: { state: 'failed', code: 'internal', message: 'the outcome of this run could not be recorded; it will be refunded in full', refundedSats: 0 },
            });
            opts.registry.end(runId);
          }
          return undefined;
        }
        opts.log.warn({ err, runId, attempt }, 'finishing a run failed; retrying');
        await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
      }
    }
    announce(entry, fin);
    return fin;
  }

  async function execute(runId: string): Promise<void> {
    const entry = opts.registry.get(runId);
    if (!entry) return;
    const log = opts.log.child({ runId });
    const signal = entry.controller.signal;
    if (signal.aborted) {
      // Stopped while queued: nothing ran, so everything is refunded.
      await finishAndAnnounce(entry, runId, { state: signal.reason === 'cancelled' ? 'cancelled' : 'interrupted' });
      return;
    }
    const claimed = await opts.store.claim(runId, opts.instanceId, opts.leaseTtlS);
    if (claimed && 'blockedBy' in claimed) {
      // An earlier turn of its conversation is still live: wait for it (the entry stays; streams stay attached).
      turns.park(runId, claimed.blockedBy);
      return;
    }
    if (!claimed) {
      // Someone else finished it (a stop from another process, recovery): deliver their final event.
      await finishAndAnnounce(entry, runId, { state: 'interrupted' });
      return;
    }
    let run: RunRow = claimed;
    entry.state = 'executing';
    entry.row = run;
    if (run.cancelRequested) entry.controller.abort('cancelled');
    log.info(runLogFields(run), 'run started');

    const writer = createEventWriter({
      store: opts.store,
      registry: opts.registry,
      runId,
      owner: opts.instanceId,
      flushMs: opts.flushMs,
      log,
      onLeaseLost: () => {
        log.warn('lease lost: another process finished this run');
        entry.controller.abort('interrupted');
      },
      onCancelRequested: () => {
        if (!entry.controller.signal.aborted) entry.controller.abort('cancelled');
      },
    });
    let outcome: Outcome;
    try {
      run = await resolveInput(run);
      entry.row = run;
      outcome = await stream(run, entry, writer, log);
    } catch (err) {
      // Resolving its context failed (Postgres): nothing was produced, so it ends failed and refunded.
      log.warn({ err }, 'could not resolve the context of a run');
      outcome = { state: 'failed', error: { code: 'internal', message: 'the context of this request could not be read; it was refunded in full' } };
    }
    const pending = await writer.close();
    // Its 'run finished' line is written by whoever listens to onFinish (every finish, not only executed runs).
    await finishAndAnnounce(entry, runId, outcome, pending);
  }

  /** A run enqueued behind another resolves its context now that the runs before it have ended. */
  async function resolveInput(run: RunRow): Promise<RunRow> {
    if (run.input) return run;
    const history = run.conversationId !== null && run.conversationTurn !== null ? await conversationHistory(opts.db, run.conversationId, run.conversationTurn) : [];
    const input = composeInput(run.instructions, history, run.turn ?? [{ role: 'user', content: run.request }]);
    await opts.store.setInput(run.id, opts.instanceId, input);
    return { ...run, input };
  }

  async function stream(run: RunRow, entry: RunEntry, writer: ReturnType<typeof createEventWriter>, log: Logger): Promise<Outcome> {
    const signal = entry.controller.signal;
    const model = opts.models.get(run.model ?? opts.models.default.entry.name);
    if (!model) {
      // The catalogue changed between acceptance and now (a restart with another configuration).
      return { state: 'failed', error: { code: 'model_unavailable', message: `the model ${run.model} is no longer served here; the request was refunded in full` } };
    }
    const messages = run.input ?? [{ role: 'user' as const, content: run.request }];
    if (model.tokenizer.contextBound(messages) + run.maxTokens > model.entry.contextTokens) {
      return { state: 'failed', error: { code: 'context_length_exceeded', message: `the conversation no longer fits the ${model.entry.contextTokens}-token context of ${model.entry.name}; the request was refunded in full` } };
    }
    const req: AiRequest = { model: model.entry.upstreamModel, messages, maxTokens: run.maxTokens };
    // The provider's counts so far (a count it never sent is estimated by the finish, from the text).
    let usage: Partial<Usage> | undefined;
    let stopReason: AiStopReason = 'stop';
    try {
      for await (const chunk of model.provider.stream(req, signal)) {
        if (chunk.type === 'usage') {
          usage = { inputTokens: chunk.inputTokens, outputTokens: chunk.outputTokens };
          continue;
        }
        if (chunk.type === 'finish') {
          stopReason = chunk.reason;
          continue;
        }
        writer.add(opts.registry.append(run.id, 'token', { content: clean(chunk.content) }));
        if (entry.outputTokens === 1) opts.metrics?.firstToken(entry);
        // Postgres is slower than the model: let the writer catch up rather than grow without bound.
        if (writer.backlog >= maxBacklog) await writer.flush();
      }
      if (signal.aborted) throw signal.reason;
      return { state: 'complete', usage, stopReason };
    } catch (err) {
      if (signal.aborted) return { state: signal.reason === 'cancelled' ? 'cancelled' : 'interrupted', usage };
      log.warn({ err }, 'run failed');
      const e = err instanceof AiError ? err : new AiError('provider_error', 'the AI provider failed');
      return { state: 'failed', error: { code: e.code, message: e.message } };
    }
  }

  return {
    /** Take an accepted run (already inserted `queued` with our lease) and execute it in the background. */
    accept(run: RunRow): RunEntry {
      const entry = opts.registry.open(run);
      opts.metrics?.accepted(entry);
      if (run.waitsFor) turns.park(run.id, run.waitsFor);
      else waiting.push(run.id);
      if (accepting) setImmediate(pump);
      // Paid for after shutdown began (a settlement landing late): interrupted and refunded, never left queued.
      else this.stop(run.id, 'interrupted');
      return entry;
    },

    /** Release parked runs whose predecessor Postgres says has ended (a lost wake-up from another process). */
    recheckBlocked(): Promise<void> {
      return turns.recheck();
    },

    get accepting() {
      return accepting;
    },

    /**
     * Reserve the right to accept one run (call before its debit transaction; release after `accept`).
     * Throws-free: returns null once shutdown has begun, so the caller answers 503 before taking any money.
     */
    admit(): (() => void) | null {
      if (!accepting) return null;
      admitting++;
      let released = false;
      return () => {
        if (!released) admitting--;
        released = true;
      };
    },

    /** Runs this process holds but has given up on (lease renewal skips them). */
    abandoned(): string[] {
      return [...abandoned];
    },

    /**
     * Stop a run this process holds. A queued one is finished at once (full refund); an executing one is
     * aborted and finishes through its own loop within a tick of the provider noticing.
     */
    stop(runId: string, reason: StopReason): boolean {
      const entry = opts.registry.get(runId);
      if (!entry || entry.ended) return false;
      if (!entry.controller.signal.aborted) entry.controller.abort(reason);
      const i = waiting.indexOf(runId);
      if (i >= 0 || turns.unpark(runId)) {
        if (i >= 0) waiting.splice(i, 1);
        const p = finishAndAnnounce(entry, runId, { state: reason }).then(() => undefined, (err) => opts.log.error({ err, runId }, 'stopping a queued run failed'));
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

    /** Finish a run no live process holds (recovery): interrupted, refunded in full. */
    async interruptOrphan(runId: string): Promise<boolean> {
      const fin = await finishRun(opts, runId, { state: 'interrupted' });
      if (fin) abandoned.delete(runId);
      announce(opts.registry.get(runId), fin);
      return Boolean(fin?.won);
    },

    /**
     * Shut down: take no more work, let running work finish for `graceMs`, then interrupt (and refund) the
     * rest and wait for their finish transactions.
     */
    async drain(graceMs: number): Promise<{ interrupted: number }> {
      accepting = false;
      // Requests already past the accepting check finish their debit and hand us their run first.
      const admitDeadline = Date.now() + 5_000;
      while (admitting > 0 && Date.now() < admitDeadline) await new Promise((r) => setTimeout(r, 5));
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
      return { running: running.size, waiting: waiting.length, blocked: turns.runs().length };
    },
  };
}

export type Executor = ReturnType<typeof createExecutor>;
