import express from 'express';
import { pinoHttp } from 'pino-http';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sql } from 'drizzle-orm';
import type { AppContext } from './context.js';
import { stubPayRoutes } from './dev/stub-pay.routes.js';
import { databaseUnavailable, errorHandler, notFoundHandler } from './http/errors.js';
import { serializeError } from './log-safety.js';
import { sessionRoutes } from './sessions/sessions.routes.js';
import { jobRoutes } from './jobs/jobs.routes.js';
import { demoRoutes } from './demo/demo.routes.js';
import { runRoutes } from './runs/runs.routes.js';

/** The Express app: JSON API under /api, one error envelope, a request id on every log line. */
export function createApp(ctx: AppContext): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', ctx.config.TRUST_PROXY);
  app.use(
    pinoHttp({
      logger: ctx.log,
      genReqId: (req, res) => {
        const given = req.headers['x-request-id'];
        const id = typeof given === 'string' && /^[\w.-]{1,100}$/.test(given) ? given : randomUUID();
        res.setHeader('x-request-id', id);
        return id;
      },
      // SSE connections are long; log them at their end like any other request, but quietly.
      customLogLevel: (_req, res, err) => (err || res.statusCode >= 500 ? 'error' : res.statusCode >= 400 ? 'warn' : 'info'),
      autoLogging: { ignore: (req) => req.url === '/api/healthz' },
      // ?access_token= carries a bearer secret (EventSource cannot send headers): never log it.
      // (The logger redacts credentials in headers and query and scrubs every line: see logger.ts.)
      serializers: {
        req: (req: { url?: string }) => ({ ...req, url: req.url?.replace(/([?&]access_token=)[^&]*/, '$1[redacted]') }),
        err: serializeError,
      },
    }),
  );
  app.use(express.json({ limit: '64kb' }));

  const api = express.Router();
  api.get('/healthz', async (_req, res) => {
    try {
      await ctx.db.execute(sql`select 1`);
    } catch (err) {
      throw databaseUnavailable(err);
    }
    // Pool counts (read after our own query gave its client back): `total − idle` clients are in use right now.
    res.json({ status: 'ok', pool: ctx.database.stats() });
  });
  api.use(sessionRoutes(ctx));
  api.use(jobRoutes(ctx));
  api.use(runRoutes(ctx));
  const demo = demoRoutes(ctx);
  api.use(demo.router);
  ctx.maintenance.addSweep(demo.sweep);
  if (ctx.stubPayments && ctx.config.NODE_ENV !== 'production') api.use(stubPayRoutes(ctx.stubPayments));
  app.use('/api', api);
  // A small page that creates a session, asks, and streams the reply with EventSource.
  app.use(express.static(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../public'), { index: 'index.html', maxAge: 0 }));

  app.use(notFoundHandler);
  app.use(errorHandler(ctx.log));
  return app;
}
