import type { Response } from 'express';
import type { AppContext } from '../context.js';
import type { ResolvedModel } from '../models/providers.js';
import { invalidRequest, modelNotFound } from './errors.js';

/** The catalogue model a request names (default: the catalogue's default), or OpenAI's unknown-model 404. */
export function resolveModel(ctx: AppContext, name: string | undefined): ResolvedModel {
  const model = name === undefined ? ctx.models.default : ctx.models.get(name);
  if (!model) throw modelNotFound(name!);
  return model;
}

/** The reply's token limit: what was asked (at most the model's), else DEFAULT_MAX_TOKENS within the model's. */
export function maxTokensFor(ctx: AppContext, model: ResolvedModel, asked: number | null | undefined, param: string): number {
  const limit = model.entry.maxOutputTokens;
  if (asked != null && asked > limit) throw invalidRequest(`Invalid value for '${param}': ${model.entry.name} allows at most ${limit}.`, param);
  return asked ?? Math.min(ctx.config.DEFAULT_MAX_TOKENS, limit);
}

/** Aborts when the client goes away before the response was sent (the sync modes wait on a run). */
export function closedSignal(res: Response): AbortSignal {
  const c = new AbortController();
  res.on('close', () => {
    if (!res.writableFinished) c.abort();
  });
  return c.signal;
}

/** The text that stands for a turn in `runs.request` (and on the /api face): its messages, one per line. */
export const requestLine = (turn: Array<{ content: string }>) => turn.map((m) => m.content).join('\n');
