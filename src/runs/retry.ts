import type { Logger } from 'pino';

/**
 * Retries of a claim or a finish before the run is left to recovery (backoff 100 ms · 2^n: about 3 s in all, so a
 * Postgres restart or a storm of killed connections is ridden out, and a longer outage is not waited on).
 */
const RETRIES = 5;

/** `fn`, retried while it throws (Postgres unwell); the last error is thrown after `RETRIES` retries. */
export async function retried<T>(log: Logger, what: string, runId: string, fn: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (attempt >= RETRIES) throw err;
      log.warn({ err, runId, attempt }, `${what} failed; retrying`);
      await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
    }
  }
}
