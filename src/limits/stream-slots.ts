import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { Logger } from 'pino';
import { run, statement } from '../db/statements.js';

/**
 * A concurrency limit shared by every process: how many streams one key (a session, a job) has open at once.
 * Each open stream holds a numbered slot of its key, a row of `stream_slots` (key, n) with n from 1 to `max`;
 * closing the stream deletes it. rate-limiter-flexible counts requests per window, not things held open, so this
 * small table does what it cannot: a slot per holder, each with its own expiry.
 *
 * Why it cannot hand out more than `max`: the slot numbers are the unique key (key, n), and n never exceeds `max`.
 * (A slot without a number — a row from before numbers, during a rolling deploy — counts too: nothing is taken
 * while `max` live slots of the key are seen.)
 * Taking a slot is one statement (`slotSql`): insert the lowest number no live slot holds, or take over a lapsed
 * one. Two takers that chose the same number (both saw it free) are decided by the unique index: the second waits
 * for the first's commit, then finds it live and takes nothing. That loser is told how many slots were live when
 * its statement began; if fewer than `max`, a number was free and it tries again with a fresh snapshot (each lost
 * race means someone else took a slot, so this ends); if `max`, the key is full. One statement per stream in the
 * usual case — it used to be four (BEGIN, an advisory lock, the insert, COMMIT).
 *
 * Why it heals: a slot expires `ttlS` after its last renewal. This process renews all the slots it holds in one
 * UPDATE every ttlS/3; a process that dies stops renewing, and its slots stop counting after at most ttlS (the
 * sweeper deletes them later). Only live slots are counted, so a crash never locks a session out. Slots given back
 * in one turn of the event loop leave in one DELETE.
 */
/** The slots of a key live when the statement began (`$p+1` is the key, as in `slotSql`). */
export const liveSlotsSql = (p: number) => `(select count(*)::int from stream_slots where key = $${p + 1}::text and expires_at > now())`;

export const slotSql = (p: number) => `
    insert into stream_slots (id, key, n, expires_at)
    select $${p}::uuid, $${p + 1}::text, c.n, now() + make_interval(secs => $${p + 3}::int) from (
      select g.n from generate_series(1, $${p + 2}::int) as g(n)
      where not exists (select 1 from stream_slots x where x.key = $${p + 1}::text and x.n = g.n and x.expires_at > now())
        and ${liveSlotsSql(p)} < $${p + 2}::int
      order by g.n limit 1) c
    on conflict (key, n) do update set id = excluded.id, expires_at = excluded.expires_at where stream_slots.expires_at <= now()
    returning id`;

const TAKE = statement(`with slot as (${slotSql(1)}) select (select id from slot) as slot_id, ${liveSlotsSql(1)} as slots_live`);
const RENEW = statement(`update stream_slots set expires_at = now() + make_interval(secs => $1::int) where id = any($2::uuid[])`);
const GIVE_BACK = statement(`delete from stream_slots where id = any($1::uuid[])`);
const SWEEP = statement(`delete from stream_slots where expires_at < now()`);

/** A try at a slot: taken, full, or lost to a racing taker (try again). */
export type SlotTry = 'taken' | 'full' | 'raced';
export const slotOutcome = (slotId: string | null, live: number, max: number): SlotTry => (slotId ? 'taken' : live >= max ? 'full' : 'raced');

/** Tries after a lost race before the key counts as full (each lost race is someone else's slot: it ends long before). */
const MAX_TRIES = 20;

export function createStreamSlots(deps: { pool: pg.Pool; log: Logger; ttlS: number }) {
  const held = new Set<string>();
  let heartbeat: NodeJS.Timeout | null = null;
  let giving: string[] = [];
  /** Shut down: every slot was given back by `close`, and the pool is about to end. */
  let closed = false;

  function renew() {
    const ids = [...held];
    if (ids.length === 0) return;
    run(deps.pool, RENEW, [deps.ttlS, ids]).catch((err: unknown) => deps.log.warn({ err }, 'renewing stream slots failed; they lapse if this goes on'));
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

  function giveBack(id: string) {
    if (closed) return;
    if (giving.length === 0) {
      setImmediate(() => {
        const ids = giving;
        giving = [];
        if (ids.length === 0) return;
        run(deps.pool, GIVE_BACK, [ids]).catch((err: unknown) => deps.log.warn({ err }, 'giving back stream slots failed; they lapse by themselves'));
      });
    }
    giving.push(id);
  }

  /** The slot `id`, now held: the function that gives it back (once). */
  function adopt(id: string): () => void {
    track(id, true);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      track(id, false);
      giveBack(id);
    };
  }

  return {
    adopt,
    /** The parameters of `slotSql` for a new slot of `key`. */
    values: (key: string, max: number, id: string = randomUUID()): unknown[] => [id, key, max, deps.ttlS],

    /** Take one of `key`'s `max` slots (a statement of its own): the function that gives it back, or null when all are taken. */
    async acquire(key: string, max: number): Promise<(() => void) | null> {
      for (let i = 0; i < MAX_TRIES; i++) {
        const res = await run<{ slot_id: string | null; slots_live: number }>(deps.pool, TAKE, this.values(key, max));
        const row = res.rows[0]!;
        const outcome = slotOutcome(row.slot_id, row.slots_live, max);
        if (outcome === 'taken') return adopt(row.slot_id!);
        if (outcome === 'full') return null;
      }
      return null;
    },

    /** Slots this process holds now. */
    get held() {
      return held.size;
    },

    /**
     * Shutdown, before the pool ends: give back every slot this process holds or is about to give back, in one
     * statement, awaited. The streams holding them are being closed and told to reconnect (WebSockets get 1001):
     * slots given back a turn later, by then on an ended pool, stayed counted until they lapsed (`ttlS`), and a
     * session that reconnected at once elsewhere was refused. Whatever closes after this has nothing left to give back.
     */
    async close(): Promise<void> {
      closed = true;
      if (heartbeat) clearInterval(heartbeat);
      heartbeat = null;
      const ids = [...held, ...giving];
      held.clear();
      giving = [];
      if (ids.length > 0) await run(deps.pool, GIVE_BACK, [ids]);
    },

    /** Delete lapsed slots (a dead process's). They no longer count; this only frees space. */
    async sweep(): Promise<number> {
      const res = await run(deps.pool, SWEEP, []);
      return res.rowCount ?? 0;
    },
  };
}

export type StreamSlots = ReturnType<typeof createStreamSlots>;
