import { and, asc, eq, gte, sql } from 'drizzle-orm';
import type { Db, DbOrTx, Tx } from '../db/pool.js';
import { ledgerEntries, sessions, type LedgerKind } from '../db/schema.js';

/**
 * Every sat moves through here, inside the caller's transaction, together with the state change that causes
 * it. A session's `balance_sats` moves in the same statement batch as its ledger row, so
 * `balance_sats = sum(ledger_entries.amount_sats)` always holds; unique keys make every movement happen once.
 */

/** Credit a session from a settled invoice (deposit or top-up). False if this payment was already credited. */
export async function creditSession(tx: Tx, e: { sessionId: string; kind: 'deposit' | 'topup'; amountSats: number; paymentHash: string }): Promise<boolean> {
  const inserted = await tx
    .insert(ledgerEntries)
    .values({ sessionId: e.sessionId, kind: e.kind, amountSats: e.amountSats, paymentHash: e.paymentHash })
    .onConflictDoNothing()
    .returning({ id: ledgerEntries.id });
  if (inserted.length === 0) return false;
  await tx.update(sessions).set({ balanceSats: sql`${sessions.balanceSats} + ${e.amountSats}` }).where(eq(sessions.id, e.sessionId));
  return true;
}

/**
 * Take `amountSats` from an active, unexpired session if it has them — one conditional UPDATE, so two
 * concurrent requests can never both spend the same sats — and record the debit against `runId`.
 * Returns the new balance, or null when the session cannot pay (the caller reads why).
 */
export async function debitSession(tx: Tx, e: { sessionId: string; runId: string; amountSats: number; expiryHours: number }): Promise<number | null> {
  const [row] = await tx
    .update(sessions)
    .set({
      balanceSats: sql`${sessions.balanceSats} - ${e.amountSats}`,
      lastUsedAt: sql`now()`,
      expiresAt: sql`now() + make_interval(secs => ${e.expiryHours * 3600})`,
    })
    .where(
      and(eq(sessions.id, e.sessionId), eq(sessions.state, 'active'), sql`${sessions.expiresAt} > now()`, gte(sessions.balanceSats, e.amountSats)),
    )
    .returning({ balance: sessions.balanceSats });
  if (!row) return null;
  await tx.insert(ledgerEntries).values({ sessionId: e.sessionId, runId: e.runId, kind: 'debit', amountSats: -e.amountSats });
  return row.balance;
}

/**
 * Give back the unused part of a run's debit, as the part of a run's finish statement that moves the money (see
 * runs/finish.ts: it reads `fin`, the finished run): the refund row and the balance in the statement that ends the
 * run. The unique (run_id, kind) key makes a second refund impossible.
 */
export const SESSION_REFUND_SQL = `
  session_refund as (
    insert into ledger_entries (session_id, run_id, kind, amount_sats)
    select fin.session_id, fin.id, 'refund', fin.refunded_sats from fin
    where fin.kind = 'session' and fin.session_id is not null and fin.refunded_sats > 0
    returning session_id, amount_sats),
  -- Summed per session, each session locked in id order first: a finish statement may settle several runs at once
  -- (finish.ts), of several sessions, and two of them locking the same sessions in opposite orders would deadlock.
  session_lock as (
    select s.id, r.amount_sats from sessions s
    join (select session_id, sum(amount_sats)::bigint as amount_sats from session_refund group by 1) r on r.session_id = s.id
    order by s.id for update of s),
  session_balance as (
    update sessions set balance_sats = sessions.balance_sats + l.amount_sats from session_lock l where sessions.id = l.id)`;

/** Money a job took in or paid out. Positive in, negative out; one row per kind per job. */
export async function recordJobMovement(tx: Tx, e: { jobId: string; kind: Extract<LedgerKind, `job_${string}`>; amountSats: number; paymentHash: string }): Promise<boolean> {
  const inserted = await tx
    .insert(ledgerEntries)
    .values({ jobId: e.jobId, kind: e.kind, amountSats: e.amountSats, paymentHash: e.paymentHash })
    .onConflictDoNothing()
    .returning({ id: ledgerEntries.id });
  return inserted.length > 0;
}

/** Money held for a payer whose payment could not be delivered (+), or paid back to them (−): no account. */
export async function recordUndeliverable(tx: Tx, e: { kind: 'undeliverable_payment' | 'undeliverable_refund_payout'; amountSats: number; paymentHash: string }): Promise<boolean> {
  const inserted = await tx
    .insert(ledgerEntries)
    .values({ kind: e.kind, amountSats: e.amountSats, paymentHash: e.paymentHash })
    .onConflictDoNothing()
    .returning({ id: ledgerEntries.id });
  return inserted.length > 0;
}

export async function sessionLedger(db: DbOrTx, sessionId: string) {
  return db
    .select({ kind: ledgerEntries.kind, amountSats: ledgerEntries.amountSats, runId: ledgerEntries.runId, paymentHash: ledgerEntries.paymentHash, createdAt: ledgerEntries.createdAt })
    .from(ledgerEntries)
    .where(eq(ledgerEntries.sessionId, sessionId))
    .orderBy(asc(ledgerEntries.id));
}

/**
 * A session's balance and ledger rows from one snapshot (a read-only repeatable-read transaction), so they
 * always agree even while its runs are settling.
 */
export async function sessionLedgerSnapshot(db: Db, sessionId: string) {
  return db.transaction(
    async (tx) => {
      const [s] = await tx.select({ balanceSats: sessions.balanceSats }).from(sessions).where(eq(sessions.id, sessionId));
      return { balanceSats: s?.balanceSats ?? 0, entries: await sessionLedger(tx, sessionId) };
    },
    { isolationLevel: 'repeatable read', accessMode: 'read only' },
  );
}
