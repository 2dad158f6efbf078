import type { Request } from 'express';

/**
 * The per-session request budget (SESSION_RATE_LIMIT_PER_MIN), counted in the statement each request makes anyway.
 *
 * A request that carries a bearer token costs its session one point of a fixed window, counted in Postgres so every
 * process draws on the same budget. Counting it with a statement of its own cost a round trip per request; instead
 * the count is a CTE of the first statement the request makes: its authentication (sessions.service.ts), the accept
 * of its work (runs/accept.ts), the opening of its stream. That statement acts only if the count is within budget,
 * and the count is the same row, in the same shape, as rate-limiter-flexible's Postgres limiter (which still counts
 * everything else), so both draw on one window.
 *
 * Why every request is still counted, exactly once, before it is answered: the hit is pending from the middleware
 * until a statement takes it (`take` hands it out once). A request that answers before making any statement (an
 * invalid body, a missing token) passes through the error middleware, which counts it then (`countBeforeError` in
 * http/limits.ts) and answers 429 instead if the budget is spent; a success that took none (a route that does not
 * authenticate) is counted as it finishes. So the budget, its headers and its 429 are exactly what they were with a
 * statement per request — `test/limits.test.ts` counts them down across two processes.
 *
 * The trade-off: a count made inside a statement that then fails (the database went away) is rolled back with it;
 * the request was not served either, so nothing is lost but a point the client did not spend.
 */
export interface BudgetCount {
  /** The `rate_limits` key: `session_requests:<sha-256 of the token>`. */
  key: string;
  limit: number;
  windowMs: number;
}

/** What a count said: the points used in the window (this request's included) and when the window ends (epoch ms). */
export interface Counted {
  points: number;
  expire: number;
}

/**
 * The count as a CTE body (`rl`), rate-limiter-flexible's upsert (RateLimiterPostgres `_upsert`): a point on the
 * key's row, or a fresh window if the old one ended. Its parameters are `$p` (key), `$p+1` (window end if it starts
 * now) and `$p+2` (now), in epoch ms: the window is measured by each process's clock, as the library measures it.
 */
export const countSql = (p: number) => `
    insert into rate_limits (key, points, expire) values ($${p}, 1, $${p + 1}::bigint)
    on conflict (key) do update set
      points = case when rate_limits.expire <= $${p + 2}::bigint then 1 else rate_limits.points + 1 end,
      expire = case when rate_limits.expire <= $${p + 2}::bigint then $${p + 1}::bigint else rate_limits.expire end
    returning points, expire`;

export const countValues = (c: BudgetCount, now = Date.now()): unknown[] => [c.key, now + c.windowMs, now];

export const SESSION_BUDGET_NAME = 'session_requests';

/** The pending counts of requests in flight (a WeakMap: a request that is dropped takes its entry with it). */
export function createPendingCounts() {
  const pending = new WeakMap<Request, BudgetCount>();
  return {
    defer(req: Request, count: BudgetCount) {
      pending.set(req, count);
    },
    /** The request's count if no statement has taken it yet; taking it makes the caller responsible for it. */
    take(req: Request | undefined): BudgetCount | undefined {
      if (!req) return undefined;
      const c = pending.get(req);
      if (c) pending.delete(req);
      return c;
    },
  };
}

export type PendingCounts = ReturnType<typeof createPendingCounts>;
