import type { ErrorRequestHandler, RequestHandler } from 'express';
import type { Logger } from 'pino';
import { isDatabaseUnavailable } from '../db/errors.js';

/** An error meant for the client: one status, one stable code, a human message, optional details. */
export class AppError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'AppError';
  }
}

export const badRequest = (message: string, details?: unknown) => new AppError(400, 'invalid_request', message, details);
export const unauthorized = (message = 'a valid bearer token is required') => new AppError(401, 'unauthorized', message);
export const notFound = (what = 'resource') => new AppError(404, 'not_found', `${what} not found`);
export const conflict = (code: string, message: string, details?: unknown) => new AppError(409, code, message, details);

export function errorBody(code: string, message: string, details?: unknown) {
  return { error: details === undefined ? { code, message } : { code, message, details } };
}

export const notFoundHandler: RequestHandler = (req, _res, next) => {
  next(new AppError(404, 'not_found', `no route for ${req.method} ${req.path}`));
};

/** Seconds a client is told to wait when this process's run queue is full (MAX_QUEUED_RUNS): about a few runs' time. */
export const OVERLOADED_RETRY_AFTER_S = 2;

/** Refused before any money moved: this process already has MAX_QUEUED_RUNS runs waiting for a slot. */
export const overloaded = () =>
  new AppError(503, 'overloaded', `the server has as many runs waiting as it takes (MAX_QUEUED_RUNS); try again in ${OVERLOADED_RETRY_AFTER_S} s`, {
    retryAfterSeconds: OVERLOADED_RETRY_AFTER_S,
  });

/** Seconds a client is told to wait (`Retry-After`) when the database is unreachable. */
export const DATABASE_RETRY_AFTER_S = 2;

/** The answer while the database is down: weather, not a bug; the same request may succeed in a moment. */
export const databaseUnavailable = (cause?: unknown) =>
  new AppError(503, 'database_unavailable', 'the database is not reachable; try again shortly', undefined, { cause });

/**
 * The one error middleware. Client mistakes that Express or body-parser detect (bad JSON, too large)
 * keep their 4xx; a database that cannot be reached is `503 database_unavailable` with `Retry-After`; anything
 * unknown is a 500 and is logged as the bug it is.
 */
export function errorHandler(log: Logger): ErrorRequestHandler {
  return (err, req, res, _next) => {
    let status = 500;
    let body = errorBody('internal', 'internal server error');
    if (!(err instanceof AppError) && isDatabaseUnavailable(err)) err = databaseUnavailable(err);
    if (err instanceof AppError) {
      status = err.status;
      body = errorBody(err.code, err.message, err.details);
      if (err.code === 'database_unavailable' && !res.headersSent) res.setHeader('Retry-After', String(DATABASE_RETRY_AFTER_S));
      if (err.code === 'overloaded' && !res.headersSent) res.setHeader('Retry-After', String(OVERLOADED_RETRY_AFTER_S));
    } else if (isHttpError(err) && err.status >= 400 && err.status < 500) {
      status = err.status;
      const code = err.type === 'entity.parse.failed' ? 'invalid_json' : err.type === 'entity.too.large' ? 'payload_too_large' : 'invalid_request';
      body = errorBody(code, err.expose ? err.message : 'bad request');
    }
    if (status === 503) (req.log ?? log).warn({ err }, 'request refused: the database is not reachable');
    else if (status >= 500) (req.log ?? log).error({ err }, 'request failed');
    if (res.headersSent) {
      res.end();
      return;
    }
    res.status(status).json(body);
  };
}

function isHttpError(err: unknown): err is { status: number; type?: string; expose?: boolean; message: string } {
  return typeof err === 'object' && err !== null && typeof (err as { status?: unknown }).status === 'number';
}
