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

export function scrubSecrets(text: string): string {
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
