import { and, asc, desc, eq, gt, inArray, or, sql } from 'drizzle-orm';
import type { Db, DbOrTx } from '../db/pool.js';
import { runEvents, runs } from '../db/schema.js';
import type { AiMessage } from '../providers/ai/types.js';
import type { RunEvent } from './registry.js';

export type RunRow = typeof runs.$inferSelect;
export type NewRun = typeof runs.$inferInsert;

export const LIVE_STATES = ['queued', 'executing'] as const;

/** The earliest live run of the same conversation with an earlier turn than `runId` (what it must wait for). */
const blockers = (runId: string) => sql`
  select p.id from runs me join runs p on p.conversation_id = me.conversation_id and p.conversation_turn < me.conversation_turn
  where me.id = ${runId} and p.state in ('queued','executing') order by p.conversation_turn limit 1`;
export const isLive = (state: string) => state === 'queued' || state === 'executing';

/** The runs table and its event log: every SQL statement about runs lives here. */
export function createRunStore(db: Db) {
  return {
    /** Insert a run; with `leaseTtlS`, its lease runs from Postgres's clock (the one recovery compares with). */
    async insert(tx: DbOrTx, values: NewRun & { leaseTtlS?: number }): Promise<RunRow> {
      const { leaseTtlS, ...row } = values;
      const [inserted] = await tx
        .insert(runs)
        .values({ ...row, ...(leaseTtlS ? { leaseExpiresAt: sql`now() + make_interval(secs => ${leaseTtlS})` } : {}) })
        .returning();
      return inserted!;
    },

    async get(runId: string, tx: DbOrTx = db): Promise<RunRow | undefined> {
      const [row] = await tx.select().from(runs).where(eq(runs.id, runId));
      return row;
    },

    /**
     * queued → executing, once, by the process that holds the lease — and only once every earlier turn of its
     * conversation has ended: the turn order is checked in the same statement, so a claim in any process honours
     * it. It reserves the first `window` seqs the owner may publish (the seq ceiling, see the schema). A retry of a
     * claim whose commit we never heard of (the connection died on the way back) finds the run executing under our
     * lease and gets it again, rather than nothing. Returns the claimed row, `{ blockedBy }` (an earlier turn still
     * live: wait for it), or undefined (the run is no longer queued).
     */
    async claim(runId: string, owner: string, leaseTtlS: number, window: number): Promise<RunRow | { blockedBy: string } | undefined> {
      const [row] = await db
        .update(runs)
        .set({
          state: 'executing',
          startedAt: sql`coalesce(${runs.startedAt}, now())`,
          leaseOwner: owner,
          leaseExpiresAt: sql`now() + make_interval(secs => ${leaseTtlS})`,
          seqCeiling: sql`greatest(${runs.seqCeiling}, ${runs.lastSeq} + ${window})`,
        })
        .where(
          and(
            eq(runs.id, runId),
            or(and(eq(runs.state, 'queued'), sql`not exists (${blockers(runId)})`), and(eq(runs.state, 'executing'), eq(runs.leaseOwner, owner))),
          ),
        )
        .returning();
      if (row) return row;
      const [blocker] = await db.execute<{ id: string }>(sql`${blockers(runId)}`).then((r) => r.rows);
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
     * further without another round trip. Returns 'lost' when the lease was lost.
     */
    async appendTokens(runId: string, owner: string, events: RunEvent[], text: string, outputTokens: number, window: number): Promise<'ok' | 'lost' | 'cancel'> {
      if (events.length === 0) return 'ok';
      const last = events[events.length - 1]!.seq;
      const payload = JSON.stringify(events.map((e) => ({ seq: e.seq, type: e.type, data: e.data })));
      const res = await db.execute(sql`
        with upd as (
          update runs set result = result || ${text}, output_tokens = ${outputTokens}, last_seq = ${last},
            seq_ceiling = greatest(seq_ceiling, ${last}::int + ${window}::int)
          where id = ${runId} and state = 'executing' and lease_owner = ${owner} and last_seq < ${last}
          returning id, cancel_requested
        ), ins as (
          insert into run_events (run_id, seq, type, data)
          select upd.id, e.seq, e.type, e.data from upd, jsonb_to_recordset(${payload}::jsonb) as e(seq int, type text, data jsonb)
        )
        select cancel_requested,
          -- Tell every other process (streams of this run wake at once); the owner is the sender's origin.
          pg_notify('sluice_bus', json_build_object('o', ${owner}::text, 'e', 'run:progress', 'p', json_build_object('runId', id, 'lastSeq', ${last}::int))::text)
        from upd`);
      const row = res.rows[0] as { cancel_requested: boolean } | undefined;
      if (row) return row.cancel_requested ? 'cancel' : 'ok';
      // Nothing matched. A retry of a batch that did commit (the reply was lost) is fine; anything else means
      // another process finished the run.
      const [now] = await db.select({ state: runs.state, owner: runs.leaseOwner, lastSeq: runs.lastSeq }).from(runs).where(eq(runs.id, runId));
      return now && now.state === 'executing' && now.owner === owner && now.lastSeq >= last ? 'ok' : 'lost';
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

    async insertEvents(tx: DbOrTx, runId: string, events: RunEvent[]) {
      if (events.length === 0) return;
      await tx.insert(runEvents).values(events.map((e) => ({ runId, seq: e.seq, type: e.type, data: e.data })));
    },

    /** Events after `after`, in order, at most `limit`. */
    async eventsAfter(runId: string, after: number, limit = 10_000): Promise<RunEvent[]> {
      return db
        .select({ seq: runEvents.seq, type: runEvents.type, data: runEvents.data })
        .from(runEvents)
        .where(and(eq(runEvents.runId, runId), gt(runEvents.seq, after)))
        .orderBy(asc(runEvents.seq))
        .limit(limit);
    },

    /**
     * Renew the leases of the runs this process drives — exactly `held`, never "every run with our name on it":
     * a run we gave up on (its claim or finish could not be recorded) must see its lease run out, so recovery
     * takes it. Returns the ids among them that another process has asked to stop.
     */
    async renewLeases(owner: string, leaseTtlS: number, held: string[]): Promise<string[]> {
      if (held.length === 0) return [];
      const rows = await db
        .update(runs)
        .set({ leaseExpiresAt: sql`now() + make_interval(secs => ${leaseTtlS})` })
        .where(and(eq(runs.leaseOwner, owner), inArray(runs.state, [...LIVE_STATES]), sql`${runs.id} = any(${sql.param(held)}::uuid[])`))
        .returning({ id: runs.id, cancel: runs.cancelRequested });
      return rows.filter((r) => r.cancel).map((r) => r.id);
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
