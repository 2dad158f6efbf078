import { z } from 'zod';
import type { Config } from '../config.js';
import { requestText } from '../http/validate.js';

const sats = (c: Config) =>
  z
    .number({ error: 'amount_sats must be a whole number of sats' })
    .int('amount_sats must be a whole number of sats')
    .min(c.SESSION_MIN_SATS, `amount_sats must be at least ${c.SESSION_MIN_SATS}`)
    .max(c.SESSION_MAX_SATS, `amount_sats must be at most ${c.SESSION_MAX_SATS}`);

export const createSessionBody = (c: Config) => z.object({ amount_sats: sats(c) });
export const topupBody = createSessionBody;

export const requestBody = (c: Config) =>
  z.object({
    request: requestText(c.REQUEST_MAX_CHARS),
    max_tokens: z
      .number({ error: 'max_tokens must be a whole number' })
      .int('max_tokens must be a whole number')
      .min(1, 'max_tokens must be at least 1')
      .max(c.MAX_TOKENS_LIMIT, `max_tokens must be at most ${c.MAX_TOKENS_LIMIT}`)
      .optional(),
    /** A model of the catalogue (default: its default model). */
    model: z.string({ error: 'model must be a string' }).min(1, 'model must not be empty').max(200).optional(),
  });
