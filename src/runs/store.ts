import { and, desc, eq, inArray, sql } from 'drizzle-orm';
import type pg from 'pg';
import type { Db, DbOrTx } from '../db/pool.js';
import { runs } from '../db/schema.js';
import { run, statement } from '../db/statements.js';
import type { AiMessage } from '../providers/ai/types.js';
import { BUS_CHANNEL } from '../bus-bridge.js';
import type { RunEvent } from './registry.js';

export type RunRow = typeof runs.$inferSelect;
export type NewRun = typeof runs.$inferInsert;

export const LIVE_STATES = ['queued', 'executing'] as const;

/** The earliest live run of the same conversation with an earlier turn than the run `$1` (what it must wait for). */
const BLOCKERS = `
  select p.id from runs me join runs p on p.conversation_id = me.conversation_id and p.conversation_turn < me.conversation_turn
  where me.id = $1 and p.state in ('queued','executing') order by p.conversation_turn limit 1`;
export const isLive = (state: string) => state === 'queued' || state === 'executing';

/** Every column of a run, in the order `rowOf` reads them. */
export const RUN_COLUMNS = `id, kind, session_id, job_id, state, request, model, instructions, turn, input, max_tokens, stop_reason,
  conversation_id, conversation_turn, waits_for, previous_run_id, face, face_data, ephemeral, pricing, debited_sats, charged_sats,
  refunded_sats, input_tokens, output_tokens, result, error, last_seq, seq_ceiling, cancel_requested, lease_owner, lease_expires_at,
  created_at, started_at, completed_at`;

/** A `runs` row as `pg` returns it (snake case) as the RunRow the rest of the code reads. */
export function rowOf(r: Record<string, any>): RunRow {
  return {
    id: r.id,
    kind: r.kind,
    sessionId: r.session_id,
    jobId: r.job_id,
    state: r.state,
    request: r.request,
    model: r.model,
    instructions: r.instructions,
    turn: r.turn,
    input: r.input,
    maxTokens: r.max_tokens,
    stopReason: r.stop_reason,
    conversationId: r.conversation_id,
    conversationTurn: r.conversation_turn,
    waitsFor: r.waits_for,
    previousRunId: r.previous_run_id,
    face: r.face,
    faceData: r.face_data,
    ephemeral: r.ephemeral,
    pricing: r.pricing,
    debitedSats: r.debited_sats,
    chargedSats: r.charged_sats,
    refundedSats: r.refunded_sats,
    inputTokens: r.input_tokens,
    outputTokens: r.output_tokens,
    result: r.result,
    error: r.error,
    lastSeq: r.last_seq,
    seqCeiling: r.seq_ceiling,
    cancelRequested: r.cancel_requested,
    leaseOwner: r.lease_owner,
    leaseExpiresAt: r.lease_expires_at,
    createdAt: r.created_at,
    startedAt: r.started_at,
    completedAt: r.completed_at,
  };
}

const GET = statement(`select ${RUN_COLUMNS} from runs where id = $1`);

/**
 * queued → executing by the process that holds the lease, once every earlier turn of its conversation has ended
 * (or again, for a retry of a claim whose reply was lost). Returns what the claim changed.
 */
const CLAIM = statement(`
  update runs set state = 'executing', started_at = coalesce(started_at, now()), lease_owner = $2,
    lease_expires_at = now() + make_interval(secs => $3), seq_ceiling = greatest(seq_ceiling, last_seq + $4::int)
  where id = $1 and ((state = 'queued' and not exists (${BLOCKERS})) or (state = 'executing' and lease_owner = $2))
  returning started_at, lease_expires_at, seq_ceiling, cancel_requested, last_seq`);
const BLOCKER = statement(BLOCKERS);

/**
 * A batch of token events: the run's text, counts and seq ceiling move in the same statement, only while the run is
 * ours and executing, and the same statement tells every other process (its payload carries the events when they
 * fit, so a follower need not read them back). #11's attempt fence goes into this WHERE: `and attempt = $n`.
 */
const APPEND = statement(`
  with upd as (
    update runs set result = result || $1, output_tokens = $2, last_seq = $3::int, seq_ceiling = greatest(seq_ceiling, $3::int + $4::int)
    where id = $5 and state = 'executing' and lease_owner = $6 and last_seq < $3::int
    returning id, cancel_requested
  ), ins as (
    insert into run_events (run_id, seq, type, data)
    select upd.id, e.seq, e.type, e.data from upd, jsonb_to_recordset($7::jsonb) as e(seq int, type text, data jsonb)
  )
  select cancel_requested, pg_notify('${BUS_CHANNEL}', $8) from upd`);
const APPEND_CHECK = statement(`select state, lease_owner, last_seq from runs where id = $1`);
const EVENTS_AFTER = statement(`select seq, type, data from run_events where run_id = $1 and seq > $2 order by seq limit $3`);
const RENEW = statement(`
  with u as (
    update runs set lease_expires_at = now() + make_interval(secs => $2)
    where lease_owner = $1 and state in ('queued','executing') and id = any($3::uuid[])
    returning id, cancel_requested
  ) select id from u where cancel_requested`);

/**
 * A NOTIFY payload must stay under 8000 bytes: events whose JSON is larger than this travel without them (the
 * follower then reads them from the log).
 */
export const NOTIFY_EVENTS_MAX_BYTES = 7000;

/** What the claim of a queued run changed (merged into the run's row by the executor). */
export interface Claimed {
  startedAt: Date;
  leaseExpiresAt: Date;
  seqCeiling: number;
  cancelRequested: boolean;
  lastSeq: number;
}

/** The runs table and its event log: every SQL statement about runs lives here. */
export function createRunStore(db: Db, pool: pg.Pool) {
  return {
    pool,
    /**
     * Insert a run; with `leaseTtlS`, its lease runs from Postgres's clock (the one recovery compares with). With
     * `claimWindow`, it is inserted claimed (executing under its lease, started now, that seq ceiling).
     */
    async insert(tx: DbOrTx, values: NewRun & { leaseTtlS?: number; claimWindow?: number }): Promise<RunRow> {
      const { leaseTtlS, claimWindow, ...row } = values;
      const [inserted] = await tx
        .insert(runs)
        .values({
          ...row,
          ...(leaseTtlS ? { leaseExpiresAt: sql`now() + make_interval(secs => ${leaseTtlS})` } : {}),
          ...(claimWindow ? { state: 'executing' as const, startedAt: sql`now()`, seqCeiling: claimWindow } : {}),
        })
        .returning();
      return inserted!;
    },

    async get(runId: string, tx: DbOrTx = db): Promise<RunRow | undefined> {
      if (tx !== db) {
        const [row] = await tx.select().from(runs).where(eq(runs.id, runId));
        return row;
      }
      const res = await run(pool, GET, [runId]);
      return res.rows[0] ? rowOf(res.rows[0]) : undefined;
    },

    /**
     * queued → executing, once, by the process that holds the lease — and only once every earlier turn of its
     * conversation has ended: the turn order is checked in the same statement, so a claim in any process honours
     * it. It reserves the first `window` seqs the owner may publish (the seq ceiling, see the schema). A retry of a
     * claim whose commit we never heard of (the connection died on the way back) finds the run executing under our
     * lease and gets it again, rather than nothing. Returns what the claim set, `{ blockedBy }` (an earlier turn
     * still live: wait for it), or undefined (the run is no longer queued). A run claimed at acceptance (accept.ts)
     * never comes here.
     */
    async claim(runId: string, owner: string, leaseTtlS: number, window: number): Promise<Claimed | { blockedBy: string } | undefined> {
      const res = await run(pool, CLAIM, [runId, owner, leaseTtlS, window]);
      const r = res.rows[0];
      if (r) return { startedAt: r.started_at, leaseExpiresAt: r.lease_expires_at, seqCeiling: r.seq_ceiling, cancelRequested: r.cancel_requested, lastSeq: r.last_seq };
      const blocker = (await run<{ id: string }>(pool, BLOCKER, [runId])).rows[0];
      return blocker ? { blockedBy: blocker.id } : undefined;
    },

    /** Write the input a waiting run resolved when it started (only while it is ours). */
    async setInput(runId: string, owner: string, input: AiMessage[]): Promise<void> {
      await db.update(runs).set({ input }).where(and(eq(runs.id, runId), eq(runs.leaseOwner, owner), eq(runs.state, 'executing')));
    },

    /** Which of these runs are still live (queued or executing). */
    async liveAmong(ids: string[]): Promise<Set<string>> {
      if (ids.length === 0) return new Set();
      const rows = await db.select({ id: runs.id }).from(runs).where(and(inArray(runs.id, ids), inArray(runs.state, [...LIVE_STATES])));
      return new Set(rows.map((r) => r.id));
    },

    /**
     * Append token events and the text they carry, in one statement: the insert only happens if the run is
     * still executing under our lease, so a run another process has already finished is never written to. The
     * same statement raises the seq ceiling to `window` past the last event written, so the owner may publish
     * further without another round trip, and NOTIFYs the other processes (with the events when they fit).
     * Returns 'lost' when the lease was lost.
     */
    async appendTokens(runId: string, owner: string, events: RunEvent[], text: string, outputTokens: number, window: number): Promise<'ok' | 'lost' | 'cancel'> {
      if (events.length === 0) return 'ok';
      const last = events[events.length - 1]!.seq;
      const payload = JSON.stringify(events.map((e) => ({ seq: e.seq, type: e.type, data: e.data })));
      const carried = Buffer.byteLength(payload) <= NOTIFY_EVENTS_MAX_BYTES ? `,"events":${payload}` : '';
      // The bus message (bus-bridge.ts): its origin, so this process ignores its own; the events when they fit.
      const notice = `{"o":${JSON.stringify(owner)},"e":"run:progress","p":{"runId":"${runId}","lastSeq":${last}${carried}}}`;
      const res = await run<{ cancel_requested: boolean }>(pool, APPEND, [text, outputTokens, last, window, runId, owner, payload, notice]);
      const row = res.rows[0];
      if (row) return row.cancel_requested ? 'cancel' : 'ok';
      // Nothing matched. A retry of a batch that did commit (the reply was lost) is fine; anything else means
      // another process finished the run.
      const now = (await run<{ state: string; lease_owner: string | null; last_seq: number }>(pool, APPEND_CHECK, [runId])).rows[0];
      return now && now.state === 'executing' && now.lease_owner === owner && now.last_seq >= last ? 'ok' : 'lost';
    },

    /** Ask whichever process holds a live run to stop it (it checks on its next flush). */
    async requestCancel(runId: string): Promise<boolean> {
      const res = await db
        .update(runs)
        .set({ cancelRequested: true })
        .where(and(eq(runs.id, runId), inArray(runs.state, [...LIVE_STATES])));
      return (res.rowCount ?? 0) > 0;
    },

    /**
     * The caller's runs, newest first, after a keyset cursor (created_at, id). `cursorTs` is the exact
     * Postgres timestamp text, so pagination never skips or repeats a run at microsecond ties.
     */
    async listForSession(sessionId: string, opts: { state?: string; limit: number; before?: { ts: string; id: string } }) {
      return db
        .select({ run: runs, cursorTs: sql<string>`to_char(${runs.createdAt} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')` })
        .from(runs)
        .where(
          and(
            eq(runs.sessionId, sessionId),
            eq(runs.kind, 'session'),
            opts.state ? eq(runs.state, opts.state as RunRow['state']) : undefined,
            opts.before ? sql`(${runs.createdAt}, ${runs.id}) < (${opts.before.ts}::timestamptz, ${opts.before.id}::uuid)` : undefined,
          ),
        )
        .orderBy(desc(runs.createdAt), desc(runs.id))
        .limit(opts.limit);
    },

    /** Events after `after`, in order, at most `limit`. */
    async eventsAfter(runId: string, after: number, limit = 10_000): Promise<RunEvent[]> {
      return (await run<RunEvent>(pool, EVENTS_AFTER, [runId, after, limit])).rows;
    },

    /**
     * Renew the leases of the runs this process drives — exactly `held`, never "every run with our name on it":
     * a run we gave up on (its claim or finish could not be recorded) must see its lease run out, so recovery
     * takes it. Returns the ids among them that another process has asked to stop.
     */
    async renewLeases(owner: string, leaseTtlS: number, held: string[]): Promise<string[]> {
      if (held.length === 0) return [];
      return (await run<{ id: string }>(pool, RENEW, [owner, leaseTtlS, held])).rows.map((r) => r.id);
    },

    /**
     * Live runs nobody drives: every one but those this process holds when `everyone` (at start-up with the
     * embedded Postgres we are the only process), else those whose lease has run out — ours included, since we
     * renew the lease of every run we hold (`held`) and of nothing else. A run just accepted has a fresh lease, so
     * the moment between its insert and the executor taking it is safe.
     */
    async orphans(everyone: boolean, held: string[], limit = 100): Promise<string[]> {
      const rows = await db
        .select({ id: runs.id })
        .from(runs)
        .where(
          and(
            inArray(runs.state, [...LIVE_STATES]),
            held.length ? sql`not (${runs.id} = any(${sql.param(held)}::uuid[]))` : undefined,
            everyone ? undefined : sql`(${runs.leaseExpiresAt} is null or ${runs.leaseExpiresAt} < now())`,
          ),
        )
        .limit(limit);
      return rows.map((r) => r.id);
    },

    /** Finished runs older than the retention window (their events go with them: ON DELETE CASCADE). */
    async deleteFinishedBefore(cutoff: Date, limit = 500): Promise<number> {
      // A job's run is what its unpaid refund is read from: it stays until the refund is paid.
      const res = await db.execute(sql`
        delete from runs where id in (
          select r.id from runs r
          where r.completed_at < ${cutoff.toISOString()}::timestamptz and r.state not in ('queued','executing')
            and not exists (select 1 from jobs j where j.run_id = r.id and r.refunded_sats > 0
                            and not exists (select 1 from payouts p where p.refund_of = j.work_payment_hash and p.state = 'paid'))
          limit ${limit})`);
      return res.rowCount ?? 0;
    },

    /** Ephemeral runs that ended but were not deleted at their end (their process died): a bounded batch. */
    async deleteEndedEphemeral(limit = 500): Promise<number> {
      const res = await db.execute(sql`
        delete from runs where id in (
          select id from runs where ephemeral and state not in ('queued','executing') limit ${limit})`);
      return res.rowCount ?? 0;
    },

    async delete(runId: string): Promise<boolean> {
      const res = await db.delete(runs).where(and(eq(runs.id, runId), sql`${runs.state} not in ('queued','executing')`));
      return (res.rowCount ?? 0) > 0;
    },
  };
}

export type RunStore = ReturnType<typeof createRunStore>;
