import { and, eq, lte, sql } from 'drizzle-orm';
import type { Db, Tx } from '../db/pool.js';
import { idempotencyKeys } from '../db/schema.js';

/** An `Idempotency-Key` as a door read it: the key and the fingerprint of what it was sent with. */
export interface IdempotencyClaim {
  key: string;
  fingerprint: string;
}

export interface PriorRequest {
  fingerprint: string;
  runId: string;
  response: unknown;
}

/**
 * Take `key` for this request, as the first statement of the accepting transaction. Why two identical requests
 * racing debit once: the primary key (session, key) decides, not a read — the second insert blocks until the
 * first transaction ends, then conflicts (it committed: we get its record, and debit nothing) or goes ahead (it
 * rolled back: nothing was accepted, so this one is the first). A key past its expiry is taken over in place.
 * Returns null when the key is ours, or the earlier request's record.
 */
export async function claimKey(tx: Tx, sessionId: string, claim: IdempotencyClaim, runId: string, ttlHours: number): Promise<PriorRequest | null> {
  const expiresAt = sql`now() + make_interval(secs => ${Math.round(ttlHours * 3600)})`;
  const taken = await tx
    .insert(idempotencyKeys)
    .values({ sessionId, key: claim.key, fingerprint: claim.fingerprint, runId, expiresAt })
    .onConflictDoUpdate({
      target: [idempotencyKeys.sessionId, idempotencyKeys.key],
      set: { fingerprint: claim.fingerprint, runId, response: null, createdAt: sql`now()`, expiresAt },
      setWhere: lte(idempotencyKeys.expiresAt, sql`now()`),
    })
    .returning({ runId: idempotencyKeys.runId });
  if (taken.length > 0) return null;
  const [prior] = await tx
    .select({ fingerprint: idempotencyKeys.fingerprint, runId: idempotencyKeys.runId, response: idempotencyKeys.response })
    .from(idempotencyKeys)
    .where(and(eq(idempotencyKeys.sessionId, sessionId), eq(idempotencyKeys.key, claim.key)));
  return prior ?? null;
}

/** Remember the door's answer with the key (same transaction as the claim). */
export async function recordAnswer(tx: Tx, sessionId: string, key: string, response: unknown): Promise<void> {
  await tx.update(idempotencyKeys).set({ response }).where(and(eq(idempotencyKeys.sessionId, sessionId), eq(idempotencyKeys.key, key)));
}

/** Forget expired keys (a bounded batch per sweep). */
export async function sweepKeys(db: Db, limit = 1000): Promise<number> {
  const res = await db.execute(sql`
    delete from idempotency_keys where ctid in (
      select ctid from idempotency_keys where expires_at <= now() limit ${limit})`);
  return res.rowCount ?? 0;
}
