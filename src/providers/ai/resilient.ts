import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { failure, ProviderFailure } from './failures.js';
import type { AiChunk, AiProvider, AiRequest } from './types.js';

export interface ResilienceOptions {
  /** The first token must arrive within this long of the call, retries and their waits included. */
  firstTokenTimeoutMs: number;
  /** After the first token, the longest silence between two chunks. */
  idleTimeoutMs: number;
  /** Attempts after the first, made only before a token was streamed (0: none). */
  maxRetries: number;
  /** The first backoff when the provider names no wait; doubled each attempt, at most 8 s, less up to 25 % jitter. */
  retryBaseMs: number;
  log: Logger;
  /** The catalogue name, for the log. */
  model: string;
}

/** Why an attempt's upstream request was aborted by us (not by the caller). */
class Timeout extends Error {
  constructor(readonly which: 'first_token' | 'idle') {
    super(which);
  }
}

/**
 * The one place a real provider's calls are retried and timed, for every provider, so the executor stays the
 * same for all of them. A provider throws `ProviderFailure`s that say whether they are worth another attempt;
 * this wrapper decides when.
 *
 * Why it cannot charge twice or stream twice: an attempt is retried only while it has yielded no token — the
 * only chunks that reach a reader — so a retry can never duplicate or contradict text a client saw; a usage
 * chunk from a failed attempt is superseded by the next attempt's (and a failed run charges nothing). Each
 * attempt has its own AbortController, linked to the caller's: a stop aborts the attempt in flight, a timeout
 * aborts only its own attempt, and leaving the loop for any reason (end, error, the caller breaking out) aborts
 * it in `finally`, which closes the upstream request. Timers are cleared in the same `finally`, so none outlives
 * its attempt.
 *
 * Retries honour `retry-after` (and `retry-after-ms`) when the wait still fits before the first-token deadline;
 * otherwise the run fails at once with the provider's own code rather than keep a client waiting past the
 * deadline for nothing. The SDKs' own retries are off (`maxRetries: 0`): they retry only until response headers
 * arrive, never an error inside a 200 stream (Anthropic's `event: error` `overloaded_error`, a connection cut
 * before the first delta), and would not respect the deadline.
 */
export function withResilience(inner: AiProvider, opts: ResilienceOptions): AiProvider {
  async function* stream(req: AiRequest, signal: AbortSignal): AsyncGenerator<AiChunk> {
    const deadline = Date.now() + opts.firstTokenTimeoutMs;
    for (let attempt = 0; ; attempt++) {
      signal.throwIfAborted();
      const ctl = new AbortController();
      const onStop = () => ctl.abort(signal.reason);
      signal.addEventListener('abort', onStop, { once: true });
      let timer: NodeJS.Timeout | undefined;
      // Set by a timer (a closure TypeScript's narrowing cannot see, hence the box).
      const fired: { timeout: Timeout | null } = { timeout: null };
      const arm = (ms: number, which: Timeout['which']) => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          fired.timeout = new Timeout(which);
          ctl.abort(fired.timeout);
        }, Math.max(0, ms));
      };
      arm(deadline - Date.now(), 'first_token');
      // Rejects when the attempt is aborted, so a timeout or a stop ends the wait even on a provider that would
      // not notice its signal.
      const aborted = new Promise<never>((_, reject) => ctl.signal.addEventListener('abort', () => reject(ctl.signal.reason), { once: true }));
      aborted.catch(() => undefined);
      let tokens = 0;
      let wait = 0;
      const it = inner.stream(req, ctl.signal)[Symbol.asyncIterator]();
      try {
        for (;;) {
          const next = await Promise.race([it.next(), aborted]);
          if (next.done) break;
          if (next.value.type === 'token') tokens++;
          // The silence clock runs only while we wait on the provider, not while our reader digests a chunk.
          if (tokens > 0) clearTimeout(timer);
          yield next.value;
          if (tokens > 0) arm(opts.idleTimeoutMs, 'idle');
        }
        // An SDK stream aborted under it ends quietly; the provider throws the reason, but be sure.
        if (fired.timeout) throw fired.timeout;
        return;
      } catch (err) {
        if (signal.aborted) throw err;
        if (fired.timeout) throw timeoutFailure(fired.timeout, tokens > 0 ? opts.idleTimeoutMs : opts.firstTokenTimeoutMs);
        // A reply already under way is never retried: a client saw its first words.
        if (!(err instanceof ProviderFailure) || tokens > 0 || !err.info.retryable || attempt >= opts.maxRetries) throw err;
        wait = err.info.retryAfterMs ?? backoff(opts.retryBaseMs, attempt);
        if (Date.now() + wait >= deadline) {
          opts.log.warn({ model: opts.model, code: err.code, status: err.info.status, requestId: err.info.requestId, waitMs: Math.round(wait) }, 'AI provider asked for a wait past the first-token deadline; giving up');
          throw err;
        }
        opts.log.warn(
          { model: opts.model, attempt: attempt + 1, code: err.code, status: err.info.status, requestId: err.info.requestId, detail: err.info.detail, waitMs: Math.round(wait) },
          'AI provider failed before the first token; retrying',
        );
      } finally {
        clearTimeout(timer);
        signal.removeEventListener('abort', onStop);
        // Closes the upstream request if it is still open (a no-op once it ended).
        ctl.abort();
        // The provider's own cleanup (the SDK stream's `finally` aborts its request too). Not awaited: a provider
        // stuck in a read it never leaves must not hold us.
        Promise.resolve()
          .then(() => it.return?.())
          .catch(() => undefined);
      }
      // Between attempts, with nothing of the last one left open; rejects at once if the caller stops meanwhile.
      await sleep(wait, undefined, { signal });
    }
  }

  return { name: inner.name, stream, evaluate: (request, signal) => inner.evaluate(request, signal) };
}

function timeoutFailure(t: Timeout, ms: number): ProviderFailure {
  const what = t.which === 'first_token' ? `the model provider sent no token within ${ms} ms` : `the model provider went silent for ${ms} ms during the reply`;
  return failure('provider_timeout', { retryable: false }, what);
}

/** 2^attempt × base, at most 8 s, less up to 25 % jitter (the SDKs' own schedule). */
function backoff(baseMs: number, attempt: number): number {
  return Math.min(baseMs * 2 ** attempt, 8_000) * (1 - Math.random() * 0.25);
}
