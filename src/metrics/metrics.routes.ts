import { createHash, timingSafeEqual } from 'node:crypto';
import { Router } from 'express';
import { bearerToken } from '../http/auth.js';
import { unauthorized } from '../http/errors.js';
import type { Metrics } from './metrics.js';

/**
 * `GET /metrics` in Prometheus's text format. With METRICS_TOKEN set, only a scraper presenting it as a bearer
 * token gets in (compared in constant time); without it the endpoint is open — keep it off the public
 * internet at the proxy then.
 */
export function metricsRoutes(metrics: Metrics, token: string | undefined): Router {
  const r = Router();
  const expected = token ? digest(token) : null;
  r.get('/metrics', async (req, res) => {
    if (expected) {
      const given = bearerToken(req);
      if (!given || !timingSafeEqual(digest(given), expected)) {
        res.setHeader('WWW-Authenticate', 'Bearer realm="metrics"');
        throw unauthorized('GET /metrics needs the METRICS_TOKEN as a bearer token');
      }
    }
    res.setHeader('Content-Type', metrics.register.contentType);
    res.setHeader('Cache-Control', 'no-store');
    res.send(await metrics.register.metrics());
  });
  return r;
}

const digest = (s: string) => createHash('sha256').update(s).digest();
