import { and, desc, eq, inArray, isNull, or, sql } from 'drizzle-orm';
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

export const isLive = (state: string) => state === 'queued' || state === 'executing';

/** Every column of a run, in the order `rowOf` reads them. */
export const RUN_COLUMNS = `id, kind, session_id, job_id, state, request, model, instructions, turn, input, max_tokens, stop_reason,
  conversation_id, conversation_turn, waits_for, previous_run_id, face, face_data, ephemeral, pricing, debited_sats, charged_sats,
  refunded_sats, input_tokens, output_tokens, result, error, last_seq, seq_ceiling, cancel_requested, lease_owner, lease_expires_at, attempt,
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
    attempt: r.attempt,
    // Not in RUN_COLUMNS: only a finisher that lost its reply reads it (finish.ts `winner`, through drizzle).
    finishToken: r.finish_token ?? null,
    createdAt: r.created_at,
    startedAt: r.started_at,
    completedAt: r.completed_at,
  };
}

const GET = statement(`select ${RUN_COLUMNS} from runs where id = $1`);

/**
 * A batch of token events: the run's text, counts and seq ceiling move in the same statement, only while the run is
 * ours and executing, and the same statement tells every other process (its payload carries the events when they
 * fit, so a follower need not read them back). Fenced by the attempt (`$9`): a process whose lease was taken over
 * writes nothing, even if the run is executing again under a later claim.
 */
const APPEND = statement(`
  with upd as (
    update runs set result = result || $1, output_tokens = $2, last_seq = $3::int, seq_ceiling = greatest(seq_ceiling, $3::int + $4::int)
    where id = $5 and state = 'executing' and lease_owner = $6 and attempt = $9::int and last_seq < $3::int
    returning id, cancel_requested
  ), ins as (
    insert into run_events (run_id, seq, type, data)
    select upd.id, e.seq, e.type, e.data from upd, jsonb_to_recordset($7::jsonb) as e(seq int, type text, data jsonb)
  )
  select cancel_requested, pg_notify('${BUS_CHANNEL}', $8) from upd`);
const APPEND_CHECK = statement(`select state, lease_owner, attempt, last_seq from runs where id = $1`);
const EVENTS_AFTER = statement(`select seq, type, data from run_events where run_id = $1 and seq > $2 order by seq limit $3`);
const RENEW = statement(`
  -- Locked in id order first (as a batch of finishes does, finish.ts): two statements that lock several runs each
  -- can then never wait on each other in a cycle.
  with lk as (select r.id from runs r where r.id = any ($3::uuid[]) and r.lease_owner = $1 order by r.id for update of r),
  u as (
    update runs set lease_expires_at = now() + make_interval(secs => $2)
    from unnest($3::uuid[], $4::int[]) as h(id, attempt)
    where runs.id = h.id and runs.id in (select id from lk) and runs.attempt = h.attempt and lease_owner = $1 and state = 'executing'
    returning runs.id, cancel_requested
  ) select id, cancel_requested from u`);

/**
 * A NOTIFY payload must stay under 8000 bytes: events whose JSON is larger than this travel without them (the
 * follower then reads them from the log).
 */
export const NOTIFY_EVENTS_MAX_BYTES = 7000;

/** The runs table and its event log: every SQL statement about runs lives here. */
export function createRunStore(db: Db, pool: pg.Pool) {
  return {
    pool,
    /**
     * Insert a run. With `claim`, it is inserted claimed by `claim.owner` (executing under its lease, started now,
     * attempt 1, that seq ceiling); without, it goes into the shared queue (queued, no owner: runs/queue.ts) and the
     * same transaction NOTIFYs the claimers (`notice`: the bus message, bus-bridge.ts), delivered at its commit.
     */
    async insert(tx: DbOrTx, values: Omit<NewRun, 'leaseOwner' | 'leaseExpiresAt' | 'attempt' | 'state'> & { claim?: { owner: string; leaseTtlS: number; window: number }; notice: string }): Promise<RunRow> {
      const { claim, notice, ...row } = values;
      const [inserted] = await tx
        .insert(runs)
        .values({
          ...row,
          ...(claim
            ? {
                state: 'executing' as const,
                leaseOwner: claim.owner,
                leaseExpiresAt: sql`now() + make_interval(secs => ${claim.leaseTtlS})`,
                startedAt: sql`now()`,
                seqCeiling: claim.window,
                attempt: 1,
              }
            : { state: 'queued' as const }),
        })
        .returning();
      if (!claim) await tx.execute(sql`select pg_notify(${BUS_CHANNEL}, ${notice})`);
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

    /** Write the input a waiting run resolved when it started (only while it is ours). */
    async setInput(runId: string, owner: string, attempt: number, input: AiMessage[]): Promise<void> {
      await db.update(runs).set({ input }).where(and(eq(runs.id, runId), eq(runs.leaseOwner, owner), eq(runs.attempt, attempt), eq(runs.state, 'executing')));
    },

    /**
     * Append token events and the text they carry, in one statement: the insert only happens if the run is
     * still executing under our lease, so a run another process has already finished is never written to. The
     * same statement raises the seq ceiling to `window` past the last event written, so the owner may publish
     * further without another round trip, and NOTIFYs the other processes (with the events when they fit).
     * Returns 'lost' when the lease was lost.
     */
    async appendTokens(runId: string, owner: string, attempt: number, events: RunEvent[], text: string, outputTokens: number, window: number): Promise<'ok' | 'lost' | 'cancel'> {
      if (events.length === 0) return 'ok';
      const last = events[events.length - 1]!.seq;
      const payload = JSON.stringify(events.map((e) => ({ seq: e.seq, type: e.type, data: e.data })));
      const carried = Buffer.byteLength(payload) <= NOTIFY_EVENTS_MAX_BYTES ? `,"events":${payload}` : '';
      // The bus message (bus-bridge.ts): its origin, so this process ignores its own; the events when they fit.
      const notice = `{"o":${JSON.stringify(owner)},"e":"run:progress","p":{"runId":"${runId}","lastSeq":${last}${carried}}}`;
      const res = await run<{ cancel_requested: boolean }>(pool, APPEND, [text, outputTokens, last, window, runId, owner, payload, notice, attempt]);
      const row = res.rows[0];
      if (row) return row.cancel_requested ? 'cancel' : 'ok';
      // Nothing matched. A retry of a batch that did commit (the reply was lost) is fine; anything else means
      // another process finished the run.
      const now = (await run<{ state: string; lease_owner: string | null; attempt: number; last_seq: number }>(pool, APPEND_CHECK, [runId])).rows[0];
      return now && now.state === 'executing' && now.lease_owner === owner && now.attempt === attempt && now.last_seq >= last ? 'ok' : 'lost';
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
     * takes it. Each renewal names its attempt (the fence). Returns the runs among them another process has asked to
     * stop, and those whose lease is no longer ours to renew (taken over, or ended meanwhile).
     */
    async renewLeases(owner: string, leaseTtlS: number, held: Array<{ id: string; attempt: number }>): Promise<{ stops: string[]; lost: string[] }> {
      if (held.length === 0) return { stops: [], lost: [] };
      const ids = held.map((h) => h.id);
      const attempts = held.map((h) => h.attempt);
      const rows = (await run<{ id: string; cancel_requested: boolean }>(pool, RENEW, [owner, leaseTtlS, ids, attempts])).rows;
      const renewed = new Set(rows.map((r) => r.id));
      return { stops: rows.filter((r) => r.cancel_requested).map((r) => r.id), lost: ids.filter((id) => !renewed.has(id)) };
    },

    /**
     * Runs nobody drives, to be finished: executing runs (started: a half-done model call cannot be resumed) whose
     * lease ran out — ours included, since we renew the lease of every run we hold (`held`) and of nothing else — or,
     * when `everyone` (at start-up with the embedded Postgres we are the only process), every executing run but
     * those we hold; and queued runs someone asked to stop whose stopper died before finishing them (nobody claims
     * those). A queued run is never an orphan otherwise: it waits in the queue for a claim.
     */
    async orphans(everyone: boolean, held: string[], limit = 100): Promise<Array<{ id: string; state: 'queued' | 'executing' }>> {
      const rows = await db
        .select({ id: runs.id, state: runs.state })
        .from(runs)
        .where(
          and(
            held.length ? sql`not (${runs.id} = any(${sql.param(held)}::uuid[]))` : undefined,
            or(
              and(eq(runs.state, 'queued'), eq(runs.cancelRequested, true), isNull(runs.leaseOwner)),
              and(
                eq(runs.state, 'executing'),
                everyone ? undefined : sql`(${runs.leaseExpiresAt} is null or ${runs.leaseExpiresAt} < now())`,
              ),
            ),
          ),
        )
        .limit(limit);
      return rows as Array<{ id: string; state: 'queued' | 'executing' }>;
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
