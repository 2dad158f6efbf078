import { randomUUID } from 'node:crypto';
import { hashToken } from '../../src/http/auth.js';
import { priceSnapshot } from '../../src/ledger/pricing.js';
import type { PlainAcceptance } from '../../src/runs/accept-statement.js';
import type { TestServer } from './context.js';
import type { PaidSession } from './sessions.js';

/**
 * A plain acceptance of `sats` for session `s`, as the accept of a one-token request `text` would send it (its own
 * token unless `token` says otherwise; counted against a budget of `limit` when given).
 */
export function plainAcceptance(t: TestServer, s: PaidSession, sats: number, text: string, o: { token?: string; runId?: string; limit?: number } = {}): PlainAcceptance {
  const c = t.ctx.config;
  const tokenHash = hashToken(o.token ?? s.token);
  const turn = [{ role: 'user' as const, content: text }];
  return {
    runId: o.runId ?? randomUUID(),
    sessionId: s.id,
    tokenHash,
    amountSats: sats,
    expiryHours: c.SESSION_EXPIRY_HOURS,
    claim: false,
    request: text,
    model: t.ctx.models.default.entry.name,
    instructions: null,
    turn,
    input: turn,
    maxTokens: 1,
    pricing: priceSnapshot(c),
    face: 'api',
    faceData: null,
    ephemeral: false,
    owner: t.ctx.instanceId,
    leaseTtlS: c.LEASE_TTL_S,
    window: t.ctx.executor.window,
    count: o.limit ? { key: `session_requests:${tokenHash}`, limit: o.limit, windowMs: 60_000 } : undefined,
  };
}
