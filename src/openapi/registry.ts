import type { OpenAPIRegistry, ResponseConfig, RouteConfig } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';
import type { Config } from '../config.js';

/**
 * The pieces every part of the OpenAPI document shares: security schemes, headers, the error envelopes of both
 * faces with the codes a client can meet, and small builders for JSON and SSE content. Each feature describes
 * its own routes in a `*.openapi.ts` file beside its `*.routes.ts`, with these, and with the very zod schemas its
 * routes validate with (`*.schemas.ts`).
 */
export type Registry = OpenAPIRegistry;

/** What a description may depend on: the configuration (its limits shape the schemas) and the catalogue. */
export interface DocContext {
  config: Config;
  /** The catalogue's default model (the examples name it). */
  defaultModel: string;
}
export type Responses = RouteConfig['responses'];

/** `Authorization: Bearer <sessionToken>` (on `/v1`, the session token is the API key). */
export const bearer: Array<Record<string, string[]>> = [{ sessionToken: [] }];
/** SSE routes also take the token as `?access_token=` (a browser's EventSource cannot send headers). */
export const bearerOrQuery: Array<Record<string, string[]>> = [{ sessionToken: [] }, { accessToken: [] }];

const ref = (kind: string, name: string) => ({ $ref: `#/components/${kind}/${name}` });
const headerRefs = (...names: string[]) => Object.fromEntries(names.map((n) => [n, ref('headers', n)]));
export const RATE_LIMIT_HEADERS = ['RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset', 'RateLimit-Policy'];

/** Security schemes and headers, once per document. */
export function registerCommon(r: Registry): void {
  r.registerComponent('securitySchemes', 'sessionToken', {
    type: 'http',
    scheme: 'bearer',
    description:
      'A session token (`sk_…`), shown once by `POST /api/sessions`. On `/v1` it is the API key (`new OpenAI({ apiKey })`). Without one, or with an unknown one: 401; a good token for another session’s resource: 404, as if it did not exist.',
  });
  r.registerComponent('securitySchemes', 'accessToken', {
    type: 'apiKey',
    in: 'query',
    name: 'access_token',
    description: 'The session token as a query parameter, on SSE streams and the WebSocket (`GET /api/ws`) only: a browser’s `EventSource` and `WebSocket` cannot send an `Authorization` header. Never logged.',
  });
  const integer = { type: 'integer' as const };
  const headers: Record<string, { description: string; schema: object }> = {
    'Retry-After': { description: 'Seconds to wait before trying again.', schema: integer },
    'RateLimit-Limit': { description: 'Requests allowed in the window of the tightest limit this request counted against (IETF draft).', schema: integer },
    'RateLimit-Remaining': { description: 'Requests left in that window.', schema: integer },
    'RateLimit-Reset': { description: 'Seconds until that window ends.', schema: integer },
    'RateLimit-Policy': { description: 'That limit as `<limit>;w=<window seconds>`.', schema: { type: 'string', examples: ['300;w=60'] } },
    'X-Request-Id': { description: 'The id of this request in the server’s logs (yours, if you sent a valid `X-Request-Id`).', schema: { type: 'string' } },
    Location: { description: 'Where the created thing can be read.', schema: { type: 'string' } },
    'Idempotent-Replayed': { description: '`true` when this is the answer to an earlier request with the same `Idempotency-Key`.', schema: { type: 'string', enum: ['true'] } },
    'x-should-retry': { description: '`false` on every 4xx but a rate limit: the `openai` SDK then does not retry.', schema: { type: 'string', enum: ['false'] } },
  };
  for (const [name, h] of Object.entries(headers)) r.registerComponent('headers', name, h);
}

/** JSON content. */
export const json = (schema: z.ZodType, examples?: Record<string, { summary: string; value: unknown }>) => ({
  'application/json': { schema, ...(examples ? { examples } : {}) },
});

/** A required JSON request body, with named examples (each is checked against `schema` by the tests). */
export const jsonBody = (schema: z.ZodType, examples?: Record<string, { summary: string; value: unknown }>) => ({ required: true, content: json(schema, examples) });

/** SSE content: `frames` describes each frame as `{id?, event?, data}` (the convention code generators read). */
export const sse = (frames: z.ZodType) => ({ 'text/event-stream': { schema: frames } });

/** A success response, with the headers it carries. */
export function ok(description: string, content?: ResponseConfig['content'], ...headers: string[]): ResponseConfig {
  return { description, ...(content ? { content } : {}), ...(headers.length ? { headers: headerRefs(...headers) } : {}) };
}

/**
 * An SSE frame: the `id:` line (when the event has one), the `event:` line (its name, or one of several; none for
 * a plain `data:` frame) and the JSON of the `data:` line.
 */
export function frame<D extends z.ZodType>(event: string | readonly [string, ...string[]] | null, data: D, id: 'seq' | 'none' | z.ZodType, description: string) {
  return z
    .object({
      ...(id === 'none' ? {} : { id: id === 'seq' ? z.int().min(1).meta({ description: 'The `id:` line: the event’s `seq` in the run’s log (resume after it).' }) : id }),
      ...(event === null ? {} : { event: typeof event === 'string' ? z.literal(event) : z.enum(event) }),
      data,
    })
    .meta({ description });
}

// ---------------------------------------------------------------------------------------------------------------
// The /api face's error envelope

/** What each `/api` error code means: the descriptions of the responses that can carry it. */
const API_CODES = {
  invalid_request: 'the input failed validation; `details` lists the issues as `{path, message, code}`',
  invalid_json: 'the body is not JSON (or not an object or array)',
  invalid_cursor: 'the list cursor is not one this endpoint gave you (or was given to another session)',
  invalid_idempotency_key: '`Idempotency-Key` is not 1–255 visible ASCII characters',
  model_not_found: '`model` is not in the catalogue; `details.models` lists those that are',
  context_length_exceeded: 'the request does not fit the model’s context',
  invalid_invoice: 'the refund invoice cannot be decoded, or is one of this server’s own',
  wrong_network: 'the refund invoice is for another Lightning network (`details: {expectedNetwork, invoiceNetwork}`)',
  invoice_expired: 'the invoice has expired (a refund invoice: or expires within 30 s; `details: {expiresAt}`)',
  amount_required: 'the refund invoice has no amount',
  wrong_amount: 'the refund invoice is not for exactly the amount owed (`details: {expectedSats, invoiceSats, invoiceMsat}`)',
  invoice_already_used: 'that invoice already paid a refund (an invoice pays one, ever)',
  unauthorized: 'no bearer token, or one no session has',
  insufficient_balance: 'the balance cannot cover the estimate (`details: {balanceSats, requiredSats}`)',
  invalid_preimage: 'the preimage is not the one this payment revealed',
  not_found: 'no such thing — or it belongs to another session (ids cannot be probed)',
  session_not_active: 'the session is not active (unpaid, or expired)',
  idempotency_key_conflict: 'this `Idempotency-Key` was used with another request body',
  run_active: 'the run is still active: stop it first',
  not_refundable: 'nothing can be refunded in this state (`details.state` on an invoice)',
  nothing_owed: 'the job owes nothing back',
  refund_in_progress: 'a refund payout is under way (`details` shows it)',
  refund_already_paid: 'the refund was paid (`details.refundPaymentHash`)',
  payload_too_large: 'the body is over 64 KiB',
  rate_limited: 'a limit was reached (`details: {limit, retryAfterSeconds}`); wait `Retry-After` seconds',
  payment_provider_error: 'the payment provider could not make an invoice; nothing was recorded, try again',
  payment_failed: 'the refund payout failed for good; the refund is still owed: give another invoice (`details` shows the payout)',
  provider_error: 'the AI provider failed',
  provider_rate_limited: 'the AI provider is rate limiting this server (it was retried first)',
  provider_unavailable: 'the AI provider could not be reached or answered 5xx (it was retried first)',
  provider_timeout: 'the AI provider sent no first token, or went silent, within its timeout',
  provider_disconnected: 'the AI provider’s connection broke mid-reply',
  provider_auth_failed: 'the AI provider refused this server’s key (an operator must fix it)',
  provider_quota_exceeded: 'this server’s account with the AI provider is out of quota (an operator must fix it)',
  provider_rejected: 'the AI provider refused the request',
  too_many_streams: 'this client already has `SSE_MAX_STREAMS_PER_IP` streams open (`details.limit`): close one (over a WebSocket: the socket holds `WS_MAX_SUBSCRIPTIONS` subscriptions)',
  upgrade_required: 'this is a WebSocket endpoint: connect with a WebSocket client (`Upgrade: websocket`)',
  origin_not_allowed: 'a page of this origin may not open a WebSocket here: only this server’s own origin and `CORS_ORIGINS`',
  shutting_down: 'the server is shutting down; try again (another process, or shortly)',
  database_unavailable: 'the database is not reachable right now; wait `Retry-After` seconds and try again',
} as const;
export type ApiErrorCode = keyof typeof API_CODES;

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad request',
  401: 'Unauthorized',
  402: 'Payment required',
  403: 'Forbidden',
  404: 'Not found',
  409: 'Conflict',
  413: 'Payload too large',
  426: 'Upgrade required',
  429: 'Too many requests',
  502: 'Bad gateway: a provider behind the server failed',
  503: 'Service unavailable',
};

/** `{"error": {"code", "message", "details"?}}` with the codes this response can carry. */
const apiErrorBody = (codes: readonly [string, ...string[]]) =>
  z.object({
    error: z.object({
      code: z.enum(codes).meta({ description: 'Stable and machine-readable: branch on this.' }),
      message: z.string().meta({ description: 'For people; may change.' }),
      details: z.unknown().optional(),
    }),
  });

export type ErrorSpec = Partial<Record<number, readonly ApiErrorCode[]>>;

/** The `/api` error responses of an operation, by status, from one or more specs (merged). */
export function apiErrors(...specs: ErrorSpec[]): Responses {
  const merged = new Map<number, Set<ApiErrorCode>>();
  for (const spec of specs) {
    for (const [status, codes] of Object.entries(spec)) {
      const set = merged.get(Number(status)) ?? new Set();
      for (const code of codes ?? []) set.add(code);
      merged.set(Number(status), set);
    }
  }
  // Every operation of /api reads Postgres: while it cannot be reached, each answers 503 (issue #9).
  const unavailable = merged.get(503) ?? new Set<ApiErrorCode>();
  unavailable.add('database_unavailable');
  merged.set(503, unavailable);
  const out: Responses = {};
  for (const [status, set] of [...merged].sort(([a], [b]) => a - b)) {
    const codes = [...set] as [ApiErrorCode, ...ApiErrorCode[]];
    const list = codes.map((c) => `- \`${c}\`: ${API_CODES[c]}`).join('\n');
    const waits = status === 429 ? ['Retry-After', ...RATE_LIMIT_HEADERS] : status === 503 ? ['Retry-After'] : [];
    out[status] = ok(`${STATUS_TEXT[status] ?? 'Error'}.\n\n${list}`, json(apiErrorBody(codes)), ...waits);
  }
  return out;
}

/** What every route with a JSON body can answer besides its own errors. */
export const BODY_ERRORS: ErrorSpec = { 400: ['invalid_json'], 413: ['payload_too_large'] };
/** What every route of a session (bearer token) can answer besides its own errors. */
export const SESSION_ERRORS: ErrorSpec = { 401: ['unauthorized'], 404: ['not_found'], 429: ['rate_limited'] };
/** What a stream can answer before it starts: a bad cursor, or too many streams open. */
export const STREAM_ERRORS: ErrorSpec = { 400: ['invalid_request'], 429: ['rate_limited', 'too_many_streams'] };
/** What a call that streams the AI itself (the demo) can answer when the provider fails: its run error code. */
export const PROVIDER_ERRORS: ErrorSpec = {
  502: ['provider_error', 'provider_rate_limited', 'provider_unavailable', 'provider_timeout', 'provider_disconnected', 'provider_auth_failed', 'provider_quota_exceeded', 'provider_rejected'],
};
