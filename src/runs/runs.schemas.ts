import { z } from 'zod';

export const RUN_STATES = ['queued', 'executing', 'complete', 'failed', 'cancelled', 'interrupted'] as const;

/** `GET /api/runs`'s query: what the route validates with and what the OpenAPI document describes. */
export const runsListQuery = z.object({
  state: z
    .enum(RUN_STATES, { error: `state must be one of ${RUN_STATES.join(', ')}` })
    .meta({ description: 'Only runs in this state.' })
    .optional(),
  limit: z.coerce
    .number({ error: 'limit must be a number' })
    .int('limit must be a whole number')
    .min(1, 'limit must be at least 1')
    .max(100, 'limit must be at most 100')
    .default(20)
    .meta({ description: 'Runs per page.' }),
  cursor: z.string().min(1).max(500).meta({ description: 'The `nextCursor` of the previous page (opaque; only the session that got it may use it).' }).optional(),
});
