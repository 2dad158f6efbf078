import type { Request, Response } from 'express';
import type { AppContext } from '../context.js';
import { AppError } from '../http/errors.js';
import { idempotencyOf } from '../http/idempotency.js';
import { findRun } from '../runs/lookup.js';
import { finalOf } from '../runs/stream.js';
import { isLive } from '../runs/store.js';
import { stopRun } from '../runs/control.js';
import { authenticate } from './auth.js';
import { bearerToken } from '../http/auth.js';
import type { Principal } from '../http/principal.js';
import { closedSignal, maxTokensFor, requestLine, resolveModel } from './common.js';
import { invalidRequest, notFound } from './errors.js';
import { conversationId, responseId, runIdOfResponse, uuidOfConversation } from './ids.js';
import { currentResponse, outcomeOfEvent, responseObject, type ResponseFaceData } from './response-object.js';
import { writeResponseStream } from './responses-stream.js';
import { parseV1, responseCreateBody, turnOf, type ResponseCreateBody } from './schemas.js';

/** The engine's refusals about what a request continues, in the terms of this face. */
function translate(err: unknown, body: ResponseCreateBody, conv: string | null): unknown {
  if (!(err instanceof AppError)) return err;
  const prev = body.previous_response_id;
  switch (err.code) {
    case 'previous_run_not_found':
      return invalidRequest(`Previous response with id '${prev}' not found.`, 'previous_response_id', 'previous_response_not_found');
    case 'previous_run_not_completed': {
      const { state } = err.details as { state: string };
      const status = { complete: 'incomplete', executing: 'in_progress', interrupted: 'failed' }[state] ?? state;
      return invalidRequest(`Previous response with id '${prev}' is ${status}; only a completed response can be continued.`, 'previous_response_id', 'previous_response_not_completed');
    }
    case 'conversation_not_found':
      return notFound(`Conversation with id '${conv}' not found.`, 'conversation');
  }
  return err;
}

/** Everything a create asks, checked: the request's own 400s and 404s, before anything is accepted. */
function readRequest(ctx: AppContext, req: Request) {
  const body = parseV1(responseCreateBody, req.body);
  const model = resolveModel(ctx, body.model);
  const store = body.store ?? true;
  const background = body.background ?? false;
  const idempotency = idempotencyOf(req, 'POST /v1/responses');
  if (!store && background) throw invalidRequest("Invalid value for 'store': a background response must be stored (store cannot be false).", 'store');
  if (!store && idempotency) throw invalidRequest("Invalid value for 'store': an Idempotency-Key needs a stored response (store cannot be false).", 'store');
  const maxTokens = maxTokensFor(ctx, model, body.max_output_tokens, 'max_output_tokens');

  let previousRunId: string | null = null;
  if (body.previous_response_id != null) {
    previousRunId = runIdOfResponse(body.previous_response_id) ?? null;
    if (!previousRunId) throw invalidRequest(`Previous response with id '${body.previous_response_id}' not found.`, 'previous_response_id', 'previous_response_not_found');
  }
  const conv = body.conversation == null ? null : typeof body.conversation === 'string' ? body.conversation : body.conversation.id;
  const convUuid = conv === null ? null : uuidOfConversation(conv);
  if (conv !== null && !convUuid) throw notFound(`Conversation with id '${conv}' not found.`, 'conversation');
  if (previousRunId && convUuid) throw invalidRequest("'previous_response_id' and 'conversation' cannot be used together.", 'conversation');
  const strategy = body.multitask_strategy ?? 'reject';

  const turn = turnOf(body.input);
  const faceData: ResponseFaceData = {
    background,
    store,
    metadata: body.metadata ?? {},
    conversation: convUuid ? conversationId(convUuid) : null,
    ...(convUuid ? { multitaskStrategy: strategy } : {}),
  };
  const accept = {
    model: model.entry,
    request: requestLine(turn),
    turn,
    instructions: body.instructions ?? null,
    maxTokens,
    previousRunId,
    conversation: convUuid ? { id: convUuid, strategy } : null,
    face: 'responses' as const,
    ephemeral: !store,
    idempotency,
  };
  // A stream holds a stream slot, which its authentication takes: it is not accepted in one statement.
  const plain = !idempotency && !previousRunId && !convUuid && !body.stream;
  return { body, conv, store, background, faceData, accept, plain };
}

/**
 * `POST /v1/responses` in its three modes over one accepted run: `background` answers at once (`queued`),
 * `stream` writes the run's Response events, and neither waits on the run (never on the provider) and answers
 * with the finished object. With `store: false` the response is ephemeral: a disconnect cancels it and it is
 * deleted when it ends. A repeated `Idempotency-Key` with the same body gets the same run in the same mode.
 */
export async function createResponse(ctx: AppContext, req: Request, res: Response): Promise<void> {
  const arrived = process.hrtime.bigint();
  const authenticateNow = () => authenticate(ctx, req);
  let spec: Awaited<ReturnType<typeof readRequest>>;
  try {
    spec = readRequest(ctx, req);
  } catch (err) {
    // The key's answer comes first, as when it was checked first.
    await authenticateNow();
    throw err;
  }
  const { body, conv, store, background, faceData, plain } = spec;
  // A plain request is authenticated by the statement that accepts it; the rest authenticate first.
  const token = bearerToken(req);
  const principal: Principal =
    plain && token ? ctx.sessions.principalOf(req, res, token, null, async () => (await authenticateNow()).session) : (await authenticateNow()).principal;
  const accepted = await ctx
    .accept(principal, { ...spec.accept, faceData: { ...faceData } })
    .catch((err) => {
      throw translate(err, body, conv);
    });

  if (!accepted.replayed) ctx.metrics.acceptObserved('v1_responses', arrived);
  let row = accepted.replayed ? undefined : accepted.run;
  let finished = false;
  if (accepted.replayed) {
    // The first request's run, wherever it is now (the first request may still be streaming it).
    res.setHeader('Idempotent-Replayed', 'true');
    const found = await findRun(ctx, accepted.runId);
    if (!found) throw notFound(`Response with id '${responseId(accepted.runId)}' not found.`);
    row = found.row;
    finished = !found.live && !isLive(found.row.state);
  }
  const run = row!;
  if (body.stream) {
    await writeResponseStream(ctx, req, res, run, -1, { stopOnClose: !store, finished });
    return;
  }
  if (background) {
    // A fresh acceptance answers `queued` (it has produced nothing yet), whatever its run is doing by now.
    res.json(currentResponse(run, accepted.replayed ? ctx.registry.get(run.id) : undefined));
    return;
  }
  const gone = closedSignal(res);
  const final = await finalOf(ctx, run.id, gone);
  if (!final) {
    // The client left while waiting: a stored response goes on (retrievable); an ephemeral one is cancelled.
    if (!store) await stopRun(ctx, run.id);
    return;
  }
  res.json(responseObject(run, { outcome: outcomeOfEvent(final, run) }));
}
