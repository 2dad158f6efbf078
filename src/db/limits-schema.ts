import { bigint, index, integer, pgTable, text, timestamp, uniqueIndex, uuid, varchar } from 'drizzle-orm/pg-core';

/** The tables of the operator's limits (src/limits/): shared by every process, so a limit holds across the fleet. */

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });

/**
 * Rate-limit counters shared by every process, in the exact shape `rate-limiter-flexible`'s Postgres limiter
 * reads and writes (it is told the table exists, so it never creates one itself): one row per limit and key
 * (`<limit>:<ip or session>`), `points` used in the window that ends at `expire` (epoch milliseconds).
 * Expired rows are deleted by the sweeper.
 */
export const rateLimits = pgTable(
  'rate_limits',
  {
    key: varchar('key', { length: 255 }).primaryKey(),
    points: integer('points').notNull().default(0),
    expire: bigint('expire', { mode: 'number' }),
  },
  (t) => [index('rate_limits_expire_idx').on(t.expire)],
);

/**
 * Open streams, one row per open SSE connection, for the concurrency limit per session. A row lives while its
 * connection does: deleted on close, and kept alive by its process's heartbeat; a process that dies stops
 * renewing, so its rows lapse after the TTL and the limit heals by itself. See limits/stream-slots.ts.
 */
export const streamSlots = pgTable(
  'stream_slots',
  {
    id: uuid('id').primaryKey(),
    /** What is limited, e.g. `session:<token hash>`. */
    key: text('key').notNull(),
    /** The slot's number, 1 to the limit: (key, n) is unique, so no key ever holds more slots than the limit. */
    n: integer('n'),
    expiresAt: ts('expires_at').notNull(),
  },
  (t) => [uniqueIndex('stream_slots_key_n_uq').on(t.key, t.n), index('stream_slots_expires_idx').on(t.expiresAt)],
);
