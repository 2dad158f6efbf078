import { z } from 'zod';
import { IDEMPOTENCY_KEY } from '../http/idempotency.js';
import { CURSOR } from '../http/sse.js';
import { UUID } from '../http/validate.js';

/**
 * Path, query and header parameters shared by the routes' descriptions, built from the same patterns the routes
 * check them with (`UUID`, `CURSOR`, `IDEMPOTENCY_KEY`).
 */

/** A path id: a UUID (anything else is answered 404, like an unknown id). */
export const uuidParam = (description: string) => z.string().regex(UUID).meta({ format: 'uuid', description });

export const paymentHashParam = z
  .string()
  .regex(/^[0-9a-fA-F]{64}$/)
  .meta({ description: 'The invoice’s payment hash (64 hex characters), as its payer holds it.' });

/** The resume cursor of an SSE stream, as a header (what `EventSource` sends) and as a query parameter. */
export const cursorHeaders = z.object({
  'Last-Event-ID': z
    .string()
    .regex(CURSOR)
    .meta({ description: 'Resume after this event id (what `EventSource` sends when it reconnects). Wins over `starting_after`. Malformed: 400.' })
    .optional(),
});
export const cursorQuery = z.object({
  starting_after: z
    .int()
    .min(0)
    .max(999_999_999)
    .meta({ description: 'Resume after this event id (for clients that cannot set `Last-Event-ID`).' })
    .optional(),
});

export const idempotencyHeaders = z.object({
  'Idempotency-Key': z
    .string()
    .regex(IDEMPOTENCY_KEY)
    .meta({
      description:
        'Makes a retry safe: the same key with the same body (same route, same JSON whatever its key order) gets the same answer and never a second debit, for IDEMPOTENCY_TTL_HOURS (24); the repeat carries `Idempotent-Replayed: true`. The same key with another body: 409 `idempotency_key_conflict`. 1–255 visible ASCII characters; scoped to the session.',
      example: 'order-42',
    })
    .optional(),
});
