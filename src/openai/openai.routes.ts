import express, { Router } from 'express';
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
 * error in OpenAI's envelope, so the SDK raises its own error classes.
 */
export function openAiRoutes(ctx: AppContext): Router {
  const v1 = Router();
  v1.use(express.json({ limit: `${ctx.config.V1_BODY_LIMIT_KB}kb` }));
  v1.use(responseRoutes(ctx));
  v1.use(conversationRoutes(ctx));
  v1.use(chatRoutes(ctx));
  v1.use(modelRoutes(ctx));
  v1.use(openAiNotFound);
  v1.use(openAiErrorHandler(ctx.log));
  return v1;
}
