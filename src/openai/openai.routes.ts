import { Router, type RequestHandler } from 'express';
import { jsonBody } from '../http/json-body.js';
import type { AppContext } from '../context.js';
import { chatRoutes } from './chat.routes.js';
import { conversationRoutes } from './conversations.routes.js';
import { openAiErrorHandler, openAiNotFound } from './errors.js';
import { modelRoutes } from './models.routes.js';
import { responseRoutes } from './responses.routes.js';

/**
 * The OpenAI face, mounted at `/v1`: point the official `openai` SDK at it (`baseURL: <server>/v1`, `apiKey`:
 * a session token) and the session's balance pays. Every response and completion is a run of the one engine;
 * this face only translates. It has its own body limit (whole chat histories arrive at once) and answers every
 * error in OpenAI's envelope, so the SDK raises its own error classes. The limits are the native face's (counted in
 * Postgres across processes); they sit after the body parser, so a POST that asks for a stream holds a stream slot,
 * and before the error handler, so a 429 leaves as OpenAI's rate-limit error.
 */
export function openAiRoutes(ctx: AppContext): Router {
  const { limits } = ctx;
  const v1 = Router();
  v1.use(jsonBody(ctx.config.V1_BODY_LIMIT_KB * 1024));
  v1.use(limits.sessionRequests);
  // Returned promise: Express 5 forwards a refusal (429) to the error handler below.
  const streamSlot: RequestHandler = async (req, res, next) => {
    const streams =
      req.method === 'POST' ? (req.body as { stream?: unknown } | undefined)?.stream === true : req.query.stream === 'true';
    if (!streams) return next();
    await limits.sessionStreams(req, res, next);
  };
  v1.post(['/responses', '/chat/completions'], streamSlot);
  v1.get('/responses/:id', streamSlot);
  v1.use(responseRoutes(ctx));
  v1.use(conversationRoutes(ctx));
  v1.use(chatRoutes(ctx));
  v1.use(modelRoutes(ctx));
  v1.use(openAiNotFound);
  v1.use(limits.countBeforeError);
  v1.use(openAiErrorHandler(ctx.log));
  return v1;
}
