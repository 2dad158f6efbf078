import { randomUUID } from 'node:crypto';
import { and, desc, eq, inArray, sql } from 'drizzle-orm';
import type { Config } from '../config.js';
import type { Db, DbOrTx, Tx } from '../db/pool.js';
import { invoices, sessions } from '../db/schema.js';
import { AppError, conflict, notFound, unauthorized } from '../http/errors.js';
import { hashToken, newToken, tokenMatches } from '../http/auth.js';
import { isUuid } from '../http/validate.js';
import { creditSession, debitSession, refundRun } from '../ledger/ledger.js';
import { estimateSats, priceSnapshot } from '../ledger/pricing.js';
import type { InvoiceRow, Settlement } from '../ledger/settlement.js';
import type { Executor } from '../runs/executor.js';
import type { Settler } from '../runs/finish.js';
import type { RunStore } from '../runs/store.js';

export type SessionRow = typeof sessions.$inferSelect;

export interface SessionsDeps {
  config: Config;
  db: Db;
  settlement: Settlement;
  executor: Executor;
  store: RunStore;
  instanceId: string;
}

/** A session's money after its run finished: the unused part of the debit goes back to the balance. */
export const settleSessionRun: Settler = async (tx, run) => {
  if (run.sessionId) await refundRun(tx, { sessionId: run.sessionId, runId: run.id, amountSats: run.refundedSats });
};

const expired = (s: SessionRow) => (s.state === 'active' || s.state === 'awaiting_payment') && s.expiresAt.getTime() <= Date.now();

export function createSessionsService(deps: SessionsDeps) {
  const { config, db } = deps;
  const expiryMs = () => config.SESSION_EXPIRY_HOURS * 3600_000;

  // Paying the deposit opens the session; a top-up adds to it (and revives an expired session: paying is use).
  // A session that is gone cannot take the money: the settlement then holds it for the payer.
  const credit = (kind: 'deposit' | 'topup') => async (tx: Tx, inv: InvoiceRow) => {
    if (!inv.sessionId || !(await activate(tx, inv.sessionId))) return null;
    await creditSession(tx, { sessionId: inv.sessionId, kind, amountSats: inv.amountSats, paymentHash: inv.paymentHash });
    return {};
  };
  deps.settlement.on('session_deposit', credit('deposit'));
  deps.settlement.on('session_topup', credit('topup'));
  // A deposit that expired unpaid: the session it would have opened expires with it.
  deps.settlement.onExpire('session_deposit', async (tx, inv) => {
    if (!inv.sessionId) return;
    await tx.update(sessions).set({ state: 'expired' }).where(and(eq(sessions.id, inv.sessionId), eq(sessions.state, 'awaiting_payment')));
  });
  async function activate(tx: Tx, sessionId: string): Promise<boolean> {
    const moved = await tx
      .update(sessions)
      .set({ state: 'active', lastUsedAt: sql`now()`, expiresAt: sql`now() + make_interval(secs => ${config.SESSION_EXPIRY_HOURS * 3600})` })
      .where(and(eq(sessions.id, sessionId), inArray(sessions.state, ['awaiting_payment', 'active', 'expired'])))
      .returning({ id: sessions.id });
    return moved.length > 0;
  }

  /** Ask the provider for an invoice: outside any transaction (it is a network call); the caller records it. */
  async function invoice(sessionId: string, purpose: 'session_deposit' | 'session_topup', amountSats: number) {
    const inv = await deps.settlement.issue({ amountSats, memo: `sluice ${purpose === 'session_deposit' ? 'deposit' : 'top-up'} ${sessionId}` });
    return { paymentHash: inv.paymentHash, purpose, sessionId, amountSats, paymentRequest: inv.paymentRequest, expiresAt: inv.expiresAt };
  }

  /**
   * The session a bearer token opens, if it is `sessionId`. No token, or one that opens nothing: 401.
   * A good token for another session, or an unknown id: 404 — the same answer, so ids cannot be probed.
   */
  async function authenticate(token: string | undefined, sessionId?: string): Promise<SessionRow> {
    if (!token) throw unauthorized();
    const [row] = await db.select().from(sessions).where(eq(sessions.tokenHash, hashToken(token)));
    if (!row || !tokenMatches(token, row.tokenHash)) throw unauthorized('the bearer token is not valid');
    if (sessionId !== undefined && (!isUuid(sessionId) || row.id !== sessionId)) throw notFound('session');
    return expired(row) ? await markExpired(row) : row;
  }

  async function markExpired(row: SessionRow): Promise<SessionRow> {
    const [updated] = await db
      .update(sessions)
      .set({ state: 'expired' })
      .where(and(eq(sessions.id, row.id), inArray(sessions.state, ['active', 'awaiting_payment']), sql`${sessions.expiresAt} <= now()`))
      .returning();
    return updated ?? row;
  }

  return {
    authenticate,

    async create(amountSats: number) {
      const token = newToken();
      const id = randomUUID();
      const deposit = await invoice(id, 'session_deposit', amountSats);
      return db.transaction(async (tx) => {
        const [row] = await tx
          .insert(sessions)
          .values({ id, tokenHash: hashToken(token), state: 'awaiting_payment', expiresAt: new Date(Date.now() + expiryMs()) })
          .returning();
        await deps.settlement.record(tx, deposit);
        return { session: row!, token, invoice: { ...deposit, state: 'pending' as const } };
      });
    },

    /** The session, after asking the provider about its unpaid invoices (a missed settlement only delays). */
    async get(token: string | undefined, sessionId: string): Promise<SessionRow> {
      let session = await authenticate(token, sessionId);
      const pending = await db
        .select({ hash: invoices.paymentHash })
        .from(invoices)
        .where(and(eq(invoices.sessionId, session.id), eq(invoices.state, 'pending')))
        // The newest few: a client that abandoned many top-ups must not make every GET ask about all of them.
        .orderBy(desc(invoices.createdAt))
        .limit(5);
      if (pending.length > 0) {
        for (const p of pending) await deps.settlement.reconcile(p.hash);
        session = await authenticate(token, sessionId);
      }
      return session;
    },

    async topup(session: SessionRow, amountSats: number) {
      const topup = await invoice(session.id, 'session_topup', amountSats);
      await deps.settlement.record(db, topup);
      return { ...topup, state: 'pending' as const };
    },

    /** The session's newest invoices (what a client may still be paying, and what became of the last ones). */
    async invoices(session: SessionRow, limit = 5) {
      return db.select().from(invoices).where(eq(invoices.sessionId, session.id)).orderBy(desc(invoices.createdAt)).limit(limit);
    },

    /**
     * Take a request: 503 once shutdown has begun, else debit and accept. Returns at once: the work happens
     * in the background.
     */
    async request(session: SessionRow, input: { request: string; maxTokens?: number }) {
      if (session.state !== 'active') {
        throw conflict('session_not_active', `the session is ${session.state}`, { state: session.state });
      }
      const release = deps.executor.admit();
      if (!release) throw new AppError(503, 'shutting_down', 'the server is shutting down; try again shortly');
      try {
        return await debitAndAccept(session, input);
      } finally {
        release();
      }
    },
  };

  /** Debit the estimate and insert the run in one transaction, then hand the run to the executor. */
  async function debitAndAccept(session: SessionRow, input: { request: string; maxTokens?: number }) {
    const maxTokens = input.maxTokens ?? config.DEFAULT_MAX_TOKENS;
    const prices = priceSnapshot(config);
    const required = estimateSats(prices, input.request, maxTokens);
    const runId = randomUUID();
    const out = await db.transaction(async (tx) => {
      const balance = await debitSession(tx, { sessionId: session.id, runId, amountSats: required, expiryHours: config.SESSION_EXPIRY_HOURS });
      if (balance === null) return null;
      const run = await deps.store.insert(tx, {
        id: runId,
        kind: 'session',
        sessionId: session.id,
        state: 'queued',
        request: input.request,
        maxTokens,
        pricing: prices,
        debitedSats: required,
        leaseOwner: deps.instanceId,
        leaseTtlS: config.LEASE_TTL_S,
      });
      return { run, balance };
    });
    if (!out) {
      // Why could it not pay? Read the session again (a concurrent request may have just spent the balance).
      const [now] = await db.select().from(sessions).where(eq(sessions.id, session.id));
      const current = now && expired(now) ? await markExpired(now) : now;
      if (!current || current.state !== 'active') {
        throw conflict('session_not_active', `the session is ${current?.state ?? 'gone'}`, { state: current?.state });
      }
      throw new AppError(402, 'insufficient_balance', `this request needs ${required} sats; the balance is ${current.balanceSats}`, {
        balanceSats: current.balanceSats,
        requiredSats: required,
      });
    }
    deps.executor.accept(out.run);
    return out;
  }
}

export type SessionsService = ReturnType<typeof createSessionsService>;
