import { Router, type Request, type Response } from 'express';
import type { AppContext } from '../context.js';
import { idempotencyOf } from '../http/idempotency.js';
import { lastUserText } from '../providers/ai/types.js';
import { stopRun } from '../runs/control.js';
import { findRun } from '../runs/lookup.js';
import { isTerminalEvent } from '../runs/registry.js';
import { feedFor, finalOf, openStream } from '../runs/stream.js';
import type { RunRow } from '../runs/store.js';
import { authenticate } from './auth.js';
import { bearerToken } from '../http/auth.js';
import type { Principal } from '../http/principal.js';
import { closedSignal, maxTokensFor, resolveModel } from './common.js';
import { chatChunk, chatCompletion, chatUsage, finishReason, sluiceMoney } from './chat-map.js';
import { OpenAiError, invalidRequest, notFound } from './errors.js';
import { outcomeOfEvent, type Outcome } from './response-object.js';
import { chatCreateBody, parseV1, toAiMessage } from './schemas.js';

/** A run that did not complete, as the error a chat client gets (the SDK raises it; the message says what was charged). */
function chatError(o: Outcome): OpenAiError {
  if (o.state === 'interrupted') return new OpenAiError(503, 'The request was interrupted (server restart or shutdown) and refunded in full; retry it.', 'server_error', 'interrupted');
  const money = o.chargedSats > 0 ? `charged ${o.chargedSats} sats for the text produced, refunded ${o.refundedSats}` : 'refunded in full';
  return new OpenAiError(502, `The model failed: ${o.error?.message ?? 'unknown error'} (${money}).`, 'server_error', o.error?.code ?? 'provider_error');
}

/** What a completion asks, checked (its 400s and 404s) before anything is accepted. */
function readChat(ctx: AppContext, req: Request) {
  const body = parseV1(chatCreateBody, req.body);
  const model = resolveModel(ctx, body.model);
  if (body.max_tokens != null && body.max_completion_tokens != null) throw invalidRequest("Use 'max_completion_tokens' or 'max_tokens', not both.", 'max_tokens');
  const maxTokens = maxTokensFor(ctx, model, body.max_completion_tokens ?? body.max_tokens, body.max_tokens != null ? 'max_tokens' : 'max_completion_tokens');
  const turn = body.messages.map(toAiMessage);
  return { body, model, maxTokens, turn, idempotency: idempotencyOf(req, 'POST /v1/chat/completions') };
}

/**
 * `POST /v1/chat/completions`: the face every OpenAI-compatible tool speaks, over the same runs. The messages
 * are the provider's whole context. Non-stream waits on the run; stream writes `chat.completion.chunk`s with
 * `finish_reason` on the last content chunk (one token is held back to know which is last), a usage chunk when
 * asked, then `[DONE]`. The protocol has no resume, so a client that disconnects stops its run (charged for
 * what was produced) — except a replay of an idempotent request, which only detaches.
 */
export function chatRoutes(ctx: AppContext): Router {
  const r = Router();

  r.post('/chat/completions', async (req, res) => {
    const arrived = process.hrtime.bigint();
    const authenticateNow = () => authenticate(ctx, req);
    let ask: ReturnType<typeof readChat>;
    try {
      ask = readChat(ctx, req);
    } catch (err) {
      // The key's answer comes first, as when it was checked first.
      await authenticateNow();
      throw err;
    }
    const { body, model, maxTokens, turn, idempotency } = ask;
    // A plain request is authenticated by the statement that accepts it; a stream (it holds a slot) or an
    // idempotent one authenticates first.
    const token = bearerToken(req);
    const principal: Principal =
      token && !idempotency && !body.stream
        ? ctx.sessions.principalOf(req, res, token, null, async () => (await authenticateNow()).session)
        : (await authenticateNow()).principal;
    const accepted = await ctx.accept(principal, {
      model: model.entry,
      request: lastUserText(turn) || turn.at(-1)!.content,
      turn,
      maxTokens,
      face: 'chat',
      idempotency,
    });
    let row: RunRow;
    if (!accepted.replayed) ctx.metrics.acceptObserved('v1_chat_completions', arrived);
    if (accepted.replayed) {
      res.setHeader('Idempotent-Replayed', 'true');
      const found = await findRun(ctx, accepted.runId);
      if (!found) throw notFound('The completion of this Idempotency-Key was deleted.');
      row = found.row;
    } else row = accepted.run;
    if (body.stream) return streamChat(ctx, req, res, row, { includeUsage: body.stream_options?.include_usage === true, stopOnClose: !accepted.replayed });
    const gone = closedSignal(res);
    const final = await finalOf(ctx, row.id, gone);
    if (!final) {
      if (!accepted.replayed) await stopRun(ctx, row.id);
      return;
    }
    const outcome = outcomeOfEvent(final, row);
    if (outcome.state === 'failed' || outcome.state === 'interrupted') throw chatError(outcome);
    res.json(chatCompletion(row, outcome));
  });

  return r;
}

async function streamChat(ctx: AppContext, req: Request, res: Response, row: RunRow, opts: { includeUsage: boolean; stopOnClose: boolean }) {
  const sse = openStream(ctx, req, res);
  let ended = false;
  if (opts.stopOnClose) {
    sse.signal.addEventListener('abort', () => {
      if (!ended) stopRun(ctx, row.id).catch((err) => req.log.warn({ err }, 'stopping an abandoned chat completion failed'));
    });
  }
  const usageNull = opts.includeUsage ? { usage: null } : {};
  const send = (data: unknown) => sse.send({ data });
  const content = (text: string, finish: string | null = null) => send(chatChunk(row, { delta: { content: text }, finish_reason: finish }, usageNull));
  try {
    if (!(await send(chatChunk(row, { delta: { role: 'assistant', content: '' }, finish_reason: null }, usageNull)))) return;
    let held: string | null = null;
    for await (const item of feedFor(ctx, row.id, 0, sse.signal)) {
      if (item.kind === 'resync') {
        await send({ error: { message: 'the reader fell behind the model; this protocol cannot resume', type: 'server_error', param: null, code: 'stream_resync' } });
        return;
      }
      const e = item.event;
      if (e.type === 'token') {
        if (held !== null && !(await content(held))) return;
        held = (e.data as { content: string }).content;
        continue;
      }
      if (!isTerminalEvent(e)) continue;
      ended = true;
      const outcome = outcomeOfEvent(e, row);
      if (outcome.state === 'failed' || outcome.state === 'interrupted') {
        if (held !== null) await content(held);
        const err = chatError(outcome);
        await send({ error: { message: err.message, type: err.type, param: null, code: err.code } });
        return;
      }
      const finish = finishReason(outcome);
      if (held !== null) await content(held, finish);
      else await send(chatChunk(row, { delta: {}, finish_reason: finish }, usageNull));
      if (opts.includeUsage) await send(chatChunk(row, null, { usage: chatUsage(outcome), sluice: sluiceMoney(row, outcome) }));
      await sse.send({ data: '[DONE]', raw: true });
      return;
    }
  } finally {
    sse.end();
  }
}
