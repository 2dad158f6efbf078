import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Request } from 'express';

/** A session token: 256 random bits, shown once, stored only as a SHA-256 hash. */
export function newToken(): string {
  return `sk_${randomBytes(32).toString('base64url')}`;
}

let lastToken: string | undefined;
let lastHash = '';

/**
 * The SHA-256 of a token, hex. One request hashes its token several times (its budget key, its stream slot, its
 * authentication, the check of the match): the last token's hash is kept, so that is one hash per request.
 */
export function hashToken(token: string): string {
  if (token !== lastToken) {
    lastHash = createHash('sha256').update(token).digest('hex');
    lastToken = token;
  }
  return lastHash;
}

/** Compare a presented token with a stored hash in constant time. */
export function tokenMatches(token: string, storedHash: string): boolean {
  const a = Buffer.from(hashToken(token), 'hex');
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
