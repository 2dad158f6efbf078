/**
 * A fixed-window counter per key (client IP), bounded: expired windows are swept, and past `maxKeys` the
 * oldest windows are forgotten first (a forgotten client merely gets a fresh window).
 */
export function createRateLimiter(opts: { limit: number; windowMs: number; maxKeys?: number }) {
  const windows = new Map<string, { count: number; resetAt: number }>();
  const maxKeys = opts.maxKeys ?? 100_000;
  return {
    /** Count one hit; `ok: false` with the seconds until the window resets when over the limit. */
    hit(key: string, now = Date.now()): { ok: true; remaining: number } | { ok: false; retryAfterS: number } {
      let w = windows.get(key);
      if (!w || w.resetAt <= now) {
        windows.delete(key);
        w = { count: 0, resetAt: now + opts.windowMs };
        windows.set(key, w);
        if (windows.size > maxKeys) windows.delete(windows.keys().next().value!);
      }
      if (w.count >= opts.limit) return { ok: false, retryAfterS: Math.max(1, Math.ceil((w.resetAt - now) / 1000)) };
      w.count++;
      return { ok: true, remaining: opts.limit - w.count };
    },
    sweep(now = Date.now()) {
      for (const [k, w] of windows) if (w.resetAt <= now) windows.delete(k);
    },
    get size() {
      return windows.size;
    },
  };
}
