import { Router } from 'express';
import type { AppContext } from '../context.js';
import { conflict, notFound } from '../http/errors.js';
import { bearerToken } from '../http/auth.js';
import { sessionPrincipal, type Principal } from '../http/principal.js';
import { idempotencyOf } from '../http/idempotency.js';
import { isUuid, parse } from '../http/validate.js';
import { sessionLedgerSnapshot } from '../ledger/ledger.js';
import { invoiceView } from '../ledger/settlement.js';
import { streamRun } from '../runs/stream.js';
import { findRun, type FoundRun } from '../runs/lookup.js';
import { runFields } from '../runs/view.js';
import { createSessionBody, requestBody, topupBody } from './sessions.schemas.js';
import type { SessionRow } from './sessions.service.js';

export function sessionView(s: SessionRow) {
  return { sessionId: s.id, state: s.state, balanceSats: s.balanceSats, expiresAt: s.expiresAt.toISOString(), createdAt: s.createdAt.toISOString() };
}

export function sessionRoutes(ctx: AppContext): Router {
  const r = Router();
  const { sessions } = ctx;
  // A UUID in any case is one session: every route below sees its id as Postgres writes it, so the in-memory keys
  // (the per-session cap of the fast path, the accept batch's one-request-per-session) cannot be split by case.
  r.param('id', (req, _res, next, id: string) => {
    req.params.id = id.toLowerCase();
    next();
  });
  // Built once: a schema is a tree of objects, not something to rebuild per request.
  const createSchema = createSessionBody(ctx.config);
  const topupSchema = topupBody(ctx.config);
  const requestSchema = requestBody(ctx.config);
  /** A session that may spend: paid for and not expired (an expired one was just marked so by authenticate). */
  const active = (s: SessionRow) => {
    if (s.state !== 'active') throw conflict('session_not_active', `the session is ${s.state}`, { state: s.state });
    return s;
  };

  /** A request of this session, or 404 (also for another session's run: ids are not probeable). */
  async function ownRun(session: SessionRow, requestId: string | undefined): Promise<FoundRun> {
    const found = isUuid(requestId) ? await findRun(ctx, requestId) : undefined;
    if (!found || found.row.kind !== 'session' || found.row.sessionId !== session.id) throw notFound('request');
    return found;
  }

  const requestView = ({ row, live }: FoundRun) => ({ requestId: row.id, sessionId: row.sessionId, ...runFields(row, live) });

  r.post('/sessions', async (req, res) => {
    const body = parse(createSchema, req.body);
    const { session, token, invoice } = await sessions.create(body.amount_sats);
    res.status(201).json({ sessionId: session.id, sessionToken: token, state: session.state, invoice: invoiceView(invoice) });
  });

  r.get('/sessions/:id', async (req, res) => {
    const session = await sessions.get(bearerToken(req), req.params.id, req);
    res.json({ ...sessionView(session), invoices: (await sessions.invoices(session)).map((i) => ({ purpose: i.purpose, ...invoiceView(i) })) });
  });

  r.post('/sessions/:id/topup', async (req, res) => {
    const session = await sessions.authenticate(bearerToken(req), req.params.id, req);
    const body = parse(topupSchema, req.body);
    res.status(201).json({ invoice: invoiceView(await sessions.topup(session, body.amount_sats)) });
  });

  r.get('/sessions/:id/ledger', async (req, res) => {
    const session = await sessions.authenticate(bearerToken(req), req.params.id, req);
    const { balanceSats, entries } = await sessionLedgerSnapshot(ctx.db, session.id);
    res.json({
      sessionId: session.id,
      balanceSats,
      entries: entries.map((e) => ({ ...e, createdAt: e.createdAt.toISOString() })),
    });
  });

  /**
   * The hot path: the session is authenticated by the statement that accepts the request (with its budget count),
   * so a 202 costs one round trip. Every refusal still comes in the order it always did: 401/404 for the token,
   * 400 for the body, 409 for a session that cannot spend, 400 for the model, then 402.
   */
  r.post('/sessions/:id/request', async (req, res) => {
    const token = bearerToken(req);
    const sessionId = req.params.id;
    const authenticateNow = () => sessions.authenticate(token, sessionId, req);
    let body: ReturnType<typeof requestSchema.parse>;
    let idempotency: ReturnType<typeof idempotencyOf>;
    try {
      body = parse(requestSchema, req.body);
      idempotency = idempotencyOf(req, `POST /api/sessions/${sessionId}/request`);
    } catch (err) {
      await authenticateNow();
      throw err;
    }
    // An idempotency key (or a path that names nothing) takes the long way: authenticate, then the transaction.
    const principal: Principal =
      token && isUuid(sessionId) && !idempotency
        ? sessions.principalOf(req, res, token, sessionId, async () => active(await authenticateNow()))
        : sessionPrincipal(active(await authenticateNow()));
    const accepted = await sessions.request(principal, { request: body.request, maxTokens: body.max_tokens, model: body.model, idempotency });
    const runId = accepted.replayed ? accepted.runId : accepted.run.id;
    // A repeat of an accepted request gets the first answer again (and no second debit).
    if (accepted.replayed) res.setHeader('Idempotent-Replayed', 'true');
    res.status(202).location(`/api/sessions/${sessionId}/requests/${runId}`).json(accepted.answer);
  });

  r.get('/sessions/:id/requests/:requestId', async (req, res) => {
    const session = await sessions.authenticate(bearerToken(req), req.params.id, req);
    res.json(requestView(await ownRun(session, req.params.requestId)));
  });

  r.get('/sessions/:id/requests/:requestId/stream', async (req, res) => {
    const session = await sessions.authenticate(bearerToken(req, true), req.params.id, req);
    await streamRun(ctx, req, res, await ownRun(session, req.params.requestId));
  });

  return r;
}
