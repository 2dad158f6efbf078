import { randomUUID } from 'node:crypto';
import { eq, inArray, lt, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db } from '../db/pool.js';
import { streamSlots } from '../db/schema.js';

/** First half of the advisory lock key: the class of locks that guard stream slots (any fixed number of ours). */
const LOCK_CLASS = 0x5_1c_e;

/**
 * A concurrency limit shared by every process: how many streams one key (a session, a job) has open at once.
 * Each open stream holds a row of `stream_slots`; closing the stream deletes it. rate-limiter-flexible counts
 * requests per window, not things held open, so this small table does what it cannot: a slot per holder, each
 * with its own expiry.
 *
 * Why it cannot race: taking a slot is one transaction that first takes a transaction-scoped advisory lock on
 * the key, then inserts only if fewer than `max` live slots exist. Takers of one key, in any process, are
 * serialised by the lock, and each counts in a statement that starts after the previous taker committed
 * (READ COMMITTED gives every statement a fresh snapshot), so the count is never stale.
 *
 * Why it heals: a slot expires `ttlS` after its last renewal. This process renews all the slots it holds in
 * one UPDATE every ttlS/3; a process that dies stops renewing, and its slots stop counting after at most ttlS
 * (the sweeper deletes them later). Only live slots are counted, so a crash never locks a session out.
 */
export function createStreamSlots(deps: { db: Db; log: Logger; ttlS: number }) {
  const held = new Set<string>();
  let heartbeat: NodeJS.Timeout | null = null;

  function renew() {
    const ids = [...held];
    if (ids.length === 0) return;
    deps.db
      .update(streamSlots)
      .set({ expiresAt: sql`now() + make_interval(secs => ${deps.ttlS})` })
      .where(inArray(streamSlots.id, ids))
      .catch((err: unknown) => deps.log.warn({ err }, 'renewing stream slots failed; they lapse if this goes on'));
  }

  // The heartbeat runs only while this process holds a slot: no timer to start or stop with the server.
  function track(id: string, holding: boolean) {
    if (holding) held.add(id);
    else held.delete(id);
    if (held.size > 0 && !heartbeat) {
      heartbeat = setInterval(renew, (deps.ttlS * 1000) / 3);
      heartbeat.unref();
    } else if (held.size === 0 && heartbeat) {
      clearInterval(heartbeat);
      heartbeat = null;
    }
  }

  return {
    /** Take one of `key`'s `max` slots: the function that gives it back, or null when all are taken. */
    async acquire(key: string, max: number): Promise<(() => void) | null> {
      const id = randomUUID();
      const taken = await deps.db.transaction(async (tx) => {
        await tx.execute(sql`select pg_advisory_xact_lock(${LOCK_CLASS}::int, hashtext(${key}))`);
        const res = await tx.execute(sql`
          insert into stream_slots (id, key, expires_at)
          select ${id}, ${key}, now() + make_interval(secs => ${deps.ttlS})
          where (select count(*) from stream_slots where key = ${key} and expires_at > now()) < ${max}
          returning id`);
        return res.rows.length > 0;
      });
      if (!taken) return null;
      track(id, true);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        track(id, false);
        deps.db
          .delete(streamSlots)
          .where(eq(streamSlots.id, id))
          .catch((err: unknown) => deps.log.warn({ err }, 'giving back a stream slot failed; it lapses by itself'));
      };
    },

    /** Slots this process holds now. */
    get held() {
      return held.size;
    },

    /** Delete lapsed slots (a dead process's). They no longer count; this only frees space. */
    async sweep(): Promise<number> {
      const res = await deps.db.delete(streamSlots).where(lt(streamSlots.expiresAt, sql`now()`));
      return res.rowCount ?? 0;
    },
  };
}

export type StreamSlots = ReturnType<typeof createStreamSlots>;
