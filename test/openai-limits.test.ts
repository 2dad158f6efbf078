import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectNoLeaks, paidSession } from './helpers/sessions.js';
import { waitFor } from './helpers/wait.js';

/**
 * The native face's limits hold on `/v1` too, in OpenAI's terms: a session over its request budget gets the
 * SDK's own `RateLimitError` (retryable, with `Retry-After`), and a streaming create holds one of the session's
 * stream slots for as long as it streams.
 */
let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ SESSION_RATE_LIMIT_PER_MIN: 0, SESSION_MAX_STREAMS: 1 });
});
afterAll(() => t.close());

const clientOf = (server: TestServer, token: string) => new OpenAI({ baseURL: `${server.url}/v1`, apiKey: token, maxRetries: 0 });

describe('limits on /v1', () => {
  it('a session over SESSION_RATE_LIMIT_PER_MIN gets RateLimitError (rate_limit_exceeded), which the SDK may retry', async () => {
    const limited = await t.sibling({ SESSION_RATE_LIMIT_PER_MIN: 3 });
    try {
      const s = await paidSession(limited, 500);
      const client = clientOf(limited, s.token);
      for (let i = 0; i < 3; i++) await client.models.list();
      const err = await client.models.list().then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(OpenAI.RateLimitError);
      const e = err as InstanceType<typeof OpenAI.RateLimitError>;
      expect(e.status).toBe(429);
      expect(e.code).toBe('rate_limit_exceeded');
      expect(e.type).toBe('requests');
      expect(Number(e.headers?.get('retry-after'))).toBeGreaterThan(0);
      // Unlike a client mistake, a rate limit passes with time: the SDK is not told to give up.
      expect(e.headers?.get('x-should-retry')).toBeNull();
    } finally {
      await limited.close();
    }
  });

  it('a streaming create holds a stream slot: a second stream is refused while it streams, allowed after', async () => {
    const s = await paidSession(t, 2000);
    const client = clientOf(t, s.token);
    const first = await client.responses.create({ model: 'sluice-stub', input: 'hold the slot [stub:tokens=400] [stub:delay=5]', stream: true });
    const it1 = first[Symbol.asyncIterator]();
    expect((await it1.next()).value).toMatchObject({ type: 'response.created' });
    const refused = await client.responses.create({ model: 'sluice-stub', input: 'second [stub:tokens=2]', stream: true }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(OpenAI.RateLimitError);
    // A call that does not stream needs no slot.
    const sync = await client.responses.create({ model: 'sluice-stub', input: 'no stream [stub:tokens=2] [stub:delay=0]' });
    expect(sync.status).toBe('completed');
    first.controller.abort();
    // The slot comes back when the first stream closes (the run goes on: store defaults to true).
    const again = await waitFor(
      () =>
        client.responses.create({ model: 'sluice-stub', input: 'after [stub:tokens=2] [stub:delay=0]', stream: true }).then(
          (st) => st,
          (e: unknown) => (e instanceof OpenAI.RateLimitError ? null : Promise.reject(e)),
        ),
      { what: 'a stream slot after the first stream closed' },
    );
    const types: string[] = [];
    for await (const ev of again) types.push(ev.type);
    expect(types.at(-1)).toBe('response.completed');
    // The first run goes on after its reader left (store defaults to true): stop it, then nothing may leak.
    const live = await t.http.get('/api/runs?state=executing').set(s.auth).expect(200);
    expect(live.body.data).toHaveLength(1);
    await t.http.post(`/api/runs/${live.body.data[0].runId}/stop`).set(s.auth).expect(202);
    await expectNoLeaks(t);
  });
});
