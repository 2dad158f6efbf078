import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { Router } from 'express';
import { apiReference } from '@scalar/express-api-reference';
import { docsCsp } from '../http/security.js';
import type { OpenApiDocument } from './document.js';

/**
 * Scalar's browser bundle, from our own node_modules: `@scalar/express-api-reference` would load it from a CDN
 * (`cdn.jsdelivr.net`) by default. 1.46.x is the last `@scalar/api-reference` that runs on Node 20 and the one
 * made with the `@scalar/core` the 0.8.x middleware renders for.
 */
const SCALAR_BUNDLE = createRequire(import.meta.url).resolve('@scalar/api-reference/browser/standalone.js');

/**
 * The page a handler sends. Scalar's middleware renders synchronously from its configuration alone (no request),
 * so it is rendered once here and served as it is; the hash of its inline script is then known at start-up.
 */
function renderOnce(handler: (req: never, res: never, next: never) => void): string {
  let html: string | undefined;
  const res = {
    type: () => res,
    set: () => res,
    setHeader: () => res,
    status: () => res,
    send: (body: string) => ((html = body), res),
  };
  handler({} as never, res as never, (() => {}) as never);
  if (html === undefined) throw new Error('the API reference page did not render');
  return html;
}

/** `'sha256-…'` of each inline `<script>` of a page, for a Content-Security-Policy that allows exactly those. */
function inlineScriptHashes(html: string): string[] {
  const hashes = [...html.matchAll(/<script(?![^>]*\bsrc=)[^>]*>([\s\S]*?)<\/script>/g)].map((m) => `sha256-${createHash('sha256').update(m[1]!).digest('base64')}`);
  if (hashes.length === 0) throw new Error('the API reference page has no inline boot script: check its CSP');
  return hashes;
}

/**
 * `GET /api/openapi.json` (the document, serialised once at start-up) and the API reference page at `/docs`
 * (Scalar's, rendered once by `@scalar/express-api-reference`), served entirely from this server: the page, its
 * script and the document. Nothing is fetched from another origin — no CDN, no web fonts, no telemetry, no
 * proxy. `csp` is the page's Content-Security-Policy: its inline boot script is allowed by its hash.
 */
export function createDocs(doc: OpenApiDocument) {
  const json = JSON.stringify(doc);
  const page = renderOnce(
    apiReference({
      url: '/api/openapi.json',
      cdn: '/docs/scalar.js',
      pageTitle: 'Sluice API reference',
      withDefaultFonts: false,
      telemetry: false,
      agent: { disabled: true },
      showDeveloperTools: 'never',
      documentDownloadType: 'json',
      authentication: { preferredSecurityScheme: 'sessionToken' },
    }),
  );
  const router = Router();
  router.get('/api/openapi.json', (_req, res) => {
    res.type('application/json').send(json);
  });
  router.get('/docs/scalar.js', (_req, res) => {
    res.sendFile(SCALAR_BUNDLE, { maxAge: '1h', headers: { 'Content-Type': 'text/javascript; charset=utf-8' } });
  });
  router.get('/docs', (_req, res) => {
    res.type('html').send(page);
  });
  return { router, csp: docsCsp(inlineScriptHashes(page)) };
}
