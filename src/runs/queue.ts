import type pg from 'pg';
import type { Logger } from 'pino';
import { BUS_CHANNEL } from '../bus-bridge.js';
import { run, statement } from '../db/statements.js';
import { RUN_COLUMNS, rowOf, type RunRow } from './store.js';

/**
 * The queue is the `runs` table (#11): a `queued` run with no lease owner is anyone's to claim. A process claims as
 * many as it has free slots in ONE statement, oldest first and fair across sessions, and never more of one session
 * than the per-session cap lets run at once.
 *
 * Why a run is claimed once, and why two claimers never wait on each other:
 * - `pick` locks the rows it takes `FOR UPDATE SKIP LOCKED`: a row another claim (or a stop) holds is skipped, not
 *   waited for, so N workers claiming at once each take different runs.
 * - The head of the queue is read from the statement's snapshot; a run claimed and committed by someone else after
 *   that snapshot can still be locked by `pick` (Postgres re-checks only `pick`'s own WHERE on the newest version).
 *   The UPDATE's WHERE therefore says again `state = 'queued' and lease_owner is null and not cancel_requested`,
 *   evaluated against the newest version of the row under its lock: such a run is simply not taken.
 * - Every claim adds one to `attempt`, the fencing token every later write of the attempt names (store.ts,
 *   finish.ts): whoever held an older attempt can write nothing, whatever it believes.
 * - A run someone asked to stop while queued (`cancel_requested`) is never claimed: the stopper finishes it itself
 *   (executor.cancel), so the stop and a claim cannot both win.
 * - The conversation order is checked in the same statement: a run whose earlier turn is still live is skipped.
 *
 * The per-session cap is counted from `executing` rows as of the snapshot, so two claims racing for the same
 * session may together exceed it by the runs they take at the same instant (at most the number of claimers, once):
 * a cap against one session taking every worker, not an exact semaphore. Serialising claims would make it exact,
 * at the price of every claimer waiting on every other.
 */
const CLAIM = statement(`
  with busy as (
    select coalesce(session_id, job_id) as k, count(*)::int as n from runs where state = 'executing' group by 1
  ),
  head as (
    select r.id, coalesce(r.session_id, r.job_id) as k, r.created_at from runs r
    where r.state = 'queued' and r.lease_owner is null and not r.cancel_requested
      -- (The sessions at their cap, computed once: usually none. Asked per row, the count cost a scan of busy for
      -- every head row: most of the claim's time.)
      and coalesce(r.session_id, r.job_id) <> all (array(select k from busy where n >= $4::int))
    order by r.created_at, r.id limit $5::int
  ),
  q as (select head.*, row_number() over (partition by k order by created_at, id) as rn from head),
  pick as (
    select r.id as pid from runs r join q on q.id = r.id left join busy b on b.k = q.k
    where q.rn + coalesce(b.n, 0) <= $4::int
      and not exists (select 1 from runs p where p.conversation_id = r.conversation_id and p.conversation_turn < r.conversation_turn
                      and p.state in ('queued','executing'))
    order by q.rn, q.created_at, q.id
    limit $3::int
    for update of r skip locked
  ),
  claimed as (
    update runs set state = 'executing', attempt = attempt + 1, lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2::float8),
      started_at = coalesce(started_at, now()), seq_ceiling = greatest(seq_ceiling, last_seq + $6::int)
    where runs.id = any (array(select pid from pick)) and runs.state = 'queued' and runs.lease_owner is null and not runs.cancel_requested
    returning ${RUN_COLUMNS}
  )
  -- (An UPDATE returns its rows in no particular order: they are started in the queue's.) A session run's start is
  -- told to every other process's session notices (GET /api/ws) by this statement itself: no round trip of its own.
  select claimed.*, case when claimed.kind = 'session' then pg_notify('${BUS_CHANNEL}', json_build_object('o', $1::text, 'e', 'run:state',
      'p', json_build_object('runId', claimed.id, 'kind', claimed.kind, 'sessionId', claimed.session_id, 'state', 'executing'))::text) end as started
  from claimed join q on q.id = claimed.id order by q.rn, q.created_at, q.id`);

/**
 * Ask a live run to stop, wherever it is: the flag (read by its owner's next flush or heartbeat, and by every
 * claim, which then skips it) and, for an executing run, a NOTIFY its owner acts on at once (bus-bridge.ts).
 */
const CANCEL = statement(`
  with u as (update runs set cancel_requested = true where id = $1 and state in ('queued','executing') returning state, lease_owner)
  select state, lease_owner, case when state = 'executing' then pg_notify('${BUS_CHANNEL}', $2) end from u`);

/** How many runs wait in the queue (counted up to a bound: only "at least the limit" matters). */
const DEPTH = statement(`select count(*)::int as n from (select 1 from runs where state = 'queued' limit $1::int) q`);

/**
 * Runs queued under a lease (rows from before the shared queue, or a process that died between an insert and its
 * claim): back to the queue once the lease ran out. Never interrupted: nothing of them ever ran.
 */
const REQUEUE = statement(`
  update runs set lease_owner = null, lease_expires_at = null
  where state = 'queued' and lease_owner is not null and (lease_expires_at is null or lease_expires_at < now())`);

export interface ClaimOptions {
  owner: string;
  leaseTtlS: number;
  /** The most runs of one session (or job) executing at once, across the fleet. */
  sessionCap: number;
  /** The seq ceiling a claimed run starts with (its window, see event-writer.ts). */
  window: number;
}

export function createQueue(pool: pg.Pool) {
  return {
    /** Claim up to `n` runs (one statement); the rows come back as claimed: executing, under our lease. */
    async claim(n: number, o: ClaimOptions): Promise<RunRow[]> {
      if (n <= 0) return [];
      const res = await run(pool, CLAIM, [o.owner, o.leaseTtlS, n, o.sessionCap, Math.max(64, n * 8), o.window]);
      return res.rows.map(rowOf);
    },
    /** Ask a live run to stop; its state and owner then, or undefined if it had already ended. */
    async cancel(runId: string, notice: string): Promise<{ state: 'queued' | 'executing'; leaseOwner: string | null } | undefined> {
      const r = (await run<{ state: 'queued' | 'executing'; lease_owner: string | null }>(pool, CANCEL, [runId, notice])).rows[0];
      return r && { state: r.state, leaseOwner: r.lease_owner };
    },
    async depth(bound: number): Promise<number> {
      return (await run<{ n: number }>(pool, DEPTH, [bound])).rows[0]!.n;
    },
    async requeueExpired(): Promise<number> {
      return (await run(pool, REQUEUE, [])).rowCount ?? 0;
    },
  };
}

export type Queue = ReturnType<typeof createQueue>;

/**
 * The claim loop of one process: claims when it has free slots and there may be work, never two claims at once.
 * It is woken by the NOTIFY of every accept that queues a run (`run:queued`, sent by the accepting statement), by a
 * run of a conversation ending (its next turn may be unblocked), and by a poll every `pollMs`: a lost notification
 * costs at most one poll interval, never a run. A slot freed by a run ending here claims only if something may have
 * been queued since the last claim: in a steady state with an empty queue, a run costs no claim statement.
 *
 * Why it cannot overfill the process: `free()` is read when a claim starts and the slots it asks for are counted as
 * taken (`claiming`) until its rows are running, so the fast path (admission.ts) cannot hand them out meanwhile. An
 * accept that finds them taken queues its run, which is claimed right after (here or elsewhere). A claim woken by a
 * NOTIFY, a poll or start-up asks for one run first, so an idle process holds back one slot from its fast path while
 * it looks, not all of them.
 */
export function createClaimer(o: {
  claim(n: number): Promise<RunRow[]>;
  /** Slots free now (not counting those a claim in flight asked for). */
  free(): number;
  /** Start these claimed runs here. */
  take(rows: RunRow[]): void;
  pollMs: number;
  log: Logger;
  /**
   * With a backlog, a freed slot waits until this many are free (or `batchMs` passed) and they are claimed in one
   * statement: a claim per run would double what a short run costs Postgres. Default 1 (no batching).
   */
  batch?: number;
  batchMs?: number;
}) {
  const batch = Math.max(1, o.batch ?? 1);
  let batchTimer: NodeJS.Timeout | null = null;
  let busy = false;
  let again = false;
  let stopped = true;
  /**
   * Something may have been queued since the last claim began (a NOTIFY, a poll, a claim that got all it asked
   * for). A slot freed while this is false costs no statement: the last claim found the queue empty and nothing
   * has been queued since.
   */
  let maybe = true;
  /** The next claim is a probe: it asks for one run (see `wake`). */
  let probe = false;
  let asked = 0;
  let timer: NodeJS.Timeout | null = null;
  let loop: Promise<void> = Promise.resolve();

  async function run(): Promise<void> {
    busy = true;
    try {
      do {
        again = false;
        while (!stopped) {
          const n = probe ? Math.min(1, o.free()) : o.free();
          probe = false;
          if (n <= 0) break;
          asked = n;
          maybe = false;
          let rows: RunRow[];
          try {
            rows = await o.claim(n);
          } catch (err) {
            maybe = true;
            o.log.warn({ err }, 'claiming queued runs failed; the next poll retries');
            break;
          } finally {
            asked = 0;
          }
          if (rows.length > 0) o.take(rows);
          // All it asked for: there may be more. Fewer: the queue has nothing more for us now.
          if (rows.length < n) break;
          maybe = true;
        }
      } while (again && !stopped);
    } finally {
      busy = false;
    }
  }

  function go() {
    if (batchTimer) {
      clearTimeout(batchTimer);
      batchTimer = null;
    }
    if (stopped) return;
    if (busy) {
      again = true;
      return;
    }
    loop = run();
  }

  const claimer = {
    /**
     * There may be work (a NOTIFY, a poll, an earlier turn ended, start-up): claim now, or once more after the claim
     * in flight. Such a claim is a probe: it asks for one run (a NOTIFY announces one; a poll or start-up finds one
     * only if something was missed), and for every free slot once one was there. So a claim in flight holds back
     * one slot from the fast path, not all of them.
     */
    wake() {
      maybe = true;
      if (!busy) probe = true;
      go();
    },
    /** A slot came free here: claim only if the queue may have something (and, with a backlog, a batch of slots). */
    slotFreed() {
      if (!maybe || stopped) return;
      if (busy || o.free() >= batch) go();
      else batchTimer ??= setTimeout(go, o.batchMs ?? 5);
    },
    /** Slots asked for by the claim in flight. */
    get claiming() {
      return asked;
    },
    start() {
      if (!stopped) return;
      stopped = false;
      timer = setInterval(() => claimer.wake(), o.pollMs);
      timer.unref();
      claimer.wake();
    },
    /** Claim no more; resolves once a claim in flight has handed over its runs. */
    async stop() {
      stopped = true;
      if (batchTimer) clearTimeout(batchTimer);
      batchTimer = null;
      if (timer) clearInterval(timer);
      timer = null;
      await loop;
    },
  };
  return claimer;
}
