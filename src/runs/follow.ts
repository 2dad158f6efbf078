import type { Logger } from 'pino';
import type { Bus } from '../bus.js';
import { isDatabaseUnavailable } from '../db/errors.js';
import { isTerminalEvent, type Registry, type RunEvent } from './registry.js';
import { isLive, type RunStore } from './store.js';

const PAGE = 1000;
const MAX_BACKOFF_MS = 2_000;

/**
 * Runs driven by another process, followed here: ONE reader of Postgres per (process, run), publishing what it
 * reads into a registry entry that every reader of the run in this process attaches to, like to a run executed
 * here (and so gets the direct write path, the shared frames, the replay buffer). A hundred streams of a run on
 * process B cost B one follower, not a hundred pollers.
 *
 * What it reads: the run's `run:progress` notifications carry the events when they fit a NOTIFY payload (the
 * owner's flush statement sends them, store.appendTokens), and the follower publishes those without a query;
 * otherwise (too big, a notification missed, `run:finish`, or nothing for SSE_POLL_MS) it reads the log after the
 * last event it published, one page at a time.
 *
 * Why it cannot skip or repeat an event: it publishes in seq order only. Events from a notification are published
 * only if the first is exactly the next one (a gap means a notification was lost: it reads the log instead, where
 * tokens are gapless); the registry drops anything at or below what was published; a read and a notification that
 * overlap publish each event once. The only hole it accepts is the one before a final event numbered past the seq
 * ceiling by recovery (finish.ts), as every reader does. It ends with the final event; if the run is gone, or it is
 * stopped (its last reader left), it ends without one, and a reader still attached reads Postgres itself
 * (feed.ts) — Postgres is the truth about the outcome.
 *
 * Why a lost notification costs a poll, never an event: every SSE_POLL_MS without news it reads the log anyway,
 * and when the log has nothing new it reads the row, to see an end whose final event sits below its cursor.
 */
export function createFollowers(deps: { registry: Registry; store: RunStore; bus: Bus; pollMs: number; log: Logger }) {
  const follows = new Map<string, { news(events?: RunEvent[]): void }>();

  deps.bus.on('run:progress', (e) => follows.get(e.runId)?.news(e.events));
  deps.bus.on('run:finish', (e) => follows.get(e.runId)?.news());

  function follow(runId: string, after: number) {
    if (deps.registry.source(runId)) return;
    let stopped = false;
    let wake: (() => void) | null = null;
    let dirty = true;
    let reading = false;
    /** Events that came in notifications while a read was in flight: published after it, if they follow on. */
    let carried: RunEvent[] = [];
    const entry = deps.registry.follow(runId, after, () => {
      stopped = true;
      follows.delete(runId);
      wake?.();
    });

    const publish = (events: RunEvent[]): boolean => {
      for (const e of events) {
        if (stopped) return true;
        deps.registry.publish(runId, e);
        if (isTerminalEvent(e)) {
          deps.registry.end(runId);
          return true;
        }
      }
      return false;
    };

    const nap = (ms: number) =>
      new Promise<void>((resolve) => {
        const t = setTimeout(resolve, ms);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      }).finally(() => {
        wake = null;
      });

    follows.set(runId, {
      news(events) {
        if (stopped) return;
        // The next events, carried by the notification: published now (or right after the read in flight), no query.
        if (events?.length) {
          if (reading) {
            carried.push(...events);
            return;
          }
          if (events[0]!.seq === entry.lastSeq + 1) {
            publish(events);
            return;
          }
          if (events.at(-1)!.seq <= entry.lastSeq) return;
        }
        // A gap (a notification was lost), events too big to carry, or the end: read the log.
        dirty = true;
        wake?.();
      },
    });

    async function run() {
      let failures = 0;
      while (!stopped) {
        if (!dirty) await nap(failures > 0 ? Math.min(MAX_BACKOFF_MS, deps.pollMs * 2 ** failures) : deps.pollMs);
        if (stopped) return;
        dirty = false;
        reading = true;
        try {
          const page = await deps.store.eventsAfter(runId, entry.lastSeq, PAGE);
          failures = 0;
          if (publish(page.filter((e) => e.seq > entry.lastSeq || isTerminalEvent(e)))) return;
          if (page.length === PAGE) {
            dirty = true;
            continue;
          }
          if (page.length > 0) continue;
          // Nothing new. A run that is gone has nothing more to say; one that ended at or below our cursor owes us
          // its final event (a cursor we never sent, or tokens its owner streamed but never persisted).
          const row = await deps.store.get(runId);
          if (!row) return deps.registry.end(runId);
          if (!isLive(row.state) && row.lastSeq <= entry.lastSeq) {
            const [final] = await deps.store.eventsAfter(runId, row.lastSeq - 1, 1);
            if (final) publish([final]);
            return deps.registry.end(runId);
          }
          // Started from a cursor past the log (its first reader's): follow from what Postgres has, so the other
          // readers here get the events in between live, not at the end (registry.rewind; nothing published yet).
          if (isLive(row.state) && row.lastSeq < entry.lastSeq) deps.registry.rewind(runId, row.lastSeq);
        } catch (err) {
          if (!isDatabaseUnavailable(err)) deps.log.warn({ err, runId }, 'following a run failed; retrying');
          failures++;
        } finally {
          reading = false;
          const next = carried.filter((e) => e.seq > entry.lastSeq);
          carried = [];
          if (next.length > 0) {
            if (next[0]!.seq === entry.lastSeq + 1 && next.every((e, i) => i === 0 || e.seq === next[i - 1]!.seq + 1)) {
              if (publish(next)) return;
            } else dirty = true;
          }
        }
      }
    }
    run().catch((err) => {
      deps.log.error({ err, runId }, 'a follower stopped');
      deps.registry.end(runId);
    });
  }

  return {
    /** Follow a run this process does not drive, from `after`, unless it is already driven or followed here. */
    follow,
    /** Runs followed now. */
    get size() {
      return follows.size;
    },
  };
}

export type Followers = ReturnType<typeof createFollowers>;
