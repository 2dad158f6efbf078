import type pg from 'pg';
import { RateLimiterMemory, RateLimiterPostgres, RateLimiterRes } from 'rate-limiter-flexible';

/** The table our own migration creates (src/db/schema.ts `rateLimits`); the library is told not to create it. */
export const RATE_LIMIT_TABLE = 'rate_limits';

export interface RateLimitOptions {
  pool: pg.Pool;
  /** The limit's name: the key prefix of its rows, and what a 429 names. */
  name: string;
  /** Requests allowed per window; 0 refuses every request. */
  points: number;
  windowS: number;
}

/** One request counted against a limit. */
export interface RateDecision {
  ok: boolean;
  name: string;
  limit: number;
  windowS: number;
  remaining: number;
  /** Until the window resets. */
  resetMs: number;
}

/**
 * A fixed-window limit whose counters live in Postgres, so every process counts against the same window: a
 * thin wrapper around rate-limiter-flexible's `RateLimiterPostgres` on our own pool.
 *
 * Why it cannot race: each hit is one `INSERT … ON CONFLICT DO UPDATE … RETURNING points` on the key's row,
 * which Postgres serialises per row, so two processes can never both see the last free point. Counters use
 * each process's clock for the window's end (keep clocks in sync, as NTP does; skew only shifts a window).
 *
 * A key over its limit is then refused from this process's memory until its window ends (no more round trips
 * for a client hammering a closed door). If Postgres cannot be reached the limit still holds per process, from
 * an in-memory limiter of the same shape, until it is back: a failing database is weather, not an open door.
 */
export function createRateLimit(opts: RateLimitOptions) {
  const windowMs = opts.windowS * 1000;
  const limiter =
    opts.points > 0
      ? new RateLimiterPostgres({
          storeClient: opts.pool,
          storeType: 'pool',
          tableName: RATE_LIMIT_TABLE,
          tableCreated: true,
          // Our sweeper deletes expired rows (see `sweepExpired`); no timer per limiter.
          clearExpiredByTimeout: false,
          keyPrefix: opts.name,
          points: opts.points,
          duration: opts.windowS,
          inMemoryBlockOnConsumed: opts.points + 1,
          insuranceLimiter: new RateLimiterMemory({ keyPrefix: opts.name, points: opts.points, duration: opts.windowS }),
        })
      : null;

  const decision = (ok: boolean, r: RateLimiterRes | null): RateDecision => ({
    ok,
    name: opts.name,
    limit: opts.points,
    windowS: opts.windowS,
    remaining: r ? r.remainingPoints : 0,
    resetMs: r ? Math.max(0, r.msBeforeNext) : windowMs,
  });

  return {
    name: opts.name,
    /** Count one request for `key` (an IP, a session): ok, or not with the time until the window resets. */
    async hit(key: string): Promise<RateDecision> {
      if (!limiter) return decision(false, null);
      try {
        return decision(true, await limiter.consume(key));
      } catch (err) {
        if (err instanceof RateLimiterRes) return decision(false, err);
        throw err;
      }
    },
  };
}

export type RateLimit = ReturnType<typeof createRateLimit>;

/**
 * Delete every window that has ended (an ended window is reset by the next hit anyway, so this only frees space).
 *
 * Why it cannot deadlock: it waits for no row. A window locked right now is being counted (and so reset) by a
 * request; it is skipped, for the next sweep. Waiting for it instead could close a cycle with the accept batch
 * (runs/accept-batch.ts), which counts several windows in one statement, in key order, while this statement took
 * its rows in its scan order: each would hold a row the other waits for (test/accept-batch-sweep.test.ts).
 */
export async function sweepExpired(pool: pg.Pool): Promise<number> {
  const res = await pool.query(
    `with ended as (select key from ${RATE_LIMIT_TABLE} where expire < $1 for update skip locked)
     delete from ${RATE_LIMIT_TABLE} r using ended where r.key = ended.key`,
    [Date.now()],
  );
  return res.rowCount ?? 0;
}
