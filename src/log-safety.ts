import { pino, stdSerializers, type DestinationStream, type Logger, type LoggerOptions as PinoOptions } from 'pino';

/**
 * Logging made safe to ship: no secret reaches a log line. Three layers, because one is never enough:
 *
 * 1. **Redaction by path** (pino's `redact`, inherited by every child logger): credentials in request headers and
 *    query, and fields that hold secrets by name — provider API keys, admin/invoice keys, macaroons, preimages,
 *    passwords, tokens — at the top level or up to two levels down.
 * 2. **An error serializer** that drops what drizzle attaches to a failed query: its `params` (bearer-token hashes,
 *    request text, anything we ever bind), which drizzle also copies into the error's message and stack; and a
 *    Postgres error's `detail`, which quotes row values.
 * 3. **A last pass over every line written** for secrets that hide inside strings: `Bearer …`, `access_token=…`,
 *    session tokens (`sk_…`), and the password of a connection URL.
 *
 * `safeLogOptions()` is the three, to spread into any pino logger's options (children inherit them).
 */

const CENSOR = '[redacted]';

/** Field names whose values are secrets wherever they appear. */
const SECRET_FIELDS = [
  'authorization',
  'cookie',
  'password',
  'secret',
  'token',
  'accessToken',
  'access_token',
  'sessionToken',
  'apiKey',
  'api_key',
  'adminKey',
  'admin_key',
  'invoiceKey',
  'invoice_key',
  'macaroon',
  'preimage',
  'paymentPreimage',
  'payment_preimage',
  '"x-api-key"',
];

export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["proxy-authorization"]',
  'req.headers["x-api-key"]',
  'req.headers["grpc-metadata-macaroon"]',
  'req.query.access_token',
  'res.headers["set-cookie"]',
  ...SECRET_FIELDS.flatMap((f) => {
    const key = f.startsWith('"') ? `[${f}]` : f;
    const at = (prefix: string) => (f.startsWith('"') ? `${prefix}${key}` : `${prefix}.${key}`);
    return [f.startsWith('"') ? key : f, at('*'), at('*.*')];
  }),
];

/** Secrets inside strings: each match keeps its first group and loses the rest. */
const SECRET_PATTERNS: Array<[RegExp, string]> = [
  [/(Bearer\s+)[^\s"\\,]+/gi, `$1${CENSOR}`],
  [/((?:access_token|api_key|apikey|key|token|macaroon|preimage)=)[^&\s"\\]+/gi, `$1${CENSOR}`],
  [/\bsk_[A-Za-z0-9_-]{20,}/g, CENSOR],
  [/(postgres(?:ql)?:\/\/[^:/@\s"]+:)[^@\s"]+@/gi, `$1${CENSOR}@`],
];

/**
 * What every pattern above needs somewhere in a line (case-insensitive): one scan tells most lines — a request
 * line, whose headers are redacted by name already — that none can match, instead of four. `bearer\s` for the
 * first, `key=`/`token=`/`macaroon=`/`preimage=` for the second (its every alternative ends so), `sk_` for the
 * third, `postgres` for the last.
 */
const MAY_HOLD_SECRET = /bearer\s|key=|token=|macaroon=|preimage=|sk_|postgres/i;

export function scrubSecrets(text: string): string {
  return MAY_HOLD_SECRET.test(text) ? scrubAll(text) : text;
}

/** The four patterns, each over the whole text (`scrubSecrets` without its check: tests compare the two). */
export function scrubAll(text: string): string {
  let out = text;
  for (const [re, to] of SECRET_PATTERNS) out = out.replace(re, to);
  return out;
}

/** pino's error serializer, without the bound parameters of a failed query. */
export function serializeError(err: unknown): unknown {
  // An error another serializer has made plain already (a copy, not an Error): scrub that copy the same way.
  const out = (err instanceof Error ? stdSerializers.err(err) : err && typeof err === 'object' ? { ...err } : err) as Record<string, unknown>;
  if (!out || typeof out !== 'object') return out;
  delete out.params;
  delete out.detail; // Postgres's "Key (token_hash)=(…) already exists": row values
  for (const k of ['message', 'stack'] as const) {
    if (typeof out[k] === 'string') out[k] = (out[k] as string).replace(/\nparams: [^\n]*/g, `\nparams: ${CENSOR}`);
  }
  return out;
}

/**
 * The request line's redaction (http/request-log.ts), worked out once from `REDACT_PATHS`: exactly what pino's
 * `redact` would censor in it, done without pino's redactor.
 *
 * Why: the line is written for every request, and pino's redactor (`@pinojs/redact`) re-parses every path and
 * walks every wildcard of `REDACT_PATHS` through each of the line's top-level fields, on every line: measured at
 * about a tenth of the server's CPU per accepted request. The line's shape is fixed — `req` (`id method url query
 * params headers remoteAddress remotePort`), `res` (`statusCode`), `responseTime`, and on a 5xx `err` (a fresh
 * Error: `type message stack`) — so the only places a path can reach are `req.headers.<name>` and
 * `req.query.<name>`: this finds those names (through the wildcards too: `*.*.token` is `req.headers.token` and
 * `req.query.token`) and refuses, at start-up, a path that could reach anything else, so the two can never drift
 * apart unnoticed. test/log-secrets.test.ts compares both on the same lines.
 */
export function requestLineRedaction(paths: readonly string[] = REDACT_PATHS) {
  const headers = new Set<string>();
  const query = new Set<string>();
  const fixed: Record<string, readonly string[]> = {
    req: ['id', 'method', 'url', 'query', 'params', 'headers', 'remoteAddress', 'remotePort'],
    res: ['statusCode'],
    err: ['type', 'message', 'stack'],
    responseTime: [],
  };
  const is = (part: string, name: string) => part === '*' || part === name;
  for (const path of paths) {
    const parts = [...path.matchAll(/[^.[\]]+|\[([^[\]]*?)\]/g)].map((m) => (m[1] ?? m[0]).replace(/^(["'`])(.*)\1$/, '$2'));
    const [top = '', second = '', name = ''] = parts;
    const tops = Object.keys(fixed).filter((k) => is(top, k));
    if (parts.length === 1 && tops.length > 0) throw new Error(`redact path ${path} reaches a request line's field`);
    if (parts.length === 2 && tops.some((t) => fixed[t]!.some((k) => is(second, k)))) throw new Error(`redact path ${path} reaches a request line's field`);
    if (parts.length >= 3 && is(top, 'req')) {
      const into = [...(is(second, 'headers') ? [headers] : []), ...(is(second, 'query') ? [query] : [])];
      if (into.length && (parts.length > 3 || name === '*')) throw new Error(`redact path ${path} reaches into a request's headers or query too deeply for the request line`);
      for (const set of into) set.add(name);
    }
  }
  /** A copy of `from` with the named keys censored, when it has any (else `from` itself). */
  const censored = <T extends Record<string, unknown>>(from: T, names: Set<string>): T => {
    let out: T | undefined;
    for (const k of names) {
      if (k in from) {
        out ??= Object.assign(Object.create(Object.getPrototypeOf(from)) as T, from);
        (out as Record<string, unknown>)[k] = CENSOR;
      }
    }
    return out ?? from;
  };
  return <R extends { headers: Record<string, unknown>; query: Record<string, unknown> }>(req: R): R => {
    const h = censored(req.headers, headers);
    const q = req.query && typeof req.query === 'object' ? censored(req.query, query) : req.query;
    return h === req.headers && q === req.query ? req : { ...req, headers: h, query: q };
  };
}

/** The options that make a pino logger safe: spread them into its options. */
export function safeLogOptions(): Pick<PinoOptions, 'redact' | 'serializers' | 'hooks'> {
  return {
    redact: { paths: REDACT_PATHS, censor: CENSOR },
    serializers: { err: serializeError },
    hooks: { streamWrite: scrubSecrets },
  };
}

/** A JSON logger with `safeLogOptions()`, for the process and for tests. */
export function createSafeLogger(opts: { level: string; base?: Record<string, unknown>; destination?: DestinationStream }): Logger {
  return pino({ level: opts.level, base: opts.base ?? { service: 'sluice' }, ...safeLogOptions() }, opts.destination);
}
