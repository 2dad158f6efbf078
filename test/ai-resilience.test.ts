import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { failure, retryAfterMs, scrub } from '../src/providers/ai/failures.js';
import { withResilience, type ResilienceOptions } from '../src/providers/ai/resilient.js';
import type { AiChunk, AiProvider } from '../src/providers/ai/types.js';

/** A provider whose attempts follow a script: each attempt yields its chunks (with a gap), then throws or ends. */
function scripted(attempts: Array<{ chunks?: AiChunk[]; gapMs?: number; error?: Error }>) {
  const calls: number[] = [];
  const provider: AiProvider = {
    name: 'scripted',
    async *stream(_req, signal) {
      calls.push(Date.now());
      const a = attempts[calls.length - 1] ?? {};
      for (const c of a.chunks ?? []) {
        await sleep(a.gapMs ?? 1, undefined, { signal });
        yield c;
      }
      if (a.error) throw a.error;
    },
    evaluate: async () => ({ accept: false, reason: 'n/a' }),
  };
  return { provider, calls };
}

const opts = (o: Partial<ResilienceOptions> = {}): ResilienceOptions => ({ firstTokenTimeoutMs: 2_000, idleTimeoutMs: 1_000, maxRetries: 2, retryBaseMs: 10, log: pino({ level: 'silent' }), model: 'm', ...o });
const req = { model: 'm', messages: [{ role: 'user' as const, content: 'hi' }], maxTokens: 10 };
const token = (content: string): AiChunk => ({ type: 'token', content });
const rateLimited = (retryAfter?: number) => failure('provider_rate_limited', { retryable: true, retryAfterMs: retryAfter, status: 429 });

async function drain(p: AiProvider, signal = new AbortController().signal) {
  const out: AiChunk[] = [];
  for await (const c of p.stream(req, signal)) out.push(c);
  return out;
}

describe('the resilience wrapper', () => {
  it('backs off and retries failures before the first token, then streams', async () => {
    const s = scripted([{ error: rateLimited() }, { error: failure('provider_unavailable', { retryable: true }) }, { chunks: [token('a'), token('b')] }]);
    expect(await drain(withResilience(s.provider, opts()))).toEqual([token('a'), token('b')]);
    expect(s.calls).toHaveLength(3);
  });

  it('gives up at once when the provider asks for a wait past the first-token deadline', async () => {
    const s = scripted([{ error: rateLimited(60_000) }, { chunks: [token('never')] }]);
    const started = Date.now();
    await expect(drain(withResilience(s.provider, opts()))).rejects.toMatchObject({ code: 'provider_rate_limited' });
    expect(s.calls).toHaveLength(1);
    expect(Date.now() - started).toBeLessThan(500);
  });

  it('never retries once a token was streamed, whatever the failure', async () => {
    const s = scripted([{ chunks: [token('a')], error: failure('provider_unavailable', { retryable: true }) }, { chunks: [token('b')] }]);
    await expect(drain(withResilience(s.provider, opts()))).rejects.toMatchObject({ code: 'provider_unavailable' });
    expect(s.calls).toHaveLength(1);
  });

  it('does not retry what is not retryable, nor more than maxRetries times', async () => {
    const auth = scripted([{ error: failure('provider_auth_failed', { retryable: false, status: 401 }) }, {}]);
    await expect(drain(withResilience(auth.provider, opts()))).rejects.toMatchObject({ code: 'provider_auth_failed' });
    expect(auth.calls).toHaveLength(1);
    const always = scripted(Array.from({ length: 5 }, () => ({ error: rateLimited(0) })));
    await expect(drain(withResilience(always.provider, opts({ maxRetries: 1 })))).rejects.toMatchObject({ code: 'provider_rate_limited' });
    expect(always.calls).toHaveLength(2);
  });

  it('times silence between chunks, not the time its reader takes over one', async () => {
    const s = scripted([{ chunks: [token('a'), token('b'), token('c')], gapMs: 5 }]);
    const out: AiChunk[] = [];
    for await (const c of withResilience(s.provider, opts({ idleTimeoutMs: 100 })).stream(req, new AbortController().signal)) {
      out.push(c);
      await sleep(250);
    }
    expect(out).toHaveLength(3);
    const slow = scripted([{ chunks: [token('a'), token('b')], gapMs: 300 }]);
    await expect(drain(withResilience(slow.provider, opts({ idleTimeoutMs: 100, firstTokenTimeoutMs: 1_000 })))).rejects.toMatchObject({ code: 'provider_timeout' });
  });

  it('times out even a provider that never notices its signal', async () => {
    const deaf: AiProvider = {
      name: 'deaf',
      async *stream() {
        await new Promise(() => undefined);
      },
      evaluate: async () => ({ accept: false, reason: 'n/a' }),
    };
    const started = Date.now();
    await expect(drain(withResilience(deaf, opts({ firstTokenTimeoutMs: 150 })))).rejects.toMatchObject({ code: 'provider_timeout' });
    expect(Date.now() - started).toBeLessThan(1_000);
  });

  it('a stop during a retry wait ends the stream at once, with no further attempt', async () => {
    const s = scripted([{ error: rateLimited(1_500) }, { chunks: [token('late')] }]);
    const stop = new AbortController();
    const started = Date.now();
    setTimeout(() => stop.abort('cancelled'), 50);
    await expect(drain(withResilience(s.provider, opts({ firstTokenTimeoutMs: 5_000 })), stop.signal)).rejects.toBeDefined();
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(s.calls).toHaveLength(1);
  });

  it('reads retry-after and retry-after-ms as the SDKs do, and scrubs keys from provider messages', () => {
    expect(retryAfterMs(new Headers({ 'retry-after': '2' }))).toBe(2_000);
    expect(retryAfterMs(new Headers({ 'retry-after-ms': '150', 'retry-after': '9' }))).toBe(150);
    expect(retryAfterMs(new Headers({ 'retry-after': new Date(Date.now() + 3_000).toUTCString() }))).toBeGreaterThan(1_000);
    expect(retryAfterMs(new Headers())).toBeUndefined();
    expect(scrub('Invalid key sk-proj-abcdef123456 and Bearer abc.def.ghi.jkl', [])).toBe('Invalid key [redacted] and [redacted]');
    expect(scrub('echo: my-secret-value!', ['my-secret-value'])).toBe('echo: [redacted]!');
  });
});
