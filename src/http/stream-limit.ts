/**
 * Open streams per client, bounded: a stream holds a connection (and, while it waits, a reader's share of
 * Postgres) for as long as the client likes, so one client may hold at most `max` at once in this process. Counted
 * by the client IP Express derives (`TRUST_PROXY` decides whether X-Forwarded-For is believed). Synchronous
 * count-and-take, so concurrent opens cannot overshoot; every taken slot is released exactly once.
 */
export function createStreamLimiter(max: number) {
  const open = new Map<string, number>();
  return {
    /** Take a slot for `key`; null when it already holds `max`. Call the returned function when the stream ends. */
    acquire(key: string): (() => void) | null {
      const n = open.get(key) ?? 0;
      if (n >= max) return null;
      open.set(key, n + 1);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        const left = (open.get(key) ?? 1) - 1;
        if (left > 0) open.set(key, left);
        else open.delete(key);
      };
    },
    /** Clients with at least one stream open. */
    get size() {
      return open.size;
    },
  };
}

export type StreamLimiter = ReturnType<typeof createStreamLimiter>;
