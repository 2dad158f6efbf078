import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AiError, lastUserText, type AiProvider } from '../src/providers/ai/types.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { paidSession } from './helpers/sessions.js';

/**
 * What the unmodified `openai` SDK retries on its own (it retries 408, 409, 429 and every 5xx unless the answer says
 * `x-should-retry: false`): a provider failure that another attempt cannot mend — the operator's key refused, its
 * quota gone, the request refused, an input too long — must not become three runs, three debits and three calls
 * to the provider; one that may pass (unavailable, rate limited) may be retried.
 */
const failing: AiProvider = {
  name: 'failing',
  async *stream(req) {
    const code = /\[fail:(\w+)\]/.exec(lastUserText(req.messages))?.[1];
    if (code) throw new AiError(code, `the provider failed (${code})`);
    yield { type: 'token', content: 'ok' };
  },
  async evaluate() {
    return { accept: false, reason: 'n/a' };
  },
};

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({}, { ai: failing });
});
afterAll(() => t.close());

/** How many runs the session has: one per request the SDK made. */
async function runsOf(token: string): Promise<number> {
  const res = await t.http.get('/api/runs?limit=100').set('authorization', `Bearer ${token}`).expect(200);
  return res.body.data.length;
}

describe('provider failures on /v1/chat/completions and the SDK’s retries', () => {
  it.each(['provider_auth_failed', 'provider_quota_exceeded', 'provider_rejected', 'context_length_exceeded'])(
    '%s: x-should-retry false, so the SDK asks once',
    async (code) => {
      const s = await paidSession(t, 1000);
      const client = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: s.token, maxRetries: 2 });
      const err = await client.chat.completions.create({ model: 'sluice-stub', messages: [{ role: 'user', content: `hi [fail:${code}]` }] }).catch((e) => e);
      expect(err).toBeInstanceOf(OpenAI.APIError);
      expect(err).toMatchObject({ status: 502, code });
      expect(err.headers.get('x-should-retry')).toBe('false');
      expect(await runsOf(s.token)).toBe(1);
    },
  );

  it('provider_unavailable may pass: the SDK retries it', async () => {
    const s = await paidSession(t, 1000);
    const client = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: s.token, maxRetries: 1 });
    const err = await client.chat.completions.create({ model: 'sluice-stub', messages: [{ role: 'user', content: 'hi [fail:provider_unavailable]' }] }).catch((e) => e);
    expect(err).toMatchObject({ status: 502, code: 'provider_unavailable' });
    expect(err.headers.get('x-should-retry')).not.toBe('false');
    expect(await runsOf(s.token)).toBe(2);
  });
});
