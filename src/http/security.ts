import cors from 'cors';
import type { RequestHandler } from 'express';
import helmet from 'helmet';

type Directives = Record<string, Iterable<string> | null>;

/**
 * What the official `openai` SDK sends with every request (its platform, retry and helper headers, and its
 * organisation and project when set): a page using it against `/v1` is preflighted for all of them, and one
 * missing here fails every call. `User-Agent` too: Firefox lets a page set it, and then asks for it.
 */
const OPENAI_SDK_HEADERS = [
  'User-Agent',
  'X-Stainless-Lang',
  'X-Stainless-Package-Version',
  'X-Stainless-OS',
  'X-Stainless-Arch',
  'X-Stainless-Runtime',
  'X-Stainless-Runtime-Version',
  'X-Stainless-Retry-Count',
  'X-Stainless-Timeout',
  'X-Stainless-Helper-Method',
  'X-Stainless-Poll-Helper',
  'X-Stainless-Custom-Poll-Interval',
  'OpenAI-Organization',
  'OpenAI-Project',
  'OpenAI-Beta',
];
/** Request headers a page on another origin may send (checked by the browser's preflight). */
export const CORS_ALLOWED_HEADERS = ['Authorization', 'Content-Type', 'Idempotency-Key', 'Last-Event-ID', 'X-Request-Id', ...OPENAI_SDK_HEADERS];
/**
 * Response headers such a page may read: ids, where a created thing lives, when to try again — and whether to
 * (`x-should-retry`, which the SDK obeys: unreadable, it would retry a 409 or an exhausted quota), and whether an
 * answer is the replay of an earlier request with the same `Idempotency-Key`.
 */
export const CORS_EXPOSED_HEADERS = [
  'X-Request-Id',
  'Location',
  'Retry-After',
  'RateLimit-Limit',
  'RateLimit-Remaining',
  'RateLimit-Reset',
  'RateLimit-Policy',
  'X-Should-Retry',
  'Idempotent-Replayed',
];

/**
 * CORS for the API faces (the `cors` package): only the configured origins, `*` for any, none when the list is
 * empty (then not a header is added, and a browser keeps other origins out). No credentials: the API is
 * authorised by bearer tokens, never cookies, so there is nothing ambient for another origin to ride on.
 * EventSource cannot send headers, which is why streams also take `?access_token=`; its reconnect sends
 * `Last-Event-ID`, allowed here so a cross-origin stream resumes like a same-origin one.
 */
export function corsFor(origins: string[]): RequestHandler {
  if (origins.length === 0) return (_req, _res, next) => next();
  return cors({
    origin: origins.includes('*') ? '*' : origins,
    methods: ['GET', 'HEAD', 'POST', 'DELETE', 'OPTIONS'],
    allowedHeaders: CORS_ALLOWED_HEADERS,
    exposedHeaders: CORS_EXPOSED_HEADERS,
    credentials: false,
    maxAge: 600,
  });
}

/**
 * The default Content-Security-Policy: helmet's defaults, tightened to our own styles only (the console at `/`
 * is built to need nothing but its own files), and without `upgrade-insecure-requests`, which would break the
 * console served over plain HTTP on a LAN address.
 */
export const DEFAULT_CSP: Directives = {
  ...Object.fromEntries(Object.entries(helmet.contentSecurityPolicy.getDefaultDirectives() as Directives).filter(([name]) => name !== 'upgrade-insecure-requests')),
  'style-src': ["'self'"],
};

/**
 * The policy of the API reference page (`/docs`, Scalar), no looser than it needs (checked in headless Chromium
 * by `npm run test:browser`): scripts from our own origin plus the page's one inline boot script, allowed by its
 * hash (`inlineScriptHashes`), not by `'unsafe-inline'`; inline styles, which the reference applies as it renders;
 * images from our origin and `data:`; fonts from our origin only (the page asks for none: no web fonts). Everything
 * it fetches — its bundle, the document, the API its client calls — is our own origin (`default-src 'self'`).
 */
export function docsCsp(inlineScriptHashes: string[]): Directives {
  return {
    'script-src': ["'self'", ...inlineScriptHashes.map((h) => `'${h}'`)],
    'style-src': ["'self'", "'unsafe-inline'"],
    'font-src': ["'self'"],
    'img-src': ["'self'", 'data:'],
  };
}

/** A route (path prefix) whose CSP differs from the default: its directives replace the default's. */
export interface CspRoute {
  prefix: string;
  directives: Directives;
}

/**
 * helmet's security headers on every response. None of them affects SSE (no compression, no buffering); the
 * Content-Security-Policy is chosen per route, so a page such as `/docs` can be given what it needs without
 * loosening the rest.
 *
 * helmet works out each header once, when its middleware is made, and then sets the same values on every
 * response through a chain of a dozen middlewares. The values (and the `X-Powered-By` it removes) are recorded
 * here once, from helmet itself, and set in one loop: on a server idle for 20 ms the chain cost 40 µs before an
 * accept's statement. Recording is exact because nothing helmet sets here depends on the request: the policies'
 * directives are fixed strings (a directive computed per request, such as a nonce, is refused at start-up).
 */
export function securityHeaders(routes: CspRoute[] = []): RequestHandler {
  const headers = recordHeaders(helmet({ contentSecurityPolicy: false }));
  const policy = (directives: Directives) => {
    for (const [name, value] of Object.entries(directives)) {
      if (value !== null && [...value].some((v) => typeof v !== 'string')) throw new Error(`CSP directive ${name}: only fixed strings can be recorded`);
    }
    return [...headers, ...recordHeaders(helmet.contentSecurityPolicy({ useDefaults: false, directives: directives as never }))];
  };
  const fallback = policy(DEFAULT_CSP);
  const special = routes.map((r) => ({ prefix: r.prefix, headers: policy({ ...DEFAULT_CSP, ...r.directives }) }));
  return (req, res, next) => {
    const route = special.length ? special.find((s) => req.path === s.prefix || req.path.startsWith(`${s.prefix}/`)) : undefined;
    for (const [name, value] of route?.headers ?? fallback) {
      if (value === undefined) res.removeHeader(name);
      else res.setHeader(name, value);
    }
    next();
  };
}

/** What a middleware that only sets and removes response headers does, in order (`undefined`: removed). */
type Recorded = Array<[string, string | number | readonly string[] | undefined]>;

/** Run a header-setting middleware once against a recorder, and return what it did. */
export function recordHeaders(middleware: (req: never, res: never, next: (err?: unknown) => void) => void): Recorded {
  const done: Recorded = [];
  let failed: unknown;
  let finished = false;
  const res = {
    setHeader: (name: string, value: string | number | readonly string[]) => done.push([name, value]),
    removeHeader: (name: string) => done.push([name, undefined]),
  };
  middleware({ headers: {}, method: 'GET', url: '/' } as never, res as never, (err) => {
    failed = err;
    finished = true;
  });
  if (failed || !finished) throw new Error(`a security-header middleware could not be recorded: ${String(failed ?? 'it did not finish at once')}`);
  return done;
}
