import { createRequire } from 'node:module';
import { OpenAPIRegistry, OpenApiGeneratorV31 } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';
import type { AppContext } from '../context.js';
import { describeDemo } from '../demo/demo.openapi.js';
import { describeStubPay } from '../dev/stub-pay.openapi.js';
import { describeJobs } from '../jobs/jobs.openapi.js';
import { describeOpenAi } from '../openai/openai.openapi.js';
import { describePayments } from '../payments/payments.openapi.js';
import { describeRuns } from '../runs/runs.openapi.js';
import { describeSocket } from '../runs/socket.openapi.js';
import { describeSessions } from '../sessions/sessions.openapi.js';
import { apiErrors, json, ok, registerCommon, type DocContext, type Registry } from './registry.js';

/** The routes that are mounted only in some configurations: the app and the document decide them alike. */
export interface OptionalRoutes {
  /** `POST /api/webhooks/lnbits` (PAYMENT_PROVIDER=lnbits). */
  lnbitsWebhook: boolean;
  /** `/api/dev/stub/*` (the stub payment provider, outside production). */
  stubPay: boolean;
}

/** Which optional routes this context mounts. */
export function optionalRoutes(ctx: Pick<AppContext, 'config' | 'payments' | 'stubPayments'>): OptionalRoutes {
  return {
    lnbitsWebhook: ctx.payments.name === 'lnbits',
    stubPay: ctx.stubPayments !== null && ctx.config.NODE_ENV !== 'production',
  };
}

/** What the document of an app with this context is built from. */
export function docContext(ctx: Pick<AppContext, 'config' | 'payments' | 'stubPayments' | 'models'>): DocContext & { optional: OptionalRoutes } {
  return { config: ctx.config, defaultModel: ctx.models.default.entry.name, optional: optionalRoutes(ctx) };
}

export type OpenApiDocument = ReturnType<OpenApiGeneratorV31['generateDocument']>;

/** The package's version (package.json is two folders up from `src/openapi/` and `dist/openapi/` alike). */
const VERSION = (createRequire(import.meta.url)('../../package.json') as { version: string }).version;

const INTRO = `Sluice sells AI work for sats and never makes a client wait on it. A client pays — a prepaid **session** balance, or a per-**job** Lightning invoice — submits a request, gets \`202\` and an id at once, then polls or streams the tokens over SSE — or many runs at once over one WebSocket (\`GET /api/ws\`): from any tab, after a refresh, after a server restart, from any process.

Two faces share one engine, where every piece of AI work is a **run** with an append-only event log:

- **\`/api\`**, the native face: sessions, jobs, runs, invoices. Errors are \`{"error": {"code", "message", "details"}}\` with a stable \`code\`.
- **\`/v1\`**, the OpenAI face: point the official \`openai\` SDK at \`<server>/v1\` with a session token as the API key. Errors are OpenAI's \`{"error": {"message", "type", "param", "code"}}\`. Only what matters to a client is described here; OpenAI's API reference documents the rest of each object.

Every response carries \`X-Request-Id\`. Requests that count against a limit carry \`RateLimit-*\` headers; a limit reached is \`429\` with \`Retry-After\`. Streams resume with \`Last-Event-ID\` or \`starting_after\`. Payments here are real BOLT 11 invoices; in development the stub payment provider's \`/api/dev/stub/*\` routes play the payer and the payer's wallet.`;

/** Healthz and this document: the service's own routes (`app.ts`, `docs.routes.ts`). */
function describeService(r: Registry): void {
  const tags = ['Service'];
  r.registerPath({
    method: 'get',
    path: '/api/healthz',
    operationId: 'healthz',
    tags,
    summary: 'Is the server up?',
    description:
      '`200` once the database answers, with this process’s role (`all`, `api` or `worker`: route HTTP to `all` and `api` processes only; a worker answers this route alone, and `/metrics`), the runs it executes and the queue as it last counted it, and the pool of database connections (`total − idle` are in use; `waiting` queries wait for one).',
    responses: {
      200: ok(
        'Up.',
        json(
          z.object({
            status: z.literal('ok'),
            role: z.enum(['all', 'api', 'worker']).meta({ description: 'What this process does (PROCESS_ROLE).' }),
            runs: z
              .object({ executing: z.number().int(), queued: z.number().int() })
              .meta({ description: 'Runs executing in this process; runs waiting in the shared queue, as this process last counted them (0 when it has not needed to).' }),
            pool: z.object({ total: z.number().int(), idle: z.number().int(), waiting: z.number().int() }).meta({ description: 'This process’s Postgres pool.' }),
          }),
        ),
      ),
      ...apiErrors({}),
    },
  });
  r.registerPath({
    method: 'get',
    path: '/api/openapi.json',
    operationId: 'openapi',
    tags,
    summary: 'This document',
    description: 'OpenAPI 3.1, generated at start-up from the zod schemas the routes validate with. The API reference page at `/docs` renders it.',
    responses: { 200: ok('The OpenAPI document.', json(z.looseObject({ openapi: z.literal('3.1.0') }))) },
  });
}

/**
 * Every route of both faces, registered with the zod schemas the routes validate with: each feature's
 * `*.openapi.ts` describes the routes of its `*.routes.ts`. (The tests read the registry's definitions to check
 * real answers and the examples against the very same schemas.)
 */
export function describeApi(d: DocContext & { optional: OptionalRoutes }): OpenAPIRegistry {
  const r = new OpenAPIRegistry();
  registerCommon(r);
  describeService(r);
  describeSessions(r, d);
  describeRuns(r);
  describeSocket(r, d);
  describeJobs(r, d);
  describePayments(r, { lnbitsWebhook: d.optional.lnbitsWebhook });
  describeDemo(r, d);
  if (d.optional.stubPay) describeStubPay(r);
  describeOpenAi(r, d);
  return r;
}

/** The OpenAPI 3.1 document of both faces, generated by `@asteasolutions/zod-to-openapi`. Built once, at start-up. */
export function buildOpenApiDocument(d: DocContext & { optional: OptionalRoutes }): OpenApiDocument {
  return new OpenApiGeneratorV31(describeApi(d).definitions).generateDocument({
    openapi: '3.1.0',
    info: { title: 'Sluice', version: VERSION, description: INTRO },
    tags: [
      { name: 'Sessions', description: 'A prepaid balance and its requests.' },
      { name: 'Runs', description: 'All the AI work a session paid for, whichever face took it.' },
      { name: 'Jobs', description: 'Pay per request: an evaluation invoice, then a work invoice, no account.' },
      { name: 'Invoices', description: 'Any invoice of this server, and payments that could not be delivered.' },
      { name: 'Demo', description: 'A free taste.' },
      { name: 'Service', description: 'Health and this document.' },
      { name: 'Development', description: 'The stub Lightning world (not in production).' },
      { name: 'Responses', description: 'OpenAI’s Responses API (`/v1`).' },
      { name: 'Conversations', description: 'OpenAI’s Conversations API (`/v1`).' },
      { name: 'Chat', description: 'OpenAI’s Chat Completions API (`/v1`).' },
      { name: 'Model catalogue', description: 'The models and their prices (`/v1/models`).' },
    ].filter((t) => t.name !== 'Development' || d.optional.stubPay),
    externalDocs: { description: 'OpenAI’s API reference (the `/v1` face)', url: 'https://platform.openai.com/docs/api-reference' },
  });
}
