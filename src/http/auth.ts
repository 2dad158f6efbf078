import { hash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Request } from 'express';

/** A session token: 256 random bits, shown once, stored only as a SHA-256 hash. */
export function newToken(): string {
  return `sk_${randomBytes(32).toString('base64url')}`;
}

/** One-shot `crypto.hash` (Node ≥ 20.12): every authenticated request hashes its token, and a Hash object costs more. */
export function hashToken(token: string): string {
  return hash('sha256', token, 'hex');
}

const hashes = new WeakMap<Request, { token: string; hash: string }>();

/**
 * The hash of a request's token, made once per request: its budget key, its stream slot, its authentication and
 * the check of the match all use it. Kept with the request only, so it goes when the request goes.
 */
export function tokenHashOf(req: Request | undefined, token: string): string {
  if (!req) return hashToken(token);
  const known = hashes.get(req);
  if (known && known.token === token) return known.hash;
  const hash = hashToken(token);
  hashes.set(req, { token, hash });
  return hash;
}

/** Compare a presented token (or its hash, made already) with a stored hash in constant time. */
export function tokenMatches(token: string, storedHash: string, tokenHash = hashToken(token)): boolean {
  const a = Buffer.from(tokenHash, 'hex');
  const b = Buffer.from(storedHash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * The bearer token of a request: the `Authorization: Bearer` header, or — only where `allowQuery` (SSE
 * routes, since a browser's EventSource cannot send headers) — `?access_token=`.
 */
export function bearerToken(req: Request, allowQuery = false): string | undefined {
  const header = req.get('authorization');
  if (header) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    return m?.[1];
  }
  if (allowQuery && typeof req.query.access_token === 'string' && req.query.access_token) return req.query.access_token;
  return undefined;
}
