import { randomUUID } from 'node:crypto';
import { and, desc, eq, inArray, sql } from 'drizzle-orm';
import type { Config } from '../config.js';
import type { Db, DbOrTx, Tx } from '../db/pool.js';
import { invoices, sessions } from '../db/schema.js';
import { AppError, conflict, notFound, unauthorized } from '../http/errors.js';
import { hashToken, newToken, tokenMatches } from '../http/auth.js';
import { isUuid } from '../http/validate.js';
import { creditSession, refundRun } from '../ledger/ledger.js';
import type { InvoiceRow, Settlement } from '../ledger/settlement.js';
import type { Models } from '../models/providers.js';
import { sessionPrincipal } from '../http/principal.js';
import type { Accept } from '../runs/accept.js';
import type { IdempotencyClaim } from '../runs/idempotency.js';
import type { Settler } from '../runs/finish.js';

export type SessionRow = typeof sessions.$inferSelect;

export interface SessionsDeps {
  config: Config;
  db: Db;
  settlement: Settlement;
  accept: Accept;
  models: Models;
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
     * Take a request: debit and accept it through the engine's one accepting transaction. Returns at once: the
     * work happens in the background. With an idempotency key, a repeat returns the first answer, never a second debit.
     */
    async request(session: SessionRow, input: { request: string; maxTokens?: number; model?: string; idempotency?: IdempotencyClaim | null }) {
      if (session.state !== 'active') {
        throw conflict('session_not_active', `the session is ${session.state}`, { state: session.state });
      }
      const model = deps.models.get(input.model ?? deps.models.default.entry.name);
      if (!model) {
        throw new AppError(400, 'model_not_found', `there is no model ${JSON.stringify(input.model)}; GET /v1/models lists them`, {
          models: deps.models.list().map((m) => m.name),
        });
      }
      const maxTokens = input.maxTokens ?? Math.min(config.DEFAULT_MAX_TOKENS, model.entry.maxOutputTokens);
      if (maxTokens > model.entry.maxOutputTokens) {
        throw new AppError(400, 'invalid_request', `max_tokens must be at most ${model.entry.maxOutputTokens} for ${model.entry.name}`);
      }
      const answer = (run: { id: string; state: string; debitedSats: number }, balance: number) => ({
        requestId: run.id,
        sessionId: session.id,
        state: run.state,
        debitedSats: run.debitedSats,
        balanceRemaining: balance,
      });
      return deps.accept(sessionPrincipal(session), {
        model: model.entry,
        request: input.request,
        turn: [{ role: 'user', content: input.request }],
        maxTokens,
        face: 'api',
        idempotency: input.idempotency,
        answer,
      });
    },
  };
}

export type SessionsService = ReturnType<typeof createSessionsService>;
