import { Router } from 'express';
import type { AppContext } from '../context.js';
import type { ModelEntry } from '../models/catalogue.js';
import { authenticate } from './auth.js';
import { modelNotFound } from './errors.js';

/** `GET /v1/models`: the catalogue, with each model's prices under the `sluice` extension key. */
export function modelRoutes(ctx: AppContext): Router {
  const r = Router();
  const view = (m: ModelEntry) => ({
    id: m.name,
    object: 'model',
    created: ctx.models.catalogue.loadedAt,
    owned_by: m.provider === 'stub' ? 'sluice' : m.provider,
    sluice: {
      input_sats_per_1k: m.inputSatsPer1k,
      output_sats_per_1k: m.outputSatsPer1k,
      max_output_tokens: m.maxOutputTokens,
      context_tokens: m.contextTokens,
      default: m.name === ctx.models.default.entry.name,
    },
  });

  r.get('/models', async (req, res) => {
    await authenticate(ctx, req);
    res.json({ object: 'list', data: ctx.models.list().map(view) });
  });

  // Model names may hold slashes (`meta-llama/Llama-3.1-8B`): the rest of the path is the name.
  r.get('/models/*name', async (req, res) => {
    await authenticate(ctx, req);
    const name = ([] as string[]).concat(req.params.name).join('/');
    const m = ctx.models.get(name);
    if (!m) throw modelNotFound(name);
    res.json(view(m.entry));
  });

  return r;
}
