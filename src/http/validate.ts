import { z } from 'zod';
import type { Config } from '../config.js';
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

/**
 * A schema factory whose schemas depend on the configuration (limits such as REQUEST_MAX_CHARS), built once per
 * configuration: a route and the OpenAPI document asking for it with the same config get the same instance, so
 * the schema that validates a request is the very one the document describes, and none is built per request.
 */
export function perConfig<T>(build: (c: Config) => T): (c: Config) => T {
  const built = new WeakMap<Config, T>();
  return (c) => {
    if (!built.has(c)) built.set(c, build(c));
    return built.get(c)!;
  };
}

/** A UUID, any case. (No regex flags: the OpenAPI document carries this pattern as it is.) */
export const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** A path id that is not a UUID names nothing: answer 404 as for an unknown one (and keep it out of SQL). */
export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID.test(value);
}

/** A lone UTF-16 surrogate: JSON can carry one, Postgres's jsonb cannot store one. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Text Postgres can store in text and jsonb alike: no NUL, no lone surrogate. */
export const storableText = (s: string) => !s.includes('\u0000') && !LONE_SURROGATE.test(s);

/** Replace what Postgres cannot store (NUL dropped, a lone surrogate becomes U+FFFD), for text we did not choose. */
export const toStorable = (s: string) => (storableText(s) ? s : s.replaceAll('\u0000', '').replace(new RegExp(LONE_SURROGATE, 'g'), '\ufffd'));

/**
 * The text of a request for AI work: a non-blank string of at most `max` characters, without NUL (which
 * Postgres text cannot hold, so it must be a 400 here rather than a 500 later).
 */
export function requestText(max: number, name = 'request') {
  return z
    .string({ error: `${name} must be a string` })
    .max(max, `${name} must be at most ${max} characters`)
    .refine((s) => s.trim().length > 0, `${name} must not be empty`)
    .refine((s) => !s.includes('\u0000'), `${name} must not contain NUL characters`)
    .refine((s) => storableText(s), `${name} must be valid Unicode text`);
}
