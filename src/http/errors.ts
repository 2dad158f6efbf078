import type { ErrorRequestHandler, RequestHandler } from 'express';
import type { Logger } from 'pino';

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

/**
 * The one error middleware. Client mistakes that Express or body-parser detect (bad JSON, too large)
 * keep their 4xx; anything unknown is a 500 and is logged as the bug it is.
 */
export function errorHandler(log: Logger): ErrorRequestHandler {
  return (err, req, res, _next) => {
    let status = 500;
    let body = errorBody('internal', 'internal server error');
    if (err instanceof AppError) {
      status = err.status;
      body = errorBody(err.code, err.message, err.details);
    } else if (isHttpError(err) && err.status >= 400 && err.status < 500) {
      status = err.status;
      const code = err.type === 'entity.parse.failed' ? 'invalid_json' : err.type === 'entity.too.large' ? 'payload_too_large' : 'invalid_request';
      body = errorBody(code, err.expose ? err.message : 'bad request');
    }
    if (status >= 500) (req.log ?? log).error({ err }, 'request failed');
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
