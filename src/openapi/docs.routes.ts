import { createRequire } from 'node:module';
import { Router } from 'express';
import { apiReference } from '@scalar/express-api-reference';
import type { OpenApiDocument } from './document.js';

/**
 * Scalar's browser bundle, from our own node_modules: `@scalar/express-api-reference` would load it from a CDN
 * (`cdn.jsdelivr.net`) by default. 1.46.x is the last `@scalar/api-reference` that runs on Node 20 and the one
 * made with the `@scalar/core` the 0.8.x middleware renders for.
 */
const SCALAR_BUNDLE = createRequire(import.meta.url).resolve('@scalar/api-reference/browser/standalone.js');

/**
 * `GET /api/openapi.json` (the document, serialised once at start-up) and the API reference page at `/docs`
 * (Scalar), served entirely from this server: the page, its script and the document. Nothing is fetched from
 * another origin — no CDN, no fonts, no telemetry, no proxy — which is also what `/docs`'s CSP allows.
 */
export function docsRoutes(doc: OpenApiDocument): Router {
  const r = Router();
  const json = JSON.stringify(doc);
  r.get('/api/openapi.json', (_req, res) => {
    res.type('application/json').send(json);
  });
  r.get('/docs/scalar.js', (_req, res) => {
    res.sendFile(SCALAR_BUNDLE, { maxAge: '1h', headers: { 'Content-Type': 'text/javascript; charset=utf-8' } });
  });
  r.get(
    '/docs',
    apiReference({
      url: '/api/openapi.json',
      cdn: '/docs/scalar.js',
      pageTitle: 'Sluice API reference',
      withDefaultFonts: false,
      telemetry: false,
      agent: { disabled: true },
      showDeveloperTools: 'never',
      documentDownloadType: 'json',
    }),
  );
  return r;
}
