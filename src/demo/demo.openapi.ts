import { z } from 'zod';
import { RATE_LIMIT_HEADERS, PROVIDER_ERRORS, apiErrors, json, ok, type DocContext, type Registry } from '../openapi/registry.js';
import { demoQuery } from './demo.schemas.js';

/** The demo route (`demo.routes.ts`), described with the schema it validates with. */
export function describeDemo(r: Registry, { config: c }: DocContext): void {
  r.registerPath({
    method: 'get',
    path: '/api/demo',
    operationId: 'demo',
    tags: ['Demo'],
    summary: 'A free, synchronous taste',
    description: `The only endpoint that waits on the model: short (DEMO_MAX_TOKENS, ${c.DEMO_MAX_TOKENS}), limited per client IP (DEMO_RATE_LIMIT per DEMO_RATE_WINDOW_S, ${c.DEMO_RATE_LIMIT} per ${c.DEMO_RATE_WINDOW_S} s, counted across every process; 0 turns the demo off), and cut off after 10 s with what was made so far and \`truncated: true\`.`,
    request: { query: demoQuery(c) },
    responses: {
      200: ok('The reply.', json(z.object({ result: z.string(), truncated: z.literal(true).optional() }).meta({ id: 'DemoResult' })), ...RATE_LIMIT_HEADERS),
      ...apiErrors({ 400: ['invalid_request'], 429: ['rate_limited'] }, PROVIDER_ERRORS),
    },
  });
}
