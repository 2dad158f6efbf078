import type { ErrorRequestHandler, RequestHandler, Response } from 'express';
import type { Logger } from 'pino';
import { isDatabaseUnavailable } from '../db/errors.js';
import { AppError, DATABASE_RETRY_AFTER_S, databaseUnavailable, OVERLOADED_RETRY_AFTER_S } from '../http/errors.js';

/** OpenAI's error envelope: what the `openai` SDK turns into its own error classes by status. */
export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** An error already in OpenAI's terms. */
export class OpenAiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'OpenAiError';
  }
}

export const invalidRequest = (message: string, param: string | null = null, code: string | null = null) => new OpenAiError(400, message, 'invalid_request_error', code, param);
export const notFound = (message: string, param: string | null = null) => new OpenAiError(404, message, 'invalid_request_error', null, param);
export const modelNotFound = (model: string) =>
  new OpenAiError(404, `The model \`${model}\` does not exist or you do not have access to it.`, 'invalid_request_error', 'model_not_found', 'model');

/** The param an engine refusal is about, by its code. */
const PARAM: Record<string, string> = {
  conversation_busy: 'conversation',
  conversation_not_found: 'conversation',
  previous_run_not_found: 'previous_response_id',
  previous_run_not_completed: 'previous_response_id',
  invalid_idempotency_key: 'Idempotency-Key',
  idempotency_key_conflict: 'Idempotency-Key',
  invalid_cursor: 'starting_after',
};

/** An AppError of the engine or of shared code, in OpenAI's terms. */
function translate(err: AppError, path: string): OpenAiError {
  switch (err.code) {
    case 'unauthorized':
      return new OpenAiError(401, `Incorrect API key provided: ${err.message}. Use a Sluice session token as the API key.`, 'invalid_request_error', 'invalid_api_key');
    // No balance, or a session that cannot pay yet (unpaid, expired): what OpenAI sends for an exhausted quota.
    case 'insufficient_balance':
    case 'session_not_active':
      return new OpenAiError(429, `You exceeded your current quota: ${err.message}. Top up the session to continue.`, 'insufficient_quota', 'insufficient_quota');
    case 'shutting_down':
      return new OpenAiError(503, err.message, 'server_error', 'shutting_down');
    // Too many runs waiting here (MAX_QUEUED_RUNS): retryable, after Retry-After (the SDK retries a 503 itself).
    case 'overloaded':
      return new OpenAiError(503, err.message, 'server_error', 'overloaded');
    // Our own limits: OpenAI's rate-limit error, which the SDK retries after Retry-After.
    case 'rate_limited':
      return new OpenAiError(429, err.message, 'requests', 'rate_limit_exceeded');
    case 'too_many_streams':
      return new OpenAiError(429, err.message, 'requests', 'too_many_streams');
    // Weather, not a mistake: the same request may succeed in a moment (the SDK retries a 503).
    case 'database_unavailable':
      return new OpenAiError(503, err.message, 'server_error', 'database_unavailable');
    case 'context_length_exceeded':
      return new OpenAiError(400, err.message, 'invalid_request_error', 'context_length_exceeded', path.includes('chat') ? 'messages' : 'input');
    case 'run_active':
      return new OpenAiError(409, 'The response is still in progress; cancel it first.', 'invalid_request_error', 'response_active');
    case 'invalid_request': {
      const first = (err.details as Array<{ path?: string }> | undefined)?.[0];
      return invalidRequest(err.message, first?.path || null);
    }
  }
  const type = err.status >= 500 ? 'server_error' : 'invalid_request_error';
  return new OpenAiError(err.status, err.message, type, err.code === 'not_found' ? null : err.code, PARAM[err.code] ?? null);
}

/**
 * Provider failures (a `502`) that no second attempt can mend: the operator's key or account, or the request
 * itself. The SDK retries every 5xx, so without `x-should-retry: false` each would be asked three times — three
 * runs, three debits and refunds, three calls to the provider. The others (unavailable, rate limited, timed out,
 * cut off, a malformed stream) may pass on another attempt, which the SDK is left to make.
 */
const UNMENDABLE_BY_RETRY = new Set(['provider_auth_failed', 'provider_quota_exceeded', 'provider_rejected', 'context_length_exceeded']);

/**
 * Write an OpenAI error. A retry cannot fix a 4xx here — except a rate limit, which passes with time — nor a
 * provider failure of the kinds above, so the SDK is told not to retry those; a 503 or a rate limit says when to
 * come back.
 */
export function sendOpenAiError(res: Response, e: OpenAiError): void {
  const waitable = e.code === 'rate_limit_exceeded' || e.code === 'too_many_streams';
  if ((e.status < 500 && !waitable) || (e.code !== null && UNMENDABLE_BY_RETRY.has(e.code))) res.setHeader('x-should-retry', 'false');
  if ((e.status === 503 || waitable) && !res.getHeader('Retry-After')) {
    res.setHeader('Retry-After', String(e.code === 'database_unavailable' ? DATABASE_RETRY_AFTER_S : e.code === 'overloaded' ? OVERLOADED_RETRY_AFTER_S : 5));
  }
  const body: OpenAiErrorBody = { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
  res.status(e.status).json(body);
}

export const openAiNotFound: RequestHandler = (req, _res, next) => {
  next(new OpenAiError(404, `Invalid URL (${req.method} ${req.originalUrl.split('?')[0]})`, 'invalid_request_error'));
};

/** The /v1 error middleware: everything leaves in OpenAI's envelope; only a real bug is a 500. */
export function openAiErrorHandler(log: Logger): ErrorRequestHandler {
  return (err, req, res, _next) => {
    let e: OpenAiError;
    if (!(err instanceof AppError) && !(err instanceof OpenAiError) && isDatabaseUnavailable(err)) err = databaseUnavailable(err);
    if (err instanceof OpenAiError) e = err;
    else if (err instanceof AppError) e = translate(err, req.path);
    else if (isHttpError(err) && err.status >= 400 && err.status < 500) {
      const message = err.type === 'entity.parse.failed' ? 'We could not parse the JSON body of your request.' : err.expose ? err.message : 'bad request';
      e = new OpenAiError(err.status, message, 'invalid_request_error', err.type === 'entity.too.large' ? 'payload_too_large' : null);
    } else e = new OpenAiError(500, 'The server had an error while processing your request.', 'server_error');
    if (e.status >= 500) (req.log ?? log).error({ err }, 'request failed');
    if (res.headersSent) {
      res.end();
      return;
    }
    sendOpenAiError(res, e);
  };
}

function isHttpError(err: unknown): err is { status: number; type?: string; expose?: boolean; message: string } {
  return typeof err === 'object' && err !== null && typeof (err as { status?: unknown }).status === 'number';
}
