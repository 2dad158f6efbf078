import { createHash } from 'node:crypto';
import type { Request } from 'express';
import { configure } from 'safe-stable-stringify';
import { AppError } from './errors.js';

/** JSON with object keys sorted at every depth: two bodies that mean the same thing print the same. */
const canonical = configure({ deterministic: true, bigint: false });

/** What an `Idempotency-Key` may hold: 1–255 visible ASCII characters (a UUID, a ULID, a hash…). */
export const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

/**
 * The `Idempotency-Key` of a request and the fingerprint of what it asked (its route and its canonical JSON
 * body), or null without the header. A malformed key is a 400 (in the face's envelope: the caller's error
 * handler translates it).
 */
export function idempotencyOf(req: Request, route: string): { key: string; fingerprint: string } | null {
  const key = req.get('idempotency-key');
  if (key === undefined) return null;
  if (!IDEMPOTENCY_KEY.test(key)) throw new AppError(400, 'invalid_idempotency_key', 'Idempotency-Key must be 1 to 255 visible ASCII characters');
  const fingerprint = createHash('sha256')
    .update(`${route}\n${canonical(req.body ?? null) ?? 'null'}`)
    .digest('hex');
  return { key, fingerprint };
}
