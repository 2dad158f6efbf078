import { randomUUID } from 'node:crypto';
import { and, desc, eq, inArray, sql } from 'drizzle-orm';
import type { Request, Response } from 'express';
import type pg from 'pg';
import type { Config } from '../config.js';
import { run, variants } from '../db/statements.js';
import type { Limits } from '../http/limits.js';
import { countSql, countValues } from '../limits/session-budget.js';
import { liveSlotsSql, slotSql } from '../limits/stream-slots.js';
import type { Db, DbOrTx, Tx } from '../db/pool.js';
import { invoices, sessions } from '../db/schema.js';
import { AppError, conflict, notFound, unauthorized } from '../http/errors.js';
import { hashToken, newToken, tokenHashOf, tokenMatches } from '../http/auth.js';
import { isUuid } from '../http/validate.js';
import { creditSession, SESSION_REFUND_SQL } from '../ledger/ledger.js';
import type { InvoiceRow, Settlement } from '../ledger/settlement.js';
import type { Models } from '../models/providers.js';
import type { Principal } from '../http/principal.js';
import type { Accept } from '../runs/accept.js';
import type { IdempotencyClaim } from '../runs/idempotency.js';
import type { Settler } from '../runs/finish.js';

export type SessionRow = typeof sessions.$inferSelect;

export interface SessionsDeps {
  config: Config;
  db: Db;
  pool: pg.Pool;
  /** The request's budget count and stream slot are taken into the authenticating statement (http/limits.ts). */
  limits?: Limits;
  settlement: Settlement;
  accept: Accept;
  models: Models;
}

/** A session's money after its run finished: the unused part of the debit goes back to the balance. */
export const settleSessionRun: Settler = { sql: SESSION_REFUND_SQL };

const SESSION_COLUMNS = 'id, token_hash, state, balance_sats, created_at, last_used_at, expires_at';

/**
 * The statement that authenticates a request: the session of a token hash (`$1`), and in the same statement the
 * request's count against its session's budget (`c`) and its stream slot (`s`), when it has them pending. One
 * round trip for what used to be up to six (the count, the slot's transaction of four, the session).
 */
const AUTH = variants((k: '' | 'c' | 's' | 'cs') => {
  let p = 2;
  const ctes: string[] = [];
  const cols: string[] = [];
  if (k.includes('c')) {
    ctes.push(`rl as (${countSql(p)})`);
    cols.push('(select points from rl) as rl_points', '(select expire from rl) as rl_expire');
    p += 3;
  }
  if (k.includes('s')) {
    ctes.push(`slot as (${slotSql(p)})`);
    cols.push('(select id from slot) as slot_id', `${liveSlotsSql(p)} as slots_live`);
  }
  if (ctes.length === 0) return `select ${SESSION_COLUMNS} from sessions where token_hash = $1`;
  return `with ${ctes.join(', ')}
    select s.*, ${cols.join(', ')} from (select 1) as one left join (select ${SESSION_COLUMNS} from sessions where token_hash = $1) s on true`;
});

export const sessionOf = (r: Record<string, any>): SessionRow => ({
  id: r.id,
  tokenHash: r.token_hash,
  state: r.state,
  balanceSats: r.balance_sats,
  createdAt: r.created_at,
  lastUsedAt: r.last_used_at,
  expiresAt: r.expires_at,
});

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
   * With `req`, the request's pending budget count and stream slot are taken into the same statement: a spent
   * budget is a 429 first, then a full set of stream slots, then the token's answer.
   */
  async function authenticate(token: string | undefined, sessionId?: string, req?: Request): Promise<SessionRow> {
    if (!token) throw unauthorized();
    const count = deps.limits?.takeCount(req);
    const slot = deps.limits?.takeSlot(req);
    const tokenHash = tokenHashOf(req, token);
    const values: unknown[] = [tokenHash];
    if (count) values.push(...countValues(count));
    const slotId = randomUUID();
    if (slot) values.push(...deps.limits!.slotValues(slot, slotId));
    const res = await run(deps.pool, AUTH(`${count ? 'c' : ''}${slot ? 's' : ''}` as '' | 'c' | 's' | 'cs'), values);
    const r = res.rows[0] ?? {};
    if (count && req?.res) {
      try {
        deps.limits!.settleCount(req.res, count, { points: r.rl_points, expire: Number(r.rl_expire) });
      } catch (err) {
        deps.limits!.dropSlot(r.slot_id ?? null);
        throw err;
      }
    }
    if (slot && req?.res) await deps.limits!.settleSlot(req, req.res, slot, r.slot_id ?? null, r.slots_live);
    const row = r.id ? sessionOf(r) : undefined;
    if (!row || !tokenMatches(token, row.tokenHash, tokenHash)) throw unauthorized('the bearer token is not valid');
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
    async get(token: string | undefined, sessionId: string, req?: Request): Promise<SessionRow> {
      let session = await authenticate(token, sessionId, req);
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
     * The principal of a request whose session is authenticated by the statement that accepts its work (one round
     * trip): the token's hash, the request's pending budget count, and `authenticate`, the door's own answer for
     * when the engine refuses (it resolves with the session when there is nothing to refuse). A count the accept
     * never got to make goes back to the request, so that answer counts it.
     */
    principalOf(req: Request, res: Response, token: string, sessionId: string | null, authenticateNow: () => Promise<SessionRow>): Principal {
      const count = deps.limits?.takeCount(req);
      let unspent = count;
      return {
        kind: 'session',
        sessionId,
        credential: {
          tokenHash: tokenHashOf(req, token),
          verify: async () => {
            if (unspent) deps.limits!.restoreCount(req, unspent);
            unspent = undefined;
            return (await authenticateNow()).id;
          },
        },
        count: count && {
          ...count,
          settle(counted) {
            unspent = undefined;
            deps.limits!.settleCount(res, count, counted);
          },
        },
      };
    },

    /**
     * Take a request: debit and accept it through the engine (one statement, or its transaction with an
     * idempotency key). Returns at once: the work happens in the background. With an idempotency key, a repeat
     * returns the first answer, never a second debit. A refusal of what was asked (an unknown model) comes after
     * the session's own answer, as when the session was authenticated first.
     */
    async request(principal: Principal, input: { request: string; maxTokens?: number; model?: string; idempotency?: IdempotencyClaim | null }) {
      const refuse = async (err: AppError): Promise<never> => {
        await principal.credential?.verify();
        throw err;
      };
      const model = deps.models.get(input.model ?? deps.models.default.entry.name);
      if (!model) {
        return refuse(
          new AppError(400, 'model_not_found', `there is no model ${JSON.stringify(input.model)}; GET /v1/models lists them`, {
            models: deps.models.list().map((m) => m.name),
          }),
        );
      }
      const maxTokens = input.maxTokens ?? Math.min(config.DEFAULT_MAX_TOKENS, model.entry.maxOutputTokens);
      if (maxTokens > model.entry.maxOutputTokens) {
        return refuse(new AppError(400, 'invalid_request', `max_tokens must be at most ${model.entry.maxOutputTokens} for ${model.entry.name}`));
      }
      const answer = (run: { id: string; sessionId: string | null; state: string; debitedSats: number }, balance: number) => ({
        requestId: run.id,
        sessionId: run.sessionId,
        state: run.state,
        debitedSats: run.debitedSats,
        balanceRemaining: balance,
      });
      return deps.accept(principal, {
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
