import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeAnthropic, type FakeAnthropic } from './fakes/anthropic-messages.js';
import { DEFAULT_CHUNKS } from './fakes/llm-http.js';
import { startFakeOpenAi, type FakeOpenAi } from './fakes/openai-chat.js';
import { startServerProcess } from './helpers/process.js';
import { startV1Server, type V1Server } from './helpers/openai.js';
import { waitFor } from './helpers/wait.js';

/**
 * The real server process (`npm start` without the build), configured by its environment alone with a catalogue
 * of both real providers pointed at the fakes: a session request on each, a /v1 call, a failure whose provider
 * echoes the key — and then its whole log, at trace level, searched for either key.
 */
const OPENAI_KEY = `sk-proj-${'q'.repeat(8)}${Math.random().toString(36).slice(2)}`;
const ANTHROPIC_KEY = `sk-ant-api03-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
let openai: FakeOpenAi;
let anthropic: FakeAnthropic;
let srv: V1Server;

beforeAll(async () => {
  openai = await startFakeOpenAi({ apiKey: OPENAI_KEY });
  anthropic = await startFakeAnthropic({ apiKey: ANTHROPIC_KEY });
  const prices = { inputSatsPer1k: 1000, outputSatsPer1k: 2000, maxOutputTokens: 512, contextTokens: 8192 };
  srv = await startV1Server({
    LOG_LEVEL: 'trace',
    MODELS: JSON.stringify({
      default: 'gpt',
      models: [
        { name: 'gpt', provider: 'openai-compatible', baseURL: `${openai.url}/v1`, apiKeyEnv: 'OPENAI_API_KEY', upstreamModel: 'gpt-4o-mini', ...prices },
        { name: 'claude', provider: 'anthropic', baseURL: anthropic.url, apiKeyEnv: 'ANTHROPIC_API_KEY', upstreamModel: 'claude-haiku-4-5', ...prices },
      ],
    }),
    OPENAI_API_KEY: OPENAI_KEY,
    ANTHROPIC_API_KEY: ANTHROPIC_KEY,
  });
}, 120_000);
afterAll(async () => {
  await srv?.stop();
  await openai?.close();
  await anthropic?.close();
});

describe('the server process on real providers', () => {
  it('serves both providers by configuration alone, and no key reaches its log or a response', async () => {
    const s = await srv.session(10_000);
    const bodies: string[] = [];
    const ask = async (model: string) => {
      const accepted = await srv.api('POST', `/api/sessions/${s.id}/request`, s.token, { request: `Hello, ${model}.`, model });
      expect(accepted.status).toBe(202);
      return waitFor(
        async () => {
          const r = await srv.api('GET', `/api/sessions/${s.id}/requests/${accepted.body.requestId}`, s.token);
          bodies.push(JSON.stringify(r.body));
          return ['complete', 'failed'].includes(r.body.state) ? r.body : null;
        },
        { what: `the ${model} request to end` },
      );
    };
    expect(await ask('gpt')).toMatchObject({ state: 'complete', result: DEFAULT_CHUNKS.join('') });
    expect(await ask('claude')).toMatchObject({ state: 'complete', result: DEFAULT_CHUNKS.join('') });
    const chat = await s.client.chat.completions.create({ model: 'claude', messages: [{ role: 'user', content: 'Hi' }] });
    expect(chat.choices[0]!.message.content).toBe(DEFAULT_CHUNKS.join(''));
    bodies.push(JSON.stringify(chat));

    openai.plans.push({ type: 'error', status: 401, error: 'echo_key' });
    anthropic.plans.push({ type: 'error', status: 401, error: 'echo_key' });
    expect(await ask('gpt')).toMatchObject({ state: 'failed', error: { code: 'provider_auth_failed' } });
    expect(await ask('claude')).toMatchObject({ state: 'failed', error: { code: 'provider_auth_failed' } });
    // The keys did go over the wire, to the providers only.
    expect(openai.requests.at(-1)!.headers.authorization).toBe(`Bearer ${OPENAI_KEY}`);
    expect(anthropic.requests.at(-1)!.headers.authorization).toBe(`Bearer ${ANTHROPIC_KEY}`);

    // The failure was logged, with the provider's words scrubbed.
    await waitFor(() => srv.output().includes('"detail":"Invalid API key: Bearer [redacted]"'), { what: 'the scrubbed failure in the log' });
    for (const text of [srv.output(), ...bodies]) {
      expect(text).not.toContain(OPENAI_KEY);
      expect(text).not.toContain(ANTHROPIC_KEY);
    }
  });

  it('refuses to start when a catalogue names a key variable that is not set, naming the variable only', async () => {
    const models = JSON.stringify({
      default: 'claude',
      models: [
        { name: 'claude', provider: 'anthropic', apiKeyEnv: 'SLUICE_UNSET_KEY_FOR_TEST', inputSatsPer1k: 1, outputSatsPer1k: 1, maxOutputTokens: 10, contextTokens: 100 },
        { name: 'other', provider: 'anthropic', inputSatsPer1k: 1, outputSatsPer1k: 1, maxOutputTokens: 10, contextTokens: 100 },
      ],
    });
    await expect(startServerProcess({ MODELS: models, DATABASE_URL: 'postgres://127.0.0.1:1/none' }, 30_000)).rejects.toThrow(
      /models\[0\]\.apiKeyEnv: the variable SLUICE_UNSET_KEY_FOR_TEST is not set[\s\S]*models\[1\]\.apiKeyEnv: the anthropic provider needs a key/,
    );
  });
});
