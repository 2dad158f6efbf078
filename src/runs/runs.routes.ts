import { Router, type Request } from 'express';
import type { AppContext } from '../context.js';
import { AppError, conflict, notFound } from '../http/errors.js';
import { bearerToken } from '../http/auth.js';
import { isUuid, parse } from '../http/validate.js';
import { sessionPrincipal, type Principal } from '../http/principal.js';
import { deleteRun, stopRun } from './control.js';
import { findRun, type FoundRun } from './lookup.js';
import { isLive } from './store.js';
import { streamRun } from './stream.js';
import { runsListQuery } from './runs.schemas.js';
import { runFields } from './view.js';



/**
 * The exact form `listForSession` writes (Postgres microseconds, UTC); anything else was not made by us. The year
 * is 1970–9999: no run is older, and Postgres has no year 0000 (JavaScript does, so `realDate` alone let it through).
 */
const CURSOR_TS = /^(19[7-9]\d|[2-9]\d{3})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{6}Z$/;

/** A calendar date JavaScript does not silently roll over (2020-02-30 would become March 1st). */
const realDate = (t: string) => {
  const d = new Date(t);
  return !Number.isNaN(d.getTime()) && d.toISOString().slice(0, 19) === t.slice(0, 19);
};

/** An opaque keyset cursor that names its session, so one session's cursor is refused by another. */
const encodeCursor = (sessionId: string, ts: string, id: string) => Buffer.from(JSON.stringify({ s: sessionId, t: ts, i: id })).toString('base64url');
function decodeCursor(cursor: string, sessionId: string): { ts: string; id: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    parsed = null;
  }
  const c = parsed as { s?: unknown; t?: unknown; i?: unknown } | null;
  const ok = c && c.s === sessionId && typeof c.t === 'string' && CURSOR_TS.test(c.t) && realDate(c.t) && isUuid(c.i);
  if (!ok) throw new AppError(400, 'invalid_cursor', 'cursor is not one this endpoint gave you');
  return { ts: c.t as string, id: c.i as string };
}

/**
 * The runs API: every piece of AI work a session paid for — list, get, stream with resume, stop, delete.
 * A run of another session answers exactly as no run at all (404). A job's run is reached through its job.
 */
export function runRoutes(ctx: AppContext): Router {
  const r = Router();

  // The request's budget count (and a stream's slot) ride on the authenticating statement.
  const auth = async (req: Request, allowQuery = false) => {
    const session = await ctx.sessions.authenticate(bearerToken(req, allowQuery), undefined, req);
    return { ...sessionPrincipal(session), sessionId: session.id };
  };

  async function ownRun(principal: Principal, runId: string | undefined): Promise<FoundRun> {
    const found = isUuid(runId) ? await findRun(ctx, runId) : undefined;
    if (!found || found.row.kind !== 'session' || found.row.sessionId !== principal.sessionId) throw notFound('run');
    return found;
  }

  const view = ({ row, live }: FoundRun) => {
    const self = `/api/runs/${row.id}`;
    return { runId: row.id, kind: row.kind, ...runFields(row, live), links: { self, stream: `${self}/stream`, stop: `${self}/stop` } };
  };

  r.get('/runs', async (req, res) => {
    const principal = await auth(req);
    const q = parse(runsListQuery, req.query, 'query');
    const sessionId = principal.sessionId;
    const before = q.cursor ? decodeCursor(q.cursor, sessionId) : undefined;
    const rows = await ctx.store.listForSession(sessionId, { state: q.state, limit: q.limit + 1, before });
    const page = rows.slice(0, q.limit);
    const last = page.at(-1);
    res.json({
      data: page.map(({ run }) => view({ row: run, live: ctx.registry.get(run.id) })),
      nextCursor: rows.length > q.limit && last ? encodeCursor(sessionId, last.cursorTs, last.run.id) : null,
    });
  });

  r.get('/runs/:runId', async (req, res) => {
    const principal = await auth(req);
    res.json(view(await ownRun(principal, req.params.runId)));
  });

  r.get('/runs/:runId/stream', async (req, res) => {
    const principal = await auth(req, true);
    const found = await ownRun(principal, req.params.runId);
    const state = found.live?.state ?? found.row.state;
    // The first frame says what the run is; it has no id, so it never moves a client's cursor.
    await streamRun(ctx, req, res, found, { event: 'run', data: { runId: found.row.id, state } });
  });

  /**
   * Stop a queued or executing run: here by aborting its provider call, or — when another process holds it —
   * by a flag that process reads on its next event flush. Stopping an ended run is harmless: 200 with the run.
   */
  r.post('/runs/:runId/stop', async (req, res) => {
    const principal = await auth(req);
    const found = await ownRun(principal, req.params.runId);
    const state = found.live?.state ?? found.row.state;
    if (!isLive(state)) {
      res.status(200).json(view(found));
      return;
    }
    if (!(await stopRun(ctx, found.row.id))) {
      // It ended between our read and the stop.
      res.status(200).json(view((await findRun(ctx, found.row.id)) ?? found));
      return;
    }
    res.status(202).json({ runId: found.row.id, state: 'cancelling' });
  });

  /** Forget a finished run's input, output and events. Its ledger rows stay: money history is never deleted. */
  r.delete('/runs/:runId', async (req, res) => {
    const principal = await auth(req);
    const found = await ownRun(principal, req.params.runId);
    if ((await deleteRun(ctx, found)) === 'active') throw conflict('run_active', 'the run is still active; stop it first');
    res.status(204).end();
  });

  return r;
}
