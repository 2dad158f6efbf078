import type { z } from 'zod';
import { AppError } from './errors.js';

/** Parse `input` with `schema`, or throw `400 invalid_request` with the zod issues as details. */
export function parse<S extends z.ZodType>(schema: S, input: unknown, what = 'request body'): z.infer<S> {
  const result = schema.safeParse(input ?? {});
  if (result.success) return result.data;
  const details = result.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message, code: i.code }));
  const first = details[0];
  const message = first ? `invalid ${what}: ${first.path ? `${first.path}: ` : ''}${first.message}` : `invalid ${what}`;
  throw new AppError(400, 'invalid_request', message, details);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A path id that is not a UUID names nothing: answer 404 as for an unknown one (and keep it out of SQL). */
export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID.test(value);
}
