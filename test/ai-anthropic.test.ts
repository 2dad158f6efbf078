import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { API_VERSIONS, inputTokens, startFakeAnthropic, type FakeAnthropic } from './fakes/anthropic-messages.js';
import { DEFAULT_CHUNKS } from './fakes/llm-http.js';
import { providerSuite } from './helpers/ai-suite.js';

describe('anthropic against a fake Anthropic Messages API', () => {
  const suite = providerSuite({
    provider: 'anthropic',
    upstreamModel: 'claude-haiku-4-5',
    start: (apiKey) => startFakeAnthropic({ apiKey }),
    baseURL: (fake) => fake.url,
    lastUsage: (fake) => {
      const u = fake.usages.at(-1)!;
      return { inputTokens: u.input_tokens!, outputTokens: u.output_tokens! };
    },
    upFrontInput: (req) => inputTokens(req.body),
    keyOnWire: (req) => String(req.headers['x-api-key'] ?? /^Bearer (.+)$/.exec(String(req.headers.authorization ?? ''))?.[1]),
  });
  const fake = () => suite.fake() as FakeAnthropic;

  it('sends a Messages request: system apart, one role at a time, the version the SDK speaks, the key as a bearer', async () => {
    const s = await suite.session();
    const client = new OpenAI({ baseURL: `${suite.server().url}/v1`, apiKey: s.token, maxRetries: 0 });
    const before = fake().requests.length;
    const chat = await client.chat.completions.create({
      model: 'm',
      max_completion_tokens: 40,
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'First question.' },
        { role: 'user', content: 'Second question.' },
        { role: 'assistant', content: 'An answer.' },
        { role: 'assistant', content: '   ' },
        { role: 'system', content: 'Answer in English.' },
        { role: 'user', content: 'Third question.' },
      ],
    });
    expect(chat.choices[0]!.message.content).toBe(DEFAULT_CHUNKS.join(''));
    expect(chat.choices[0]!.finish_reason).toBe('stop');
    const call = fake().requests[before]!;
    expect(call.body).toEqual({
      model: 'claude-haiku-4-5',
      max_tokens: 40,
      system: 'Be brief.\n\nAnswer in English.',
      messages: [
        { role: 'user', content: 'First question.\n\nSecond question.' },
        { role: 'assistant', content: 'An answer.' },
        { role: 'user', content: 'Third question.' },
      ],
      stream: true,
    });
    expect(API_VERSIONS).toContain(call.headers['anthropic-version']);
    expect(call.headers.authorization).toBe(`Bearer ${suite.key}`);
    expect(call.headers['content-type']).toBe('application/json');
    // The usage is Anthropic's own count, which the ×1.75 estimate bounded when the debit was taken.
    expect(chat.usage).toMatchObject({ prompt_tokens: inputTokens(call.body), completion_tokens: fake().usages.at(-1)!.output_tokens });
    expect(suite.server().ctx.models.tokenizer('m').contextBound(call.body.messages)).toBeGreaterThan(inputTokens(call.body));
  });

  it('`event: error` (overloaded_error) before the first token is retried; after one it fails the run, refunded', async () => {
    const s = await suite.session();
    fake().plans.push({ type: 'reply', errorAfter: 0 }, { type: 'reply' });
    const retried = await suite.ask(s, 'Overloaded at first.');
    expect(retried.calls).toHaveLength(2);
    expect(retried.final).toMatchObject({ state: 'complete', result: DEFAULT_CHUNKS.join('') });

    fake().plans.push({ type: 'reply', errorAfter: 2 });
    const failed = await suite.ask(s, 'Overloaded mid-reply.');
    expect(failed.calls).toHaveLength(1);
    expect(failed.final).toMatchObject({ state: 'failed', error: { code: 'provider_unavailable' }, chargedSats: 0, refundedSats: failed.accepted.debitedSats, result: DEFAULT_CHUNKS.slice(0, 2).join('') });
  });

  it('a refusal is the content_filter stop, charged for what it produced', async () => {
    const s = await suite.session();
    fake().plans.push({ type: 'reply', stop: 'content_filter', chunks: ['I can', 'not help with that.'] });
    const { final } = await suite.ask(s, 'Something refused.');
    expect(final).toMatchObject({ state: 'complete', stopReason: 'content_filter', result: 'I cannot help with that.', usage: { outputTokens: fake().usages.at(-1)!.output_tokens } });
    expect(final.chargedSats).toBeGreaterThan(0);
  });
});
