import { createHash } from 'node:crypto';
import type { Request } from 'express';
import { configure } from 'safe-stable-stringify';
import { AppError } from './errors.js';

/** JSON with object keys sorted at every depth: two bodies that mean the same thing print the same. */
const canonical = configure({ deterministic: true, bigint: false });

/** What an `Idempotency-Key` may hold: 1–255 visible ASCII characters (a UUID, a ULID, a hash…). */
export const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

/**
 * How deep a fingerprinted body may nest. JSON.parse takes a body nested tens of thousands deep; the canonical
 * stringify below recurses, and would overflow the stack (a 500). No request of ours nests past a handful of levels.
 */
const MAX_BODY_DEPTH = 64;

/** Whether `value` nests deeper than `max` (an explicit stack: no recursion to overflow). */
function nestsDeeperThan(value: unknown, max: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth >= max) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, depth + 1]);
  }
  return false;
}

/**
 * The `Idempotency-Key` of a request and the fingerprint of what it asked (its route and its canonical JSON
 * body), or null without the header. A malformed key is a 400 (in the face's envelope: the caller's error
 * handler translates it).
 */
export function idempotencyOf(req: Request, route: string): { key: string; fingerprint: string } | null {
  const key = req.get('idempotency-key');
  if (key === undefined) return null;
  if (!IDEMPOTENCY_KEY.test(key)) throw new AppError(400, 'invalid_idempotency_key', 'Idempotency-Key must be 1 to 255 visible ASCII characters');
  if (nestsDeeperThan(req.body, MAX_BODY_DEPTH)) throw new AppError(400, 'invalid_request', `the JSON body nests deeper than ${MAX_BODY_DEPTH} levels`, []);
  const fingerprint = createHash('sha256')
    .update(`${route}\n${canonical(req.body ?? null) ?? 'null'}`)
    .digest('hex');
  return { key, fingerprint };
}
