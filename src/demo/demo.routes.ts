import { Router } from 'express';
import type { AppContext } from '../context.js';
import { demoQuery } from './demo.schemas.js';
import { AppError, overloaded } from '../http/errors.js';
import { parse } from '../http/validate.js';
import { AiError } from '../providers/ai/types.js';

/** How long a demo may take before it is cut off (it holds an HTTP request open, unlike real work). */
const DEMO_TIMEOUT_MS = 10_000;

/**
 * `GET /api/demo?request=...`: a free, synchronous taste of the AI work, short (DEMO_MAX_TOKENS) and rate
 * limited per client IP (DEMO_RATE_LIMIT, counted in Postgres). The only endpoint that waits on the model,
 * which is why it is small and capped.
 */
export function demoRoutes(ctx: AppContext): Router {
  const r = Router();
  const query = demoQuery(ctx.config);

  r.get('/demo', async (req, res) => {
    const { request } = parse(query, { request: typeof req.query.request === 'string' ? req.query.request : undefined }, 'query');
    // It takes the model like a run would: not while this process already has as many runs waiting as it takes.
    if (ctx.executor.overloaded) throw overloaded();
    // Counted in Postgres, so the limit per client IP holds across every process.
    await ctx.limits.demo(req, res);
    const gone = new AbortController();
    res.on('close', () => gone.abort());
    const signal = AbortSignal.any([gone.signal, AbortSignal.timeout(DEMO_TIMEOUT_MS)]);
    let result = '';
    try {
      const { entry, provider } = ctx.models.default;
      const messages = [{ role: 'user' as const, content: request }];
      for await (const chunk of provider.stream({ model: entry.upstreamModel, messages, maxTokens: Math.min(ctx.config.DEMO_MAX_TOKENS, entry.maxOutputTokens) }, signal)) {
        if (chunk.type === 'token') result += chunk.content;
      }
    } catch (err) {
      if (gone.signal.aborted) return;
      // Out of time: the taste is what was made so far, and says so.
      if (signal.aborted) return void res.json({ result, truncated: true });
      // The AI provider failed (not the client): 502, as a gateway whose upstream failed.
      if (err instanceof AiError) throw new AppError(502, err.code, err.message);
      throw err;
    }
    res.json({ result });
  });

  return r;
}
