import { Router, type Request } from 'express';
import type { AppContext } from '../context.js';
import type { Principal } from '../http/principal.js';
import { AppError } from '../http/errors.js';
import { CURSOR } from '../http/sse.js';
import { deleteRun, stopRun } from '../runs/control.js';
import { turnOf } from '../runs/context.js';
import { findRun, type FoundRun } from '../runs/lookup.js';
import { finalOf } from '../runs/stream.js';
import { isLive } from '../runs/store.js';
import { authenticate } from './auth.js';
import { closedSignal } from './common.js';
import { invalidRequest, notFound } from './errors.js';
import { inputItemId, runIdOfResponse } from './ids.js';
import { messageAsItem, page } from './items.js';
import { currentResponse, outcomeOfEvent, responseObject } from './response-object.js';
import { createResponse } from './responses-create.js';
import { writeResponseStream } from './responses-stream.js';
import { listQuery, parseV1, retrieveQuery } from './schemas.js';

/** How long a cancel waits for the run to end before answering with it as it is (a remote stop takes a heartbeat). */
const CANCEL_WAIT_MS = 15_000;

/** The resume cursor: `Last-Event-ID` (a browser's EventSource) or `starting_after`; -1 for the whole stream. */
function cursorOf(req: Request, startingAfter: number | undefined): number {
  const header = req.get('last-event-id');
  if (header === undefined || header === '') return startingAfter ?? -1;
  if (!CURSOR.test(header.trim())) throw invalidRequest(`Invalid value for 'Last-Event-ID': ${JSON.stringify(header)} is not an event id.`, 'Last-Event-ID');
  return Number(header.trim());
}

/** `/v1/responses`: create (three modes), retrieve (or stream from any point), cancel, delete, input items. */
export function responseRoutes(ctx: AppContext): Router {
  const r = Router();

  /** The session's stored response by id; another session's, an ephemeral one or none at all: the same 404. */
  async function own(principal: Principal, id: string): Promise<FoundRun> {
    const runId = runIdOfResponse(id);
    const found = runId ? await findRun(ctx, runId) : undefined;
    if (!found || found.row.face !== 'responses' || found.row.sessionId !== principal.sessionId || found.row.ephemeral) {
      throw notFound(`Response with id '${id}' not found.`);
    }
    return found;
  }

  r.post('/responses', (req, res) => createResponse(ctx, req, res));

  r.get('/responses/:id', async (req, res) => {
    const q = parseV1(retrieveQuery, req.query);
    const stream = q.stream === 'true';
    const { principal } = await authenticate(ctx, req, stream);
    const found = await own(principal, req.params.id);
    if (!stream) {
      res.json(currentResponse(found.row, found.live));
      return;
    }
    const finished = !found.live && !isLive(found.row.state);
    await writeResponseStream(ctx, req, res, found.row, cursorOf(req, q.starting_after), { stopOnClose: false, finished });
  });

  /** Stop a live response like a run stop (charged for what it produced); a finished one is returned as it is. */
  r.post('/responses/:id/cancel', async (req, res) => {
    const { principal } = await authenticate(ctx, req);
    const found = await own(principal, req.params.id);
    if (isLive(found.live?.state ?? found.row.state) && (await stopRun(ctx, found.row.id))) {
      const final = await finalOf(ctx, found.row.id, AbortSignal.any([closedSignal(res), AbortSignal.timeout(CANCEL_WAIT_MS)]));
      if (final) {
        res.json(responseObject(found.row, { outcome: outcomeOfEvent(final, found.row) }));
        return;
      }
    }
    const now = (await findRun(ctx, found.row.id)) ?? found;
    res.json(currentResponse(now.row, now.live));
  });

  r.delete('/responses/:id', async (req, res) => {
    const { principal } = await authenticate(ctx, req);
    const found = await own(principal, req.params.id);
    if ((await deleteRun(ctx, found)) === 'active') throw new AppError(409, 'run_active', 'the response is still in progress');
    res.json({ id: req.params.id, object: 'response', deleted: true });
  });

  /** The response's own input (not the history it carried over), as items, cursor-paginated. */
  r.get('/responses/:id/input_items', async (req, res) => {
    const { principal } = await authenticate(ctx, req);
    const found = await own(principal, req.params.id);
    const q = parseV1(listQuery, req.query);
    const items = turnOf(found.row).map((m, i) => messageAsItem(inputItemId(found.row.id, i), m));
    res.json(page(items, q));
  });

  return r;
}
