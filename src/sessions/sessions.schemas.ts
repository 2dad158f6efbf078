import { z } from 'zod';
import type { Config } from '../config.js';
import { perConfig, requestText } from '../http/validate.js';

/**
 * The request bodies of the session routes. Each is built once per configuration (its limits come from it) and
 * is both what the route validates with and what the OpenAPI document describes.
 */

const sats = (c: Config) =>
  z
    .number({ error: 'amount_sats must be a whole number of sats' })
    .int('amount_sats must be a whole number of sats')
    .min(c.SESSION_MIN_SATS, `amount_sats must be at least ${c.SESSION_MIN_SATS}`)
    .max(c.SESSION_MAX_SATS, `amount_sats must be at most ${c.SESSION_MAX_SATS}`)
    .meta({ description: 'The amount of the invoice, in sats.', example: 200 });

export const createSessionBody = perConfig((c) => z.object({ amount_sats: sats(c) }));
export const topupBody = createSessionBody;

export const requestBody = perConfig((c) =>
  z.object({
    request: requestText(c.REQUEST_MAX_CHARS).meta({ description: 'What to ask the model: non-blank text.', example: 'Tell me about sluice gates' }),
    max_tokens: z
      .number({ error: 'max_tokens must be a whole number' })
      .int('max_tokens must be a whole number')
      .min(1, 'max_tokens must be at least 1')
      .max(c.MAX_TOKENS_LIMIT, `max_tokens must be at most ${c.MAX_TOKENS_LIMIT}`)
      .meta({ description: `The longest reply, in tokens (default ${c.DEFAULT_MAX_TOKENS}, and at most the model's \`maxOutputTokens\`). The debit covers it.` })
      .optional(),
    /** A model of the catalogue (default: its default model). */
    model: z
      .string({ error: 'model must be a string' })
      .min(1, 'model must not be empty')
      .max(200)
      .meta({ description: "A model of the catalogue (`GET /v1/models`); default: the catalogue's default." })
      .optional(),
  }),
);
