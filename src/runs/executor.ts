import type { Logger } from 'pino';
import type { Bus } from '../bus.js';
import type { Db } from '../db/pool.js';
import type { Models } from '../models/providers.js';
import { createAdmission } from './admission.js';
import { createAttempt } from './attempt.js';
import { createFinisher, type Settlers } from './finish.js';
import { createEndings } from './endings.js';
import type { Registry, RunEntry, RunEvent } from './registry.js';
import type { RunRow, RunStore } from './store.js';
import { busMessage } from '../bus-bridge.js';
import { createClaimer, type Queue } from './queue.js';

export interface ExecutorOptions {
  db: Db;
  store: RunStore;
  registry: Registry;
  /** The catalogue: each run is executed by its model's provider. */
  models: Models;
  bus: Bus;
  log: Logger;
  settlers: Settlers;
  /** The shared queue (runs/queue.ts). */
  queue: Queue;
  /** This process's lease owner id. */
  instanceId: string;
  /**
   * Runs executing at once here (WORKER_CONCURRENCY); 0: this process executes nothing (the `api` role), it only
   * accepts into the queue.
   */
  maxConcurrent: number;
  /** Runs in the shared queue before a new request is refused `503 overloaded` (default: unbounded; MAX_QUEUED_RUNS). */
  maxQueued?: number;
  /** The most runs of one session (or job) executing at once (SESSION_MAX_CONCURRENT_RUNS; default unbounded). */
  sessionCap?: number;
  /** How often an idle process with free slots looks at the queue anyway (a lost NOTIFY costs at most this). */
  pollMs?: number;
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
  /**
   * `entry`: the run starts here now, its first token timed from `at` (process.hrtime.bigint() when it was accepted;
   * default: this call), else it was queued.
   */
  accepted(run: Pick<RunRow, 'id' | 'kind' | 'sessionId' | 'state' | 'debitedSats'>, entry?: RunEntry, at?: bigint): void;
  /** A queued run this process claimed from the shared queue starts now. */
  claimed?(entry: RunEntry): void;
  firstToken(entry: RunEntry): void;
}

/** Why a run's AbortController was aborted. */
export type StopReason = 'cancelled' | 'interrupted';

export type { Admission, Refusal } from './admission.js';


/**
 * Executes runs in the background: provider stream → registry (live subscribers) → event writer (Postgres) →
 * finish statement (state + money) → bus. HTTP handlers only call `accept` and `stop`, which return at once; nothing
 * here is awaited by a request.
 *
 * Where a run comes from: claimed at its acceptance by this process (the fast path: a free slot, so the accepting
 * statement inserted it `executing` under our lease), or claimed from the shared queue (runs/queue.ts) by the claim
 * loop here, whichever process accepted it.
 *
 * Why no accepted run is ever stranded. A run in Postgres that is `queued` or `executing` is, at every moment, in
 * exactly one of four places:
 *
 * 0. **in the queue**: `queued` with no owner. Any process with a free slot claims it (attempt + 1); a process dying
 *    or stopping loses nothing queued, since it held none of it. Only a stop takes it out unclaimed (`cancel`).
 * 1. **held** by the process named in its lease, for the attempt it claimed (`running` here): that process, and only
 *    it, renews the lease (`held()` is the list the heartbeat renews — never "every run with our name");
 * 2. **abandoned** by it, because its finish could not be recorded after `RETRIES` tries: it leaves `held` at once,
 *    its registry entry ends *without* inventing a final event (readers then follow Postgres, see feed.ts), and the
 *    sweeper of this process retries `interruptOrphan` on it until Postgres takes it;
 * 3. **orphaned**: its lease ran out (its process died or froze, or forgot it through a bug). Any process's sweeper
 *    finishes it `interrupted` with a full refund: it was started, and a half-done model call cannot be resumed.
 *
 * Every path out of `execute` ends in a finish or in (2); an exception anywhere leads to (2). The finish is a
 * compare-and-set on the state, and an owner's writes are fenced by its attempt (finish.ts, store.ts), so two of
 * these racing — a stop and recovery, two sweepers, an owner frozen past its lease and the process that recovered
 * it — finish a run once, and the late one writes nothing; the loser reads and delivers the winner's final event.
 * The seq ceiling (event-writer.ts) keeps a recovered run's final event above every id its owner sent.
 */
export function createExecutor(opts: ExecutorOptions) {
  const running = new Map<string, Promise<void>>();
  /** Runs running here per session (or job): the fast path keeps the per-session cap too. */
  const perKey = new Map<string, number>();
  const keyOf = (r: { sessionId: string | null; jobId: string | null }) => r.sessionId ?? r.jobId ?? '';
  const sessionCap = opts.sessionCap ?? Infinity;
  /** How many events may be published ahead of Postgres (the seq ceiling's window). */
  const window = Math.max(1, opts.maxBacklog ?? 2048);
  /**
   * Runs a stop found claimed by us before our claim's reply was handled (`cancel` raced our own claim; the NOTIFY
   * it sends is not delivered back to its sender): aborted as soon as they are taken.
   */
  const stopsBeforeTake = new Set<string>();
  /** Runs whose end could not be recorded: not held, so not renewed; the sweeper hands them to recovery. */
  const abandoned = new Set<string>();
  /** The shared queue's depth as last counted, plus what this process queued since, minus what it claimed. */
  let queued = 0;
  let counting: Promise<void> | null = null;
  const maxQueued = opts.maxQueued ?? Infinity;
  const claimer = createClaimer({
    claim: (n) => opts.queue.claim(n, { owner: opts.instanceId, leaseTtlS: opts.leaseTtlS, sessionCap: sessionCap === Infinity ? 2 ** 31 - 1 : sessionCap, window }),
    free: () => (admission.accepting ? opts.maxConcurrent - running.size - admission.reserved : 0),
    take: (rows) => {
      queued = Math.max(0, queued - rows.length);
      for (const row of rows) {
        const entry = opts.registry.open(row);
        if (stopsBeforeTake.delete(row.id)) entry.controller.abort('cancelled');
        opts.metrics?.claimed?.(entry);
        start(entry);
      }
    },
    pollMs: opts.pollMs ?? 1_000,
    log: opts.log,
    // A backlog is claimed a quarter of the slots at a time (at most 5 ms late): one claim per run would cost
    // Postgres as much as the run's own finish.
    batch: Math.max(1, Math.floor(opts.maxConcurrent / 4)),
    batchMs: 5,
  });
  const admission = createAdmission({
    maxConcurrent: opts.maxConcurrent,
    maxQueued,
    sessionCap,
    runningOf: (key) => perKey.get(key) ?? 0,
    queued: () => queued,
    running: () => running.size,
    claiming: () => claimer.claiming,
    // A slot held for a run that was refused (or that queued after all) may now take one from the queue.
    slotFreed: () => claimer.slotFreed(),
  });
  const finisher = createFinisher({ db: opts.db, pool: opts.store.pool, settlers: opts.settlers, origin: opts.instanceId, models: opts.models });
  // A stop asked through another process, for a run executing here: at once (the flag stays the fallback).
  opts.bus.on('run:cancel', (e) => void stop(e.runId, 'cancelled'));
  // A run queued anywhere: look, if a slot is free. (A conversation's turn ending wakes the process that ran it,
  // which has a slot free just then; the poll covers the rest.)
  opts.bus.on('run:queued', () => claimer.wake());

  function start(entry: RunEntry) {
    const key = keyOf(entry);
    perKey.set(key, (perKey.get(key) ?? 0) + 1);
    const p = execute(entry.runId)
      .catch((err) => opts.log.error({ err, runId: entry.runId }, 'run executor crashed'))
      .finally(() => {
        running.delete(entry.runId);
        const n = (perKey.get(key) ?? 1) - 1;
        if (n > 0) perKey.set(key, n);
        else perKey.delete(key);
        // A conversation's next turn may wait on this one; otherwise a claim only if something may be queued.
        if (entry.row.conversationId) claimer.wake();
        else claimer.slotFreed();
      });
    running.set(entry.runId, p);
  }

  /**
   * Recount the queue (one statement, at most one at a time): an `api` process learns what the workers took, an
   * `all` one what other processes queued. Only while the estimate matters (something is queued).
   */
  function recount() {
    if (counting || queued === 0 || maxQueued === Infinity) return;
    counting = opts.queue
      .depth(maxQueued + 1)
      .then((n) => void (queued = n))
      .catch((err) => opts.log.warn({ err }, 'counting the queue failed'))
      .finally(() => (counting = null));
  }
  const recounter = setInterval(recount, opts.pollMs ?? 1_000);
  recounter.unref();

  const { announce, abandon, finishAndAnnounce } = createEndings({ ...opts, finisher, abandoned });
  const attempt = createAttempt({ ...opts, window, finishAndAnnounce });

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

  /**
   * Stop a run this process executes: its provider call is aborted and it finishes through its own loop within a
   * tick of the provider noticing. False if it is not executing here.
   */
  function stop(runId: string, reason: StopReason): boolean {
    if (abandoned.has(runId)) {
      // Given up to recovery: try it now (Postgres may be back); the sweeper keeps trying if not.
      void interruptOrphan(runId).catch((err) => opts.log.warn({ err, runId }, 'recovering a stopped run failed; the sweeper will retry'));
      return true;
    }
    const entry = opts.registry.get(runId);
    if (!entry || entry.ended) return false;
    if (!entry.controller.signal.aborted) entry.controller.abort(reason);
    return true;
  }

  /**
   * Finish a run no live process drives (recovery), or a queued run stopped before anyone claimed it: refunded in
   * full, its final event numbered past its seq ceiling. Readers here (of an abandoned run) get that event; the rest
   * read it from Postgres.
   */
  async function interruptOrphan(runId: string, state: 'interrupted' | 'cancelled' = 'interrupted'): Promise<boolean> {
    const fin = await finisher.any(runId, { state });
    abandoned.delete(runId);
    announce(opts.registry.get(runId), fin, false);
    return Boolean(fin?.won);
  }

  return {
    /**
     * Take an accepted run. Claimed at acceptance (`executing` under our lease: its admission held a slot), it
     * starts now, in this call: its provider is asked before the request that accepted it has even answered.
     * Queued, it is in the shared queue: this process's claimer looks (the accepting statement woke the others).
     */
    accept(run: RunRow): RunEntry | undefined {
      if (run.state !== 'executing' || run.leaseOwner !== opts.instanceId) {
        opts.metrics?.accepted(run);
        queued++;
        claimer.wake();
        return undefined;
      }
      const entry = opts.registry.open(run);
      // Its provider is asked first (in `start`), then the metrics and the `run:state` notice are told, with the
      // time it was accepted: its first token comes a tick later at the soonest, so it is still timed from here.
      const at = process.hrtime.bigint();
      start(entry);
      opts.metrics?.accepted(run, entry, at);
      // Paid for after shutdown began (a settlement landing late): interrupted and refunded at once.
      if (!admission.accepting) stop(run.id, 'interrupted');
      return entry;
    },

    /** Claim from the queue whenever a slot is free (never in the `api` role: it has no slots). */
    startClaiming() {
      if (opts.maxConcurrent > 0) claimer.start();
    },

    get accepting() {
      return admission.accepting;
    },

    /** No slot is free and MAX_QUEUED_RUNS runs wait: new work is refused `503 overloaded` before anything is paid. */
    get overloaded() {
      if (admission.overloaded) {
        recount();
        return true;
      }
      return false;
    },

    /** How many events a run may publish ahead of Postgres: the seq ceiling a run claimed at acceptance starts with. */
    get window() {
      return window;
    },

    /**
     * Reserve the right to accept one run before its debit (release after `accept`), or why not (admission.ts).
     * `claimable`: the run may start at once (it waits for no earlier turn); `key`: its session, if known.
     */
    admit(claimable = true, key?: string | null) {
      const a = admission.admit(claimable, key);
      if (a === 'overloaded') recount();
      return a;
    },

    /** Runs this process has given up on, for the sweeper to hand to recovery. */
    abandoned(): string[] {
      return [...abandoned];
    },

    /**
     * Runs this process executes, with the attempt it claimed: exactly the leases its heartbeat renews (a renewal
     * names the attempt, so it can never extend a lease another process has since claimed).
     */
    held(): Array<{ id: string; attempt: number }> {
      const out: Array<{ id: string; attempt: number }> = [];
      for (const id of running.keys()) {
        const entry = opts.registry.get(id);
        if (entry && !abandoned.has(id)) out.push({ id, attempt: entry.row.attempt });
      }
      return out;
    },

    stop,

    /**
     * Stop a run wherever it is: here by aborting it; executing elsewhere by the flag and a NOTIFY its owner acts on
     * at once; queued, by finishing it here (`cancelled`, refunded in full) — no claim can take it meanwhile, since
     * the flag is set first and claims skip flagged runs. False if it had already ended.
     */
    async cancel(runId: string): Promise<boolean> {
      if (stop(runId, 'cancelled')) return true;
      const now = await opts.queue.cancel(runId, busMessage(opts.instanceId, 'run:cancel', { runId }));
      if (!now) return false;
      if (now.state === 'queued' && now.leaseOwner === null && (await interruptOrphan(runId, 'cancelled'))) queued = Math.max(0, queued - 1);
      // Claimed by us meanwhile: stop it here (now, or as soon as the claim hands it over).
      else if (now.state === 'executing' && now.leaseOwner === opts.instanceId && !stop(runId, 'cancelled')) stopsBeforeTake.add(runId);
      return true;
    },

    interruptOrphan,

    /**
     * Shut down: claim and take no more work, let running work finish for `graceMs`, then interrupt (and refund)
     * the rest and wait for their finish statements. Queued runs are not ours: they stay in the queue for others.
     */
    async drain(graceMs: number): Promise<{ interrupted: number }> {
      admission.close();
      clearInterval(recounter);
      await claimer.stop();
      // Requests already past the accepting check finish their debit and hand us their run first.
      const admitDeadline = Date.now() + 5_000;
      while (admission.admitting > 0 && Date.now() < admitDeadline) await new Promise((r) => setTimeout(r, 5));
      const deadline = Date.now() + graceMs;
      while (running.size > 0 && Date.now() < deadline) {
        await Promise.race([Promise.allSettled(running.values()), new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())))]);
      }
      const left = [...running.keys()];
      for (const id of left) stop(id, 'interrupted');
      await Promise.allSettled(running.values());
      return { interrupted: left.length };
    },

    stats() {
      return { running: running.size, queued };
    },
  };
}

export type Executor = ReturnType<typeof createExecutor>;
