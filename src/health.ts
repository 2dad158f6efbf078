import express from 'express';
import type { RequestHandler } from 'express';
import { sql } from 'drizzle-orm';
import type { AppContext } from './context.js';
import { databaseUnavailable, errorHandler, notFoundHandler } from './http/errors.js';
import { requestLogging } from './http/request-log.js';
import { securityHeaders } from './http/security.js';
import { metricsRoutes } from './metrics/metrics.routes.js';

/**
 * `GET /api/healthz`: `200` once the database answers, with this process's role (what a load balancer or an
 * orchestrator checks: route HTTP only to `all` and `api` processes) and its pool counts.
 */
export function healthz(ctx: Pick<AppContext, 'db' | 'database' | 'role' | 'executor'>): RequestHandler {
  return async (_req, res) => {
    try {
      await ctx.db.execute(sql`select 1`);
    } catch (err) {
      throw databaseUnavailable(err);
    }
    const { running, queued } = ctx.executor.stats();
    // Pool counts (read after our own query gave its client back): `total − idle` clients are in use right now.
    res.json({ status: 'ok', role: ctx.role, runs: { executing: running, queued }, pool: ctx.database.stats() });
  };
}

/**
 * The HTTP face of a `worker` process: its health (`GET /api/healthz`, on PORT like every role) and its metrics.
 * Nothing else: a worker accepts no work over HTTP, it claims it from the queue.
 */
export function createWorkerApp(ctx: AppContext): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.use(requestLogging(app, ctx.log));
  // The same headers as every other answer (README "Security headers"): a worker's port is reachable too.
  app.use(securityHeaders());
  app.use(metricsRoutes(ctx.metrics, ctx.config.METRICS_TOKEN));
  app.get('/api/healthz', healthz(ctx));
  app.use(notFoundHandler);
  app.use(errorHandler(ctx.log));
  return app;
}
