import express from 'express';
import type { AppContext } from './context.js';
import { consoleRoutes } from './console/console.routes.js';
import { stubPayRoutes } from './dev/stub-pay.routes.js';
import { AppError, errorHandler, notFoundHandler } from './http/errors.js';
import { healthz } from './health.js';
import { corsFor, securityHeaders } from './http/security.js';
import { metricsRoutes } from './metrics/metrics.routes.js';
import { jsonBody } from './http/json-body.js';
import { requestLogging } from './http/request-log.js';
import { sessionRoutes } from './sessions/sessions.routes.js';
import { jobRoutes } from './jobs/jobs.routes.js';
import { demoRoutes } from './demo/demo.routes.js';
import { runRoutes } from './runs/runs.routes.js';
import { socketRoutes } from './runs/socket.routes.js';
import { invoiceRoutes } from './payments/invoices.routes.js';
import { lnbitsWebhookRoutes } from './payments/lnbits-webhook.routes.js';
import { openAiRoutes } from './openai/openai.routes.js';
import { buildOpenApiDocument, docContext, optionalRoutes } from './openapi/document.js';
import { createDocs } from './openapi/docs.routes.js';

/**
 * The Express app: JSON API under /api, the OpenAI face under /v1 (each with its error envelope), a request id on every log line; security headers
 * everywhere, CORS on the API, limits counted in Postgres, `/metrics` for Prometheus, the console at `/`.
 */
export function createApp(ctx: AppContext): express.Express {
  const app = express();
  // Routes some configurations do without: the app mounts them and the OpenAPI document describes them alike.
  const optional = optionalRoutes(ctx);
  // Built once, from the zod schemas the routes validate with (see src/openapi/).
  const docs = createDocs(buildOpenApiDocument(docContext(ctx)));
  app.disable('x-powered-by');
  app.set('trust proxy', ctx.config.TRUST_PROXY);
  // One line per request as it ends (what pino-http wrote, without a child logger per request: request-log.ts).
  app.use(requestLogging(app, ctx.log));
  // The API reference page (`/docs`) boots with inline script and styles; everything else gets the strict policy.
  app.use(securityHeaders([{ prefix: '/docs', directives: docs.csp }]));
  app.use(['/api', '/v1'], corsFor(ctx.config.CORS_ORIGINS));
  app.use(metricsRoutes(ctx.metrics, ctx.config.METRICS_TOKEN));
  // `GET /api/openapi.json` and the API reference at `/docs`.
  app.use(docs.router);
  // LNbits's webhook sends a JSON string, which the strict parser below refuses: its route parses its own body.
  if (optional.lnbitsWebhook) app.use('/api', lnbitsWebhookRoutes(ctx));
  // The OpenAI face parses its own bodies (a larger limit), applies the same limits, and speaks its own error envelope.
  app.use('/v1', openAiRoutes(ctx));
  app.use(jsonBody(64 * 1024));

  const api = express.Router();
  api.get('/healthz', healthz(ctx));
  // Limits and timers in front of the routes they guard (each calls next(), so the route files stay as they are).
  const { limits, metrics } = ctx;
  api.use(limits.sessionRequests);
  api.post('/sessions', limits.sessionCreate);
  api.post('/jobs', limits.jobCreate);
  api.get(['/sessions/:id/requests/:requestId/stream', '/runs/:runId/stream', '/ws'], limits.sessionStreams);
  api.get('/jobs/:id/stream', limits.jobStreams);
  api.post('/sessions/:id/request', metrics.acceptTimer('session_request'));
  api.use(sessionRoutes(ctx));
  api.use(jobRoutes(ctx));
  api.use(runRoutes(ctx));
  // `GET /api/ws`: the runs over a WebSocket (upgrade requests come through here too: http/upgrade.ts).
  api.use(socketRoutes(ctx));
  api.use(invoiceRoutes(ctx));
  api.use(demoRoutes(ctx));
  if (optional.stubPay && ctx.stubPayments) api.use(stubPayRoutes(ctx.stubPayments, ctx.config.LIGHTNING_NETWORK));
  app.use('/api', api);
  // The browser console: sessions, runs, jobs and their invoices, live streams.
  app.use(consoleRoutes());

  app.use(notFoundHandler);
  // A request answered with an error before any statement counted it against its session's budget is counted here.
  app.use(limits.countBeforeError);
  app.use(errorHandler(ctx.log));
  return app;
}
